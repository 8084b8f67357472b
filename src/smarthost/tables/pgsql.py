"""``pgsql:/path/to/file.cf`` (pgsql_table(5)): lookups with an SQL query in PostgreSQL, so that
several smarthost nodes can share users, aliases and relay credentials.

The configuration file holds ``hosts`` (``host``, ``host:port``, ``inet:host:port``,
``unix:/socket/directory`` or a ``postgresql://`` URI; tried in the order written), ``user``,
``password``, ``dbname``, ``query``, and optionally ``result_format``, ``domain``,
``expansion_limit`` (see :mod:`smarthost.tables.sql`; expansions are bound parameters),
``retry_interval`` (seconds a failed host is skipped, default 60) and ``idle_interval`` (seconds
after which an unused connection is closed, default 60). Keys are lower-cased, as Postfix does.

One connection is kept and reused (psycopg, synchronous: call lookups from a worker thread, not
the event loop). It is read-only (``default_transaction_read_only``) with a statement timeout. When
the connection breaks it is reopened once; a host that cannot be reached is skipped for
``retry_interval``; when no host answers, the lookup raises :class:`TableError` (a temporary
failure: mail is deferred, not bounced). The password never appears in logs, errors or reprs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from smarthost.tables import TableError, resolve_path
from smarthost.tables.filetable import FileTable
from smarthost.tables.sql import COMMON_NAMES, MAX_RESULTS, Common, format_results, parse_cf

log = logging.getLogger(__name__)

__all__ = ["PgsqlTable", "open_pgsql"]

CONNECT_TIMEOUT = 5
STATEMENT_TIMEOUT_MS = 30_000


@dataclass(frozen=True, slots=True)
class PgsqlSettings:
    hosts: tuple[str, ...]
    user: str
    password: str = field(repr=False)
    dbname: str
    common: Common
    retry_interval: float
    idle_interval: float


def _seconds(settings: dict[str, tuple[int, str]], name: str, path: Path) -> float:
    line, text = settings.get(name, (0, "60"))
    value = text[:-1] if text.endswith("s") else text
    if not value.isdigit():
        raise TableError(f"{path}:{line}: {name} must be a number of seconds")
    return float(value)


def parse_pgsql_cf(text: str, path: Path, config_dir: Path | None = None) -> PgsqlSettings:
    names = ("hosts", "user", "password", "dbname", "retry_interval", "idle_interval", *COMMON_NAMES)
    settings = parse_cf(text, path, names)
    hosts = tuple(settings.get("hosts", (0, ""))[1].replace(",", " ").split())
    if not hosts:
        raise TableError(f'{path}: missing "hosts = HOST[:PORT] ..." (or unix:/socket/dir)')
    if not settings.get("dbname", (0, ""))[1] and not all(h.startswith(("postgresql://", "postgres://")) for h in hosts):
        raise TableError(f'{path}: missing "dbname = DATABASE"')
    return PgsqlSettings(
        hosts=hosts,
        user=settings.get("user", (0, ""))[1],
        password=settings.get("password", (0, ""))[1],
        dbname=settings.get("dbname", (0, ""))[1],
        common=Common.from_settings(settings, path, config_dir),
        retry_interval=_seconds(settings, "retry_interval", path),
        idle_interval=_seconds(settings, "idle_interval", path),
    )


def _connect_args(host: str, s: PgsqlSettings) -> tuple[str, dict[str, Any]]:
    """``(conninfo, keyword arguments)`` for one ``hosts`` entry."""
    args: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT,
        "application_name": "smarthost",
        "options": f"-c default_transaction_read_only=on -c statement_timeout={STATEMENT_TIMEOUT_MS}",
        "autocommit": True,
    }
    for name in ("user", "password", "dbname"):
        if getattr(s, name):
            args[name] = getattr(s, name)
    if host.startswith(("postgresql://", "postgres://")):
        return host, args
    if host.startswith("unix:"):
        args["host"] = host[5:]
        return "", args
    if host.startswith("inet:"):
        host = host[5:]
    if host.startswith("["):  # [2001:db8::1]:5432
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    args["host"] = name
    if port:
        args["port"] = port
    return "", args


def _display(host: str) -> str:
    """A ``hosts`` entry fit for a log line: a URI loses its password."""
    if "://" not in host:
        return host
    parts = urlsplit(host)
    if parts.password is None:
        return host
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class _Broken(Exception):
    """The connection is unusable (server gone, network error)."""


class PgsqlTable(FileTable[PgsqlSettings]):
    def __init__(
        self, name: str, path: Path, config_dir: Path | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(name, path, partial(parse_pgsql_cf, config_dir=config_dir), clock=clock)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._conn_settings: PgsqlSettings | None = None
        self._last_used = 0.0
        self._dead_until: dict[str, float] = {}

    def lookup(self, key: str) -> str | None:
        settings = self.current()
        key = key.lower()
        params = settings.common.params(key)
        if params is None:
            return None
        with self._lock:
            rows = self._run(settings, settings.common.query.sql("%s"), params)
        return format_results(rows, settings.common.result_format, key, settings.common.expansion_limit, self.name)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    def _scrub(self, error: Exception, settings: PgsqlSettings) -> str:
        text = str(error).strip().replace("\n", "; ")
        secrets = [settings.password] + [urlsplit(h).password or "" for h in settings.hosts if "://" in h]
        for secret in filter(None, secrets):
            text = text.replace(secret, "***")
        return text

    def _run(self, settings: PgsqlSettings, sql: str, params: Sequence[str]) -> list[tuple[Any, ...]]:
        now = self._clock()
        if self._conn is not None and (
            self._conn_settings is not settings or now - self._last_used > settings.idle_interval
        ):
            self._close()
        self._last_used = now
        if self._conn is not None:
            try:
                return self._execute(self._conn, sql, params, settings)
            except _Broken as e:
                log.warning("%s: connection lost, reconnecting: %s", self.name, e)
                self._close()
        tried = []
        for host in settings.hosts:
            if self._dead_until.get(host, 0.0) > now:
                continue
            tried.append(_display(host))
            try:
                conninfo, args = _connect_args(host, settings)
                self._conn = psycopg.connect(conninfo, **args)
                self._conn_settings = settings
                return self._execute(self._conn, sql, params, settings)
            except (psycopg.Error, _Broken) as e:
                detail = str(e) if isinstance(e, _Broken) else self._scrub(e, settings)
                log.warning("%s: %s unavailable for %ss: %s", self.name, _display(host), settings.retry_interval, detail)
                self._close()
                self._dead_until[host] = now + settings.retry_interval
        if not tried:
            raise TableError(f"{self.name}: every host failed within the last retry_interval; lookup deferred")
        raise TableError(f"{self.name}: no PostgreSQL server answered ({', '.join(tried)}); lookup deferred")

    def _execute(
        self, conn: psycopg.Connection, sql: str, params: Sequence[str], settings: PgsqlSettings
    ) -> list[tuple[Any, ...]]:
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchmany(MAX_RESULTS + 1) if cur.description else []
        except psycopg.Error as e:
            if conn.broken or conn.closed:
                raise _Broken(self._scrub(e, settings)) from e
            raise TableError(f"{self.name}: query failed: {self._scrub(e, settings)}") from None

    def __repr__(self) -> str:
        return f"<PgsqlTable {self.name}>"


def open_pgsql(name: str, config_dir: Path | None) -> PgsqlTable:
    return PgsqlTable(f"pgsql:{name}", resolve_path(name, config_dir), config_dir)
