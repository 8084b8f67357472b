"""Hostile and broken servers against the pure SMTP client: the mail is deferred, never lost or sent wrongly."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client_transcript import FakePlain, connect, session
from smarthost.smtp.client import (
    ClientSettings,
    Closed,
    EhloDone,
    MessageResult,
    ProtocolFailure,
    RecipientResult,
    SenderResult,
    State,
    Status,
    TLSReady,
    TransactionDone,
)
from smarthost.smtp.replies import Reply


def pipelined_transaction(wire):
    c = wire.conn
    c.mail("alice@example.org")
    c.rcpt("bob@example.com")
    c.rcpt("carol@example.com")
    c.data()
    c.send_message(b"hello\r\n")
    assert c.data_to_send().count(b"\r\n") == 4


def deferred_outcomes(wire):
    (done,) = wire.of_type(TransactionDone)
    assert all(o.status is Status.DEFERRED for o in done.outcomes)
    return done.outcomes


def test_response_injected_after_the_starttls_220_is_discarded():
    wire = session()
    conn = wire.conn
    conn.starttls()
    assert conn.data_to_send() == b"STARTTLS\r\n"
    injected = b"250-mx.example.com\r\n250 AUTH PLAIN\r\n"
    events = wire.feed(b"220 2.0.0 Ready to start TLS\r\n" + injected)
    assert events == [TLSReady()]
    assert conn.discarded_after_starttls == len(injected)
    # More plaintext before the handshake finishes is thrown away too.
    wire.feed(b"235 2.7.0 ok\r\n")
    assert conn.discarded_after_starttls == len(injected) + 14
    conn.tls_established()
    conn.ehlo("client.example.org")
    assert conn.data_to_send() == b"EHLO client.example.org\r\n"
    assert wire.of_type(EhloDone) == []  # the injected lines did not answer the new EHLO
    events = wire.feed(b"250-mx.example.com\r\n250 SIZE 100\r\n")
    assert events[0].capabilities == {"SIZE": "100"}  # no AUTH: what was injected is forgotten


def test_endless_multiline_reply_is_a_protocol_failure():
    wire = session()
    pipelined_transaction(wire)
    wire.feed(b"250-more\r\n" * 1000)
    (failure,) = wire.of_type(ProtocolFailure)
    assert failure.reason == "reply has too many lines"
    deferred_outcomes(wire)
    assert isinstance(wire.events[-1], Closed) and wire.conn.state is State.CLOSED


def test_one_megabyte_reply_line_is_refused_without_buffering_it_all():
    wire = session()
    pipelined_transaction(wire)
    chunk = b"2" * 65536
    for _ in range(16):
        wire.conn.receive_data(chunk)
    wire.drain()
    assert [e.reason for e in wire.of_type(ProtocolFailure)] == ["reply line too long"]
    deferred_outcomes(wire)
    assert wire.conn.state is State.CLOSED


@pytest.mark.parametrize(
    "line",
    [b"600 too high", b"199 too low", b"abc hello", b"25 short", b"2500 four", b"250x", b"", b" 250 ok", b"250_ok"],
)
def test_invalid_reply_codes_defer_the_mail(line):
    wire = session()
    pipelined_transaction(wire)
    wire.feed(line + b"\r\n")
    assert wire.of_type(ProtocolFailure)
    outcomes = deferred_outcomes(wire)
    assert outcomes[0].enhanced == "4.5.0"


def test_code_changing_inside_a_multiline_reply():
    wire = session()
    pipelined_transaction(wire)
    wire.feed(b"250-ok\r\n550 no\r\n")
    assert wire.of_type(ProtocolFailure)[0].reason == "reply code changed inside a multi-line reply"
    deferred_outcomes(wire)


def test_garbage_instead_of_a_greeting():
    wire = connect()
    wire.feed(b"HTTP/1.1 400 Bad Request\r\n")
    assert isinstance(wire.events[0], ProtocolFailure) and isinstance(wire.events[-1], Closed)
    assert "HTTP/1.1" in wire.events[0].reason


def test_unsolicited_reply_is_a_protocol_failure():
    wire = session()
    wire.feed(b"250 surprise\r\n")
    assert isinstance(wire.events[0], ProtocolFailure)
    assert wire.conn.state is State.CLOSED


def test_connection_lost_mid_transaction_defers_everyone():
    wire = session()
    pipelined_transaction(wire)
    wire.feed(b"250 ok\r\n550 5.1.1 unknown\r\n")
    wire.feed(b"")
    (done,) = wire.of_type(TransactionDone)
    # A definite answer stays; the rest is deferred.
    assert [o.status for o in done.outcomes] == [Status.BOUNCED, Status.DEFERRED]
    assert done.outcomes[1].text == "lost connection with the server"
    assert isinstance(wire.events[-1], Closed)


def test_connection_lost_after_the_final_dot_defers_it_is_delivered_at_least_once():
    wire = session()
    pipelined_transaction(wire)
    wire.feed(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    assert wire.conn.data_to_send() == b"hello\r\n.\r\n"
    wire.feed(b"")
    assert [o.status for o in deferred_outcomes(wire)] == [Status.DEFERRED, Status.DEFERRED]


def test_421_in_the_middle_of_a_pipelined_group_closes_and_defers():
    wire = session()
    pipelined_transaction(wire)
    wire.feed(b"250 ok\r\n421 4.3.2 Service shutting down\r\n")
    outcomes = deferred_outcomes(wire)
    assert [o.text for o in outcomes] == ["421 4.3.2 Service shutting down"] * 2
    assert wire.events[-1] == Closed(Reply(421, "4.3.2", "Service shutting down"))
    assert wire.conn.data_to_send() == b""


def test_control_characters_and_bad_utf8_in_replies_are_made_harmless():
    wire = session()
    pipelined_transaction(wire)
    wire.feed(b"250 ok\x1b[31m\xff\xfe\r\n")
    (sender,) = wire.of_type(SenderResult)
    assert sender.reply.text == "ok?[31m\ufffd\ufffd"


def test_enhanced_code_of_another_class_is_just_text():
    wire = session()
    pipelined_transaction(wire)
    wire.feed(b"550 2.0.0 confused\r\n")
    (sender,) = wire.of_type(SenderResult)
    assert sender.reply.enhanced is None and sender.reply.text == "2.0.0 confused"


def test_replies_split_across_segments_byte_by_byte():
    wire = session()
    pipelined_transaction(wire)
    for byte in b"250-2.1.0 one\r\n250 2.1.0 two\r\n250 ok\n550 no\r\n":
        wire.conn.receive_data(bytes([byte]))
    wire.drain()
    assert wire.of_type(SenderResult)[0].reply == Reply(250, "2.1.0", ("one", "two"))
    assert [e.reply.code for e in wire.of_type(RecipientResult)] == [250, 550]


def test_eof_during_the_tls_handshake():
    wire = session()
    wire.conn.starttls()
    wire.feed(b"220 go\r\n")
    wire.feed(b"")
    assert isinstance(wire.events[-1], Closed)


def test_a_server_that_keeps_challenging_after_cancel():
    wire = session(tls_active=True)
    wire.conn.auth(FakePlain("u", "p", initial=False), "PLAIN")
    wire.conn.data_to_send()
    wire.feed(b"334 !!!\r\n")
    assert wire.conn.data_to_send() == b"*\r\n"
    wire.feed(b"334 \r\n")
    assert isinstance(wire.events[0], ProtocolFailure)
    assert wire.conn.data_to_send() == b""


REPLY_LINES = st.sampled_from(
    [b"250 ok", b"250-ok", b"354 go", b"550 5.1.1 no", b"450 later", b"421 bye", b"221 bye", b"334 x", b"junk", b""]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(REPLY_LINES, max_size=12), st.integers(min_value=1, max_value=7))
def test_random_servers_never_crash_the_client_and_sent_means_a_2xx_to_the_message(lines, chunk):
    wire = session("S: 250-mx.example.com\nS: 250 PIPELINING\n", settings=ClientSettings(max_reply_lines=5))
    pipelined_transaction(wire)
    data = b"".join(line + b"\r\n" for line in lines)
    for i in range(0, len(data), chunk):
        wire.conn.receive_data(data[i : i + chunk])
        wire.conn.data_to_send()
    wire.conn.receive_data(b"")
    wire.drain()
    (done,) = wire.of_type(TransactionDone)
    assert len(done.outcomes) == 2
    final = wire.of_type(MessageResult)
    for outcome in done.outcomes:
        if outcome.status is Status.SENT:
            assert final and 200 <= final[0].reply.code <= 299
    assert isinstance(wire.events[-1], Closed)


def test_a_refused_reset_defers_the_next_transaction_even_with_a_5xx():
    wire = session()
    c = wire.conn
    c.mail("a@example.org")
    c.data()  # no recipients: the transaction ends, the server may still hold the MAIL
    wire.feed(b"250 ok\r\n")
    c.data_to_send()
    c.mail("a@example.org")
    c.rcpt("b@example.com")
    c.data()
    assert c.data_to_send().startswith(b"RSET\r\nMAIL FROM:<a@example.org>\r\n")
    wire.feed(b"554 5.5.1 no reset for you\r\n")
    outcomes = wire.of_type(TransactionDone)[-1].outcomes
    assert [o.status for o in outcomes] == [Status.DEFERRED]
    assert isinstance(wire.events[-1], Closed)
