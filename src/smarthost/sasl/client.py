"""Client-side SASL mechanisms for the relay client: PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-256, SCRAM-SHA-1.

Driven by the SMTP client shell (RFC 4954 §4)::

    mech = client_mechanism(name, username, password, ClientContext(nonce=...))
    first = mech.start()              # initial response for the AUTH line, or None
    reply = mech.step(challenge)      # for every 334: the decoded challenge -> the answer
    mech.finish()                     # after 235: raises SaslError unless the server proved itself

For SCRAM the server signature arrives in the last 334 (``v=...``); ``step``
checks it and answers with an empty response, and ``finish`` raises if no
valid signature was seen.  Other mechanisms have nothing to check.

Passwords never appear in reprs or exception messages.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from scramp import ScramClient, ScramException

from .scram import SCRAM_MECHANISMS

CLIENT_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "PLAIN", "LOGIN")


class SaslError(Exception):
    """The exchange cannot go on: an unexpected challenge, or the server failed to prove itself."""


@dataclass(frozen=True, slots=True)
class ClientContext:
    """``nonce``: fresh for each exchange (SCRAM's client nonce: printable ASCII without ``,``),
    e.g. ``secrets.token_urlsafe(18)``.  ``authzid``: act as this identity (PLAIN only)."""

    nonce: str = ""
    authzid: str = ""


class ClientMechanism:
    name = ""

    def __init__(self, username: str, password: str, context: ClientContext) -> None:
        self.username = username
        self._password = password
        self.context = context

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} user={self.username!r}>"

    def start(self) -> bytes | None:
        return None

    def step(self, challenge: bytes) -> bytes:
        raise NotImplementedError

    def finish(self, server_final: bytes | None = None) -> None:
        """Check the end of the exchange; only SCRAM has something to check."""


class PlainClient(ClientMechanism):
    """RFC 4616: everything in the initial response."""

    name = "PLAIN"

    def __init__(self, username: str, password: str, context: ClientContext) -> None:
        super().__init__(username, password, context)
        self._sent = False

    def _message(self) -> bytes:
        self._sent = True
        return f"{self.context.authzid}\0{self.username}\0{self._password}".encode()

    def start(self) -> bytes | None:
        return self._message()

    def step(self, challenge: bytes) -> bytes:
        # A server that ignored the initial response asks again with an empty challenge.
        if challenge:
            raise SaslError("PLAIN: unexpected challenge from the server")
        return self._message()


class LoginClient(ClientMechanism):
    """draft-murchison-sasl-login: the user name, then the password (the prompts' text varies, so it is not checked)."""

    name = "LOGIN"

    def __init__(self, username: str, password: str, context: ClientContext) -> None:
        super().__init__(username, password, context)
        self._steps = 0

    def step(self, challenge: bytes) -> bytes:
        self._steps += 1
        if self._steps == 1:
            return self.username.encode()
        if self._steps == 2:
            return self._password.encode()
        raise SaslError("LOGIN: too many challenges from the server")


class CramMD5Client(ClientMechanism):
    """RFC 2195 §2: ``user SP hex(HMAC-MD5(password, challenge))``."""

    name = "CRAM-MD5"

    def __init__(self, username: str, password: str, context: ClientContext) -> None:
        super().__init__(username, password, context)
        self._answered = False

    def step(self, challenge: bytes) -> bytes:
        if self._answered:
            raise SaslError("CRAM-MD5: unexpected second challenge from the server")
        self._answered = True
        digest = hmac.new(self._password.encode(), challenge, hashlib.md5).hexdigest()
        return f"{self.username} {digest}".encode()


class ScramClientMechanism(ClientMechanism):
    """RFC 5802 / RFC 7677 without channel binding (GS2 header ``n,,``)."""

    def __init__(self, name: str, username: str, password: str, context: ClientContext) -> None:
        super().__init__(username, password, context)
        self.name = name
        if not context.nonce:
            raise ValueError("SCRAM needs a fresh nonce in the context")
        if context.authzid:
            raise ValueError("SCRAM with an authorization identity is not supported")
        try:
            self._scram = ScramClient([name], username, password, c_nonce=context.nonce)
        except ScramException:
            raise ValueError("SCRAM: the user name, password or nonce is not usable (SASLprep, RFC 4013)") from None
        self._stage = "first"

    def start(self) -> bytes | None:
        return self._scram.get_client_first().encode()

    def step(self, challenge: bytes) -> bytes:
        if self._stage == "first":
            try:
                self._scram.set_server_first(challenge.decode("utf-8"))
                final = self._scram.get_client_final()
            except (ScramException, UnicodeDecodeError):
                raise SaslError(f"{self.name}: malformed server-first message") from None
            self._stage = "final"
            return final.encode()
        if self._stage == "final":
            self._verify(challenge)
            return b""
        raise SaslError(f"{self.name}: unexpected challenge after the server signature")

    def finish(self, server_final: bytes | None = None) -> None:
        if server_final is not None and self._stage == "final":
            self._verify(server_final)
        if self._stage != "verified":
            raise SaslError(f"{self.name}: the server did not prove it knows the password")

    def _verify(self, message: bytes) -> None:
        try:
            self._scram.set_server_final(message.decode("utf-8"))
        except (ScramException, UnicodeDecodeError):
            self._stage = "failed"
            raise SaslError(f"{self.name}: the server signature does not match") from None
        self._stage = "verified"


def client_mechanism(
    name: str, username: str, password: str, context: ClientContext | None = None
) -> ClientMechanism:
    """A fresh client mechanism for one exchange; ValueError for a name not in CLIENT_MECHANISMS."""
    name = name.upper()
    context = context or ClientContext()
    if name in SCRAM_MECHANISMS:
        return ScramClientMechanism(name, username, password, context)
    classes = {"PLAIN": PlainClient, "LOGIN": LoginClient, "CRAM-MD5": CramMD5Client}
    if name not in classes:
        raise ValueError(f"unsupported SASL mechanism: {name}")
    return classes[name](username, password, context)
