"""Command-line entry point: ``smarthost [-c DIR] COMMAND [-c DIR] ...``.

Each command family lives in its own module of this package exposing
``register(subparsers)`` (found automatically); the registered parser sets ``func(args) -> int``.
``-c DIR`` (or ``MAIL_CONFIG``) names the configuration directory for every command; the default
is ``/etc/smarthost``. ``-c`` is accepted before the command and after it (``smarthost postconf
-c DIR -n``, as Postfix users type it), at every level of nested commands; the last one given
wins. A command that uses ``-c`` for something else (``authd -c``: cache, as saslauthd has it)
or parses its own options (``sendmail``) keeps its meaning. ``args.config_dir_given`` tells
whether ``-c`` was given at all (``demo`` then uses it as its directory).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

DEFAULT_CONFIG_DIR = "/etc/smarthost"
_CONFIG_HELP = "configuration directory (default: $MAIL_CONFIG or /etc/smarthost)"


class _CommandParser(argparse.ArgumentParser):
    """A (sub)command's parser that also takes ``-c DIR``.

    Its default is SUPPRESS, so a subcommand where ``-c`` is not given leaves the value from
    before the command alone. ``resolve`` lets a command define its own ``-c`` instead.
    Nested subcommands get this class too (argparse uses the parent parser's class).
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("conflict_handler", "resolve")
        super().__init__(*args, **kwargs)
        if "-" in self.prefix_chars:
            self.add_argument("-c", dest="config_dir", metavar="DIR", default=argparse.SUPPRESS, help=_CONFIG_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smarthost", description="smarthost: an authenticated, encrypted mail relay that reads Postfix's configuration"
    )
    parser.add_argument("-c", dest="config_dir", metavar="DIR", default=argparse.SUPPRESS, help=_CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"smarthost.cli.{module}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.config_dir_given = hasattr(args, "config_dir")
    if not args.config_dir_given:
        args.config_dir = os.environ.get("MAIL_CONFIG", DEFAULT_CONFIG_DIR)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
