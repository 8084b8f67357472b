"""``smarthost authd``: the auth daemon, a thin asyncio shell around the wire codecs.

It listens on ``SOCKDIR/mux`` (saslauthd protocol: one check per connection) and, when asked,
on a second socket speaking Dovecot's auth protocol (mechanisms PLAIN and LOGIN, for a Postfix
with ``smtpd_sasl_type = dovecot``). Checks run in a thread pool, because backends block.

Sockets and permissions: the socket directory is created ``0710`` when missing (an existing
directory keeps its owner and mode: give it the group of the SMTP workers, as Debian does with
``root:sasl`` for saslauthd); the sockets themselves are ``0666``, the directory is the access
control. A stale socket left by a crash is replaced; a live one (another daemon answering, such
as Debian's saslauthd on the default ``/var/run/saslauthd``) stops the start: it is never taken over. ``SOCKDIR/authd.pid`` holds the pid while running. SIGTERM or SIGINT: stop accepting,
remove the sockets and the pid file, exit 0.

One mail log line per attempt, never with the password::

    ... smarthost/authd[4711]: auth success: user=alice service=smtp realm=
    ... smarthost/authd[4711]: auth failure: user=alice service=smtp realm=example.test
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import signal
import socket
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from smarthost import sasl
from smarthost.authd import dovecot, saslauthd
from smarthost.authd.backends import Backend, BackendError
from smarthost.authd.cache import CredentialCache
from smarthost.maillog import MailLog

# Cyrus saslauthd's own default (its -m), so that a sasl/smtpd.conf without saslauthd_path — the
# recipe's two lines — reaches this daemon at /var/run/saslauthd/mux as it would reach saslauthd.
DEFAULT_SOCKET_DIR = "/var/run/saslauthd"
SOCKET_NAME = "mux"
PID_NAME = "authd.pid"
REQUEST_TIMEOUT = 10.0  # seconds for a saslauthd client to send its request and read the answer
MAX_PENDING = 32  # unfinished Dovecot AUTH requests per connection
DOVECOT_MECHANISMS = ("PLAIN", "LOGIN")  # what a password check can serve

logger = logging.getLogger(__name__)


class DaemonError(Exception):
    """The daemon can not start (the message says which path and why)."""


def printable(value: str, limit: int = 128) -> str:
    """A user-supplied value made safe for a log line: no control characters, bounded."""
    clean = "".join(c if c.isprintable() and c != " " else "?" for c in value[:limit])
    return clean + ("..." if len(value) > limit else "")


def bind_unix(path: Path) -> socket.socket:
    """A listening unix stream socket at ``path`` (mode 0666), replacing a stale socket file;
    ``DaemonError`` if another process answers there or the path is not a socket."""
    path.parent.mkdir(mode=0o710, parents=True, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise DaemonError(f"{path} exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                os.unlink(path)  # nobody listens: left over from a crash
            else:
                raise DaemonError(
                    f"another auth daemon is listening on {path} (a Cyrus saslauthd?); stop it first, or give this"
                    f" one its own directory with -m DIR and name DIR/{path.name} in saslauthd_path of sasl/smtpd.conf"
                )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o666)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise DaemonError(f"cannot listen on {path}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


def _where(login: str, service: str, realm: str) -> str:
    return f"user={printable(login)} service={printable(service)} realm={printable(realm)}"


class _SaslauthdConnection(asyncio.Protocol):
    """One saslauthd client: one request at a time, each answered in turn.

    Cyrus's saslauthd closes the connection after its answer; we keep it open for the next
    request, so a client that asks again (smarthost's SMTP workers do) spares a ``connect``,
    and one that closes after its answer (Cyrus's libsasl2, ``testsaslauthd``) sees no
    difference. A protocol object rather than streams and a task: a login the credential cache
    knows is answered inside the read callback. The client has ``request_timeout`` to send
    each request; an idle connection is closed after as long.
    """

    def __init__(self, daemon: AuthDaemon, loop: asyncio.AbstractEventLoop) -> None:
        self.daemon = daemon
        self.loop = loop
        self.decoder = saslauthd.RequestDecoder()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.checking = False  # a request is being answered; input waits
        self.task: asyncio.Task | None = None  # a check the cache could not answer (kept referenced)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.timer = self.loop.call_later(self.daemon.request_timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self.checking or self.transport is None or self.transport.is_closing():
            return
        try:
            request = self.decoder.feed(data)
        except saslauthd.ProtocolError as e:
            self.daemon.maillog.warning(f"bad saslauthd request: {e}")
            self._answer(False, "bad request", last=True)
            return
        if request is None:
            return
        self.timer.cancel()
        self.checking = True
        self.transport.pause_reading()
        if self.daemon.cached(request.login, request.password, request.service, request.realm):
            self._answer(True, "Success.")
        else:
            self.task = self.loop.create_task(self._check(request))

    async def _check(self, request: saslauthd.Request) -> None:
        ok = await self.daemon.check(request.login, request.password, request.service, request.realm)
        self.task = None
        self._answer(bool(ok), "Success." if ok else "temporary failure" if ok is None else "authentication failed")

    def _answer(self, ok: bool, text: str, *, last: bool = False) -> None:
        if self.timer is not None:
            self.timer.cancel()
        transport = self.transport
        if transport is None or transport.is_closing():  # the client went away
            return
        transport.write(saslauthd.encode_response(ok, text))
        if last:
            transport.close()
            return
        self.decoder = saslauthd.RequestDecoder()  # the next request, if the client has one
        self.checking = False
        self.timer = self.loop.call_later(self.daemon.request_timeout, self._idle_timeout)
        transport.resume_reading()

    def _timed_out(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.daemon.maillog.warning("saslauthd client timed out")
            self.transport.abort()

    def _idle_timeout(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if self.decoder.started:
                self._timed_out()  # a request begun and not finished in time
            else:
                self.transport.close()  # an idle kept connection: nothing to report

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()


class AuthDaemon:
    """Serves ``backend`` on ``socket_dir/mux`` (and ``dovecot_socket`` when given).

    ``bind()`` creates the sockets (synchronously, so a caller can fork afterwards);
    ``serve()`` runs until ``stop()`` or SIGTERM/SIGINT, then cleans up.
    """

    def __init__(
        self,
        backend: Backend,
        socket_dir: str | Path,
        *,
        maillog: MailLog,
        cache: CredentialCache | None = None,
        threads: int = 5,
        dovecot_socket: str | Path | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.backend = backend
        self.socket_dir = Path(socket_dir)
        self.socket_path = self.socket_dir / SOCKET_NAME
        self.dovecot_socket = Path(dovecot_socket) if dovecot_socket else None
        self.maillog = maillog
        self.cache = cache
        self.threads = threads
        self.request_timeout = request_timeout
        self._sockets: dict[Path, socket.socket] = {}
        self._stopping: asyncio.Event | None = None
        self._cuids = itertools.count(1)
        self.hostname = socket.gethostname()

    def bind(self) -> None:
        for path in (self.socket_path, self.dovecot_socket):
            if path is not None:
                self._sockets[path] = bind_unix(path)

    def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def serve(self) -> None:
        if not self._sockets:
            self.bind()
        loop = asyncio.get_running_loop()
        self.maillog.set_process("authd")  # the pid may have changed since (a fork to the background)
        self.maillog.attach(loop)
        self._stopping = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="authd")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        servers = []
        pid_file = self.socket_dir / PID_NAME
        try:
            pid_file.write_text(f"{os.getpid()}\n")
            for path, sock in self._sockets.items():
                if path == self.socket_path:
                    servers.append(await loop.create_unix_server(lambda: _SaslauthdConnection(self, loop), sock=sock))
                else:
                    servers.append(await asyncio.start_unix_server(self._dovecot_connection, sock=sock))
                self.maillog.log(f"listening on {path}")
            await self._stopping.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            for server in servers:
                server.close()
            for path, sock in self._sockets.items():
                sock.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            self._sockets.clear()
            with contextlib.suppress(FileNotFoundError):
                pid_file.unlink()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self.maillog.log("stopped")
            self.maillog.attach(None)

    # --- the check both protocols share -----------------------------------------------------

    def cached(self, login: str, password: str, service: str, realm: str) -> bool:
        """True (and the log line) when the credential cache knows this login as good."""
        if self.cache is not None and self.cache.hit(login, password, service, realm):
            self.maillog.log(f"auth success: {_where(login, service, realm)} (cached)")
            return True
        return False

    async def check(self, login: str, password: str, service: str, realm: str) -> bool | None:
        """True/False for success/failure, None when the backend could not answer. Logs one line."""
        if self.cached(login, password, service, realm):
            return True
        where = _where(login, service, realm)
        loop = asyncio.get_running_loop()
        try:
            ok = await loop.run_in_executor(self._executor, self.backend.check, login, password, service, realm)
        except BackendError as e:
            self.maillog.log(f"auth failure: {where} reason={e}")
            return None
        except Exception as e:  # a bug in a backend: fail closed; the type only, a message could hold data
            logger.error("backend %s raised %s", self.backend.name, type(e).__name__)
            self.maillog.log(f"auth failure: {where} reason=internal error ({type(e).__name__})")
            return None
        if ok:
            if self.cache is not None:
                self.cache.remember(login, password, service, realm)
            self.maillog.log(f"auth success: {where}")
        else:
            self.maillog.log(f"auth failure: {where}")
        return ok

    # --- Dovecot --------------------------------------------------------------------------------

    async def _dovecot_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server = dovecot.DovecotServer(
            [dovecot.Mechanism(name, frozenset({"plaintext"})) for name in DOVECOT_MECHANISMS],
            spid=os.getpid(), cuid=next(self._cuids), cookie=secrets.token_hex(16),
        )
        pending: dict[str, tuple[sasl.ServerMechanism, str]] = {}
        try:
            writer.write(server.greeting())
            while data := await reader.read(65536):
                for event in server.feed(data):
                    writer.write(await self._dovecot_event(event, pending))
                await writer.drain()
        except dovecot.ProtocolError as e:
            self.maillog.warning(f"bad dovecot auth client: {e}")
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _dovecot_event(self, event, pending: dict[str, tuple[sasl.ServerMechanism, str]]) -> bytes:
        """The answer line to one AUTH or CONT, run through smarthost.sasl's PLAIN / LOGIN."""
        fail = dovecot.DovecotServer.fail
        if isinstance(event, dovecot.AuthInvalid):
            pending.pop(event.id, None)
            return fail(event.id, event.reason)
        if isinstance(event, dovecot.AuthBegin):
            if event.mechanism not in DOVECOT_MECHANISMS:
                return fail(event.id, "unsupported mechanism")
            if event.id in pending or len(pending) >= MAX_PENDING:
                return fail(event.id, "too many requests", temporary=True)
            service = event.options.get("service") or "smtp"
            mechanism = sasl.server_mechanism(event.mechanism, sasl.ServerContext(hostname=self.hostname, service=service))
            step = mechanism.start(event.initial)
        else:
            if event.id not in pending:
                return fail(event.id, "unknown request")
            mechanism, service = pending.pop(event.id)
            step = mechanism.respond(event.data)
        if isinstance(step, sasl.CheckPassword):
            ok = await self.check(step.authcid, step.password, service, "")
            if ok is None:
                return fail(event.id, "temporary failure", temporary=True)
            step = mechanism.password_result(ok)
        if isinstance(step, sasl.Challenge):
            pending[event.id] = (mechanism, service)
            return dovecot.DovecotServer.cont(event.id, step.data)
        if isinstance(step, sasl.Success):
            return dovecot.DovecotServer.ok(event.id, step.username)
        return fail(event.id, getattr(step, "reason", "") or "authentication failed")
