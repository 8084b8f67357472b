"""Where the auth daemon checks passwords (``authd -a NAME``, like saslauthd's mechanisms).

Each backend has ``check(login, password, service, realm) -> bool``. It blocks (PAM, argon2,
file reads), so the daemon runs it in a thread pool. A backend raises ``BackendError`` when it
can not answer at all (unreadable file); the message names the file, never the password.

How the realm is used:

- ``userdb``: users are kept per (name, realm): the realm field selects the realm, and a login
  ``alice@example.test`` with an empty realm means name ``alice`` in realm ``example.test``.
- ``pam``, ``shadow``, ``passwd``: the realm is ignored, unless ``combine_realm`` (``authd -r``,
  as in saslauthd) is set: then a non-empty realm is appended, and ``alice`` in realm
  ``example.test`` is checked as the login ``alice@example.test``.

An unknown user costs what a known one does: the hash-file backends verify against a real hash
from the file (or an argon2id dummy), the userdb against a dummy argon2id hash; PAM does its
own delaying. Empty passwords never succeed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Protocol

from smarthost.authd import passwords
from smarthost.authd.userdb import UserDB

BACKENDS = ("pam", "shadow", "passwd", "userdb")
MAX_FILE_BYTES = 64 * 1024 * 1024


class BackendError(Exception):
    """The backend can not answer (the message names the source, never a password)."""


class Backend(Protocol):
    name: str

    def check(self, login: str, password: str, service: str, realm: str) -> bool: ...


def _combined(login: str, realm: str, combine: bool) -> str:
    return f"{login}@{realm}" if combine and realm else login


class PamBackend:
    """PAM with the request's service name (Postfix passes ``smtp``; empty means ``smtp``): the
    PAM configuration ``/etc/pam.d/SERVICE``, or ``/etc/pam.d/other`` where that does not exist.
    Runs pam_authenticate and pam_acct_mgmt, as saslauthd does."""

    name = "pam"

    def __init__(self, *, combine_realm: bool = False) -> None:
        self.combine_realm = combine_realm

    def check(self, login: str, password: str, service: str, realm: str) -> bool:
        import pam

        if not login or not password:
            return False
        authenticator = pam.PamAuthenticator()  # one handle per call: threads never share one
        return authenticator.authenticate(
            _combined(login, realm, self.combine_realm), password, service=service or "smtp", resetcreds=False
        )


class HashFileBackend:
    """``shadow`` (``/etc/shadow``, or ``-O FILE``) or ``passwd`` (``-O FILE`` of ``user:hash``
    lines; further ``:`` fields, blank lines and ``#`` comments are ignored). The file is reread
    when it changes. For ``shadow`` an account past its expiry date (field 8, days since 1970, as
    shadow(5) says) fails."""

    def __init__(self, name: str, path: str | Path, *, combine_realm: bool = False) -> None:
        self.name = name
        self.path = Path(path)
        self.combine_realm = combine_realm
        self._expiry = name == "shadow"
        self._stamp: tuple[int, int, int, int] | None = None
        self._entries: dict[str, tuple[str, int | None]] = {}
        self._reference = passwords.dummy_hash()

    def __repr__(self) -> str:
        return f"HashFileBackend({self.name!r}, {str(self.path)!r})"

    def _load(self) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if stamp == self._stamp:
                return
            if st.st_size > MAX_FILE_BYTES:
                raise BackendError(f"{self.path}: larger than {MAX_FILE_BYTES} bytes")
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise BackendError(f"cannot read {self.path}: {e.strerror}") from None
        entries: dict[str, tuple[str, int | None]] = {}
        for line in text.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            fields = line.split(":")
            if len(fields) < 2 or not fields[0]:
                continue
            expire = None
            if self._expiry and len(fields) > 7 and fields[7].strip().isdigit():
                expire = int(fields[7])
            entries.setdefault(fields[0], (fields[1].strip(), expire))
        self._entries = entries
        self._stamp = stamp
        # A real hash from the file makes an unknown user cost what the usual user costs.
        usable = [h for h, _ in entries.values() if h.startswith(("$", "{"))]
        self._reference = usable[0] if usable else passwords.dummy_hash()

    def check(self, login: str, password: str, service: str, realm: str) -> bool:
        self._load()
        entry = self._entries.get(_combined(login, realm, self.combine_realm))
        if entry is None or not password:
            passwords.verify(self._reference, password)
            return False
        stored, expire = entry
        matched = passwords.verify(stored, password)
        if expire is not None and int(time.time() // 86400) >= expire:
            return False
        return matched


class UserDBBackend:
    """smarthost's own user database (``authd`` without ``-a``)."""

    name = "userdb"

    def __init__(self, path: str | Path) -> None:
        self.db = UserDB(path)

    def __repr__(self) -> str:
        return f"UserDBBackend({str(self.db.path)!r})"

    def check(self, login: str, password: str, service: str, realm: str) -> bool:
        if not password:
            passwords.verify(passwords.dummy_hash(), password)
            return False
        return self.db.check_password(login, realm, password)


def make_backend(name: str, *, option: str | None = None, userdb_path: str | Path | None = None,
                 combine_realm: bool = False) -> Backend:
    """The backend ``name`` (one of ``BACKENDS``); ``option`` is ``-O``: the file for ``shadow``
    (default ``/etc/shadow``), ``passwd`` (required) and ``userdb`` (default ``userdb_path``)."""
    if name == "pam":
        return PamBackend(combine_realm=combine_realm)
    if name == "shadow":
        return HashFileBackend("shadow", option or "/etc/shadow", combine_realm=combine_realm)
    if name == "passwd":
        if not option:
            raise BackendError("-a passwd needs -O FILE (a file of user:hash lines)")
        return HashFileBackend("passwd", option, combine_realm=combine_realm)
    if name == "userdb":
        path = option or userdb_path
        if not path:
            raise BackendError("-a userdb needs the user database's path")
        return UserDBBackend(path)
    raise BackendError(f"unknown backend {name!r} (choose one of {', '.join(BACKENDS)})")
