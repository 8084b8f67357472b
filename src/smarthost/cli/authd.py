"""``smarthost authd``: the saslauthd-compatible auth daemon (options follow saslauthd's).

``-a`` picks the backend (``pam``, ``shadow``, ``passwd``, ``userdb``; default ``userdb``, the
database ``smarthost users`` manages), ``-O`` its file, ``-m`` the socket directory (the socket is
``SOCKDIR/mux``; default ``/var/run/saslauthd``, Cyrus saslauthd's, which a ``sasl/smtpd.conf``
without ``saslauthd_path`` names; a daemon already answering there is left alone and the start
fails), ``-c`` turns the credential cache on with a lifetime of ``-t`` seconds, ``-n``
sets the number of checking threads, ``-r`` appends the realm to the login (pam, shadow, passwd).
``-d`` stays in the foreground; without it the daemon detaches once it listens. The mail log goes
to stderr, or to ``-l FILE``. ``--dovecot PATH`` also serves Dovecot's auth protocol at PATH.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import sys
from pathlib import Path

from smarthost.authd.backends import BACKENDS, BackendError, make_backend
from smarthost.authd.cache import CredentialCache
from smarthost.authd.daemon import DEFAULT_SOCKET_DIR, AuthDaemon, DaemonError
from smarthost.cli.users import userdb_path
from smarthost.config import ConfigError, load
from smarthost.maillog import MailLog


def register(sub) -> None:
    p = sub.add_parser("authd", help="run the saslauthd-compatible auth daemon")
    p.add_argument("-a", dest="backend", choices=BACKENDS, default="userdb", help="where passwords are checked (default userdb)")
    p.add_argument("-m", dest="socket_dir", default=DEFAULT_SOCKET_DIR, help=f"socket directory (default {DEFAULT_SOCKET_DIR})")
    p.add_argument("-O", dest="option", metavar="FILE", help="the backend's file (shadow, passwd, userdb)")
    p.add_argument("-c", dest="cache", action="store_true", help="cache successful checks")
    p.add_argument("-t", dest="cache_ttl", type=float, default=28800.0, help="cache lifetime in seconds (default 28800)")
    p.add_argument("-n", dest="threads", type=int, default=5, help="checking threads (default 5)")
    p.add_argument("-r", dest="combine_realm", action="store_true", help="check login@realm (pam, shadow, passwd)")
    p.add_argument("-d", dest="foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-l", dest="log_file", help="mail log file (default stderr)")
    p.add_argument("--dovecot", dest="dovecot_socket", metavar="PATH", help="also serve Dovecot's auth protocol at PATH")
    p.set_defaults(func=cmd_authd)


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # plain asyncio where uvloop is missing
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _share_with_mail_owner(socket_dir: Path, config_dir: Path) -> None:
    """Let the SMTP workers (``mail_owner``) reach the socket: the directory is 0710, so give
    it their group — what the classic recipe does by hand with ``adduser postfix sasl``."""
    if os.geteuid() != 0:
        return
    try:
        name = load(config_dir).params["mail_owner"]
    except ConfigError:
        name = "smarthost"
    try:
        gid = pwd.getpwnam(name).pw_gid
        st = os.stat(socket_dir)
    except (KeyError, OSError):
        return
    if st.st_gid == 0 and not st.st_mode & 0o007:
        os.chown(socket_dir, -1, gid)


def cmd_authd(args) -> int:
    if args.threads < 1 or args.cache_ttl <= 0:
        print("smarthost: authd: -n and -t must be positive", file=sys.stderr)
        return 2
    try:
        backend = make_backend(
            args.backend, option=args.option, userdb_path=userdb_path(args.config_dir), combine_realm=args.combine_realm
        )
        maillog = MailLog(args.log_file, program="smarthost")
        daemon = AuthDaemon(
            backend, args.socket_dir, maillog=maillog, threads=args.threads, dovecot_socket=args.dovecot_socket,
            cache=CredentialCache(args.cache_ttl) if args.cache else None,
        )
        daemon.bind()
    except (BackendError, DaemonError) as e:
        print(f"smarthost: authd: fatal: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"smarthost: authd: fatal: {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    _share_with_mail_owner(Path(args.socket_dir), Path(args.config_dir))
    if not args.foreground and os.fork() > 0:
        os._exit(0)  # the parent returns once the sockets listen; the child serves
    if not args.foreground:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
    with asyncio.Runner(loop_factory=_new_event_loop) as runner:
        runner.run(daemon.serve())
    return 0
