"""``smarthost testauth``: ask a saslauthd socket about one login (testsaslauthd's equivalent).

Prints ``0: OK "Success."`` or ``0: NO "authentication failed"`` as testsaslauthd does; exit
status 0 only for OK, 1 for NO, 2 when the daemon could not be asked (the reason, naming the
socket path, goes to stderr). Works against ``smarthost authd`` and Cyrus's saslauthd alike.
"""

from __future__ import annotations

import asyncio
import sys

from smarthost.authd.client import AuthStatus, saslauthd_check
from smarthost.authd.daemon import DEFAULT_SOCKET_DIR, SOCKET_NAME


def register(sub) -> None:
    p = sub.add_parser("testauth", help="check a login against a saslauthd socket (like testsaslauthd)")
    p.add_argument("-u", dest="user", required=True, help="login name")
    p.add_argument("-p", dest="password", required=True, help="password")
    p.add_argument("-s", dest="service", default="smtp", help="service name (default smtp)")
    p.add_argument("-r", dest="realm", default="", help="realm (default empty)")
    p.add_argument("-f", dest="socket", default=f"{DEFAULT_SOCKET_DIR}/{SOCKET_NAME}",
                   help=f"the socket (default {DEFAULT_SOCKET_DIR}/{SOCKET_NAME})")
    p.add_argument("-t", dest="timeout", type=float, default=5.0, help="seconds to wait for an answer (default 5)")
    p.set_defaults(func=cmd_testauth)


def cmd_testauth(args) -> int:
    result = asyncio.run(saslauthd_check(args.socket, args.user, args.password, args.service, args.realm, args.timeout))
    if result.status is AuthStatus.OK:
        print('0: OK "Success."')
        return 0
    if result.status is AuthStatus.NO:
        print('0: NO "authentication failed"')
        return 1
    print(f"smarthost: testauth: {result.reason}", file=sys.stderr)
    return 2
