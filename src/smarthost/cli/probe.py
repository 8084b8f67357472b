"""``smarthost probe HOST[:PORT]``: banner, capabilities, TLS and certificate, AUTH, relay test, test message.

    probe HOST[:PORT] [--starttls | --implicit | --no-tls] [--ca FILE] [--name NAME] [--helo NAME]
          [--timeout SECONDS] [--user NAME [--password PASS] [--mech NAME]] [--allow-plaintext-auth]
          [--auth-unverified] [--from ADDR --to ADDR... [--body TEXT]] [--relay-test]
          [--relay-domain DOMAIN] [--foreign-domain DOMAIN] [--json]

Port 465 means implicit TLS, any other STARTTLS, unless told otherwise. With ``--user`` the
password is asked for on a terminal, else read from the first line of stdin; ``--password`` on
the command line works too but is visible to other users in the process list (a warning says so
on stderr). The probe connects
only to HOST. Exit status: 0 all good, 1 a problem found (a certificate that does not verify, no
STARTTLS, AUTH offered before TLS, a failed login or test message, an open relay), 2 could not
connect. The work is done by :mod:`smarthost.probe`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from pathlib import Path

from smarthost.authd.saslauthd import MAX_PASSWORD
from smarthost.probe import (
    DEFAULT_TIMEOUT, IMPLICIT, NO_TLS, STARTTLS, ProbeOptions, format_report, parse_target, probe,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "probe", help="probe an SMTP server: banner, capabilities, TLS, certificate, AUTH, relay test",
        description="Connect to HOST[:PORT] (default port 25) and report what an admin needs to know: banner, "
                    "EHLO capabilities before and after TLS, the TLS protocol, cipher and certificate chain and "
                    "whether it verifies, AUTH mechanisms; optionally a test login, a test message and an "
                    "open-relay test. Exit status: 0 all good, 1 a problem found, 2 could not connect.",
    )
    p.add_argument("target", metavar="HOST[:PORT]", help="where to connect ([IPv6]:PORT for IPv6)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--starttls", dest="tls_mode", action="store_const", const=STARTTLS,
                      help="STARTTLS after EHLO (the default except on port 465)")
    mode.add_argument("--implicit", dest="tls_mode", action="store_const", const=IMPLICIT,
                      help="TLS from the first byte (the default on port 465)")
    mode.add_argument("--no-tls", dest="tls_mode", action="store_const", const=NO_TLS, help="no TLS at all")
    p.add_argument("--ca", type=Path, metavar="FILE", help="trust these CA certificates (default: the system's)")
    p.add_argument("--name", metavar="NAME", help="the name the certificate must carry (default: HOST)")
    p.add_argument("--helo", default="probe.invalid", metavar="NAME", help="EHLO name (default probe.invalid)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"for each step: connect, every reply, the handshake (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--user", metavar="NAME", help="test authentication as NAME (password from a prompt or stdin)")
    p.add_argument("--password", metavar="PASS", help="the password (visible in the process list; prefer the prompt)")
    p.add_argument("--mech", metavar="NAME", help="the SASL mechanism (default: the best one offered)")
    p.add_argument("--allow-plaintext-auth", action="store_true", help="allow sending credentials without TLS")
    p.add_argument("--auth-unverified", action="store_true",
                   help="send credentials even when the certificate does not verify")
    p.add_argument("--from", dest="sender", metavar="ADDR", help="send a test message from ADDR (with --to)")
    p.add_argument("--to", dest="recipients", action="append", default=[], metavar="ADDR",
                   help="a recipient of the test message (repeatable)")
    p.add_argument("--body", metavar="TEXT", help="the test message (headers, blank line, body; default: generated)")
    p.add_argument("--relay-test", action="store_true",
                   help="try the classic unauthenticated relay tricks (MAIL/RCPT then RSET, never DATA)")
    p.add_argument("--relay-domain", metavar="DOMAIN",
                   help="the server's own domain in the tricks (default: the name it gives in EHLO)")
    p.add_argument("--foreign-domain", default="example.net", metavar="DOMAIN",
                   help="the outside domain relayed to (default example.net)")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=cmd_probe)


def _read_password(user: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(f"Password for {user}: ")
    return sys.stdin.readline(MAX_PASSWORD + 2).rstrip("\r\n")


def cmd_probe(args: argparse.Namespace) -> int:
    try:
        host, port = parse_target(args.target)
    except ValueError as e:
        print(f"smarthost: probe: {e}", file=sys.stderr)
        return 2
    if args.ca is not None and not args.ca.is_file():
        print(f"smarthost: probe: --ca {args.ca}: no such file", file=sys.stderr)
        return 2
    if bool(args.sender) != bool(args.recipients):
        print("smarthost: probe: a test message needs both --from and --to", file=sys.stderr)
        return 2
    password = None
    if args.password is not None:
        print("smarthost: probe: warning: a password on the command line is visible to other users of this "
              "machine (ps, /proc/PID/cmdline); leave out --password to be asked for it, or pipe it to stdin",
              file=sys.stderr)
    if args.user is not None:
        password = args.password if args.password is not None else _read_password(args.user)
    body = None
    if args.body is not None:
        body = args.body.replace("\r\n", "\n").replace("\n", "\r\n").encode()
    options = ProbeOptions(
        host=host, port=port, tls_mode=args.tls_mode, name=args.name, ca_file=args.ca, helo=args.helo,
        timeout=args.timeout, user=args.user, password=password, mechanism=args.mech,
        allow_plaintext_auth=args.allow_plaintext_auth, auth_unverified=args.auth_unverified,
        sender=args.sender, recipients=tuple(args.recipients), body=body, relay_test=args.relay_test,
        relay_domain=args.relay_domain, foreign_domain=args.foreign_domain,
    )
    report = asyncio.run(probe(options))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        sys.stdout.write(format_report(report))
    return report.exit_status
