"""The auth daemon's optional credential cache (``authd -c``, lifetime ``-t``, like saslauthd's).

Only successful checks are remembered, for ``ttl`` seconds. The key is an HMAC-SHA256, under a
random per-process secret, of the length-prefixed login, password, service and realm: the
password itself is never kept, and a key is worthless outside the process. Bounded: the oldest
entries go first once ``max_entries`` is reached. Used from the event loop thread only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
import time
from collections import OrderedDict
from typing import Callable


class CredentialCache:
    def __init__(self, ttl: float, *, max_entries: int = 10000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._secret = secrets.token_bytes(32)
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def __repr__(self) -> str:
        return f"CredentialCache(ttl={self.ttl}, entries={len(self._expiry)})"

    def __len__(self) -> int:
        return len(self._expiry)

    def _key(self, login: str, password: str, service: str, realm: str) -> bytes:
        mac = hmac.new(self._secret, digestmod=hashlib.sha256)
        for value in (login, password, service, realm):
            raw = value.encode("utf-8", "surrogatepass")
            mac.update(struct.pack(">I", len(raw)) + raw)
        return mac.digest()

    def hit(self, login: str, password: str, service: str, realm: str) -> bool:
        """Whether these exact credentials succeeded less than ``ttl`` seconds ago."""
        key = self._key(login, password, service, realm)
        expiry = self._expiry.get(key)
        if expiry is None:
            return False
        if self._clock() >= expiry:
            del self._expiry[key]
            return False
        return True

    def remember(self, login: str, password: str, service: str, realm: str) -> None:
        """Record a successful check."""
        key = self._key(login, password, service, realm)
        self._expiry.pop(key, None)
        self._expiry[key] = self._clock() + self.ttl
        while len(self._expiry) > self.max_entries:
            self._expiry.popitem(last=False)
