"""SCRAM helpers shared by the server and client mechanisms (RFC 5802, RFC 7677).

The message formats and key derivation are ``scramp``'s; this module adds the
verifier derivation the user database stores, and the parts of the
client-first message the server needs before it can look the user up.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field

from scramp import ScramException, ScramMechanism
from scramp.utils import saslprep

SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1")
_HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-1": hashlib.sha1}
MIN_ITERATIONS = 4096  # RFC 7677 §4 (and scramp's lower bound)
MIN_SALT = 12  # octets; scramp refuses shorter salts
_SASLNAME = re.compile(r"(?:[^=,]|=2C|=3D)*")
_ESCAPE = re.compile(r"=2C|=3D")


class ScramFormatError(ValueError):
    """A client-first message that cannot be used; the text is safe to log."""


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    """A stored SCRAM verifier (RFC 5802 §3): what the server keeps instead of a password."""

    salt: bytes
    iterations: int
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)


def scram_verifier(password: str, mechanism: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """``(stored_key, server_key)`` for ``password`` (SASLprep'd), as RFC 5802 §3 defines them.

    ``salt`` must be at least 12 octets and ``iterations`` at least 4096.
    Raises ValueError without repeating the password.
    """
    if mechanism not in _HASHES:
        raise ValueError(f"not a SCRAM mechanism: {mechanism!r}")
    if len(salt) < MIN_SALT or iterations < MIN_ITERATIONS:
        raise ValueError(f"SCRAM needs a salt of at least {MIN_SALT} octets and {MIN_ITERATIONS}+ iterations")
    try:
        _, stored_key, server_key, _ = ScramMechanism(mechanism).make_auth_info(
            password, iteration_count=iterations, salt=salt
        )
    except ScramException:
        raise ValueError("the password is not allowed by SASLprep (RFC 4013)") from None
    return stored_key, server_key


def fake_credentials(mechanism: str, username: str, secret: bytes, iterations: int) -> ScramCredentials:
    """Credentials for a user that does not exist: stable per name, unguessable without ``secret``.

    The server continues the exchange with these so that an unknown user
    looks exactly like a wrong password (same salt every time, same steps).
    """
    def derive(label: bytes) -> bytes:
        message = label + b"\0" + mechanism.encode() + b"\0" + username.encode("utf-8", "surrogatepass")
        return hmac.new(secret, message, _HASHES[mechanism]).digest()

    return ScramCredentials(
        salt=derive(b"salt")[:16],
        iterations=iterations,
        stored_key=derive(b"stored-key"),
        server_key=derive(b"server-key"),
    )


@dataclass(frozen=True, slots=True)
class ClientFirst:
    """The parts of a client-first message (RFC 5802 §7) the server needs early."""

    cbind_flag: str  # "n" or "y"
    authzid: str
    username: str  # unescaped and SASLprep'd


def parse_client_first(message: str) -> ClientFirst:
    """Split the GS2 header and the username out of ``message``; scramp checks the rest.

    Channel binding (``p=``) is refused: no ``-PLUS`` mechanism is offered
    (RFC 5802 §6).  ``y`` is fine: the client could bind but we do not offer it.
    """
    parts = message.split(",", 3)
    if len(parts) < 4:
        raise ScramFormatError("malformed client-first message")
    flag, authzid, user, _ = parts
    if flag.startswith("p="):
        raise ScramFormatError("channel binding requested but not offered")
    if flag not in ("n", "y"):
        raise ScramFormatError("malformed GS2 header")
    if authzid and not authzid.startswith("a="):
        raise ScramFormatError("malformed GS2 header")
    if not user.startswith("n="):
        raise ScramFormatError("malformed client-first message")
    try:
        return ClientFirst(flag, unescape_name(authzid[2:]), saslprep(unescape_name(user[2:])))
    except ScramException:
        raise ScramFormatError("username not allowed by SASLprep") from None


def unescape_name(text: str) -> str:
    """RFC 5802 §5.1 saslname: ``=2C`` is ``,`` and ``=3D`` is ``=``; any other ``=`` is an error."""
    if not _SASLNAME.fullmatch(text):
        raise ScramFormatError("bad escape in a SCRAM name")
    return _ESCAPE.sub(lambda m: "," if m.group() == "=2C" else "=", text)
