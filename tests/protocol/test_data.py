"""DATA framing (RFC 5321 §4.1.1.4, §4.5.2): end marker, transparency, bare line endings, size."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smarthost.smtp.data import DataFramer, has_bare_newline, unstuff


def frame(stream: bytes, max_size: int = 0, chunk: int = 0):
    framer = DataFramer(max_size)
    if not chunk:
        framer.feed(stream)
        return framer.find_end()
    for i in range(0, len(stream), chunk):
        framer.feed(stream[i : i + chunk])
        end = framer.find_end()
        if end is not None:
            framer = None
            return end
    return None


def test_end_marker_and_rest():
    end = frame(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert end.raw == b"Subject: x\r\n\r\nbody\r\n"
    assert bytes(end.rest) == b"QUIT\r\n"
    assert end.size == len(b"Subject: x\r\n\r\nbody\r\n")


def test_dot_line_right_after_354_is_the_end():
    end = frame(b".\r\nMAIL FROM:<a@b>\r\n")
    assert end.raw == b"" and bytes(end.rest) == b"MAIL FROM:<a@b>\r\n"


@pytest.mark.parametrize(
    "stream",
    [
        b"a\n.\nMAIL FROM:<x@y>\n",
        b"a\n.\r\nMAIL FROM:<x@y>\r\n",
        b"a\r.\rMAIL FROM:<x@y>\r",
        b"a\r\n\x00.\r\nMAIL FROM:<x@y>\r\n",
        b"a\r\n.\nMAIL FROM:<x@y>\r\n",
        b"a\r\n .\r\n",
        b"a\r\n.\r",
    ],
)
def test_only_crlf_dot_crlf_ends_the_message(stream):
    assert frame(stream) is None
    assert frame(stream, chunk=1) is None


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 7])
def test_marker_split_across_chunks(chunk):
    end = frame(b"line one\r\nline two\r\n.\r\nNOOP\r\n", chunk=chunk)
    assert end.raw == b"line one\r\nline two\r\n"
    assert bytes(end.rest).startswith(b"NOOP"[: len(end.rest)])


def test_unstuff_transparency():
    # RFC 5321 §4.5.2: the first "." of a line starting with "." is removed.
    assert unstuff(b"..hidden\r\nok\r\n..\r\n.x\r\n") == b".hidden\r\nok\r\n.\r\nx\r\n"
    assert unstuff(b"no dots\r\n") == b"no dots\r\n"


def test_normalize_bare_line_endings():
    assert unstuff(b"a\nb\rc\r\n") == b"a\r\nb\r\nc\r\n"
    assert unstuff(b"a\r\r\n") == b"a\r\n\r\n"
    # A dot line after a bare LF is a line of its own, so it is unstuffed too.
    assert unstuff(b"a\n..b\r\n") == b"a\r\n.b\r\n"


def test_reject_and_allow_modes():
    assert unstuff(b"a\nb\r\n", "reject") is None
    assert unstuff(b"a\rb\r\n", "reject") is None
    assert unstuff(b"a\r\nb\r\n", "reject") == b"a\r\nb\r\n"
    assert unstuff(b"a\nb\r\n", "allow") == b"a\nb\r\n"


def test_long_lines_are_kept():
    line = b"x" * 5000 + b"\r\n"
    assert unstuff(frame(line + b".\r\n").raw) == line


def test_size_limit_bounds_memory_and_keeps_the_end():
    framer = DataFramer(max_size=1000)
    for _ in range(1000):
        framer.feed(b"y" * 1023 + b"\n")
        assert framer.find_end() is None
        assert framer.buffered <= 1000 + 1024 + 8
    framer.feed(b"\r\n.\r\nRSET\r\n")
    end = framer.find_end()
    assert end.raw is None and end.size > 1000
    assert bytes(end.rest) == b"RSET\r\n"


def test_size_exactly_at_limit_is_accepted():
    body = b"z" * 98 + b"\r\n"  # 100 octets
    end = frame(body + b".\r\n", max_size=100, chunk=3)
    assert end.raw == body and end.size == 100
    assert frame(b"z" * 99 + b"\r\n.\r\n", max_size=100, chunk=3).raw is None


endings = st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r"])
pieces = st.lists(st.one_of(st.binary(max_size=6), endings, st.just(b".")), max_size=30)


@given(pieces)
def test_normalized_output_never_has_bare_cr_or_lf(parts):
    raw = b"".join(parts) + b"\r\n"
    assert not has_bare_newline(unstuff(raw))


_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")  # the definition: a CR or LF outside a CRLF pair


@given(pieces)
def test_bare_newline_means_a_cr_or_lf_outside_a_crlf_pair(parts):
    raw = b"".join(parts)
    assert has_bare_newline(raw) == bool(_BARE.search(raw))
    assert has_bare_newline(b"a\rb\n") and has_bare_newline(b"\n\r") and not has_bare_newline(b"a\r\n\r\n")


@given(pieces, st.integers(min_value=1, max_value=9))
def test_chunking_does_not_change_framing(parts, chunk):
    stream = b"".join(parts) + b"\r\n.\r\n"
    whole, split = frame(stream), frame(stream, chunk=chunk)
    assert (whole.raw, whole.size) == (split.raw, split.size)
