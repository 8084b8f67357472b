"""smarthost's own user database: the file ``sasldb_path`` names (default ``CONFIG_DIR/sasldb``).

One SQLite file, mode 0600, managed by ``smarthost users`` (the saslpasswd2 / sasldblistusers2
equivalents), read by ``smarthost authd`` (no ``-a``: the ``userdb`` backend) and directly by the
SMTP server for ``pwcheck_method: auxprop``. Per user (name and realm; the empty realm is a realm
of its own) it keeps an argon2id hash for plaintext mechanisms, SCRAM-SHA-256 and SCRAM-SHA-1
verifiers (RFC 5802 §3: salt, iteration count, StoredKey, ServerKey; never the password) and when
the entry was created and last changed. For a user added with ``--cram`` it also keeps a
CRAM-MD5 secret: HMAC-MD5's inner and outer MD5 states of the password (RFC 2104; Dovecot's
``CRAM-MD5`` scheme), not the password itself — but enough to answer CRAM-MD5 challenges as
that user, which is why it is stored only on request (``smarthost.sasl.cram``).

The SCRAM verifiers come from ``smarthost.sasl.scram.scram_verifier`` (RFC 5802 §3, SASLprep'd
password per RFC 4013), with a fresh 16-byte salt and 4096 iterations (RFC 7677 §4's minimum).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from smarthost.authd import passwords
from smarthost.sasl.cram import CramSecret
from smarthost.sasl.scram import MIN_ITERATIONS, SCRAM_MECHANISMS, ScramCredentials, scram_verifier

SCRAM_ITERATIONS = MIN_ITERATIONS
SALT_BYTES = 16

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT NOT NULL,
    realm TEXT NOT NULL,
    hash TEXT NOT NULL,
    created REAL NOT NULL,
    changed REAL NOT NULL,
    PRIMARY KEY (name, realm)
);
CREATE TABLE IF NOT EXISTS scram (
    name TEXT NOT NULL,
    realm TEXT NOT NULL,
    mechanism TEXT NOT NULL,
    salt BLOB NOT NULL,
    iterations INTEGER NOT NULL,
    stored_key BLOB NOT NULL,
    server_key BLOB NOT NULL,
    PRIMARY KEY (name, realm, mechanism)
);
CREATE TABLE IF NOT EXISTS cram (
    name TEXT NOT NULL,
    realm TEXT NOT NULL,
    inner_state BLOB NOT NULL,
    outer_state BLOB NOT NULL,
    PRIMARY KEY (name, realm)
);
"""


class UserDBError(Exception):
    """A user database operation that can not be done (the message names user and file only)."""


@dataclass(frozen=True)
class UserInfo:
    name: str
    realm: str
    scheme: str
    mechanisms: tuple[str, ...]
    created: float
    changed: float

    @property
    def login(self) -> str:
        return f"{self.name}@{self.realm}" if self.realm else self.name


def split_login(user: str, realm: str = "") -> tuple[str, str]:
    """``alice@example.test`` with no realm given → ``("alice", "example.test")``; with a realm
    given, the name is kept whole (it may contain ``@`` itself)."""
    if not realm and "@" in user:
        name, _, realm = user.rpartition("@")
        return name, realm
    return user, realm


class UserDB:
    """The user database at ``path``; created (mode 0600) on first write. Safe to share between
    threads: SQLite access is serialized, password hashing runs outside the lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"UserDB({str(self.path)!r})"

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        if not self.path.exists():
            if not create:
                return None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.chmod(self.path, 0o600)  # also tightens a file someone created wider
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.executescript(_SCHEMA)
        self._conn = conn
        return conn

    def open(self) -> None:
        """Connect now (e.g. before giving up the privileges that can read the file)."""
        with self._lock:
            self._connect(create=False)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- reading (the auth side) ----------------------------------------------------------

    def _hash_of(self, name: str, realm: str) -> str | None:
        with self._lock:
            conn = self._connect(create=False)
            if conn is None:
                return None
            row = conn.execute("SELECT hash FROM users WHERE name = ? AND realm = ?", (name, realm)).fetchone()
        return row[0] if row else None

    def check_password(self, user: str, realm: str, password: str) -> bool:
        """Whether ``password`` is right for ``user`` in ``realm`` (``user@realm`` works too).
        An unknown user costs one argon2id verification, like a known one."""
        name, realm = split_login(user, realm)
        stored = self._hash_of(name, realm)
        if stored is None:
            passwords.verify(passwords.dummy_hash(), password)
            return False
        return passwords.verify(stored, password)

    def scram_credentials(self, user: str, realm: str, mechanism: str) -> ScramCredentials | None:
        """The stored SCRAM verifier of ``user`` for ``SCRAM-SHA-256`` or ``SCRAM-SHA-1``."""
        name, realm = split_login(user, realm)
        row = self._row("SELECT salt, iterations, stored_key, server_key FROM scram"
                        " WHERE name = ? AND realm = ? AND mechanism = ?", (name, realm, mechanism.upper()))
        return ScramCredentials(bytes(row[0]), row[1], bytes(row[2]), bytes(row[3])) if row else None

    def cram_secret(self, user: str, realm: str = "") -> CramSecret | None:
        """The CRAM-MD5 secret of ``user`` (HMAC-MD5 key states), or None: unknown user, or
        one who did not ask for CRAM-MD5 (``users add --cram``)."""
        name, realm = split_login(user, realm)
        row = self._row("SELECT inner_state, outer_state FROM cram WHERE name = ? AND realm = ?", (name, realm))
        return CramSecret(bytes(row[0]), bytes(row[1])) if row else None

    def _row(self, sql: str, params: tuple) -> tuple | None:
        """One row of a query, or None (also when the database does not exist yet)."""
        with self._lock:
            conn = self._connect(create=False)
            if conn is None:
                return None
            return conn.execute(sql, params).fetchone()

    def list(self) -> list[UserInfo]:
        with self._lock:
            conn = self._connect(create=False)
            if conn is None:
                return []
            users = conn.execute("SELECT name, realm, hash, created, changed FROM users ORDER BY realm, name").fetchall()
            mechs: dict[tuple[str, str], list[str]] = {}
            for name, realm, mech in conn.execute("SELECT name, realm, mechanism FROM scram ORDER BY mechanism DESC"):
                mechs.setdefault((name, realm), []).append(mech)
            for name, realm in conn.execute("SELECT name, realm FROM cram"):
                mechs.setdefault((name, realm), []).append("CRAM-MD5")
        return [
            UserInfo(name, realm, passwords.scheme(stored), tuple(mechs.get((name, realm), ())), created, changed)
            for name, realm, stored, created, changed in users
        ]

    # --- writing (the users tool) ---------------------------------------------------------

    def add(self, user: str, password: str, realm: str = "", *, cram: bool = False) -> None:
        """Create ``user``; ``UserDBError`` if it exists. ``cram``: also store a CRAM-MD5 secret."""
        self._store(user, realm, password, must_exist=False, cram=cram)

    def set_password(self, user: str, password: str, realm: str = "", *, cram: bool = False) -> None:
        """Change the password (hash and SCRAM verifiers); ``UserDBError`` if there is no such user.
        The CRAM-MD5 secret is replaced with ``cram``, else removed (the old password must not
        keep working through CRAM-MD5)."""
        self._store(user, realm, password, must_exist=True, cram=cram)

    def delete(self, user: str, realm: str = "") -> None:
        """Remove ``user``; ``UserDBError`` if there is no such user."""
        name, realm = split_login(user, realm)
        deleted = 0
        with self._lock:
            conn = self._connect(create=False)
            if conn is not None:
                with _transaction(conn):
                    deleted = conn.execute("DELETE FROM users WHERE name = ? AND realm = ?", (name, realm)).rowcount
                    conn.execute("DELETE FROM scram WHERE name = ? AND realm = ?", (name, realm))
                    conn.execute("DELETE FROM cram WHERE name = ? AND realm = ?", (name, realm))
        if not deleted:
            raise UserDBError(f"user {_label(name, realm)} not found in {self.path}")

    def _store(self, user: str, realm: str, password: str, *, must_exist: bool, cram: bool = False) -> None:
        name, realm = split_login(user, realm)
        _check_name(name, realm)
        if not password:
            raise UserDBError("empty passwords are not stored")
        hashed = passwords.hash_password(password)
        verifiers = {mech: _scram_verifier(mech, password) for mech in SCRAM_MECHANISMS}
        cram_secret = CramSecret.from_password(password) if cram else None
        now = time.time()
        with self._lock:
            conn = self._connect(create=True)
            assert conn is not None
            with _transaction(conn):
                exists = conn.execute("SELECT 1 FROM users WHERE name = ? AND realm = ?", (name, realm)).fetchone()
                if must_exist and not exists:
                    raise UserDBError(f"user {_label(name, realm)} not found in {self.path}")
                if not must_exist and exists:
                    raise UserDBError(f"user {_label(name, realm)} already exists in {self.path}")
                if exists:
                    conn.execute("UPDATE users SET hash = ?, changed = ? WHERE name = ? AND realm = ?", (hashed, now, name, realm))
                else:
                    conn.execute("INSERT INTO users VALUES (?, ?, ?, ?, ?)", (name, realm, hashed, now, now))
                for mech, v in verifiers.items():
                    conn.execute(
                        "INSERT OR REPLACE INTO scram VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (name, realm, mech, v.salt, v.iterations, v.stored_key, v.server_key),
                    )
                if cram_secret is None:
                    conn.execute("DELETE FROM cram WHERE name = ? AND realm = ?", (name, realm))
                else:
                    conn.execute("INSERT OR REPLACE INTO cram VALUES (?, ?, ?, ?)",
                                 (name, realm, cram_secret.inner, cram_secret.outer))


def _scram_verifier(mechanism: str, password: str) -> ScramCredentials:
    salt = secrets.token_bytes(SALT_BYTES)
    try:
        stored_key, server_key = scram_verifier(password, mechanism, salt, SCRAM_ITERATIONS)
    except ValueError as e:  # SASLprep refuses the password; the message does not repeat it
        raise UserDBError(str(e)) from None
    return ScramCredentials(salt, SCRAM_ITERATIONS, stored_key, server_key)


def _label(name: str, realm: str) -> str:
    return f"{name}@{realm}" if realm else name


def _check_name(name: str, realm: str) -> None:
    for what, value in (("user name", name), ("realm", realm)):
        if len(value.encode("utf-8")) > 255 or any(c in value for c in "\0\t\r\n:"):
            raise UserDBError(f"invalid {what} (at most 255 bytes, no control characters or ':')")
    if not name:
        raise UserDBError("empty user name")


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on an exception) on an autocommit connection."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
