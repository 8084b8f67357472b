"""Dovecot's auth protocol codec: both sides talking to each other in memory, and hostile input."""

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smarthost.authd.dovecot import (
    MAX_LINE,
    AuthBegin,
    AuthChallenge,
    AuthContinue,
    AuthFail,
    AuthInvalid,
    AuthOk,
    DovecotClient,
    DovecotServer,
    HandshakeDone,
    Mechanism,
    ProtocolError,
    escape,
    unescape,
)

MECHS = [Mechanism("PLAIN", frozenset({"plaintext"})), Mechanism("LOGIN", frozenset({"plaintext"}))]


def server() -> DovecotServer:
    return DovecotServer(MECHS, spid=42, cuid=7, cookie="c0ffee")


def test_server_greeting_lines():
    assert server().greeting().decode().split("\n") == [
        "VERSION\t1\t2", "MECH\tPLAIN\tplaintext", "MECH\tLOGIN\tplaintext",
        "SPID\t42", "CUID\t7", "COOKIE\tc0ffee", "DONE", "",
    ]


def test_a_whole_exchange_between_both_sides():
    s, c = server(), DovecotClient(pid=99)
    assert s.feed(c.hello()) == []
    assert c.feed(s.greeting()) == [HandshakeDone(MECHS)]
    request = c.auth("1", "PLAIN", b"\0alice\0secret", secured=True, remote_ip="192.0.2.1")
    assert request.startswith(b"AUTH\t1\tPLAIN\tservice=smtp\tnologin\tsecured\trip=192.0.2.1\tresp=")
    [begin] = s.feed(request)
    assert begin == AuthBegin("1", "PLAIN", b"\0alice\0secret", {"service": "smtp", "nologin": "", "secured": "", "rip": "192.0.2.1"})
    assert "secret" not in repr(begin)
    assert c.feed(s.ok("1", "alice")) == [AuthOk("1", "alice")]


def test_challenge_and_continue():
    s, c = server(), DovecotClient(pid=99)
    s.feed(c.hello())
    c.feed(s.greeting())
    [begin] = s.feed(c.auth("2", "LOGIN", None))
    assert begin.initial is None
    assert c.feed(s.cont("2", b"Username:")) == [AuthChallenge("2", b"Username:")]
    assert s.feed(c.cont("2", b"alice")) == [AuthContinue("2", b"alice")]


def test_fail_with_temp_is_temporary():
    c = DovecotClient(pid=1)
    c.feed(server().greeting())
    assert c.feed(DovecotServer.fail("3", "backend down", temporary=True))[0].temporary
    assert c.feed(b"FAIL\t4\tcode=temp_fail\n") == [AuthFail("4", "", True, {"code": "temp_fail"})]
    assert c.feed(b"FAIL\t5\treason=nope\n") == [AuthFail("5", "nope", False, {"reason": "nope"})]


def test_pipelined_handshake_and_unknown_lines_from_a_real_server():
    c = DovecotClient(pid=1)
    events = c.feed(b"VERSION\t1\t3\nMECH\tPLAIN\tplaintext\tfoo\nMECH\tSCRAM-SHA-256\tmutual-auth\nSPID\t1\nCUID\t2\n"
                    b"COOKIE\tabc\nNEWTHING\tx\nDONE\nOK\t1\tuser=bob\n")
    assert events == [HandshakeDone([Mechanism("PLAIN", frozenset({"plaintext"})),
                                     Mechanism("SCRAM-SHA-256", frozenset({"mutual-auth"}))]),
                      AuthOk("1", "bob")]


@pytest.mark.parametrize("line", [b"VERSION\t2\t0\n", b"HELLO\n"])
def test_the_server_refuses_another_major_version_or_no_version(line):
    with pytest.raises(ProtocolError):
        server().feed(line)


def test_the_client_refuses_another_major_version():
    with pytest.raises(ProtocolError, match="version"):
        DovecotClient(pid=1).feed(b"VERSION\t2\t0\n")


def test_bad_base64_fails_the_request_not_the_connection():
    s = server()
    s.feed(b"VERSION\t1\t2\n")
    assert s.feed(b"AUTH\t1\tPLAIN\tservice=smtp\tresp=!!!\n") == [AuthInvalid("1", "invalid base64 data")]
    assert s.feed(b"CONT\t1\t%%%\n") == [AuthInvalid("1", "invalid base64 data")]


def test_an_empty_initial_response_is_kept_apart_from_none():
    s = server()
    s.feed(b"VERSION\t1\t2\n")
    [begin] = s.feed(b"AUTH\t1\tPLAIN\tservice=smtp\tresp=\n")
    assert begin.initial == b""


@pytest.mark.parametrize("line", [b"AUTH\tx\tPLAIN\n", b"AUTH\t1\n", b"CONT\t1\n", b"BOGUS\n"])
def test_malformed_requests_are_protocol_errors(line):
    s = server()
    s.feed(b"VERSION\t1\t2\n")
    with pytest.raises(ProtocolError):
        s.feed(line)


def test_an_endless_line_is_refused_while_it_grows():
    s = server()
    with pytest.raises(ProtocolError, match="line longer"):
        s.feed(b"A" * (MAX_LINE + 1))


def test_ok_without_user_is_an_error():
    c = DovecotClient(pid=1)
    c.feed(server().greeting())
    with pytest.raises(ProtocolError):
        c.feed(b"OK\t1\n")


def test_user_names_are_escaped():
    c = DovecotClient(pid=1)
    c.feed(server().greeting())
    assert DovecotServer.ok("1", "a\tb") == b"OK\t1\tuser=a\x01tb\n"
    assert c.feed(DovecotServer.ok("1", "a\tb\n")) == [AuthOk("1", "a\tb\n")]


@given(st.text())
def test_escape_round_trip(value):
    escaped = escape(value)
    assert "\t" not in escaped and "\n" not in escaped
    assert unescape(escaped) == value


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_garbage_never_crashes_either_side(chunks):
    for side in (server(), DovecotClient(pid=1)):
        try:
            for chunk in chunks:
                side.feed(chunk)
        except ProtocolError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=500))
def test_any_initial_response_arrives_intact(data):
    s = server()
    s.feed(b"VERSION\t1\t2\n")
    [begin] = s.feed(b"AUTH\t9\tPLAIN\tresp=" + base64.b64encode(data) + b"\n")
    assert begin.initial == data
