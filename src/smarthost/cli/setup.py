"""``smarthost [-c DIR] setup server|client``: write a complete configuration for one role of the recipe.

    setup server --hostname HOST --domain DOMAIN... [--user NAME...] [--network CIDR...]
                 [--ca-cert FILE --ca-key FILE | --cert FILE --key FILE] [--san NAME...] [--new-cert]
                 [--saslauthd [--saslauthd-socket-dir DIR]] [--listen ADDR] [--mail-owner USER]
                 [--port-offset N | --smtp-port N --submission-port N --smtps-port N]
                 [--local-state] [--force]
    setup client --hostname HOST --relayhost HOST[:PORT] --relay-user NAME [--ca FILE]
                 [--network CIDR...] [--smtp-port N | --port-offset N] [--local-state] [--force]

The configuration goes to ``-c DIR``. What is not given on the command line is asked for when
stdin is a terminal, with the default in brackets (Enter takes it): the host name, the mail
domains, the networks trusted to relay, the users, the certificate (self-signed, issued by a CA
made with ``smarthost cert ca init``, or existing files, with their paths) and its other names
(server); the host name, the relayhost, the login and the CA to verify the smarthost with (client).
Passwords are never taken from the command line: on a terminal they are asked for (twice),
otherwise read from stdin, one line per ``--user`` in order (server) or one line (client).
Without ``--force`` an existing main.cf or master.cf is left alone, and so is an existing
``tls/cert.pem``/``key.pem``; with ``--force`` that pair is kept when it still fits the host name
(a new one only with ``--new-cert``, or when it does not fit: said loudly). After writing,
``smarthost check`` runs on the new directory (when this installation has it) and the next steps
are printed. Exit status: 0 written (and checked), 1 an error or a check that found errors.
The work is done by :mod:`smarthost.setup`.
"""

from __future__ import annotations

import argparse
import getpass
import importlib.util
import socket
import sys
from pathlib import Path

from smarthost.authd.saslauthd import MAX_PASSWORD
from smarthost.probe import parse_target
from smarthost.setup import (
    SASLAUTHD,
    AUXPROP,
    CertificateSource,
    ClientAnswers,
    Ports,
    ServerAnswers,
    SetupError,
    SetupResult,
    setup_client,
    setup_server,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "setup", help="write a complete configuration for a smarthost (server) or a satellite (client)",
        description="Write a complete, commented configuration directory (-c DIR) for one role of the recipe, "
                    "then check it and print the next steps.",
    )
    roles = parser.add_subparsers(dest="setup_role", metavar="ROLE", required=True)

    p = roles.add_parser("server", help="the smarthost: MX on 25, submission on 587 and 465 with AUTH",
                         description="The smarthost: accepts mail for its domains on 25, lets its users log in "
                                     "and relay on 587 (STARTTLS) and 465 (implicit TLS).")
    p.add_argument("--hostname", metavar="HOST", help="the server's name, e.g. mail.example.com")
    p.add_argument("--domain", dest="domains", action="append", default=[], metavar="DOMAIN",
                   help="a mail domain delivered here (repeatable; the first is $mydomain)")
    p.add_argument("--user", dest="users", action="append", default=[], metavar="NAME",
                   help="a user who may log in and relay (repeatable); password from a prompt or stdin")
    _networks(p)
    cert = p.add_mutually_exclusive_group()
    cert.add_argument("--ca-cert", type=Path, metavar="FILE", help="issue the certificate from this CA (with --ca-key)")
    cert.add_argument("--cert", type=Path, metavar="FILE", help="use this existing certificate (with --key)")
    p.add_argument("--ca-key", type=Path, metavar="FILE", help="the CA's key (made by smarthost cert ca init)")
    p.add_argument("--key", type=Path, metavar="FILE", help="the key of --cert")
    p.add_argument("--san", dest="sans", action="append", default=[], metavar="NAME",
                   help="another name or address for a certificate made now (repeatable)")
    p.add_argument("--new-cert", action="store_true",
                   help="replace DIR/tls/cert.pem and key.pem even if they still fit (satellites that pinned "
                        "the old certificate need the new one)")
    p.add_argument("--saslauthd", action="store_true",
                   help="check passwords through smarthost authd (saslauthd protocol) instead of the user database")
    p.add_argument("--saslauthd-socket-dir", metavar="DIR", help="the auth daemon's socket directory")
    p.add_argument("--listen", metavar="ADDR", help="listen on this address only (inet_interfaces; default all)")
    p.add_argument("--mail-owner", metavar="USER", help="the owner of the mailboxes (default vmail)")
    _ports(p, server=True)
    _common(p)
    p.set_defaults(func=cmd_setup_server)

    p = roles.add_parser("client", help="a satellite: relays all mail through a smarthost with SASL over TLS",
                         description="A satellite: accepts mail from local programs on loopback and relays all of "
                                     "it through the smarthost, logged in, over TLS.")
    p.add_argument("--hostname", metavar="HOST", help="this machine's name (default: its FQDN)")
    p.add_argument("--relayhost", metavar="HOST[:PORT]", help="the smarthost (default port 587)")
    p.add_argument("--relay-user", metavar="NAME", help="the login at the smarthost; password from a prompt or stdin")
    p.add_argument("--ca", type=Path, metavar="FILE",
                   help="verify the smarthost's certificate against this CA (smtp_tls_security_level = verify)")
    _networks(p)
    _ports(p, server=False)
    _common(p)
    p.set_defaults(func=cmd_setup_client)


def _networks(p: argparse.ArgumentParser) -> None:
    p.add_argument("--network", dest="networks", action="append", default=[], metavar="CIDR",
                   help="another network allowed to relay without logging in (repeatable; loopback always is)")


def _ports(p: argparse.ArgumentParser, server: bool) -> None:
    p.add_argument("--port-offset", type=int, default=0, metavar="N", help="add N to every standard port")
    p.add_argument("--smtp-port", type=int, metavar="N", help="the SMTP port (default 25)")
    if server:
        p.add_argument("--submission-port", type=int, metavar="N", help="the submission port (default 587)")
        p.add_argument("--smtps-port", type=int, metavar="N", help="the implicit TLS port (default 465)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--local-state", action="store_true",
                   help="keep queue, data, log and mailboxes inside the configuration directory (tests, demos)")
    p.add_argument("--force", action="store_true", help="replace an existing configuration")


# --- answers ---------------------------------------------------------------------------------


def _interactive() -> bool:
    return sys.stdin.isatty()


def _ask(value: str | None, prompt: str, flag: str, default: str | None = None) -> str:
    if value:
        return value
    if _interactive():
        shown = f" [{default}]" if default else ""
        answer = input(f"{prompt}{shown}: ").strip() or (default or "")
        if answer:
            return answer
    if default:
        return default
    raise SetupError(f"{flag} is required")


def _ask_list(values: list[str], prompt: str, default: list[str] | None = None) -> list[str]:
    """``values`` when given; else, on a terminal, names separated by spaces or commas (Enter: ``default``)."""
    if values or not _interactive():
        return values or list(default or [])
    shown = " ".join(default) if default else "none"
    answer = input(f"{prompt} [{shown}]: ").replace(",", " ").split()
    return answer or list(default or [])


def _ask_file(prompt: str) -> Path:
    """A path to an existing file, asked for until one is given."""
    while True:
        answer = input(f"{prompt}: ").strip()
        if answer and Path(answer).expanduser().is_file():
            return Path(answer).expanduser()
        print(f"  {answer or '(nothing)'}: no such file" if answer else "  a file is needed", file=sys.stderr)


_CERT_CHOICES = {"s": "selfsigned", "c": "ca", "e": "files"}


def _ask_certificate(args: argparse.Namespace) -> CertificateSource:
    """The certificate the flags name; on a terminal, when they name none, asked for."""
    if args.ca_cert or args.ca_key:
        if not (args.ca_cert and args.ca_key):
            raise SetupError("a certificate from your CA needs both --ca-cert and --ca-key")
        return CertificateSource("ca", ca_cert=args.ca_cert, ca_key=args.ca_key, sans=tuple(args.sans))
    if args.cert or args.key:
        return CertificateSource("files", cert_file=args.cert, key_file=args.key)
    kind = "selfsigned"
    if _interactive():
        while True:
            answer = input("Certificate: (s)elf-signed, issued by your (c)A (made with smarthost cert ca init), "
                           "or (e)xisting files [s]: ").strip().lower() or "s"
            if answer[0] in _CERT_CHOICES:
                kind = _CERT_CHOICES[answer[0]]
                break
            print("  answer s, c or e", file=sys.stderr)
    if kind == "files":
        return CertificateSource("files", cert_file=_ask_file("Certificate file (PEM, the chain after it)"),
                                 key_file=_ask_file("Its private key file"))
    ca_cert = ca_key = None
    if kind == "ca":
        ca_cert, ca_key = _ask_file("CA certificate file"), _ask_file("CA private key file")
    sans = _ask_list(args.sans, "Other names or addresses for the certificate (separated by spaces)")
    return CertificateSource(kind, ca_cert=ca_cert, ca_key=ca_key, sans=tuple(sans))


def _password(who: str) -> str:
    if _interactive():
        first = getpass.getpass(f"Password for {who}: ")
        if getpass.getpass("Again: ") != first:
            raise SetupError(f"the passwords for {who} do not match")
        password = first
    else:
        password = sys.stdin.readline(MAX_PASSWORD + 2).rstrip("\r\n")
    if not password:
        raise SetupError(f"no password for {who} (one line per user on stdin)")
    if len(password.encode()) > MAX_PASSWORD:
        raise SetupError(f"the password for {who} is longer than {MAX_PASSWORD} bytes")
    return password


def _server_ports(args: argparse.Namespace) -> Ports:
    base = Ports.offset(args.port_offset)
    return Ports(args.smtp_port or base.smtp, args.submission_port or base.submission, args.smtps_port or base.smtps)


def cmd_setup_server(args: argparse.Namespace) -> int:
    try:
        hostname = _ask(args.hostname, "Host name of this server (e.g. mail.example.com)", "--hostname")
        guess = hostname.partition(".")[2] or None
        domains = _ask_list(args.domains, "Mail domains delivered here (separated by spaces; the first is "
                            "$mydomain)", [guess] if guess else None)
        if not domains:
            raise SetupError("--domain is required")
        networks = _ask_list(args.networks, "Networks whose clients may relay without logging in, besides "
                             "loopback (CIDR, separated by spaces)")
        users = _ask_list(args.users, "Users who may log in (names, separated by spaces)")
        source = _ask_certificate(args)
        answers = ServerAnswers(
            hostname=hostname, domains=tuple(domains), users=tuple((u, _password(u)) for u in users),
            networks=tuple(networks), certificate=source, pwcheck=SASLAUTHD if args.saslauthd else AUXPROP,
            saslauthd_socket_dir=args.saslauthd_socket_dir, ports=_server_ports(args), listen=args.listen,
            local_state=args.local_state, mail_owner=args.mail_owner,
        )
        result = setup_server(Path(args.config_dir), answers, force=args.force, new_cert=args.new_cert)
    except (SetupError, OSError) as e:
        return _fail(e)
    return _finish(result)


def cmd_setup_client(args: argparse.Namespace) -> int:
    try:
        hostname = _ask(args.hostname, "Host name of this machine", "--hostname", socket.getfqdn())
        relay = _ask(args.relayhost, "The smarthost (host or host:port)", "--relayhost")
        try:
            relay_host, relay_port = parse_target(relay, default_port=587)
        except ValueError as e:
            raise SetupError(f"--relayhost: {e}") from None
        user = _ask(args.relay_user, "Your login at the smarthost", "--relay-user")
        ca_file = args.ca
        if ca_file is None and _interactive():
            answer = input("The CA (or the smarthost's own certificate) to verify it against, a file; "
                           "Enter: TLS is required but not verified [none]: ").strip()
            ca_file = Path(answer).expanduser() if answer and answer != "none" else None
        smtp_port = args.smtp_port or 25 + args.port_offset
        answers = ClientAnswers(
            hostname=hostname, relayhost=relay_host, relay_port=relay_port, username=user,
            password=_password(f"{user} at {relay_host}"), ca_file=ca_file, networks=tuple(args.networks),
            smtp_port=smtp_port, local_state=args.local_state,
        )
        result = setup_client(Path(args.config_dir), answers, force=args.force)
    except (SetupError, OSError) as e:
        return _fail(e)
    return _finish(result)


def _fail(error: Exception) -> int:
    if isinstance(error, OSError):
        message = f"{error.filename}: {error.strerror}" if error.filename else str(error)
    else:
        message = str(error)
    print(f"smarthost: setup: {message}", file=sys.stderr)
    return 1


def run_check(directory: Path) -> int | None:
    """``smarthost -c DIR check`` when this installation has the command; None when it does not."""
    if importlib.util.find_spec("smarthost.cli.check") is None:
        return None
    from smarthost.cli import main

    return main(["-c", str(directory), "check"])


def _finish(result: SetupResult) -> int:
    print(f"Wrote the configuration in {result.directory}:")
    for path in result.written:
        print(f"  {path}")
    for note in result.notes:
        print(note, file=sys.stderr if note.startswith("WARNING") else sys.stdout)
    status = run_check(result.directory)
    if status:
        print("smarthost check found errors (above); fix them before starting.", file=sys.stderr)
    print("Next steps:")
    for i, step in enumerate(result.next_steps, 1):
        print(f"  {i}. {step}")
    return 1 if status else 0
