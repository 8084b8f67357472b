"""Lookup tables: the one ``Table`` interface and the ``type:name`` registry (DESIGN.md principle 6).

Access maps, relay credentials, aliases and transports are all tables. A table is opened from a
Postfix-style ``type:name`` string through :func:`open_table`; new types plug in with
:func:`register_table_type`. The built-in types: ``texthash`` (a plain ``key value`` file, re-read
when it changes), ``hash``/``btree``/``lmdb`` (the same source compiled by ``smarthost postmap`` into
one LMDB file), ``inline`` (``inline:{ key=value, ... }``), ``static`` (``static:value``), ``cidr``
(first matching network in a file), ``regexp``/``pcre``, ``sqlite`` and ``pgsql``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = [
    "MAX_FILE_BYTES",
    "Table",
    "TableError",
    "TableOpener",
    "known_table_types",
    "open_table",
    "read_list_file",
    "read_text_file",
    "register_table_type",
    "resolve_path",
    "split_list",
]

#: Largest table or list file we read, to bound memory and start-up time.
MAX_FILE_BYTES = 16 * 1024 * 1024


class TableError(Exception):
    """A table cannot be opened or read; the message names the table (and file:line where known)."""


@runtime_checkable
class Table(Protocol):
    """What every table offers. ``lookup`` returns ``None`` when the key is not in the table and
    raises :class:`TableError` when the table cannot answer (a temporary failure for the caller)."""

    @property
    def name(self) -> str: ...

    def lookup(self, key: str) -> str | None: ...


#: ``opener(name, config_dir)``: ``name`` is everything after the first ``:`` of ``type:name``.
TableOpener = Callable[[str, Path | None], Table]

_registry: dict[str, TableOpener] = {}


def register_table_type(type_name: str, opener: TableOpener) -> None:
    """Make ``type_name:...`` open through ``opener`` (replacing any earlier opener of that type)."""
    _builtins()
    _registry[type_name.lower()] = opener


def known_table_types() -> list[str]:
    return sorted(_builtins())


def open_table(spec: str, *, config_dir: Path | None = None) -> Table:
    """Open the table ``spec`` (``type:name``); relative file names resolve against ``config_dir``."""
    type_name, sep, name = spec.partition(":")
    type_name = type_name.strip().lower()
    if not sep or not type_name or not name:
        raise TableError(f'"{spec}" is not a table: write type:name, e.g. texthash:/etc/smarthost/access')
    opener = _builtins().get(type_name)
    if opener is None:
        raise TableError(
            f'unsupported table type "{type_name}" in "{spec}"; known types: {", ".join(known_table_types())}'
        )
    return opener(name, config_dir)


def resolve_path(name: str, config_dir: Path | None) -> Path:
    """A table's file: absolute as given, relative to ``config_dir`` (or the working directory)."""
    path = Path(name)
    if not path.is_absolute() and config_dir is not None:
        path = config_dir / path
    return path


def read_text_file(path: Path, what: str) -> tuple[str, os.stat_result]:
    """Read a UTF-8 table or list file of at most :data:`MAX_FILE_BYTES`, with the stat it was read at."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise TableError(f"{what}: cannot read {path}: {e.strerror or e}") from None
    if len(data) > MAX_FILE_BYTES:
        raise TableError(f"{what}: {path} is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    try:
        return data.decode("utf-8"), st
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise TableError(f"{path}:{line}: not UTF-8 text ({what})") from None


def read_list_file(path: Path) -> list[tuple[int, str]]:
    """The patterns of a ``/file/name`` entry in a Postfix list parameter (mynetworks,
    mydestination, ...): whitespace- or comma-separated, ``#`` starts a comment line.
    Returns ``(line number, pattern)`` pairs so errors can name ``file:line``."""
    text, _ = read_text_file(path, "list file")
    items: list[tuple[int, str]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        items.extend((lineno, item) for item in line.replace(",", " ").split())
    return items


def split_list(text: str) -> list[str]:
    """Split a Postfix list value at whitespace and commas, keeping ``{ ... }`` groups (which may
    hold whitespace and commas, e.g. ``inline:{ a=b, c=d }``) inside their item.
    Raises ValueError on unbalanced braces."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise ValueError('unbalanced "}"')
        elif depth == 0 and (ch == "," or ch.isspace()):
            if current:
                items.append("".join(current))
                current = []
            continue
        current.append(ch)
    if depth:
        raise ValueError('missing "}"')
    if current:
        items.append("".join(current))
    return items


def _builtins() -> dict[str, TableOpener]:
    """The registry, with the built-in types added on first use (importing them here at module
    load would be circular: cidr uses netaddr, which uses this module)."""
    if not _registry:
        from functools import partial

        from smarthost.tables import cidr, inline, lmdbtable, regexp, sqlite, static, texthash

        def open_pgsql(name: str, config_dir: Path | None) -> Table:
            from smarthost.tables.pgsql import open_pgsql  # psycopg takes 0.1 s to import: only when used

            return open_pgsql(name, config_dir)

        _registry.update(
            texthash=texthash.open_texthash,
            inline=inline.open_inline,
            static=static.open_static,
            cidr=cidr.open_cidr,
            regexp=regexp.open_regexp,
            pcre=regexp.open_pcre,
            sqlite=sqlite.open_sqlite,
            pgsql=open_pgsql,
        )
        _registry.update({t: partial(lmdbtable.open_indexed, t) for t in lmdbtable.INDEXED_TYPES})
    return _registry
