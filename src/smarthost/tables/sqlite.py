"""``sqlite:/path/to/file.cf`` (sqlite_table(5)): lookups with an SQL query in an SQLite database.

The configuration file holds ``dbpath`` (the database; a relative path is relative to the file's
directory), ``query``, and optionally ``result_format``, ``domain`` and ``expansion_limit`` (see
:mod:`smarthost.tables.sql` for the expansions, which are sent as bound parameters). The database
is opened read-only (``mode=ro``, ``PRAGMA query_only``). Keys are lower-cased, as Postfix does for
its SQL tables. The configuration file is re-read when it changes, and the database reopened.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import quote

from smarthost.tables import TableError, resolve_path
from smarthost.tables.filetable import FileTable
from smarthost.tables.sql import COMMON_NAMES, MAX_RESULTS, Common, format_results, parse_cf

__all__ = ["SqliteTable", "open_sqlite"]


@dataclass(frozen=True, slots=True)
class SqliteSettings:
    dbpath: Path
    common: Common


def parse_sqlite_cf(text: str, path: Path, config_dir: Path | None = None) -> SqliteSettings:
    settings = parse_cf(text, path, ("dbpath", *COMMON_NAMES))
    if not settings.get("dbpath", (0, ""))[1]:
        raise TableError(f'{path}: missing "dbpath = /path/to/database.sqlite"')
    dbpath = Path(settings["dbpath"][1])
    if not dbpath.is_absolute():
        dbpath = path.parent / dbpath
    return SqliteSettings(dbpath, Common.from_settings(settings, path, config_dir))


class SqliteTable(FileTable[SqliteSettings]):
    def __init__(self, name: str, path: Path, config_dir: Path | None = None) -> None:
        super().__init__(name, path, partial(parse_sqlite_cf, config_dir=config_dir))
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._conn_settings: SqliteSettings | None = None
        with self._lock:
            self._connection(self.current())  # a missing database is an error at start

    def _connection(self, settings: SqliteSettings) -> sqlite3.Connection:
        if self._conn is not None and self._conn_settings is settings:
            return self._conn
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        uri = f"file:{quote(str(settings.dbpath))}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as e:
            raise TableError(f"{self.name}: cannot open {settings.dbpath}: {e}") from None
        self._conn, self._conn_settings = conn, settings
        return conn

    def lookup(self, key: str) -> str | None:
        settings = self.current()
        key = key.lower()
        params = settings.common.params(key)
        if params is None:
            return None
        with self._lock:
            conn = self._connection(settings)
            try:
                rows = conn.execute(settings.common.query.sql("?"), params).fetchmany(MAX_RESULTS + 1)
            except sqlite3.Error as e:
                raise TableError(f"{self.name}: query failed: {e}") from None
        return format_results(rows, settings.common.result_format, key, settings.common.expansion_limit, self.name)


def open_sqlite(name: str, config_dir: Path | None) -> SqliteTable:
    return SqliteTable(f"sqlite:{name}", resolve_path(name, config_dir), config_dir)
