"""``hash:``, ``btree:`` and ``lmdb:`` tables: a ``key value`` source file compiled by
``smarthost postmap`` into an indexed LMDB file ``FILE.lmdb``.

Postfix recommends lmdb today; we give ``hash:`` and ``btree:`` (Berkeley DB in Postfix) the same
LMDB format, so a configuration copied from a howto (``hash:/etc/postfix/sasl_passwd``) works after
``smarthost postmap``. Existing ``.db`` files are not read: rebuild them from their source.

The source format is postmap(1)'s (the same as texthash). Keys are lower-cased unless postmap's
``-f`` is given; a duplicate key keeps its first value with a warning (postmap(1) DIAGNOSTICS),
``-r`` makes the last one win silently.

A compiled file is never changed in place: :func:`write_lmdb` writes ``FILE.lmdb.tmp``, fsyncs it
and renames it over ``FILE.lmdb``. Readers therefore open the file read-only without LMDB's lock
file (``lock=False`` is safe only because the inode they read is immutable); at most once a second
they compare the file's inode and mtime with those they opened and reopen a replaced file, so a
running daemon picks up a rebuilt table and a reader sees the old or the new table, never a mix.
A source newer than its compiled file is logged as stale and flagged in :attr:`LmdbTable.stale`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import lmdb

from smarthost.tables import TableError, read_text_file, resolve_path
from smarthost.tables.filetable import WatchedFile, logical_lines, stamp

log = logging.getLogger(__name__)

__all__ = [
    "INDEXED_TYPES",
    "Entries",
    "LmdbTable",
    "SUFFIX",
    "add_entries",
    "compile_file",
    "compiled_path",
    "open_indexed",
    "parse_source",
    "read_entries",
    "write_lmdb",
]

#: Table types compiled into an LMDB file.
INDEXED_TYPES = ("hash", "btree", "lmdb")
SUFFIX = ".lmdb"
#: LMDB's compiled-in key size limit (mdb_env_get_maxkeysize).
MAX_KEY_BYTES = 511


def compiled_path(source: Path) -> Path:
    return source.with_name(source.name + SUFFIX)


@dataclass(frozen=True, slots=True)
class Entries:
    """A parsed source: ``data`` in file order, and warnings ("FILE:LINE: ...") for duplicates."""

    data: dict[str, str]
    warnings: list[str]


def parse_source(
    text: str, path: Path, *, fold: bool = True, replace: bool = False, into: Mapping[str, str] | None = None
) -> Entries:
    """Parse postmap(1) input. ``into``: existing entries to add to (``postmap -i``)."""
    data = dict(into or {})
    warnings: list[str] = []
    for lineno, line in logical_lines(text, path):
        parts = line.split(None, 1)
        if len(parts) != 2:
            # The line is not echoed: in a credentials table it may be a password.
            raise TableError(f'{path}:{lineno}: expected "key whitespace value", found a key without a value')
        key, value = parts
        if fold:
            key = key.lower()
        if len(key.encode()) > MAX_KEY_BYTES:
            raise TableError(f"{path}:{lineno}: key longer than {MAX_KEY_BYTES} bytes")
        if key in data and not replace:
            warnings.append(f'{path}:{lineno}: duplicate entry "{key}" ignored; the first one is used')
            continue
        data[key] = value
    return Entries(data, warnings)


def write_lmdb(db_path: Path, entries: Mapping[str, str], *, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Atomically replace ``db_path`` with an LMDB file holding ``entries``, with permission bits
    ``mode`` (and ``owner`` uid/gid when given). Concurrent writers of one table take turns."""
    tmp = db_path.with_name(db_path.name + ".tmp")
    fd = _locked_tmp(tmp)
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        items = sorted((k.encode(), v.encode()) for k, v in entries.items())
        size = 1 << 20
        size += 4 * sum(len(k) + len(v) + 16 for k, v in items)
        while not _fill(tmp, items, size):
            os.ftruncate(fd, 0)
            size *= 2
        os.fsync(fd)
        os.replace(tmp, db_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)  # releases the lock
    dir_fd = os.open(db_path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _locked_tmp(tmp: Path) -> int:
    """Open (creating) ``tmp`` and lock it; loop if another writer renamed it away meanwhile."""
    while True:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(tmp, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            return fd
        os.close(fd)


def _fill(tmp: Path, items: list[tuple[bytes, bytes]], map_size: int) -> bool:
    """Write sorted ``items`` into a fresh LMDB file; False when ``map_size`` was too small."""
    env = lmdb.open(str(tmp), subdir=False, lock=False, map_size=map_size, readahead=False, max_dbs=0)
    try:
        with env.begin(write=True) as txn:
            txn.cursor().putmulti(items, append=True)
        env.sync(True)
        return True
    except lmdb.MapFullError:
        return False
    finally:
        env.close()


def read_entries(db_path: Path) -> dict[str, str]:
    """Every entry of a compiled file (for ``postmap -i``)."""
    env, _ = _shared_env(db_path, str(db_path), db_path)
    with env.begin() as txn:
        return {k.decode(): v.decode() for k, v in txn.cursor()}


# LMDB must not open one file twice in a process (its fcntl locks are per process; py-lmdb
# refuses): tables naming the same compiled file share its environment, closed by the garbage
# collector when the last table lets go of it.
_envs: weakref.WeakValueDictionary[tuple[int, int], lmdb.Environment] = weakref.WeakValueDictionary()
_envs_lock = threading.Lock()


def _shared_env(db_path: Path, name: str, source: Path) -> tuple[lmdb.Environment, os.stat_result]:
    """The environment of the file now at ``db_path``, and that file's stat."""
    with _envs_lock:
        for _ in range(5):  # the file is replaced between our stat and LMDB's open: try again
            try:
                st = os.stat(db_path)
            except FileNotFoundError:
                raise TableError(f"{name}: {db_path} does not exist: run smarthost postmap {source}") from None
            except OSError as e:
                raise TableError(f"{name}: cannot read {db_path}: {e.strerror}") from None
            env = _envs.get((st.st_dev, st.st_ino))
            if env is not None:
                return env, st
            try:
                env = lmdb.open(str(db_path), subdir=False, readonly=True, lock=False, create=False, readahead=False)
            except lmdb.Error as e:
                if "already open" in str(e) or not db_path.exists():
                    continue
                raise TableError(f"{name}: {db_path} is not a table file ({e}): run smarthost postmap {source}") from None
            try:
                after = os.stat(db_path)
            except OSError:
                after = None
            if after is not None and (after.st_dev, after.st_ino) == (st.st_dev, st.st_ino):
                _envs[st.st_dev, st.st_ino] = env
                return env, st
            env.close()
    raise TableError(f"{name}: {db_path} keeps changing while being opened; try again")


class LmdbTable(WatchedFile[lmdb.Environment]):
    """A compiled table. ``fold=False`` looks keys up as given (``postmap -f -q``)."""

    def __init__(
        self, name: str, source: Path, *, fold: bool = True, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.path = source
        self.db_path = self.watched = compiled_path(source)
        #: True while the source file is newer than the compiled file (for the config doctor).
        self.stale = False
        self._fold = fold
        super().__init__(clock)
        self._check_stale()

    def _load(self) -> tuple[lmdb.Environment, tuple[int, int, int]]:
        env, st = _shared_env(self.db_path, self.name, self.path)
        return env, stamp(st)

    def lookup(self, key: str) -> str | None:
        env = self.current()
        try:
            k = (key.lower() if self._fold else key).encode()
        except UnicodeEncodeError:  # not text (a surrogate-escaped byte): in no table
            return None
        if not k or len(k) > MAX_KEY_BYTES:
            return None
        try:
            with env.begin() as txn:
                value = txn.get(k)
        except lmdb.Error as e:
            raise TableError(f"{self.name}: cannot read {self.db_path}: {e}") from None
        return None if value is None else value.decode()

    def items(self) -> Iterator[tuple[str, str]]:
        """Every entry, in key order (``postmap -s``)."""
        with self.current().begin() as txn:
            for k, v in txn.cursor():
                yield k.decode(), v.decode()

    def _recheck(self) -> None:
        super()._recheck()
        self._check_stale()

    def _check_stale(self) -> None:
        try:
            stale = os.stat(self.path).st_mtime_ns > os.stat(self.db_path).st_mtime_ns
        except OSError:
            stale = False  # no source (postmap -i tables) or no compiled file (reported elsewhere)
        if stale and not self.stale:
            log.warning("%s: %s is newer than %s: run smarthost postmap %s", self.name, self.path, self.db_path, self.path)
        self.stale = stale

    def __repr__(self) -> str:
        return f"<LmdbTable {self.name}>"


def open_indexed(type_name: str, name: str, config_dir: Path | None) -> LmdbTable:
    """The opener for ``hash:``, ``btree:`` and ``lmdb:`` (registered with ``functools.partial``)."""
    return LmdbTable(f"{type_name}:{name}", resolve_path(name, config_dir))


def compile_file(
    source: Path, *, fold: bool = True, replace: bool = False, inherit_mode: bool = True
) -> list[str]:
    """``postmap FILE``: compile ``source`` into ``FILE.lmdb``; returns the duplicate warnings.
    The compiled file gets the source's group and other read permissions (postmap(1)), so a 0600
    ``sasl_passwd`` gives a 0600 ``sasl_passwd.lmdb``; as root, also the source's owner."""
    text, st = read_text_file(source, f"postmap {source}")
    entries = parse_source(text, source, fold=fold, replace=replace)
    mode = (0o600 | (st.st_mode & 0o044)) if inherit_mode else 0o644
    owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 and inherit_mode else None
    write_lmdb(compiled_path(source), entries.data, mode=mode, owner=owner)
    return entries.warnings


def add_entries(source: Path, text: str, *, fold: bool = True, replace: bool = False) -> list[str]:
    """``postmap -i``: add ``text`` (postmap input) to ``FILE.lmdb``, creating it if missing. The
    file is rewritten atomically with its own mode and owner (the source's for a new file)."""
    db_path = compiled_path(source)
    try:
        st = os.stat(db_path)
        existing = read_entries(db_path)
        mode = st.st_mode & 0o777
    except FileNotFoundError:
        existing = {}
        try:
            st = os.stat(source)
            mode = 0o600 | (st.st_mode & 0o044)
        except FileNotFoundError:
            st, mode = None, 0o644
    entries = parse_source(text, Path("-"), fold=fold, replace=replace, into=existing)
    owner = (st.st_uid, st.st_gid) if st is not None and os.geteuid() == 0 else None
    write_lmdb(db_path, entries.data, mode=mode, owner=owner)
    return entries.warnings

