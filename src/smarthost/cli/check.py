"""``smarthost check``: find the classic configuration mistakes, say where and how to fix them.

    smarthost -c DIR check [--json]
    smarthost -c DIR check --sender ADDR [--recipient ADDR] [--json]

Exit status: 1 when there is an error (``--sender``: when the question cannot be answered, or
the client would need credentials and has none), else 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from smarthost.config import ConfigError, load
from smarthost.doctor import ERROR, format_human, format_json, run_checks, sender_report

DEFAULT_RECIPIENT = "postmaster@example.net"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check the configuration for the classic mistakes",
        description="Check the configuration: TLS certificates and keys, AUTH before TLS, open relay, "
        "auth sockets, compiled tables, relay credentials. Each finding names the file and line and the fix.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--sender", metavar="ADDR",
                        help="show the relay and the credentials a message from ADDR would use")
    parser.add_argument("--recipient", metavar="ADDR", default=DEFAULT_RECIPIENT,
                        help=f"with --sender: the recipient to route (default {DEFAULT_RECIPIENT})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # What the library would log while tables and sockets are opened is reported as findings.
    logging.getLogger("smarthost").addHandler(logging.NullHandler())
    if args.sender is not None:
        return _sender(args)
    findings = run_checks(Path(args.config_dir))
    sys.stdout.write(format_json(findings) if args.json else format_human(findings))
    return 1 if any(f.severity is ERROR for f in findings) else 0


def _sender(args: argparse.Namespace) -> int:
    try:
        cfg = load(Path(args.config_dir))
    except ConfigError as e:
        print(f"smarthost check: {e}", file=sys.stderr)
        return 1
    report = sender_report(cfg, args.sender, args.recipient)
    sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n" if args.json else report.human())
    return 1 if report.errors or (report.sasl and report.key is None) else 0
