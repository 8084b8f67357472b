"""Password hashes: verify the formats existing systems store, create argon2id for new ones.

``verify(stored, password)`` understands

- crypt(3) strings: ``$argon2id$`` / ``$argon2i$`` (argon2-cffi), ``$2b$`` / ``$2a$`` / ``$2y$``
  (bcrypt, which only ever looks at the first 72 bytes of a password), and everything the system's
  crypt(3) knows (libxcrypt on Debian: ``$y$`` yescrypt, ``$6$``, ``$5$``, ``$1$``, DES), with
  libpass as the fallback for the sha-crypt and md5-crypt formats where crypt(3) lacks them;
- Dovecot-style ``{SCHEME}`` prefixes: ``{ARGON2ID}``, ``{ARGON2I}``, ``{BLF-CRYPT}``,
  ``{SHA512-CRYPT}``, ``{SHA256-CRYPT}``, ``{MD5-CRYPT}``, ``{CRYPT}`` (a crypt(3) string follows),
  ``{SHA}``, ``{SHA256}``, ``{SHA512}`` (base64 digest), ``{SSHA}``, ``{SSHA256}``, ``{SSHA512}``
  (base64 of digest + salt, the digest over password + salt), and ``{PLAIN}`` / ``{CLEARTEXT}``:
  plaintext is accepted only with that explicit prefix.

Anything else — an empty field, ``*`` or ``!`` (locked accounts), an unknown scheme — never
verifies. Comparisons are constant-time. Nothing here logs, and no exception carries a password.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets
import warnings

import argon2
import bcrypt

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import crypt as _crypt  # stdlib until 3.12; libxcrypt underneath on Debian
    except ImportError:  # Python 3.13 removed it: libpass alone then
        _crypt = None

_ARGON2 = argon2.PasswordHasher()  # argon2-cffi's defaults: RFC 9106's second recommended profile

_DIGESTS = {"SHA": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
_SALTED = {"SSHA": "sha1", "SSHA256": "sha256", "SSHA512": "sha512"}
_CRYPT_SCHEMES = {"CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "MD5-CRYPT", "BLF-CRYPT", "ARGON2ID", "ARGON2I"}
_PLAIN_SCHEMES = {"PLAIN", "CLEARTEXT"}
_BCRYPT_MAX = 72


def hash_password(password: str) -> str:
    """A new argon2id hash (``$argon2id$...``): the default for every password we store."""
    return _ARGON2.hash(password)


@functools.cache
def dummy_hash() -> str:
    """An argon2id hash of a random secret, made like ``hash_password``'s: verifying against it
    costs what verifying a real user's password costs, for unknown users."""
    return hash_password(secrets.token_urlsafe(24))


def scheme(stored: str) -> str:
    """A short name of the hash's format, for listings (never the hash itself)."""
    if stored.startswith("{") and "}" in stored:
        return stored[1 : stored.index("}")].upper()
    if stored.startswith("$"):
        ident = stored.split("$")[1]
        return {"6": "sha512-crypt", "5": "sha256-crypt", "1": "md5-crypt", "y": "yescrypt",
                "2a": "bcrypt", "2b": "bcrypt", "2y": "bcrypt"}.get(ident, ident)
    return "crypt" if stored else "none"


def verify(stored: str, password: str) -> bool:
    """Whether ``password`` matches the stored hash (any format listed in the module docstring)."""
    try:
        if stored.startswith("{") and "}" in stored:
            name, rest = stored[1:].split("}", 1)
            return _verify_prefixed(name.upper(), rest, password)
        return _verify_crypt(stored, password)
    except (ValueError, TypeError, binascii.Error):
        return False  # malformed hash or a password crypt(3) can not take (embedded NUL)


def _verify_prefixed(name: str, rest: str, password: str) -> bool:
    secret = password.encode("utf-8")
    if name in _PLAIN_SCHEMES:
        return hmac.compare_digest(rest.encode("utf-8"), secret)
    if name in _DIGESTS:
        expected = base64.b64decode(rest, validate=True)
        return hmac.compare_digest(hashlib.new(_DIGESTS[name], secret).digest(), expected)
    if name in _SALTED:
        algorithm = _SALTED[name]
        raw = base64.b64decode(rest, validate=True)
        size = hashlib.new(algorithm).digest_size
        if len(raw) <= size:
            return False
        digest, salt = raw[:size], raw[size:]
        return hmac.compare_digest(hashlib.new(algorithm, secret + salt).digest(), digest)
    if name in _CRYPT_SCHEMES:
        return _verify_crypt(rest, password)
    return False


def _verify_crypt(stored: str, password: str) -> bool:
    if not stored.startswith("$") and len(stored) != 13:
        return False  # empty, "*", "!", "!!": no password, or a locked account (DES crypt is 13 chars)
    if stored.startswith(("$argon2id$", "$argon2i$")):
        try:
            return _ARGON2.verify(stored, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False
    secret = password.encode("utf-8")
    if stored.startswith(("$2a$", "$2b$", "$2y$")):
        return bcrypt.checkpw(secret[:_BCRYPT_MAX], stored.encode("ascii"))
    result = _crypt.crypt(password, stored) if _crypt is not None else None
    if result is None or result.startswith("*"):  # crypt(3) does not know this format
        result = _libpass(stored, password)
        if result is None:
            return False
    return hmac.compare_digest(result.encode("utf-8"), stored.encode("utf-8"))


def _libpass(stored: str, password: str) -> str | None:
    """libpass's computation of the same string, for formats the system's crypt(3) lacks."""
    from passlib import hash as handlers

    handler = {"$6$": handlers.sha512_crypt, "$5$": handlers.sha256_crypt, "$1$": handlers.md5_crypt}.get(stored[:3])
    if handler is None:
        return None
    return stored if handler.verify(password, stored) else ""
