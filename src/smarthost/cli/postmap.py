"""``smarthost postmap``: build and query lookup tables, like Postfix's postmap(1).

    postmap [type:]FILE...        compile FILE into FILE.lmdb (types hash, btree, lmdb; atomic)
    postmap -q KEY [type:]FILE... print the first value found for KEY (any table type)
    postmap -q - [type:]FILE...   read keys from stdin, print "key value" for each one found
    postmap -s [type:]FILE...     print every "key value" (hash/btree/lmdb, texthash)
    postmap -i [type:]FILE        add "key value" lines from stdin to FILE.lmdb
    -f  keep the case of keys (no lower-casing) when building and querying
    -r  a duplicate key replaces the earlier one silently (default: warn, the first one wins)
    -w  ignore duplicate keys silently
    -p  create the compiled file with mode 0644 instead of the source's read permissions

Without ``type:``, ``default_database_type`` from main.cf applies (``hash`` when unset). ``hash``
and ``btree`` are compiled into the same LMDB format as ``lmdb`` (see
:mod:`smarthost.tables.lmdbtable`). Relative FILE names are relative to the working directory.
Exit status: 0 on success or when a key was found; 1 when no key was found, or on an error
(the message on stderr names the file and line).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from smarthost.config import ConfigError, load
from smarthost.tables import MAX_FILE_BYTES, Table, TableError, open_table
from smarthost.tables.lmdbtable import INDEXED_TYPES, LmdbTable, add_entries, compile_file
from smarthost.tables.texthash import TexthashTable

_TYPE_RE = re.compile(r"[a-z][a-z0-9_]*")
#: Longest key line read by ``-q -``.
MAX_KEY_LINE = 64 * 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "postmap",
        help="build or query lookup tables",
        description="Build or query lookup tables, like Postfix's postmap(1).",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-q", dest="query", metavar="KEY", help='print the value of KEY ("-": keys from stdin)')
    mode.add_argument("-s", dest="dump", action="store_true", help="print every key and value")
    mode.add_argument("-i", dest="incremental", action="store_true", help="add entries from stdin")
    parser.add_argument("-f", dest="no_fold", action="store_true", help="do not lower-case keys")
    dup = parser.add_mutually_exclusive_group()
    dup.add_argument("-r", dest="replace", action="store_true", help="duplicate keys replace earlier ones silently")
    dup.add_argument("-w", dest="ignore_dups", action="store_true", help="ignore duplicate keys silently")
    parser.add_argument("-p", dest="default_mode", action="store_true", help="create files with mode 0644")
    parser.add_argument("tables", nargs="+", metavar="[type:]FILE")
    parser.set_defaults(func=run)


def _fatal(message: str) -> int:
    print(f"postmap: fatal: {message}", file=sys.stderr)
    return 1


def _warn(messages: Iterable[str]) -> None:
    for message in messages:
        print(f"postmap: warning: {message}", file=sys.stderr)


def default_database_type(config_dir: Path) -> str:
    """main.cf's default_database_type; ``hash`` when unset or without a main.cf."""
    if not (config_dir / "main.cf").exists():
        return "hash"
    params = load(config_dir).params
    return str(params["default_database_type"]) if "default_database_type" in params else "hash"


def split_spec(arg: str, default_type: str) -> tuple[str, str]:
    """``type:name`` -> ``(type, name)``; a plain file name gets ``default_type``."""
    type_name, sep, name = arg.partition(":")
    if sep and _TYPE_RE.fullmatch(type_name.lower()):
        return type_name.lower(), name
    return default_type, arg


def run(args: argparse.Namespace) -> int:
    try:
        untyped = any(split_spec(t, "")[0] == "" for t in args.tables)
        default = default_database_type(Path(args.config_dir)) if untyped else "hash"
        specs = [split_spec(t, default) for t in args.tables]
        if args.query is not None:
            return _query(specs, args.query, fold=not args.no_fold)
        if args.dump:
            return _dump(specs, fold=not args.no_fold)
        return _build(specs, args)
    except (TableError, ConfigError) as e:
        return _fatal(str(e))
    except OSError as e:
        return _fatal(f"{e.filename}: {e.strerror}" if e.filename else str(e))


def _open(type_name: str, name: str, fold: bool) -> Table:
    if type_name in INDEXED_TYPES and not fold:
        return LmdbTable(f"{type_name}:{name}", Path(name), fold=False)
    return open_table(f"{type_name}:{name}")


def _query(specs: list[tuple[str, str]], key: str, fold: bool) -> int:
    tables = [_open(t, n, fold) for t, n in specs]
    if key != "-":
        for table in tables:
            value = table.lookup(key)
            if value is not None:
                print(value)
                return 0
        return 1
    found = False
    for line in iter(lambda: sys.stdin.readline(MAX_KEY_LINE), ""):
        k = line.rstrip("\r\n")
        for table in tables:
            value = table.lookup(k)
            if value is not None:
                print(f"{k} {value}")
                found = True
                break
    return 0 if found else 1


def _dump(specs: list[tuple[str, str]], fold: bool) -> int:
    for type_name, name in specs:
        table = _open(type_name, name, fold)
        if isinstance(table, LmdbTable):
            items: Iterable[tuple[str, str]] = table.items()
        elif isinstance(table, TexthashTable):
            items = table.current().items()
        else:
            return _fatal(f"{type_name}:{name}: -s is not supported for {type_name} tables")
        for key, value in items:
            print(f"{key} {value}")
    return 0


def _build(specs: list[tuple[str, str]], args: argparse.Namespace) -> int:
    for type_name, name in specs:
        if type_name not in INDEXED_TYPES:
            return _fatal(
                f"{type_name}:{name}: {type_name} tables are read as they are; "
                f"postmap builds {', '.join(INDEXED_TYPES)} tables"
            )
    if args.incremental and len(specs) != 1:
        return _fatal("-i adds entries to one table: name exactly one")
    for _, name in specs:
        options = {"fold": not args.no_fold, "replace": args.replace}
        if args.incremental:
            text = sys.stdin.read(MAX_FILE_BYTES + 1)
            if len(text) > MAX_FILE_BYTES:
                return _fatal(f"-i: more than {MAX_FILE_BYTES} characters on stdin")
            warnings = add_entries(Path(name), text, **options)
        else:
            warnings = compile_file(Path(name), inherit_mode=not args.default_mode, **options)
        if not args.ignore_dups:
            _warn(warnings)
    return 0
