"""The saslauthd wire protocol, sans I/O: what Cyrus SASL's ``pwcheck_method: saslauthd`` and
``testsaslauthd`` speak on the unix socket ``SOCKDIR/mux``.

One exchange per connection. The client sends four counted strings, each a 2-byte big-endian
length then that many bytes: login, password, service, realm. The daemon answers one counted
string, ``OK`` or ``NO``, optionally followed by a space and a reason, then closes.

Every field is bounded (Cyrus's own daemon uses similar limits): a length above the bound is a
protocol error before any byte of the field is buffered. Errors never quote field contents, so a
password can not end up in a log through an exception.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

MAX_LOGIN = 256
MAX_PASSWORD = 1024
MAX_SERVICE = 256
MAX_REALM = 256
MAX_RESPONSE = 1024

_FIELDS = (("login", MAX_LOGIN), ("password", MAX_PASSWORD), ("service", MAX_SERVICE), ("realm", MAX_REALM))
_COUNT = struct.Struct(">H")


class ProtocolError(ValueError):
    """The peer sent something that is not the saslauthd protocol (the message names no secret)."""


@dataclass(frozen=True)
class Request:
    """One password check; the password is left out of ``repr``."""

    login: str
    password: str = field(repr=False)
    service: str
    realm: str


@dataclass(frozen=True)
class Response:
    ok: bool
    text: str = ""


def _counted(data: bytes) -> bytes:
    return _COUNT.pack(len(data)) + data


def encode_request(login: str, password: str, service: str, realm: str) -> bytes:
    """The client's four counted strings; ``ValueError`` (naming the field only) if one is too long
    or contains NUL, which a C daemon would silently cut at."""
    out = []
    for (name, limit), value in zip(_FIELDS, (login, password, service, realm)):
        raw = value.encode("utf-8")
        if len(raw) > limit:
            raise ValueError(f"{name} longer than {limit} bytes")
        if b"\0" in raw:
            raise ValueError(f"{name} contains a NUL byte")
        out.append(_counted(raw))
    return b"".join(out)


class RequestDecoder:
    """Collects one request from bytes as they arrive: ``feed(data)`` returns the ``Request`` once
    all four fields are in, else ``None``; ``ProtocolError`` for an oversized, non-UTF-8 or
    NUL-carrying field, or for bytes after the request. Buffers at most one field."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._values: list[str] = []
        self._want: int | None = None  # length of the field being read, once its count is in
        self._done = False

    @property
    def started(self) -> bool:
        """Some of a request has arrived."""
        return bool(self._buffer or self._values or self._want is not None)

    def feed(self, data: bytes) -> Request | None:
        if self._done:
            if data:
                raise ProtocolError("data after the request")
            return None
        self._buffer += data
        while len(self._values) < 4:
            name, limit = _FIELDS[len(self._values)]
            if self._want is None:
                if len(self._buffer) < 2:
                    return None
                (self._want,) = _COUNT.unpack_from(self._buffer)
                del self._buffer[:2]
                if self._want > limit:
                    raise ProtocolError(f"{name} longer than {limit} bytes")
            if len(self._buffer) < self._want:
                return None
            raw = bytes(self._buffer[: self._want])
            del self._buffer[: self._want]
            self._want = None
            if b"\0" in raw:
                raise ProtocolError(f"{name} contains a NUL byte")
            try:
                self._values.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise ProtocolError(f"{name} is not UTF-8") from None
        self._done = True
        if self._buffer:
            raise ProtocolError("data after the request")
        login, password, service, realm = self._values
        self._values.clear()
        return Request(login, password, service, realm)


def encode_response(ok: bool, text: str = "") -> bytes:
    """``OK[ text]`` or ``NO[ text]`` as one counted string; the text is reduced to printable
    ASCII and cut to fit ``MAX_RESPONSE``."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    body = (b"OK" if ok else b"NO") + (b" " + clean.encode("ascii") if clean else b"")
    return _counted(body[:MAX_RESPONSE])


class ResponseDecoder:
    """The client side: ``feed(data)`` returns the ``Response`` once complete, else ``None``;
    ``ProtocolError`` for an oversized reply or one that is neither ``OK`` nor ``NO``."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Response | None:
        self._buffer += data
        if len(self._buffer) < 2:
            return None
        (length,) = _COUNT.unpack_from(self._buffer)
        if length > MAX_RESPONSE:
            raise ProtocolError(f"reply longer than {MAX_RESPONSE} bytes")
        if len(self._buffer) < 2 + length:
            return None
        body = bytes(self._buffer[2 : 2 + length])
        verdict, _, text = body.partition(b" ")
        if verdict not in (b"OK", b"NO"):
            raise ProtocolError("reply is neither OK nor NO")
        return Response(verdict == b"OK", text.decode("utf-8", "replace"))
