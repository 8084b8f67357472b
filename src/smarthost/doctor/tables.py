"""Lookup tables named anywhere in main.cf or master.cf: an indexed table (``hash:``, ``btree:``,
``lmdb:``) whose compiled file is missing, unreadable or older than its source, a text table
(``texthash:``, ``cidr:``, ``regexp:``, ``pcre:``) that cannot be read, and relay passwords
readable by others."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from smarthost.doctor.context import Context
from smarthost.doctor.findings import ERROR, WARNING
from smarthost.tables import TableError, open_table, resolve_path, split_list
from smarthost.tables.lmdbtable import INDEXED_TYPES, compiled_path

TEXT_TYPES = ("texthash", "cidr", "regexp", "pcre")
SECRET_MAPS = ("smtp_sasl_password_maps",)
# Caches the daemons write themselves (tlsmgr, verify, postscreen): named like tables, never compiled.
_CACHES = ("_cache_database", "_cache_map", "address_verify_map")
_SPEC = re.compile(r"(?:proxy:)?(?P<type>[A-Za-z]+):(?P<name>[^{}\s]+)")


def named_tables(ctx: Context) -> dict[tuple[str, Path], tuple[str, tuple[str, int | None], str]]:
    """Every file table someone wrote: (type, file) -> (spec, where it is named, parameter)."""
    found: dict[tuple[str, Path], tuple[str, tuple[str, int | None], str]] = {}
    main = ctx.cfg.params
    written = [(main, name, ctx.where(main, name)) for name in main.names() if not main.is_default(name)]
    for service in ctx.cfg.services:
        written += [(service.params, name, (service.file, service.line)) for name in service.overrides]
    written.sort(key=lambda w: (w[2][0], w[2][1] or 0))  # file order: name each table where first written
    for params, name, where in written:
        if name.endswith(_CACHES):
            continue
        try:
            tokens = split_list(params.raw(name))
        except ValueError:
            continue
        for token in tokens:
            m = _SPEC.fullmatch(token)
            if not m or m["type"].lower() not in (*INDEXED_TYPES, *TEXT_TYPES):
                continue
            kind = m["type"].lower()
            path = resolve_path(m["name"], ctx.cfg.config_dir)
            found.setdefault((kind, path), (f"{kind}:{m['name']}", where, name))
    return found


def check(ctx: Context) -> None:
    for (kind, path), (spec, where, param) in named_tables(ctx).items():
        if kind in INDEXED_TYPES:
            _indexed(ctx, kind, path, spec, where, param)
        else:
            try:
                open_table(spec, config_dir=ctx.cfg.config_dir)
            except TableError as e:
                ctx.out.add(ERROR, where, f"{param}: {e}", f"create {path}, or correct the table name",
                            "tables.missing")
        if param in SECRET_MAPS:
            _secret_modes(ctx, path, where, param, kind in INDEXED_TYPES)


def _indexed(ctx: Context, kind: str, path: Path, spec: str, where, param: str) -> None:
    db = compiled_path(path)
    postmap = f"smarthost postmap {kind}:{path}"
    try:
        db_time = os.stat(db).st_mtime_ns
    except FileNotFoundError:
        if path.exists():
            ctx.out.add(ERROR, where, f"{param}: {spec} is not compiled: {db} does not exist", postmap,
                        "tables.missing")
        else:
            ctx.out.add(ERROR, where, f"{param}: {spec}: neither {path} nor {db} exists",
                        f"write {path} (one 'key value' per line), then run: {postmap}", "tables.missing")
        return
    except OSError as e:
        ctx.out.add(ERROR, where, f"{param}: cannot read {db}: {e.strerror}", "check its permissions", "tables.missing")
        return
    try:
        source_time = os.stat(path).st_mtime_ns
    except OSError:
        source_time = None  # built with postmap -i, or the source was removed: nothing to compare
    if source_time is not None and source_time > db_time:
        ctx.out.add(ERROR, where,
                    f"{param}: {path} was changed after it was compiled: the server still uses the old {db}",
                    postmap, "tables.stale")
        return
    try:
        open_table(spec, config_dir=ctx.cfg.config_dir)
    except TableError as e:
        ctx.out.add(ERROR, where, f"{param}: {e}", postmap, "tables.missing")


def _secret_modes(ctx: Context, path: Path, where, param: str, indexed: bool) -> None:
    files = [path, compiled_path(path)] if indexed else [path]
    for file in files:
        try:
            mode = stat.S_IMODE(os.stat(file).st_mode)
        except OSError:
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            ctx.out.add(WARNING, where,
                        f"{param}: {file} holds relay passwords and is readable by group or others (mode {mode:04o})",
                        f"chmod 600 {' '.join(str(f) for f in files)}", "tables.secret-mode")
            return
