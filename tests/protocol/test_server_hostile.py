"""Hostile clients: smuggling, STARTTLS injection, pipelining abuse, floods, and fuzzing."""

import pytest
from hypothesis import HealthCheck, given, settings as hsettings
from hypothesis import strategies as st

from server_transcript import FakeShell, settings
from smarthost.smtp.data import has_bare_newline
from smarthost.smtp.server import (
    Closing,
    DataCommand,
    MailFrom,
    ProtocolError,
    RcptTo,
    StartTLS,
    State,
)

ENVELOPE = b"EHLO client.example.org\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\n"
SMUGGLED = b"MAIL FROM:<admin@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled\r\n"


def open_data(shell: FakeShell) -> None:
    for line in ENVELOPE.split(b"\r\n")[:-1]:
        shell.send(line + b"\r\n")
    assert shell.send(b"DATA\r\n") == b"354 End data with <CR><LF>.<CR><LF>\r\n"


@pytest.mark.parametrize(
    ("separator", "stored"),
    [
        (b"\n.\n", b"\r\n\r\n"),
        (b"\n.\r\n", b"\r\n\r\n"),
        (b"\r.\r", b"\r\n\r\n"),
        (b"\r\n.\n", b"\r\n\r\n"),
        (b"\r\n.\r", b"\r\n\r\n"),
        (b"\r\n\x00.\r\n", b"\r\n\x00.\r\n"),
        (b"\r\n.\x00\r\n", b"\r\n\x00\r\n"),
    ],
)
@pytest.mark.parametrize("chunk", [0, 1, 7])
def test_smuggling_never_starts_a_second_message(separator, stored, chunk):
    shell = FakeShell()
    open_data(shell)
    stream = b"Subject: hi\r\n\r\nhello" + separator + SMUGGLED + b".\r\n"
    if chunk:
        out = b"".join(shell.send(stream[i : i + chunk]) for i in range(0, len(stream), chunk))
    else:
        out = shell.send(stream)
    assert out == b"250 2.0.0 Ok: queued as TEST\r\n"
    assert shell.messages == [b"Subject: hi\r\n\r\nhello" + stored + SMUGGLED]
    assert len(shell.of_type(MailFrom)) == 1 and len(shell.of_type(RcptTo)) == 1
    assert shell.send(b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"


@pytest.mark.parametrize("separator", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"a\nb"])
def test_bare_newline_reject_refuses_the_message_and_stays_in_sync(separator):
    shell = FakeShell(settings(bare_newline="reject"))
    open_data(shell)
    out = shell.send(b"hello" + separator + SMUGGLED + b".\r\n")
    assert out == b"550 5.5.2 Error: bare <LF> received\r\n"
    assert shell.messages == [] and len(shell.of_type(MailFrom)) == 1
    assert shell.conn.state is State.GREETED and shell.conn.session.sender is None
    assert shell.send(b"MAIL FROM:<a@example.org>\r\n") == b"250 2.1.0 Ok\r\n"


def test_starttls_injection_is_refused_when_pipelining_is_forbidden():
    shell = FakeShell()
    shell.send(b"EHLO c\r\n")
    out = shell.send(b"STARTTLS\r\nMAIL FROM:<evil@example.net>\r\n")
    assert out == b"554 5.5.0 Error: SMTP protocol synchronization\r\n"
    assert shell.events[-1] == Closing(shell.events[-1].reply, "protocol synchronization", "STARTTLS")
    assert not shell.of_type(StartTLS) and not shell.of_type(MailFrom)


def test_starttls_injection_is_discarded_before_the_handshake():
    # CVE-2011-0411: plaintext after STARTTLS must never run inside TLS.
    shell = FakeShell(settings(forbid_unauth_pipelining=False))
    shell.send(b"EHLO c\r\n")
    out = shell.send(b"STARTTLS\r\nMAIL FROM:<evil@example.net>\r\n")
    assert out == b"220 2.0.0 Ready to start TLS\r\n"
    notice, starttls = shell.events[-2:]
    assert starttls == StartTLS()
    assert isinstance(notice, ProtocolError) and notice.detail == "discarded 30 bytes pipelined after STARTTLS"
    assert shell.conn.discarded_after_starttls == 30
    shell.conn.tls_established()
    assert shell.drain() == b""
    assert shell.send(b"RCPT TO:<x@example.com>\r\n") == b"503 5.5.1 Error: need MAIL command\r\n"
    assert shell.send(b"MAIL FROM:<a@example.org>\r\n") == b"503 5.5.1 Error: send HELO/EHLO first\r\n"
    assert not shell.of_type(MailFrom)


def test_body_sent_with_data_is_a_synchronization_error():
    shell = FakeShell()
    shell.send(b"EHLO c\r\n")
    out = shell.send(
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n"
    )
    assert out == b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n554 5.5.0 Error: SMTP protocol synchronization\r\n"
    assert not shell.of_type(DataCommand) and not shell.messages
    assert shell.conn.closed and shell.events[-1].verb == "DATA"


def test_body_arriving_while_data_is_being_decided_is_a_synchronization_error():
    shell = FakeShell()
    conn = shell.conn
    shell.send(b"EHLO c\r\n")
    conn.receive_data(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    for _ in range(2):
        assert isinstance(conn.next_event(), (MailFrom, RcptTo))
        conn.accept()
    assert isinstance(conn.next_event(), DataCommand)
    conn.receive_data(b"Subject: x\r\n.\r\n")
    conn.accept()
    assert conn.data_to_send().endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n554 5.5.0 Error: SMTP protocol synchronization\r\n")
    assert isinstance(conn.next_event(), Closing)
    assert conn.closed


def test_client_without_ehlo_must_not_pipeline():
    shell = FakeShell()
    shell.send(b"HELO c\r\n")
    out = shell.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n")
    assert out == b"554 5.5.0 Error: SMTP protocol synchronization\r\n"
    assert not shell.of_type(MailFrom)


def test_client_without_ehlo_must_wait_after_the_end_of_data():
    shell = FakeShell()
    for line in (b"HELO c\r\n", b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.com>\r\n", b"DATA\r\n"):
        shell.send(line)
    out = shell.send(b"body\r\n.\r\nMAIL FROM:<a@example.org>\r\n")
    # The message itself was complete and is kept; the early command is not run.
    assert out == b"250 2.0.0 Ok: queued as TEST\r\n554 5.5.0 Error: SMTP protocol synchronization\r\n"
    assert shell.messages == [b"body\r\n"] and len(shell.of_type(MailFrom)) == 1
    assert shell.events[-1].verb == "END-OF-MESSAGE"


def test_pipelining_with_ehlo_is_fine_after_the_end_of_data():
    shell = FakeShell()
    open_data(shell)
    out = shell.send(b"one\r\n.\r\nMAIL FROM:<c@example.org>\r\nRCPT TO:<d@example.com>\r\nDATA\r\n")
    assert out == b"250 2.0.0 Ok: queued as TEST\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"


@pytest.mark.parametrize("early", [True, False])
def test_input_before_the_greeting(early):
    shell = FakeShell(greet=False)
    shell.conn.receive_data(b"EHLO spammer\r\n")
    if early:
        shell.drain()
    else:
        shell.conn.greet()
        shell.drain()
    closing = shell.of_type(Closing)
    assert len(closing) == 1 and closing[0].reason == "pre-greeting input"
    assert closing[0].reply.to_bytes() == b"554 5.5.0 Error: SMTP protocol synchronization\r\n"
    assert closing[0].verb == "CONNECT"
    assert shell.conn.closed and not shell.of_type(MailFrom)


def test_input_before_the_greeting_wire_bytes():
    shell = FakeShell(greet=False)
    shell.conn.receive_data(b"EHLO spammer\r\n")
    shell.conn.greet()
    assert shell.drain() == b"554 5.5.0 Error: SMTP protocol synchronization\r\n"


def test_megabyte_line_without_crlf_stays_bounded():
    shell = FakeShell()
    shell.send(b"EHLO c\r\n")
    out = b""
    for _ in range(256):
        out += shell.send(b"A" * 4096)
        assert shell.conn.buffered <= 512 + 4096
    assert out == b"500 5.5.2 Error: line too long\r\n"
    assert shell.send(b"AAAA\r\nNOOP\r\n") == b"250 2.0.0 Ok\r\n"
    assert shell.conn.error_count == 1


def test_long_line_in_one_piece():
    shell = FakeShell()
    assert shell.send(b"NOOP " + b"x" * 600 + b"\r\nNOOP\r\n") == b"500 5.5.2 Error: line too long\r\n250 2.0.0 Ok\r\n"


def test_line_of_exactly_512_octets_is_accepted():
    shell = FakeShell()
    line = b"NOOP " + b"x" * (512 - 7) + b"\r\n"
    assert len(line) == 512
    assert shell.send(line) == b"250 2.0.0 Ok\r\n"
    assert shell.send(b"NOOP " + b"x" * (513 - 7) + b"\r\n") == b"500 5.5.2 Error: line too long\r\n"


def test_error_flood_ends_at_the_hard_limit():
    shell = FakeShell()
    shell.send(b"EHLO c\r\n")
    out = shell.send(b"XYZZY\r\n" * 25)
    lines = out.split(b"\r\n")[:-1]
    assert lines[:20] == [b"500 5.5.2 Error: command not recognized"] * 20
    assert lines[20:] == [b"421 4.7.0 mx.example.com Error: too many errors"]
    assert (shell.events[-1].reason, shell.events[-1].verb) == ("too many errors", "UNKNOWN")
    assert shell.conn.closed and shell.conn.error_count == 20


def test_shell_rejections_count_towards_the_limit():
    from smarthost.smtp.replies import Reply

    shell = FakeShell(settings(hard_error_limit=3), decide=lambda e: Reply(550, "5.1.1", "no") if isinstance(e, RcptTo) else None)
    shell.send(b"EHLO c\r\n")
    shell.send(b"MAIL FROM:<a@example.org>\r\n")
    out = shell.send(b"RCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nRCPT TO:<d@example.com>\r\n")
    assert out == b"550 5.1.1 no\r\n" * 3 + b"421 4.7.0 mx.example.com Error: too many errors\r\n"


def test_oversize_message_is_refused_and_the_session_continues():
    shell = FakeShell(settings(max_message_size=1000))
    open_data(shell)
    for _ in range(100):
        assert shell.send(b"x" * 1022 + b"\r\n") == b""
        assert shell.conn.buffered <= 1000 + 1024 + 8
    assert shell.send(b".\r\n") == b"552 5.3.4 Error: message file too big\r\n"
    assert not shell.messages and shell.conn.state is State.GREETED
    out = shell.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    assert out.endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")
    assert shell.send(b"small\r\n.\r\n") == b"250 2.0.0 Ok: queued as TEST\r\n"
    assert shell.messages == [b"small\r\n"]


def test_recipient_limit():
    shell = FakeShell(settings(max_recipients=2))
    shell.send(b"EHLO c\r\n")
    out = shell.send(
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nRCPT TO:<d@example.com>\r\nDATA\r\n"
    )
    assert out == (
        b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n452 4.5.3 Error: too many recipients\r\n"
        b"354 End data with <CR><LF>.<CR><LF>\r\n"
    )
    assert shell.send(b"x\r\n.\r\n") == b"250 2.0.0 Ok: queued as TEST\r\n"
    assert shell.conn.error_count == 0
    assert len(shell.of_type(RcptTo)) == 2


def test_too_much_input_while_a_decision_is_pending():
    shell = FakeShell(settings(max_pending_input=10000))
    conn = shell.conn
    conn.receive_data(b"EHLO c\r\n")
    conn.next_event()  # Helo, left undecided
    conn.receive_data(b"NOOP\r\n" * 3000)
    event = conn.next_event()
    assert isinstance(event, Closing) and event.reason == "too much input"
    conn.accept()  # a late decision is ignored
    assert conn.data_to_send().endswith(b"421 4.7.0 Error: too much pipelined input\r\n")


# Fuzzing --------------------------------------------------------------------

FUZZ_SETTINGS = settings(
    forbid_unauth_pipelining=False,
    starttls_available=False,
    max_message_size=300,
    max_command_line=80,
    max_recipients=3,
)
TOKENS = [
    b"EHLO c\r\n",
    b"HELO c\r\n",
    b"MAIL FROM:<a@example.org>\r\n",
    b"MAIL FROM:<a@example.org> SIZE=10\r\n",
    b"RCPT TO:<b@example.com>\r\n",
    b"DATA\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"..",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\x00",
    b"\xff",
    b"x" * 90,
]
streams = st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=12)), max_size=40).map(b"".join)


def run(stream: bytes, cuts: list[int]):
    shell = FakeShell(FUZZ_SETTINGS)
    out = shell.greeting
    start = 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        if cut > start:
            out += shell.send(stream[start:cut])
            start = cut
    out += shell.send(b"")
    return shell, out


@hsettings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(streams, st.lists(st.integers(min_value=0), max_size=10))
def test_random_input_in_random_chunks(stream, raw_cuts):
    cuts = [c % (len(stream) + 1) for c in raw_cuts]
    whole, whole_out = run(stream, [])
    split, split_out = run(stream, cuts)
    # Never raises (we got here), chunking changes nothing, and nothing stored
    # carries a bare CR or LF.
    assert split.events == whole.events
    assert split_out == whole_out
    for message in whole.messages:
        assert not has_bare_newline(message)
    assert whole.conn.closed
    assert whole.conn.buffered == 0


@given(st.binary(max_size=300))
def test_random_bytes_after_data(body):
    shell = FakeShell(FUZZ_SETTINGS)
    open_data(shell)
    out = shell.send(body + b"\r\n.\r\n")
    # The message ends at the first CRLF.CRLF, whatever the body holds; what
    # follows it is read as commands.
    end = (b"\r\n" + body + b"\r\n.\r\n").find(b"\r\n.\r\n")
    size = end
    if size > 300:
        assert out.startswith(b"552 5.3.4 Error: message file too big\r\n")
        assert not shell.messages
    else:
        assert out.startswith(b"250 2.0.0 Ok: queued as TEST\r\n")
        [message] = shell.messages
        assert not has_bare_newline(message)
        assert len(message) <= size + 2 * body.count(b"\n") + 2 * body.count(b"\r")
