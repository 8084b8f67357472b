"""The client's message encoding: dot-stuffing, CRLF, long-line folding; round trip through the server's framer."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smarthost.smtp.client import encode_body
from smarthost.smtp.data import DataFramer, unstuff


def received(wire: bytes) -> bytes:
    """What our server stores when a client sends ``wire`` after the 354."""
    framer = DataFramer(0)
    framer.feed(wire)
    end = framer.find_end()
    assert end is not None and end.rest == b""
    body = unstuff(end.raw)
    assert body is not None
    return body


@pytest.mark.parametrize(
    "body, wire",
    [
        (b"", b".\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b"no final newline", b"no final newline\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"..two\r\n", b"...two\r\n.\r\n"),
        # Bare LF and bare CR become line ends: the receiver sees the lines we mean.
        (b"a\nb\rc\r\n", b"a\r\nb\r\nc\r\n.\r\n"),
        (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
    ],
)
def test_encoding(body, wire):
    assert encode_body(body) == wire


def test_long_lines_are_folded_like_postfix():
    line = b"x" * 998
    assert encode_body(line + b"\r\n") == line + b"\r\n.\r\n"  # exactly the limit: unchanged
    wire = encode_body(b"y" * 2500 + b"\r\n")
    # 998 octets, then CRLF SPACE and up to 997 octets per continuation.
    assert wire == b"y" * 998 + b"\r\n " + b"y" * 997 + b"\r\n " + b"y" * 505 + b"\r\n.\r\n"
    assert received(wire).replace(b"\r\n ", b"") == b"y" * 2500 + b"\r\n"


def test_folded_line_starting_with_a_dot_keeps_its_dot_through_the_round_trip():
    wire = encode_body(b"." + b"z" * 1200 + b"\r\n")
    assert wire.startswith(b".." + b"z" * 997 + b"\r\n ")
    assert received(wire) == b"." + b"z" * 997 + b"\r\n " + b"z" * 203 + b"\r\n"


def test_line_length_limit_zero_never_folds():
    assert encode_body(b"w" * 5000, line_length_limit=0) == b"w" * 5000 + b"\r\n.\r\n"


def test_smaller_limit():
    assert encode_body(b"abcdefgh\r\n", line_length_limit=3) == b"abc\r\n de\r\n fg\r\n h\r\n.\r\n"


CRLF_BODIES = st.lists(
    st.lists(st.sampled_from([b"a", b".", b" ", b"\xc3\xa9", b"\x00", b"\t"]), max_size=30).map(b"".join), max_size=12
).map(lambda lines: b"".join(line + b"\r\n" for line in lines))


@given(CRLF_BODIES)
def test_round_trip_through_the_server_is_exact(body):
    assert received(encode_body(body)) == body


@given(st.binary(max_size=3000), st.sampled_from([0, 2, 10, 998]))
def test_any_bytes_give_a_well_formed_wire_form(body, limit):
    wire = encode_body(body, line_length_limit=limit)
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    assert wire.count(b"\r\n.\r\n") <= 1 and wire.find(b"\r\n.\r\n") in (-1, len(wire) - 5)
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", wire) is None  # no bare CR or LF on the wire
    if limit:
        for line in wire.split(b"\r\n"):
            assert len(line) <= limit + 1  # + the stuffed dot, as in Postfix
    if limit == 0:  # without folding our server stores exactly the body, CRLF-normalized
        normalized = re.sub(rb"\r\n|\r|\n", b"\r\n", body)
        if normalized and not normalized.endswith(b"\r\n"):
            normalized += b"\r\n"
        assert received(wire) == normalized
