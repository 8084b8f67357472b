"""The saslauthd wire codec: round trips, bounds, garbage, and purity (no I/O imports)."""

import ast
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import smarthost.authd
from smarthost.authd.saslauthd import (
    MAX_LOGIN,
    MAX_PASSWORD,
    ProtocolError,
    Request,
    RequestDecoder,
    Response,
    ResponseDecoder,
    encode_request,
    encode_response,
)

FORBIDDEN = {"asyncio", "socket", "ssl", "os", "time", "logging", "selectors", "threading", "subprocess",
             "io", "pathlib", "shutil", "signal", "sys", "uvloop", "sqlite3", "random", "tempfile"}


@pytest.mark.parametrize("module", ["saslauthd.py", "dovecot.py"])
def test_wire_codecs_import_no_io(module):
    tree = ast.parse((Path(smarthost.authd.__file__).parent / module).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module}
    assert names & FORBIDDEN == set()


def counted(*fields: bytes) -> bytes:
    return b"".join(struct.pack(">H", len(f)) + f for f in fields)


def test_request_bytes_are_four_counted_strings():
    assert encode_request("alice", "secret", "smtp", "") == counted(b"alice", b"secret", b"smtp", b"")


def test_request_decodes_when_fed_one_byte_at_a_time():
    decoder = RequestDecoder()
    data = counted(b"alice", "s\u00e9cret".encode(), b"smtp", b"example.test")
    results = [decoder.feed(data[i : i + 1]) for i in range(len(data))]
    assert results[:-1] == [None] * (len(data) - 1)
    assert results[-1] == Request("alice", "s\u00e9cret", "smtp", "example.test")


def test_the_password_is_not_in_the_repr():
    request = RequestDecoder().feed(counted(b"alice", b"hunter2", b"smtp", b""))
    assert "hunter2" not in repr(request)
    assert "alice" in repr(request)


def test_an_oversized_count_is_refused_before_the_field_arrives():
    decoder = RequestDecoder()
    decoder.feed(counted(b"alice"))
    with pytest.raises(ProtocolError, match=f"password longer than {MAX_PASSWORD} bytes"):
        decoder.feed(struct.pack(">H", MAX_PASSWORD + 1))


def test_fields_at_their_bounds_are_accepted():
    data = counted(b"a" * MAX_LOGIN, b"p" * MAX_PASSWORD, b"s" * 256, b"r" * 256)
    assert RequestDecoder().feed(data).login == "a" * MAX_LOGIN


@pytest.mark.parametrize(
    "fields, message",
    [
        ((b"al\0ice", b"pw", b"smtp", b""), "login contains a NUL byte"),
        ((b"alice", b"p\xffw", b"smtp", b""), "password is not UTF-8"),
        ((b"alice", b"pw\0", b"smtp", b""), "password contains a NUL byte"),
    ],
)
def test_bad_fields_are_protocol_errors_that_do_not_quote_them(fields, message):
    with pytest.raises(ProtocolError) as info:
        RequestDecoder().feed(counted(*fields))
    assert str(info.value) == message


def test_data_after_the_request_is_an_error():
    with pytest.raises(ProtocolError, match="data after the request"):
        RequestDecoder().feed(counted(b"a", b"b", b"c", b"d") + b"x")


def test_encode_request_refuses_too_long_fields_naming_the_field_only():
    with pytest.raises(ValueError) as info:
        encode_request("alice", "x" * (MAX_PASSWORD + 1), "smtp", "")
    assert str(info.value) == f"password longer than {MAX_PASSWORD} bytes"


@pytest.mark.parametrize(
    "ok, text, wire",
    [(True, "", b"\x00\x02OK"), (False, "authentication failed", b"\x00\x18NO authentication failed"),
     (False, "bad\r\nline", b"\x00\x0cNO bad??line")],
)
def test_responses(ok, text, wire):
    assert encode_response(ok, text) == wire
    assert ResponseDecoder().feed(wire) == Response(ok, text.replace("\r", "?").replace("\n", "?"))


def test_real_saslauthd_replies_decode():
    assert ResponseDecoder().feed(b"\x00\x13NO Invalid username") == Response(False, "Invalid username")


@pytest.mark.parametrize("wire", [b"\x00\x04OKAY", b"\x00\x03YES", b"\x00\x00", b"\xff\xffOK"])
def test_garbled_responses_are_protocol_errors(wire):
    with pytest.raises(ProtocolError):
        ResponseDecoder().feed(wire)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=600), max_size=8))
def test_garbage_never_crashes_the_request_decoder(chunks):
    decoder = RequestDecoder()
    try:
        for chunk in chunks:
            result = decoder.feed(chunk)
            assert result is None or isinstance(result, Request)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_garbage_never_crashes_the_response_decoder(data):
    try:
        result = ResponseDecoder().feed(data)
    except ProtocolError:
        return
    assert result is None or isinstance(result, Response)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60), st.text(max_size=200), st.text(max_size=20), st.text(max_size=20))
def test_round_trip(login, password, service, realm):
    try:
        data = encode_request(login, password, service, realm)
    except ValueError:
        assert "\0" in login + password + service + realm
        return
    assert RequestDecoder().feed(data) == Request(login, password, service, realm)
