"""Command-line entry point: ``smarthost [-c DIR] COMMAND ...``.

Each command family lives in its own module of this package exposing
``register(subparsers)`` (found automatically); the registered parser sets ``func(args) -> int``. ``-c DIR`` (or ``MAIL_CONFIG``) names the
configuration directory for every command; the default is ``/etc/smarthost``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

DEFAULT_CONFIG_DIR = "/etc/smarthost"

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smarthost", description="smarthost: an authenticated, encrypted mail relay that reads Postfix's configuration"
    )
    parser.add_argument(
        "-c",
        dest="config_dir",
        default=os.environ.get("MAIL_CONFIG", DEFAULT_CONFIG_DIR),
        help="configuration directory (default: $MAIL_CONFIG or /etc/smarthost)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"smarthost.cli.{module}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
