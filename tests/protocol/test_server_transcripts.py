"""Byte transcripts against the pure server core: every verb, every state, exact replies."""

import pytest

from server_transcript import DECISIONS, FakeShell, settings, transcript
from smarthost.smtp.address import Address
from smarthost.smtp.commands import MailParams, RcptParams
from smarthost.smtp.replies import Reply
from smarthost.smtp.server import (
    NEED_DATA,
    PAUSED,
    Closing,
    DataCommand,
    Helo,
    MailFrom,
    MessageReceived,
    ProtocolError,
    Quit,
    RcptTo,
    ServerConnection,
    StartTLS,
    State,
    Vrfy,
)

EHLO = """
S: 220 mx.example.com ESMTP smarthost
C: EHLO client.example.org
S: 250-mx.example.com
S: 250-PIPELINING
S: 250-SIZE 10240000
S: 250-STARTTLS
S: 250-ENHANCEDSTATUSCODES
S: 250-8BITMIME
S: 250-DSN
S: 250 SMTPUTF8
"""


def test_a_whole_session():
    shell = transcript(
        EHLO
        + """
        C: MAIL FROM:<alice@example.org> SIZE=42
        C: RCPT TO:<bob@example.com>
        C: RCPT TO:<carol@example.com> NOTIFY=FAILURE
        C: DATA
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        S: 250 2.1.5 Ok
        S: 354 End data with <CR><LF>.<CR><LF>
        C: Subject: hi
        C:
        C: ..leading dot
        C: .
        S: 250 2.0.0 Ok: queued as TEST
        C: QUIT
        S: 221 2.0.0 Bye
        """
    )
    assert shell.messages == [b"Subject: hi\r\n\r\n.leading dot\r\n"]
    kinds = [type(e) for e in shell.events]
    assert kinds == [Helo, MailFrom, RcptTo, RcptTo, DataCommand, MessageReceived, Quit]
    mail = shell.events[1]
    assert mail == MailFrom(Address("alice", "example.org", "<alice@example.org>"), MailParams(size=42))
    assert shell.events[3].params == RcptParams(notify=("FAILURE",))
    assert shell.conn.closed
    assert dict(shell.conn.counters) == {"ehlo": 1, "mail": 1, "rcpt": 2, "data": 1, "quit": 1}


def test_helo_gets_a_one_line_reply_and_no_esmtp():
    shell = transcript(
        """
        S: 220 mx.example.com ESMTP smarthost
        C: helo client.example.org
        S: 250 mx.example.com
        """
    )
    assert shell.conn.session.helo == "client.example.org"
    assert shell.conn.session.esmtp is False
    assert shell.events == [Helo("client.example.org", False)]


@pytest.mark.parametrize("verb", ["EHLO", "HELO"])
def test_helo_needs_an_argument(verb):
    transcript(
        f"""
        S: 220 mx.example.com ESMTP smarthost
        C: {verb}
        S: 501 5.5.4 Syntax: {verb} hostname
        """
    )


def test_second_ehlo_resets_the_transaction():
    shell = transcript(
        EHLO
        + """
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Ok
        C: EHLO again.example.org
        S: 250-mx.example.com
        S: 250-PIPELINING
        S: 250-SIZE 10240000
        S: 250-STARTTLS
        S: 250-ENHANCEDSTATUSCODES
        S: 250-8BITMIME
        S: 250-DSN
        S: 250 SMTPUTF8
        C: RCPT TO:<b@example.com>
        S: 503 5.5.1 Error: need MAIL command
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Ok
        """
    )
    assert shell.conn.session.helo == "again.example.org"


def test_sequence_errors():
    transcript(
        """
        S: 220 mx.example.com ESMTP smarthost
        C: MAIL FROM:<a@example.org>
        S: 503 5.5.1 Error: send HELO/EHLO first
        C: RCPT TO:<a@example.org>
        S: 503 5.5.1 Error: need MAIL command
        C: DATA
        S: 503 5.5.1 Error: need RCPT command
        C: EHLO c
        S: 250-mx.example.com
        S: 250-PIPELINING
        S: 250-SIZE 10240000
        S: 250-STARTTLS
        S: 250-ENHANCEDSTATUSCODES
        S: 250-8BITMIME
        S: 250-DSN
        S: 250 SMTPUTF8
        C: DATA
        S: 503 5.5.1 Error: need RCPT command
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Ok
        C: MAIL FROM:<a@example.org>
        S: 503 5.5.1 Error: nested MAIL command
        C: STARTTLS
        S: 503 5.5.1 Error: MAIL transaction in progress
        """
    )


def test_data_after_only_rejected_recipients():
    def decide(event):
        if isinstance(event, RcptTo):
            return Reply(550, "5.1.1", "Recipient address rejected: User unknown")
        return None

    shell = transcript(
        EHLO
        + """
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<nobody@example.com>
        C: DATA
        S: 250 2.1.0 Ok
        S: 550 5.1.1 Recipient address rejected: User unknown
        S: 554 5.5.1 Error: no valid recipients
        """,
        FakeShell(decide=decide),
    )
    assert shell.conn.state is State.MAIL
    assert shell.conn.failures == {"rcpt": 1, "data": 1}
    assert shell.conn.error_count == 2


def test_rejected_mail_leaves_no_transaction():
    def decide(event):
        if isinstance(event, MailFrom):
            return Reply(553, "5.7.1", "Sender address rejected")
        return None

    shell = transcript(
        EHLO
        + """
        C: MAIL FROM:<spam@example.org>
        C: RCPT TO:<b@example.com>
        S: 553 5.7.1 Sender address rejected
        S: 503 5.5.1 Error: need MAIL command
        """,
        FakeShell(decide=decide),
    )
    assert shell.conn.session.sender is None


def test_transaction_resets_after_the_message_and_keeps_ehlo():
    shell = transcript(
        EHLO
        + """
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.com>
        C: DATA
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        S: 354 End data with <CR><LF>.<CR><LF>
        C: one
        C: .
        C: MAIL FROM:<c@example.org>
        C: RCPT TO:<d@example.com>
        C: DATA
        S: 250 2.0.0 Ok: queued as TEST
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        S: 354 End data with <CR><LF>.<CR><LF>
        C: two
        C: .
        S: 250 2.0.0 Ok: queued as TEST
        C: RCPT TO:<e@example.com>
        S: 503 5.5.1 Error: need MAIL command
        """
    )
    assert shell.messages == [b"one\r\n", b"two\r\n"]
    assert shell.conn.session.helo == "client.example.org"


def test_session_holds_the_envelope_until_the_message_is_decided():
    seen = []

    def decide(event):
        if isinstance(event, MessageReceived):
            session = shell.conn.session
            seen.append((str(session.sender), [str(r.address) for r in session.recipients]))
            return Reply(250, "2.0.0", "Ok: queued as ABC")
        return None

    shell = FakeShell(decide=decide)
    shell.send(b"EHLO c\r\n")
    shell.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n")
    assert shell.send(b"x\r\n.\r\n") == b"250 2.0.0 Ok: queued as ABC\r\n"
    assert seen == [("a@example.org", ["b@example.com", "c@example.com"])]
    assert shell.conn.session.sender is None and shell.conn.session.recipients == []


def test_rset_noop_help_and_case_insensitivity():
    shell = transcript(
        EHLO
        + """
        C: mail from:<a@example.org>
        S: 250 2.1.0 Ok
        C: rset
        S: 250 2.0.0 Ok
        C: RSET now
        S: 501 5.5.4 Syntax: RSET
        C: RCPT TO:<b@example.com>
        S: 503 5.5.1 Error: need MAIL command
        C: NoOp whatever
        S: 250 2.0.0 Ok
        C: HELP
        S: 214 2.0.0 See RFC 5321
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.com>
        C: DATA now
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        S: 501 5.5.4 Syntax: DATA
        """
    )
    assert shell.conn.state is State.RCPT


def test_rset_before_helo_still_requires_helo():
    transcript(
        """
        S: 220 mx.example.com ESMTP smarthost
        C: RSET
        S: 250 2.0.0 Ok
        C: MAIL FROM:<a@example.org>
        S: 503 5.5.1 Error: send HELO/EHLO first
        """
    )


def test_unknown_empty_and_non_ascii_commands():
    shell = transcript(
        """
        S: 220 mx.example.com ESMTP smarthost
        C: AUTH PLAIN AGFAYg==
        S: 500 5.5.2 Error: command not recognized
        C: BDAT 10 LAST
        S: 500 5.5.2 Error: command not recognized
        C:
        S: 500 5.5.2 Error: bad syntax
        C: NOOP caf\u00e9
        S: 500 5.5.2 Error: bad syntax
        C: EXPN staff
        S: 502 5.5.1 Error: command not implemented
        C: TURN
        S: 502 5.5.1 Error: command not implemented
        C: ETRN example.com
        S: 502 5.5.1 Error: command not implemented
        """
    )
    assert [e.verb for e in shell.events] == ["UNKNOWN", "UNKNOWN", "UNKNOWN", "NOOP", "EXPN", "TURN", "ETRN"]
    assert all(isinstance(e, ProtocolError) for e in shell.events)
    assert shell.conn.error_count == 7
    assert shell.conn.counters["unknown"] == 3


def test_nul_and_invalid_utf8_in_commands():
    shell = FakeShell()
    assert shell.send(b"NOOP a\x00b\r\n") == b"500 5.5.2 Error: bad syntax\r\n"
    assert shell.send(b"MAIL FROM:<\xff@x>\r\n") == b"500 5.5.2 Error: bad UTF-8 syntax\r\n"


def test_vrfy_disabled_answers_252_without_asking():
    shell = transcript(
        """
        S: 220 mx.example.com ESMTP smarthost
        C: VRFY postmaster
        S: 252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery
        C: VRFY
        S: 501 5.5.4 Syntax: VRFY address
        """
    )
    assert not shell.of_type(Vrfy)


def test_vrfy_enabled_asks_the_shell():
    def decide(event):
        if isinstance(event, Vrfy):
            return Reply(250, "2.1.5", "<postmaster@example.com>")
        return None

    shell = FakeShell(settings(vrfy_enabled=True), decide=decide)
    assert b"250-VRFY\r\n" in shell.send(b"EHLO c\r\n")
    assert shell.send(b"VRFY postmaster\r\n") == b"250 2.1.5 <postmaster@example.com>\r\n"
    assert shell.of_type(Vrfy) == [Vrfy("postmaster")]


def test_capabilities_follow_the_settings():
    shell = FakeShell(settings(max_message_size=0, starttls_available=False, extra_capabilities=("AUTH PLAIN LOGIN",)))
    assert shell.send(b"EHLO c\r\n") == (
        b"250-mx.example.com\r\n250-PIPELINING\r\n250-SIZE\r\n250-AUTH PLAIN LOGIN\r\n"
        b"250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250 SMTPUTF8\r\n"
    )


def test_starttls_resets_the_session():
    shell = transcript(
        EHLO
        + """
        C: STARTTLS
        S: 220 2.0.0 Ready to start TLS
        """
    )
    assert shell.events[-1] == StartTLS()
    assert shell.conn.state is State.TLS_HANDSHAKE
    shell.conn.tls_established()
    assert shell.conn.session.tls_active and shell.conn.session.helo is None
    transcript(
        """
        C: MAIL FROM:<a@example.org>
        S: 503 5.5.1 Error: send HELO/EHLO first
        C: EHLO client.example.org
        S: 250-mx.example.com
        S: 250-PIPELINING
        S: 250-SIZE 10240000
        S: 250-ENHANCEDSTATUSCODES
        S: 250-8BITMIME
        S: 250-DSN
        S: 250 SMTPUTF8
        C: STARTTLS
        S: 554 5.5.1 Error: TLS already active
        """,
        shell,
    )


def test_starttls_errors():
    transcript(
        """
        S: 220 mx.example.com ESMTP smarthost
        C: STARTTLS now
        S: 501 5.5.4 Syntax: STARTTLS
        """
    )
    transcript(
        """
        S: 220 mx.example.com ESMTP smarthost
        C: STARTTLS
        S: 502 5.5.1 Error: command not implemented
        """,
        FakeShell(settings(starttls_available=False)),
    )
    transcript(
        """
        S: 220 mx.example.com ESMTP smarthost
        C: STARTTLS
        S: 554 5.5.1 Error: TLS already active
        """,
        FakeShell(tls_active=True),
    )


def test_implicit_tls_does_not_offer_starttls():
    shell = FakeShell(tls_active=True)
    assert b"STARTTLS" not in shell.send(b"EHLO c\r\n")


def test_tls_required_refuses_mail_before_starttls():
    shell = transcript(
        """
        S: 220 mx.example.com ESMTP smarthost
        C: EHLO c
        S: 250-mx.example.com
        S: 250-PIPELINING
        S: 250-SIZE 10240000
        S: 250-STARTTLS
        S: 250-ENHANCEDSTATUSCODES
        S: 250-8BITMIME
        S: 250-DSN
        S: 250 SMTPUTF8
        C: MAIL FROM:<a@example.org>
        S: 530 5.7.0 Must issue a STARTTLS command first
        C: RCPT TO:<a@example.org>
        S: 530 5.7.0 Must issue a STARTTLS command first
        C: DATA
        S: 530 5.7.0 Must issue a STARTTLS command first
        C: VRFY x
        S: 530 5.7.0 Must issue a STARTTLS command first
        C: NOOP
        S: 250 2.0.0 Ok
        C: RSET
        S: 250 2.0.0 Ok
        C: STARTTLS
        S: 220 2.0.0 Ready to start TLS
        """,
        FakeShell(settings(tls_required=True)),
    )
    shell.conn.tls_established()
    transcript(
        """
        C: EHLO c
        S: 250-mx.example.com
        S: 250-PIPELINING
        S: 250-SIZE 10240000
        S: 250-ENHANCEDSTATUSCODES
        S: 250-8BITMIME
        S: 250-DSN
        S: 250 SMTPUTF8
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Ok
        """,
        shell,
    )


def test_mail_parameter_errors_are_answered_by_the_core():
    shell = transcript(
        EHLO
        + """
        C: MAIL FROM:<a@example.org> SIZE=20000000
        S: 552 5.3.4 Message size exceeds fixed limit
        C: MAIL FROM:<a@example.org> XFOO=1
        S: 555 5.5.4 Unsupported option: XFOO
        C: MAIL FROM:a@example.org
        S: 501 5.1.7 Bad sender address syntax
        C: MAIL TO:<a@example.org>
        S: 501 5.5.4 Syntax: MAIL FROM:<address>
        C: MAIL FROM:<j\u00f6rg@example.org>
        S: 553 5.6.7 Error: non-ASCII address requires SMTPUTF8
        C: MAIL FROM:<j\u00f6rg@example.org> SMTPUTF8
        S: 250 2.1.0 Ok
        C: RCPT TO:<b\u00fccher@example.com>
        S: 250 2.1.5 Ok
        """
    )
    assert not [e for e in shell.of_type(MailFrom) if not e.params.smtputf8]
    assert shell.of_type(RcptTo)[0].address.local == "b\u00fccher"


def test_postmaster_without_domain():
    shell = transcript(
        EHLO
        + """
        C: MAIL FROM:<>
        C: RCPT TO:<Postmaster>
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        """
    )
    assert shell.of_type(MailFrom)[0].address.is_null
    assert str(shell.of_type(RcptTo)[0].address) == "Postmaster"


def test_default_replies_can_be_replaced():
    def decide(event):
        if isinstance(event, Helo):
            return Reply(250, None, "mx.example.com hello")
        if isinstance(event, DataCommand):
            return Reply(354, None, "Go ahead")
        return None

    transcript(
        """
        S: 220 mx.example.com ESMTP smarthost
        C: HELO c
        S: 250 mx.example.com hello
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Ok
        C: RCPT TO:<b@example.com>
        S: 250 2.1.5 Ok
        C: DATA
        S: 354 Go ahead
        """,
        FakeShell(decide=decide),
    )


def test_accept_and_reject_check_their_replies():
    conn = ServerConnection(settings())
    conn.greet()
    conn.receive_data(b"EHLO c\r\n")
    assert isinstance(conn.next_event(), Helo)
    assert conn.next_event() is PAUSED
    with pytest.raises(ValueError):
        conn.accept(Reply(550, "5.0.0", "no"))
    with pytest.raises(ValueError):
        conn.reject(Reply(250, "2.0.0", "yes"))
    conn.accept()
    with pytest.raises(RuntimeError):
        conn.accept()
    assert conn.next_event() is NEED_DATA


def test_replies_to_a_pipelined_group_come_together():
    shell = FakeShell()
    shell.send(b"EHLO c\r\n")
    out = shell.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<bad>\r\nNOOP\r\n")
    assert out == b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n501 5.1.3 Bad recipient address syntax\r\n250 2.0.0 Ok\r\n"


def test_decisions_pause_the_core_but_input_is_kept():
    conn = ServerConnection(settings())
    conn.greet()
    conn.receive_data(b"EHLO c\r\n")
    conn.next_event()
    conn.accept()
    conn.receive_data(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    assert conn.next_event() is PAUSED
    conn.receive_data(b"RCPT TO:<c@example.com>\r\n")
    assert conn.next_event() is PAUSED
    conn.accept()
    assert isinstance(conn.next_event(), RcptTo)
    conn.accept()
    assert isinstance(conn.next_event(), RcptTo)
    conn.reject(Reply(450, "4.2.0", "try later"))
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send().endswith(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n450 4.2.0 try later\r\n")
    assert conn.error_count == 1


def test_quit_with_pending_input_after_it_is_final():
    shell = FakeShell(settings(forbid_unauth_pipelining=False))
    assert shell.send(b"QUIT\r\nNOOP\r\n") == b"221 2.0.0 Bye\r\n"
    assert shell.of_type(Quit) == [Quit()]
    assert shell.send(b"NOOP\r\n") == b""


def test_eof_in_data_loses_the_message_and_closes():
    shell = FakeShell()
    assert shell.send(b"EHLO c\r\n").startswith(b"250-")
    assert shell.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    assert shell.send(b"partial body\r\n") == b""
    lost = Reply(421, "4.4.2", "mx.example.com Error: lost connection")
    assert shell.send(b"") == lost.to_bytes()
    assert shell.events[-1] == Closing(lost, "eof", "DATA")
    assert not shell.messages and shell.conn.closed


def test_buffered_commands_run_before_eof():
    shell = FakeShell(settings(forbid_unauth_pipelining=False))
    shell.conn.receive_data(b"NOOP\r\nQUIT\r\n")
    shell.conn.receive_data(b"")
    assert shell.drain() == b"250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n"
    assert dict(shell.conn.counters) == {"noop": 1, "quit": 1}
    assert shell.events == [Quit()]


def test_refuse_instead_of_greeting():
    conn = ServerConnection(settings())
    conn.refuse(Reply(421, "4.7.0", "mx.example.com Service unavailable"))
    assert conn.data_to_send() == b"421 4.7.0 mx.example.com Service unavailable\r\n"
    assert conn.closed
    conn.receive_data(b"EHLO c\r\n")
    assert conn.next_event() is NEED_DATA


def test_bare_lf_commands():
    shell = FakeShell()
    assert shell.send(b"EHLO c\n").startswith(b"250-mx.example.com")
    shell = FakeShell(settings(bare_newline="reject"))
    assert shell.send(b"EHLO c\n") == b"550 5.5.2 Error: bare <LF> received\r\n"
    assert shell.conn.error_count == 1


# Every verb in every state: no exception escapes and the reply code is sane.

VERBS = [
    "EHLO c",
    "HELO c",
    "MAIL FROM:<a@example.org>",
    "RCPT TO:<b@example.com>",
    "DATA",
    "RSET",
    "NOOP",
    "HELP",
    "QUIT",
    "VRFY x",
    "EXPN x",
    "TURN",
    "ETRN x",
    "STARTTLS",
    "AUTH PLAIN",
    "BDAT 1",
    "XYZZY",
    "",
]
SETUP = {
    State.AWAIT_HELO: [],
    State.GREETED: [b"EHLO c\r\n"],
    State.MAIL: [b"EHLO c\r\n", b"MAIL FROM:<a@example.org>\r\n"],
    State.RCPT: [b"EHLO c\r\n", b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.com>\r\n"],
}
EXPECTED_CODES = {
    "EHLO c": {250},
    "HELO c": {250},
    "MAIL FROM:<a@example.org>": {250, 503},
    "RCPT TO:<b@example.com>": {250, 503},
    "DATA": {354, 503, 554},
    "RSET": {250},
    "NOOP": {250},
    "HELP": {214},
    "QUIT": {221},
    "VRFY x": {252},
    "EXPN x": {502},
    "TURN": {502},
    "ETRN x": {502},
    "STARTTLS": {220, 503},
    "AUTH PLAIN": {500},
    "BDAT 1": {500},
    "XYZZY": {500},
    "": {500},
}


@pytest.mark.parametrize("state", list(SETUP))
@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_in_every_state(state, verb):
    shell = FakeShell()
    for line in SETUP[state]:
        shell.send(line)
    assert shell.conn.state is state
    out = shell.send(verb.encode() + b"\r\n")
    code = int(out[:3])
    assert code in EXPECTED_CODES[verb]
    assert out.endswith(b"\r\n")
    if code >= 400:
        assert isinstance(shell.events[-1], ProtocolError)
    if code == 503 and verb.startswith("MAIL"):
        assert state in (State.AWAIT_HELO, State.MAIL, State.RCPT)
    if code == 250 and verb.startswith("RCPT"):
        assert state in (State.MAIL, State.RCPT)
    if code == 354:
        assert state is State.RCPT and shell.conn.state is State.DATA


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_after_starttls_is_discarded_until_the_handshake(verb):
    shell = FakeShell(settings(forbid_unauth_pipelining=False))
    assert shell.send(b"STARTTLS\r\n") == b"220 2.0.0 Ready to start TLS\r\n"
    assert shell.send(verb.encode() + b"\r\n") == b""
    assert shell.conn.discarded_after_starttls == len(verb) + 2
    assert not [e for e in shell.events if isinstance(e, DECISIONS)]
