"""SMTP AUTH for the server shell: where passwords are checked.

The SMTP core parses AUTH (``smtp/server.py``) and the SASL mechanisms run the exchange
(``sasl/``); this module answers what they ask of the outside world, per the SASL config
(``config/saslconf.py``):

- ``smtpd_sasl_type = cyrus`` with ``pwcheck_method: saslauthd``: plaintext checks go to the
  saslauthd socket (``saslauthd_path``: ours, ``smarthost authd``, or a real Cyrus
  saslauthd). The SMTP workers never read password hashes (DESIGN.md principle 9).
- ``pwcheck_method: auxprop``: the user database (``sasldb_path``) is read directly; it
  stores argon2id hashes, SCRAM verifiers and, for users given one, a CRAM-MD5 secret
  (HMAC-MD5 states, :meth:`PasswordChecker.cram_secret`), so SCRAM and CRAM-MD5 work too.
  Hash checks run in a thread pool, never on the event loop; a successful check is remembered
  for 5 minutes (so a changed password may still work that long in a running worker;
  ``smarthost reload`` forgets).
- Both, in the order written: the first method that says yes wins; a method that cannot be
  reached makes the answer temporary unless another one says yes.
- ``smtpd_sasl_type = dovecot``: the whole exchange is relayed to a Dovecot auth socket
  (``smtpd_sasl_path``), ours or a real Dovecot's (:class:`DovecotRelay`).

Where the sockets are (:func:`auth_socket`), as a Postfix smtpd finds them: a relative path
(Dovecot's ``private/auth``) is relative to ``queue_directory``, and for a service whose
``master.cf`` chroot column is ``y`` an absolute path is inside the chroot, i.e.
``queue_directory`` + path. smarthost does not chroot its workers (one worker serves every
service), but it looks for the sockets where a chrooted smtpd would, so a configuration that
works with Postfix works here, and the other way round. When a socket cannot be reached the
reason names the path tried and how it was found.

Whatever goes wrong on the way (a missing, slow or garbled daemon) is a temporary failure
(``454 4.7.0``), never a success and never a hang: every call has a timeout.
"""

from __future__ import annotations

import asyncio
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

from smarthost.authd.cache import CredentialCache
from smarthost.authd.client import AuthResult, AuthStatus, DovecotAuthClient, SaslauthdClient
from smarthost.authd.userdb import UserDB
from smarthost.config.saslconf import SaslConf
from smarthost.sasl import CramSecret, ScramCredentials

AUTH_TIMEOUT = 10.0
CACHE_SECONDS = 300.0  # how long a successful user-database check is remembered in a worker


@dataclass(frozen=True, slots=True)
class AuthSocket:
    """An auth daemon's socket as the service uses it: ``path`` is where it connects; ``note``
    says how ``path`` was found when it is not the configured value (for the log)."""

    path: str
    note: str = ""

    def explain(self, reason: str) -> str:
        """``reason`` with the note when it names ``path``, e.g. ``cannot reach saslauthd at
        /var/spool/smarthost/var/run/saslauthd/mux: ... (saslauthd_path resolved inside the chroot
        of service submission)``."""
        return f"{reason} ({self.note})" if self.note and self.path in reason else reason


def auth_socket(path: str, parameter: str, *, service: str, queue_directory: str, chroot: bool) -> AuthSocket:
    """Where a Postfix smtpd of ``service`` would find the socket configured as ``path``
    (``parameter`` names the setting: ``saslauthd_path`` or ``smtpd_sasl_path``).

    A relative path is relative to ``queue_directory`` (Postfix's daemons work there); an
    absolute one is as written, except for a chrooted service, whose root is ``queue_directory``.
    """
    if path.startswith("/") and not chroot:
        return AuthSocket(path)
    queue = PurePosixPath(queue_directory or "/")
    resolved = str(queue / path.lstrip("/"))
    if chroot:
        return AuthSocket(resolved, f"{parameter} resolved inside the chroot of service {service}")
    return AuthSocket(resolved, f"{parameter} resolved against queue_directory")


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """What a service's sessions need for AUTH."""

    mechanisms: tuple[str, ...]  # before TLS (smtpd_sasl_security_options)
    service: str  # smtpd_sasl_service: passed to saslauthd (and so to PAM)
    realm: str  # smtpd_sasl_local_domain
    requires_tls: bool  # smtpd_tls_auth_only
    failure_limit: int
    authenticated_header: bool  # smtpd_sasl_authenticated_header
    rate_limit: int = 0  # smtpd_client_auth_rate_limit (0: none)
    rate_unit: float = 60.0  # anvil_rate_time_unit
    tls_mechanisms: tuple[str, ...] | None = None  # once TLS is up (smtpd_sasl_tls_security_options); None: the same


class PasswordChecker:
    """Answers the mechanisms' CheckPassword / NeedScramCredentials requests."""

    def __init__(self, conf: SaslConf, saslauthd: AuthSocket | None = None) -> None:
        self.conf = conf
        self.saslauthd = saslauthd or AuthSocket(conf.saslauthd_path)  # where saslauthd_path is, see auth_socket()
        self._saslauthd = SaslauthdClient(self.saslauthd.path, timeout=AUTH_TIMEOUT)  # keeps idle connections
        self.secret = secrets.token_bytes(32)  # SCRAM's fake salts for unknown users
        self._userdb = UserDB(conf.sasldb_path) if conf.sasldb_path and "auxprop" in conf.pwcheck_methods else None
        self._pool: ThreadPoolExecutor | None = None
        # An argon2id check costs ≈ 0.1–0.2 s of CPU: successful ones are remembered for a few
        # minutes (an HMAC of the credentials, never the password), as saslauthd -c does.
        self._cache = CredentialCache(CACHE_SECONDS)

    def open(self) -> None:
        """Open the user database now (before a worker gives up root, which owns it)."""
        if self._userdb is not None:
            self._userdb.open()

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:  # made lazily: after fork, in the worker
            self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="auth")
        return self._pool

    async def check_password(self, login: str, password: str, service: str, realm: str) -> AuthResult:
        temporary = ""
        for method in self.conf.pwcheck_methods:
            if method == "saslauthd":
                result = await self._saslauthd.check(login, password, service, realm)
                if result.status is AuthStatus.TEMPFAIL:
                    result = replace(result, reason=self.saslauthd.explain(result.reason))
            elif self._cache.hit(login, password, service, realm):
                result = AuthResult(AuthStatus.OK)
            else:
                result = await self._in_pool(self._userdb_check, login, password, realm)
                if result.status is AuthStatus.OK:
                    self._cache.remember(login, password, service, realm)
            if result.status is AuthStatus.OK:
                return result
            if result.status is AuthStatus.TEMPFAIL:
                temporary = result.reason
        if temporary:
            return AuthResult(AuthStatus.TEMPFAIL, temporary)
        return AuthResult(AuthStatus.NO, "authentication failure")

    def _userdb_check(self, login: str, password: str, realm: str) -> AuthResult:
        assert self._userdb is not None
        ok = self._userdb.check_password(login, realm, password)
        return AuthResult(AuthStatus.OK if ok else AuthStatus.NO)

    async def scram_credentials(self, username: str, mechanism: str, realm: str) -> ScramCredentials | None | AuthResult:
        if self._userdb is None:
            return None
        return await self._in_pool(self._userdb.scram_credentials, username, realm, mechanism)

    async def cram_secret(self, username: str, realm: str) -> CramSecret | None | AuthResult:
        """CRAM-MD5's stored secret (``users add --cram``); None without one or without auxprop."""
        if self._userdb is None:
            return None
        return await self._in_pool(self._userdb.cram_secret, username, realm)

    async def _in_pool(self, func, *args):
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._executor(), func, *args), AUTH_TIMEOUT)
        except asyncio.TimeoutError:
            return AuthResult(AuthStatus.TEMPFAIL, f"user database {self.conf.sasldb_path} did not answer")
        except Exception as exc:  # noqa: BLE001 - a broken database is a temporary failure, not a crash
            return AuthResult(AuthStatus.TEMPFAIL, f"user database {self.conf.sasldb_path}: {exc.__class__.__name__}")


class DovecotRelay:
    """``smtpd_sasl_type = dovecot``: the exchange goes to a Dovecot auth socket as it is."""

    def __init__(self, socket: AuthSocket | str, service: str) -> None:
        self.socket = AuthSocket(socket) if isinstance(socket, str) else socket
        self.client = _DovecotClient(self.socket, timeout=AUTH_TIMEOUT, service=service)

    def mechanisms_now(self) -> tuple[str, ...] | None:
        """Ask the daemon which mechanisms it offers (at start); None when it can not be reached."""
        result = asyncio.run(self.client.mechanisms())
        if isinstance(result, AuthResult):
            return None
        return tuple(m.name.upper() for m in result)


class _DovecotClient(DovecotAuthClient):
    """A Dovecot auth client whose failures to connect also say how the path was found."""

    def __init__(self, socket: AuthSocket, **kwargs) -> None:
        super().__init__(socket.path, **kwargs)
        self._socket = socket

    async def start(self, mechanism: str, initial_response: bytes | None = None, **kwargs):
        exchange = await super().start(mechanism, initial_response, **kwargs)
        if exchange.result.status is AuthStatus.TEMPFAIL:
            exchange.result = replace(exchange.result, reason=self._socket.explain(exchange.result.reason))
        return exchange
