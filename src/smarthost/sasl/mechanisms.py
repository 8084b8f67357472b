"""Server-side SASL mechanisms as explicit step objects (no I/O, no callbacks).

An AUTH exchange drives one mechanism object::

    mech = server_mechanism("PLAIN", context)   # a fresh context (and nonce) per exchange
    step = mech.start(initial_response)         # bytes, or None when the client sent none
    step = mech.respond(data)                   # after a Challenge: the client's decoded answer

Each call returns one step:

``Challenge(data)``              send ``334 base64(data)``, then call ``respond()``
``Success(username, authcid)``   authenticated; ``username`` is the identity to act as
``Failure(reason)``              send 535; ``reason`` is for the log (never secrets, never client text)
``CheckPassword(...)``           ask the auth daemon, then call ``password_result(ok)``
``NeedScramCredentials(...)``    look up the stored verifier, then call ``credentials(found | None)``
``NeedSecret(username)``         look up the CRAM-MD5 secret, then call ``secret(found | None)``
                                 (a ``cram.CramSecret``: HMAC-MD5 key states, not the password)

Calling a method the mechanism is not waiting for raises :class:`SaslStateError`
(a bug in the caller, never the client's doing).  Client input never raises.

Unknown users and wrong passwords take the same steps and give the same
failure text: SCRAM goes on with fake credentials derived from the user name
and ``ServerContext.server_secret``; CRAM-MD5 computes its digest with a dummy
secret (also for a known user who has no CRAM-MD5 secret).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Union

from scramp import ScramException, ScramMechanism
from scramp.core import ScramServer

from .cram import CramSecret
from .scram import SCRAM_MECHANISMS, ScramCredentials, ScramFormatError, fake_credentials, parse_client_first

SERVER_MECHANISMS = ("PLAIN", "LOGIN", "SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "EXTERNAL")
AUTHENTICATION_FAILURE = "authentication failure"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NONCE = re.compile(r"[\x21-\x2b\x2d-\x3b\x3d\x3f-\x7e]+")  # printable ASCII without , < > @


class SaslStateError(RuntimeError):
    """The caller used a mechanism out of order."""


@dataclass(frozen=True, slots=True)
class ServerContext:
    """What a server mechanism may know about its surroundings.  Make one per exchange.

    ``nonce``: fresh randomness for this exchange (printable ASCII without
    ``, < > @``), e.g. ``secrets.token_hex(16)``; CRAM-MD5 uses it as the
    ``random.time`` part of its challenge, SCRAM as the server nonce.
    ``server_secret``: a per-installation secret for SCRAM's fake salts.
    ``allow_proxy``: accept an authorization identity different from the
    authenticated one.  ``scram_iterations``: shown for unknown users; use the
    user database's default so they look like real ones.
    """

    hostname: str
    nonce: str = ""
    server_secret: bytes = field(default=b"", repr=False)
    service: str = "smtp"
    realm: str = ""
    tls_peer_identity: str | None = None
    allow_proxy: bool = False
    scram_iterations: int = 4096


# Steps ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    data: bytes


@dataclass(frozen=True, slots=True)
class Success:
    username: str  # the identity the session acts as
    authcid: str  # the identity whose credentials were checked (differs only when proxying)


@dataclass(frozen=True, slots=True)
class Failure:
    reason: str


@dataclass(frozen=True, slots=True)
class CheckPassword:
    authcid: str
    password: str = field(repr=False)
    authzid: str = ""


@dataclass(frozen=True, slots=True)
class NeedScramCredentials:
    username: str
    mechanism: str  # which verifier: "SCRAM-SHA-256" or "SCRAM-SHA-1"


@dataclass(frozen=True, slots=True)
class NeedSecret:
    username: str


Step = Union[Challenge, Success, Failure, CheckPassword, NeedScramCredentials, NeedSecret]


# The mechanisms ---------------------------------------------------------------


class ServerMechanism:
    """Base class: tracks which call comes next.  Subclasses implement the ``_on_*`` hooks."""

    name = ""

    def __init__(self, context: ServerContext) -> None:
        self.context = context
        self._expect = "start"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} expecting {self._expect}>"

    @property
    def done(self) -> bool:
        return self._expect == "nothing"

    def start(self, initial_response: bytes | None) -> Step:
        self._enter("start")
        return self._on_start(initial_response)

    def respond(self, data: bytes) -> Step:
        self._enter("respond")
        return self._on_respond(data)

    def password_result(self, ok: bool) -> Success | Failure:
        self._enter("password_result")
        return self._on_password_result(ok)

    def credentials(self, found: ScramCredentials | None) -> Challenge | Failure:
        self._enter("credentials")
        return self._on_credentials(found)

    def secret(self, secret: CramSecret | str | None) -> Success | Failure:
        self._enter("secret")
        return self._on_secret(secret)

    # Helpers for subclasses: each sets what comes next.

    def _enter(self, call: str) -> None:
        if self._expect != call:
            raise SaslStateError(f"{self.name}: {call}() called while expecting {self._expect}")
        self._expect = "busy"

    def _challenge(self, data: bytes) -> Challenge:
        self._expect = "respond"
        return Challenge(data)

    def _ask(self, request: Step, then: str) -> Step:
        self._expect = then
        return request

    def _fail(self, reason: str = AUTHENTICATION_FAILURE) -> Failure:
        self._expect = "nothing"
        return Failure(reason)

    def _succeed(self, authzid: str, authcid: str) -> Success | Failure:
        # RFC 4422 §3.4.1: an authorization identity other than the authenticated one needs permission.
        if authzid and authzid != authcid and not self.context.allow_proxy:
            return self._fail("authorization identity not allowed")
        self._expect = "nothing"
        return Success(authzid or authcid, authcid)

    def _on_start(self, initial_response: bytes | None) -> Step:
        raise NotImplementedError

    def _on_respond(self, data: bytes) -> Step:
        raise NotImplementedError

    def _on_password_result(self, ok: bool) -> Success | Failure:
        raise NotImplementedError

    def _on_credentials(self, found: ScramCredentials | None) -> Challenge | Failure:
        raise NotImplementedError

    def _on_secret(self, secret: str | None) -> Success | Failure:
        raise NotImplementedError


def _identity(data: bytes) -> str | None:
    """A user name or authzid: UTF-8 without control characters, or None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if _CONTROL.search(text) else text


class _PasswordMechanism(ServerMechanism):
    """PLAIN and LOGIN end with a password check by the auth daemon."""

    _authzid = ""
    _authcid = ""

    def _check(self, authzid: str, authcid: str, password: str) -> Step:
        if authzid and authzid != authcid and not self.context.allow_proxy:
            # Refused before the password is checked: nothing is learnt about it.
            return self._fail("authorization identity not allowed")
        self._authzid, self._authcid = authzid, authcid
        return self._ask(CheckPassword(authcid, password, authzid), "password_result")

    def _on_password_result(self, ok: bool) -> Success | Failure:
        return self._succeed(self._authzid, self._authcid) if ok else self._fail()


class Plain(_PasswordMechanism):
    """RFC 4616: one message ``[authzid] NUL authcid NUL passwd``, UTF-8."""

    name = "PLAIN"

    def _on_start(self, initial_response: bytes | None) -> Step:
        if initial_response is None:
            return self._challenge(b"")  # RFC 4422 §5: client-first, ask for the message
        return self._on_respond(initial_response)

    def _on_respond(self, data: bytes) -> Step:
        parts = data.split(b"\0")
        if len(parts) != 3:
            return self._fail("malformed PLAIN message")
        authzid, authcid = _identity(parts[0]), _identity(parts[1])
        try:
            password = parts[2].decode("utf-8")
        except UnicodeDecodeError:
            return self._fail("malformed PLAIN message")
        # RFC 4616 §2: authcid and passwd are 1*SAFE.
        if authzid is None or not authcid or not password:
            return self._fail("malformed PLAIN message")
        return self._check(authzid, authcid, password)


class Login(_PasswordMechanism):
    """draft-murchison-sasl-login: ``Username:`` and ``Password:`` challenges.

    An initial response is taken as the user name (clients such as Outlook send one).
    """

    name = "LOGIN"

    def _on_start(self, initial_response: bytes | None) -> Step:
        if initial_response is None:
            return self._challenge(b"Username:")
        return self._username(initial_response)

    def _on_respond(self, data: bytes) -> Step:
        if not self._authcid:
            return self._username(data)
        try:
            password = data.decode("utf-8")
        except UnicodeDecodeError:
            return self._fail("malformed LOGIN password")
        if not password or "\0" in password:
            return self._fail("malformed LOGIN password")
        return self._check("", self._authcid, password)

    def _username(self, data: bytes) -> Step:
        username = _identity(data)
        if not username:
            return self._fail("malformed LOGIN user name")
        self._authcid = username
        return self._challenge(b"Password:")


class External(ServerMechanism):
    """RFC 4422 App. A: the identity is the verified TLS client certificate's; the client may send an authzid."""

    name = "EXTERNAL"

    def _on_start(self, initial_response: bytes | None) -> Step:
        if initial_response is None:
            return self._challenge(b"")
        return self._on_respond(initial_response)

    def _on_respond(self, data: bytes) -> Step:
        identity = self.context.tls_peer_identity
        if not identity:
            return self._fail("no verified client certificate listed in relay_clientcerts")
        authzid = _identity(data)
        if authzid is None:
            return self._fail("malformed EXTERNAL authorization identity")
        return self._succeed(authzid, identity)


class CramMD5(ServerMechanism):
    """RFC 2195: challenge ``<random.time@hostname>``, answer ``user SP hex(HMAC-MD5(secret, challenge))``."""

    name = "CRAM-MD5"
    _DIGEST = re.compile(r"[0-9a-f]{32}")

    def __init__(self, context: ServerContext) -> None:
        super().__init__(context)
        if not _NONCE.fullmatch(context.nonce):
            raise ValueError("CRAM-MD5 needs a fresh nonce in the context")
        self._challenge_text = f"<{context.nonce}@{context.hostname}>".encode()
        self._digest = ""
        self._authcid = ""

    def _on_start(self, initial_response: bytes | None) -> Step:
        if initial_response is not None:
            return self._fail("CRAM-MD5 takes no initial response")  # RFC 4422 §5: server-first
        return self._challenge(self._challenge_text)

    def _on_respond(self, data: bytes) -> Step:
        username, space, digest = data.rpartition(b" ")
        user = _identity(username)
        if not space or not user or not self._DIGEST.fullmatch(digest.decode("latin-1").lower()):
            return self._fail("malformed CRAM-MD5 response")
        self._digest = digest.decode("ascii").lower()
        self._authcid = user
        return self._ask(NeedSecret(user), "secret")

    def _on_secret(self, secret: CramSecret | str | None) -> Success | Failure:
        # Same work whether or not the user exists: a user without a CRAM secret is checked
        # against a dummy one and fails like a wrong password.
        if isinstance(secret, str):
            secret = CramSecret.from_password(secret)
        ok = (secret or _dummy_cram_secret()).matches(self._challenge_text, self._digest)
        if ok and secret is not None:
            return self._succeed("", self._authcid)
        return self._fail()


_DUMMY_CRAM: list[CramSecret] = []


def _dummy_cram_secret() -> CramSecret:
    if not _DUMMY_CRAM:
        _DUMMY_CRAM.append(CramSecret.from_password("\0 no CRAM-MD5 secret"))
    return _DUMMY_CRAM[0]


class Scram(ServerMechanism):
    """RFC 5802 (SCRAM-SHA-1) and RFC 7677 (SCRAM-SHA-256) without channel binding.

    Steps: client-first -> NeedScramCredentials -> Challenge(server-first)
    -> client-final -> Challenge(server-final ``v=``) -> empty response ->
    Success.  The server signature goes out in a 334 because RFC 4954 §4
    gives 235 no data; the client answers it with an empty line.
    An authorization identity in the GS2 header is refused (scramp does not
    support one).
    """

    def __init__(self, name: str, context: ServerContext) -> None:
        super().__init__(context)
        if not _NONCE.fullmatch(context.nonce):
            raise ValueError("SCRAM needs a fresh nonce in the context")
        if not context.server_secret:
            raise ValueError("SCRAM needs ServerContext.server_secret for unknown users")
        self.name = name
        self._client_first = ""
        self._username = ""
        self._known = False
        self._verified = False
        self._server: ScramServer | None = None

    def _on_start(self, initial_response: bytes | None) -> Step:
        if initial_response is None:
            return self._challenge(b"")
        return self._first(initial_response)

    def _on_respond(self, data: bytes) -> Step:
        if self._server is None:
            return self._first(data)
        if not self._verified:
            return self._final(data)
        # The client's empty answer to the server-final message.
        if data:
            return self._fail("unexpected data after SCRAM server-final message")
        return self._succeed("", self._username)

    def _first(self, data: bytes) -> Step:
        try:
            message = data.decode("utf-8")
            first = parse_client_first(message)
        except (UnicodeDecodeError, ScramFormatError) as exc:
            reason = str(exc) if isinstance(exc, ScramFormatError) else "client-first message is not UTF-8"
            return self._fail(reason)
        if first.authzid:
            return self._fail("authorization identity not supported with SCRAM")
        self._client_first = message
        self._username = first.username
        return self._ask(NeedScramCredentials(first.username, self.name), "credentials")

    def _on_credentials(self, found: ScramCredentials | None) -> Challenge | Failure:
        self._known = found is not None
        creds = found or fake_credentials(
            self.name, self._username, self.context.server_secret, self.context.scram_iterations
        )
        server = ScramMechanism(self.name).make_server(
            lambda _user: (creds.salt, creds.stored_key, creds.server_key, creds.iterations),
            s_nonce=self.context.nonce,
        )
        try:
            server.set_client_first(self._client_first)
            server_first = server.get_server_first()
        except ScramException:
            return self._fail("malformed SCRAM client-first message")
        self._server = server
        return self._challenge(server_first.encode())

    def _final(self, data: bytes) -> Step:
        assert self._server is not None
        try:
            self._server.set_client_final(data.decode("utf-8"))
            server_final = self._server.get_server_final()
        except (ScramException, UnicodeDecodeError):
            return self._fail()
        if not self._known:
            return self._fail()
        self._verified = True
        return self._challenge(server_final.encode())


def server_mechanism(name: str, context: ServerContext) -> ServerMechanism:
    """A fresh mechanism object for one exchange; ValueError for a name not in SERVER_MECHANISMS."""
    name = name.upper()
    if name in SCRAM_MECHANISMS:
        return Scram(name, context)
    classes = {"PLAIN": Plain, "LOGIN": Login, "CRAM-MD5": CramMD5, "EXTERNAL": External}
    if name not in classes:
        raise ValueError(f"unsupported SASL mechanism: {name}")
    return classes[name](context)
