"""``smarthost postconf``: show and edit main.cf parameters, like Postfix's postconf(1).

    postconf                 every parameter, as written or defaulted
    postconf NAME...         only these
    postconf -n              only those set in main.cf
    postconf -d              defaults, ignoring main.cf
    postconf -x              values with $name expanded
    postconf -h              values only, without "name = "
    postconf -e NAME=VALUE   edit main.cf in place (checked first; atomic)
    postconf -M              master.cf services, one line each

Exit status: 0 on success, 1 for an unknown name or a configuration error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smarthost.config import ConfigError, Params, Service, load
from smarthost.config.loader import load_with_main
from smarthost.config.maincf import NAME_RE, decode, edit, parse, read, write_atomic


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "postconf",
        help="show or edit main.cf parameters",
        description="Show or edit main.cf parameters, like Postfix's postconf(1).",
        add_help=False,  # -h means "values only", as in Postfix
    )
    parser.add_argument("--help", action="help", help="show this help and exit")
    parser.add_argument("-n", dest="non_default", action="store_true", help="only parameters set in main.cf")
    parser.add_argument("-d", dest="defaults", action="store_true", help="default values")
    parser.add_argument("-x", dest="expand", action="store_true", help="expand $name in values")
    parser.add_argument("-h", dest="value_only", action="store_true", help="print values only")
    parser.add_argument("-e", dest="edit", action="store_true", help="set NAME=VALUE in main.cf")
    parser.add_argument("-M", dest="master", action="store_true", help="print master.cf services")
    parser.add_argument("names", nargs="*", metavar="NAME[=VALUE]")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config_dir = Path(args.config_dir)
    try:
        if args.edit or any("=" in n for n in args.names):
            return _edit(config_dir, args.names)
        if args.defaults:
            params = Params(defaults={"config_directory": str(config_dir)})
            return _show(params, params.names(), args)
        cfg = load(config_dir)
    except ConfigError as e:
        print(f"postconf: fatal: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"postconf: fatal: {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    for warning in cfg.warnings:
        print(f"postconf: warning: {warning}", file=sys.stderr)
    if args.master:
        for service in cfg.services:
            if not args.names or service.name in args.names:
                print(_service_line(service))
        return 0
    if args.non_default:
        written = read(config_dir / "main.cf").settings()
        return _show(cfg.params, sorted(written), args, only=set(written))
    return _show(cfg.params, cfg.params.names(), args)


def _show(params: Params, default_names: list[str], args: argparse.Namespace, only: set[str] | None = None) -> int:
    status = 0
    for name in args.names or default_names:
        if name not in params:
            print(f"postconf: warning: {name}: unknown parameter", file=sys.stderr)
            status = 1
            continue
        if only is not None and name not in only:
            continue
        value = params.raw(name) if args.expand else params.unexpanded(name)
        if args.value_only:
            print(value)
        else:
            print(f"{name} = {value}" if value else f"{name} =")
    return status


def _edit(config_dir: Path, pairs: list[str]) -> int:
    updates: dict[str, str] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or not NAME_RE.fullmatch(name) or "\n" in value or "\r" in value:
            print(f"postconf: fatal: {pair!r}: expected name=value on one line", file=sys.stderr)
            return 1
        updates[name] = value
    if not config_dir.is_dir():
        raise ConfigError(str(config_dir), None, None, "configuration directory does not exist", "create it first")
    path = config_dir / "main.cf"
    try:
        text = decode(path.read_bytes(), str(path))
    except FileNotFoundError:
        text = ""
    new_text = edit(text, str(path), updates)
    main = parse(new_text, str(path))
    cfg = load_with_main(config_dir, main)  # refuse a bad value before writing anything
    written = main.settings()
    prefixes = tuple(f"{path}:{written[name].line}:" for name in updates)
    for warning in cfg.warnings:
        if warning.startswith(prefixes):
            print(f"postconf: warning: {warning}", file=sys.stderr)
    write_atomic(path, new_text)
    return 0


def _service_line(s: Service) -> str:
    def flag(value: bool) -> str:
        return "y" if value else "n"

    options = [
        f"-o {{ {n} = {v} }}" if any(c.isspace() for c in v) else f"-o {n}={v}" for n, v in s.overrides.items()
    ]
    columns = [f"{s.name:<11}", f"{s.type:<5}", flag(s.private), flag(s.unpriv), flag(s.chroot)]
    columns += [str(s.wakeup), str(s.maxproc), s.command]
    return " ".join([*columns, *options, *s.args])
