"""CRAM-MD5 secrets that are not the password: HMAC-MD5's key-derived MD5 states.

RFC 2104: ``HMAC(K, m) = MD5((K ^ opad) || MD5((K ^ ipad) || m))``.  Both key blocks are one
64-byte MD5 block, so the hash states after them (the "inner" and "outer" contexts, 16 bytes
each) are all a verifier needs: it continues MD5 from those states.  This is what Dovecot's
``CRAM-MD5`` password scheme stores (``{CRAM-MD5}`` + hex of outer then inner state).  The states are not the password, but they are
password-equivalent *for CRAM-MD5* (whoever has them can answer any challenge), so the user
database keeps them as carefully as hashes (mode 0600) and only for users who ask.

``hashlib`` cannot start from a given state, so MD5's compression function (RFC 1321 §3.4)
is written out here; it runs for two blocks per AUTH.  Pure code, no I/O.
"""

from __future__ import annotations

import hmac
import math
import struct
from dataclasses import dataclass, field

_IV = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_T = tuple(int(abs(math.sin(i + 1)) * 2**32) & 0xFFFFFFFF for i in range(64))  # RFC 1321 §3.4
_S = (7, 12, 17, 22) * 4 + (5, 9, 14, 20) * 4 + (4, 11, 16, 23) * 4 + (6, 10, 15, 21) * 4
_M = 0xFFFFFFFF


def _compress(state: tuple[int, int, int, int], block: bytes) -> tuple[int, int, int, int]:
    """One 64-byte block through MD5's four rounds (RFC 1321 §3.4)."""
    x = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | (~d & _M)), (7 * i) % 16
        f = (f + a + _T[i] + x[g]) & _M
        a, d, c = d, c, b
        b = (b + ((f << _S[i]) | (f >> (32 - _S[i])))) & _M
    return tuple((s + v) & _M for s, v in zip(state, (a, b, c, d)))  # type: ignore[return-value]


def _md5_from(state: tuple[int, int, int, int], data: bytes, prefix_length: int) -> bytes:
    """MD5 of (the ``prefix_length`` bytes that led to ``state``) + ``data``."""
    length = prefix_length + len(data)
    data += b"\x80" + b"\0" * ((55 - length) % 64) + struct.pack("<Q", (8 * length) & 0xFFFFFFFFFFFFFFFF)
    for i in range(0, len(data), 64):
        state = _compress(state, data[i : i + 64])
    return struct.pack("<4I", *state)


@dataclass(frozen=True, slots=True)
class CramSecret:
    """HMAC-MD5's inner and outer MD5 states for one key (16 bytes each, little-endian words)."""

    inner: bytes = field(repr=False)
    outer: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.inner) != 16 or len(self.outer) != 16:
            raise ValueError("CRAM-MD5 states are 16 bytes each")

    @classmethod
    def from_password(cls, password: str) -> CramSecret:
        key = password.encode("utf-8")
        if len(key) > 64:  # RFC 2104 §2
            key = _md5_from(_IV, key, 0)
        key = key.ljust(64, b"\0")
        inner = _compress(_IV, bytes(k ^ 0x36 for k in key))
        outer = _compress(_IV, bytes(k ^ 0x5C for k in key))
        return cls(struct.pack("<4I", *inner), struct.pack("<4I", *outer))

    def hexdigest(self, message: bytes) -> str:
        """``hex(HMAC-MD5(key, message))`` from the states alone."""
        inner = _md5_from(struct.unpack("<4I", self.inner), message, 64)
        return _md5_from(struct.unpack("<4I", self.outer), inner, 64).hex()

    def matches(self, message: bytes, digest: str) -> bool:
        return hmac.compare_digest(self.hexdigest(message), digest)
