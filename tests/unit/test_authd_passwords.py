"""Password formats: each verifies the right password and refuses a wrong one.

Vectors are made here with independent libraries (argon2-cffi, bcrypt, crypt(3), libpass), so
the verifier is checked against what other software writes.
"""

import hashlib
import warnings

import argon2
import bcrypt
import pytest
from passlib import hash as lp

from smarthost.authd import passwords

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt

PW = "s\u00e9cret pass"


def vectors() -> dict[str, str]:
    argon = argon2.PasswordHasher(time_cost=1, memory_cost=1024).hash(PW)
    blowfish = bcrypt.hashpw(PW.encode(), bcrypt.gensalt(rounds=4)).decode()
    sha512 = crypt.crypt(PW, crypt.mksalt(crypt.METHOD_SHA512))
    return {
        "argon2id": argon,
        "argon2i": argon2.PasswordHasher(time_cost=1, memory_cost=1024, type=argon2.Type.I).hash(PW),
        "bcrypt-2b": blowfish,
        "bcrypt-2y": "$2y$" + blowfish[4:],
        "bcrypt-2a": lp.bcrypt.using(ident="2a", rounds=4).hash(PW),
        "sha512-crypt": sha512,
        "sha256-crypt": crypt.crypt(PW, crypt.mksalt(crypt.METHOD_SHA256)),
        "md5-crypt": crypt.crypt(PW, crypt.mksalt(crypt.METHOD_MD5)),
        "yescrypt": crypt.crypt(PW, "$y$j9T$abcdefghijklmnop$"),
        "des-crypt": crypt.crypt(PW, "ab"),
        "libpass-sha512-crypt": lp.sha512_crypt.using(rounds=5000).hash(PW),
        "{SSHA}": lp.ldap_salted_sha1.hash(PW),
        "{SSHA256}": lp.ldap_salted_sha256.hash(PW),
        "{SSHA512}": lp.ldap_salted_sha512.hash(PW),
        "{SHA}": lp.ldap_sha1.hash(PW),
        "{SHA256}": "{SHA256}" + __import__("base64").b64encode(hashlib.sha256(PW.encode()).digest()).decode(),
        "{CRYPT}": "{CRYPT}" + sha512,
        "{SHA512-CRYPT}": "{SHA512-CRYPT}" + sha512,
        "{BLF-CRYPT}": "{BLF-CRYPT}" + blowfish,
        "{ARGON2ID}": "{ARGON2ID}" + argon,
        "{PLAIN}": "{PLAIN}" + PW,
        "{plain}": "{plain}" + PW,
    }


VECTORS = vectors()


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_right_password_verifies(name):
    assert passwords.verify(VECTORS[name], PW)


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_wrong_password_does_not(name):
    assert not passwords.verify(VECTORS[name], "x" + PW)  # DES crypt sees only 8 characters: differ early
    assert not passwords.verify(VECTORS[name], PW.upper())
    assert not passwords.verify(VECTORS[name], "")


@pytest.mark.parametrize("stored", ["", "*", "!", "!!", "x", PW, "{UNKNOWN}" + PW, "{SSHA}not base64!",
                                    "{SSHA}AAAA", "$6$broken", "$argon2id$garbage", "$2b$04$short"])
def test_unusable_hashes_never_verify(stored):
    assert not passwords.verify(stored, PW)


def test_plaintext_needs_its_prefix():
    assert not passwords.verify("secret", "secret")
    assert passwords.verify("{PLAIN}secret", "secret")


def test_a_locked_shadow_hash_does_not_verify():
    assert not passwords.verify("!" + VECTORS["sha512-crypt"], PW)


def test_libpass_is_the_fallback_where_crypt_lacks_a_format(monkeypatch):
    monkeypatch.setattr(passwords, "_crypt", None)
    assert passwords.verify(VECTORS["sha512-crypt"], PW)
    assert not passwords.verify(VECTORS["sha512-crypt"], "wrong")
    assert not passwords.verify(VECTORS["yescrypt"], PW)  # nothing left that knows yescrypt: refused


def test_bcrypt_looks_at_72_bytes_like_everyone_else():
    long = "a" * 80
    stored = bcrypt.hashpw(long.encode()[:72], bcrypt.gensalt(rounds=4)).decode()
    assert passwords.verify(stored, long)


def test_a_nul_in_the_password_is_a_refusal_not_an_exception():
    assert not passwords.verify(VECTORS["sha512-crypt"], "a\0b")


def test_new_hashes_are_argon2id_and_salted():
    first, second = passwords.hash_password(PW), passwords.hash_password(PW)
    assert first.startswith("$argon2id$") and first != second
    assert passwords.verify(first, PW)


@pytest.mark.parametrize("name, scheme", [("argon2id", "argon2id"), ("sha512-crypt", "sha512-crypt"),
                                          ("yescrypt", "yescrypt"), ("bcrypt-2b", "bcrypt"), ("{SSHA}", "SSHA")])
def test_scheme_names(name, scheme):
    assert passwords.scheme(VECTORS[name]) == scheme
