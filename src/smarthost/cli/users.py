"""``smarthost users add|del|passwd|list``: the user database (saslpasswd2 / sasldblistusers2).

The database is the file ``sasldb_path`` names in the Cyrus-style ``sasl/smtpd.conf`` (default
``CONFIG_DIR/sasldb``), or ``-f FILE``. Passwords come from a prompt (asked twice) when stdin
is a terminal, else from the first line of stdin — never from the command line, where other
users could read them in the process list. ``--cram`` (add, passwd) also stores a CRAM-MD5
secret for that user; nobody gets one by default.
"""

from __future__ import annotations

import getpass
import sys
import time
from pathlib import Path

from smarthost.authd.saslauthd import MAX_PASSWORD
from smarthost.authd.userdb import UserDB, UserDBError

DEFAULT_USERDB = "sasldb"


def userdb_path(config_dir: str | Path) -> Path:
    """``sasldb_path`` from ``CONFIG_DIR/sasl/smtpd.conf`` if it says so, else ``CONFIG_DIR/sasldb``.
    A relative path is taken relative to the configuration directory."""
    config_dir = Path(config_dir)
    conf = config_dir / "sasl" / "smtpd.conf"
    path = DEFAULT_USERDB
    try:
        lines = conf.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip() == "sasldb_path" and value.strip():
            path = value.strip()
    return config_dir / path  # an absolute path stays as it is


def register(sub) -> None:
    p = sub.add_parser("users", help="manage the SASL user database (saslpasswd2, sasldblistusers2)")
    p.add_argument("-f", dest="userdb", metavar="FILE", help="the user database (default: sasldb_path of sasl/smtpd.conf)")
    actions = p.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    for name, help_text in (("add", "add a user"), ("del", "delete a user"), ("passwd", "change a user's password")):
        a = actions.add_parser(name, help=help_text)
        a.add_argument("name", help="user name, or user@realm")
        a.add_argument("-u", dest="realm", default="", help="the user's realm (default: none, or the part after @)")
        if name != "del":
            a.add_argument("--cram", action="store_true",
                           help="also store a CRAM-MD5 secret (HMAC-MD5 key states: not the password, but"
                                " enough to log in with CRAM-MD5); without it, passwd removes an old one")
        a.set_defaults(func=cmd_users)
    a = actions.add_parser("list", help="list the users")
    a.set_defaults(func=cmd_users)


def read_password(prompt: bool) -> str:
    """The new password: asked twice on a terminal, else the first line of stdin."""
    if prompt:
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again (for verification): ") != first:
            raise UserDBError("passwords do not match")
        password = first
    else:
        password = sys.stdin.readline(MAX_PASSWORD + 2).rstrip("\r\n")
    if not password:
        raise UserDBError("no password given")
    if len(password.encode("utf-8")) > MAX_PASSWORD:
        raise UserDBError(f"password longer than {MAX_PASSWORD} bytes")
    return password


def cmd_users(args) -> int:
    db = UserDB(args.userdb or userdb_path(args.config_dir))
    try:
        if args.users_command == "list":
            for user in db.list():
                changed = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(user.changed))
                print(f"{user.login}: {' '.join((user.scheme, *user.mechanisms))} (changed {changed})")
            return 0
        if args.users_command == "del":
            db.delete(args.name, args.realm)
            return 0
        password = read_password(sys.stdin.isatty())
        if args.users_command == "add":
            db.add(args.name, password, args.realm, cram=args.cram)
        else:
            db.set_password(args.name, password, args.realm, cram=args.cram)
        return 0
    except UserDBError as e:
        print(f"smarthost: users: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"smarthost: users: {db.path}: {e.strerror}", file=sys.stderr)
        return 1
    finally:
        db.close()
