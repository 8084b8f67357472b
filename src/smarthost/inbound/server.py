"""The SMTP server's I/O shell: asyncio protocol objects around the pure core.

One :class:`Session` per connection feeds received bytes to
:class:`smarthost.smtp.server.ServerConnection`, acts on its events (policy decisions, the
queue, STARTTLS) and writes what the core queued. Replies to a pipelined group leave in one
write, once the core has consumed every complete command in the buffer (RFC 2920).

A :class:`Listener` holds what one ``master.cf`` service needs (core settings, TLS context,
policy); a :class:`Worker` owns the listeners of one process, the queue store, the per-client
connection counts and the idle-timeout sweep, and drains on shutdown.

Decisions taken here:

- No reverse DNS lookup: clients are logged as ``unknown[IP]`` (``localhost`` for loopback),
  as Postfix does with ``smtpd_peername_lookup = no``.
- ``smtpd_timeout`` bounds every wait for client input (idle time between reads), checked by
  one sweep per second rather than a timer per read.
- ``smtpd_client_connection_count_limit`` counts a client's connections across all worker
  processes and all services (``inbound/limits.py``).
- ``smtpd_error_sleep_time``: once a client has made ``smtpd_soft_error_limit`` errors (any
  4xx/5xx: the core's, the policy's, AUTH's) without getting mail queued, every reply is held
  that long — input paused, the worker serving others — as Postfix does.
- Every reject gets a ``NOQUEUE: reject:`` line, the core's too (size, bare LF, TLS required,
  recipient limit); syntax and sequence errors (500–504, 555) are only counted in the
  disconnect line, as in Postfix. No message text is ever logged.
- AUTH EXTERNAL's identity is the name ``relay_clientcerts`` gives the fingerprint of the
  verified client certificate (``FINGERPRINT name``); an unlisted certificate has none (535).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import secrets
import socket
import ssl
import time
from dataclasses import dataclass, replace

from smarthost.authd.client import AuthResult, AuthStatus
from smarthost.inbound.auth import AuthSettings, DovecotRelay, PasswordChecker
from smarthost.inbound.limits import WorkerCounts
from smarthost.inbound.policy import ClientFacts, Policy
from smarthost.maillog import MailLog, client_label
from smarthost.netaddr import NetworkList
from smarthost.outbound.local import LocalSettings, LocalTables, check_recipient
from smarthost.queue import Envelope, QueueStore, Recipient
from smarthost.queue.ids import new_queue_id
from smarthost.queue.manager import notify_queue_manager
from smarthost.sasl import (
    Challenge,
    CheckPassword,
    Failure,
    NeedScramCredentials,
    NeedSecret,
    ServerContext,
    Success,
    server_mechanism,
)
from smarthost.smtp import replies
from smarthost.smtp.replies import Reply
from smarthost.smtp.server import (
    NEED_DATA,
    PAUSED,
    AuthResponse,
    AuthStart,
    Closing,
    DataCommand,
    Helo,
    MailFrom,
    MessageReceived,
    ProtocolError,
    Quit,
    RcptTo,
    ServerConnection,
    ServerSettings,
    StartTLS,
    Vrfy,
)
from smarthost.tables import TableError
from smarthost.tls import TLSInfo

log = logging.getLogger(__name__)

TEMP_FAIL = Reply(451, "4.3.0", "Error: queue file write error")
# Syntax and sequence errors get no log line of their own (as in Postfix): the disconnect
# line counts them (``rcpt=0/1``). Every other reject the core decides is logged.
_SYNTAX_CODES = frozenset({500, 501, 502, 503, 504, 555})
TIMEOUT = "Error: timeout exceeded"


@dataclass(slots=True)
class Listener:
    """Everything one service (a ``master.cf`` line) needs to serve a connection."""

    name: str
    settings: ServerSettings
    policy: Policy
    ssl_context: ssl.SSLContext | None
    wrappermode: bool
    myhostname: str
    timeout: float
    error_sleep: float
    soft_error_limit: int
    connection_limit: int
    limit_exceptions: NetworkList
    bare_newline_exclusions: NetworkList  # clients for whom "reject" relaxes to "normalize"
    tls_loglevel: int
    tls_received_header: bool
    fingerprint_digest: str = "sha256"  # smtpd_tls_fingerprint_digest
    local: tuple[LocalSettings, LocalTables] | None = None  # who exists here (550 5.1.1 at RCPT)
    auth: AuthSettings | None = None  # None: AUTH off for this service
    passwords: PasswordChecker | None = None  # cyrus: saslauthd and/or the user database
    dovecot: DovecotRelay | None = None  # dovecot: the exchange is relayed


class Worker:
    """The SMTP side of one worker process: sessions, shared counters, shutdown."""

    def __init__(self, store: QueueStore, maillog: MailLog, loop: asyncio.AbstractEventLoop,
                 counts: WorkerCounts) -> None:
        self.loop = loop  # kept: asyncio.get_running_loop() costs a getpid() syscall per call
        self.store = store
        self.maillog = maillog
        self.counts = counts  # connections per client, across all workers
        self.sessions: set[Session] = set()
        self.servers: list[asyncio.base_events.Server] = []
        self._wake_scheduled = False
        self._sweeper: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def serve(self, listener: Listener, sock: socket.socket) -> None:
        loop = self.loop
        server = await loop.create_server(
            lambda: Session(self, listener),
            sock=sock,
            ssl=listener.ssl_context if listener.wrappermode else None,
            ssl_handshake_timeout=min(listener.timeout, 60.0) if listener.wrappermode else None,
            backlog=1024,
        )
        self.servers.append(server)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())

    def wake_queue_manager(self) -> None:
        """Tell the queue manager about fresh mail: one datagram per loop iteration at most."""
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self.loop.call_soon(self._wake)

    def _wake(self) -> None:
        self._wake_scheduled = False
        notify_queue_manager(self.store.directory)

    def opened(self, session: Session) -> None:
        self.sessions.add(session)
        self._idle.clear()

    def closed(self, session: Session) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            self._idle.set()

    async def _sweep(self) -> None:
        """Close sessions idle for longer than their service's ``smtpd_timeout`` (421 4.4.2).

        Sessions reset ``idle`` to 0 on every read; each sweep adds the time since the last one.
        """
        loop = self.loop
        last = loop.time()
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            elapsed, last = now - last, now
            for session in list(self.sessions):
                if session._busy:
                    continue  # waiting for the queue or a handshake: not the client's fault
                session.idle += elapsed
                if session.idle > session.listener.timeout:
                    session.timed_out()

    async def drain(self, grace: float) -> None:
        """Stop accepting; let sessions finish for ``grace`` seconds, then close them with 421."""
        for server in self.servers:
            server.close()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except asyncio.TimeoutError:
            for session in list(self.sessions):
                session.shutdown()
            try:
                await asyncio.wait_for(self._idle.wait(), 5.0)
            except asyncio.TimeoutError:
                pass
        if self._sweeper is not None:
            self._sweeper.cancel()


def _client_name(address: str) -> str:
    """``localhost`` for loopback clients, else ``unknown`` (no reverse DNS lookup)."""
    return "localhost" if address.startswith("127.") or address == "::1" else "unknown"


class Session(asyncio.Protocol):
    """One SMTP connection: the core's events turned into actions."""

    def __init__(self, worker: Worker, listener: Listener) -> None:
        self.worker = worker
        self.listener = listener
        self.maillog = worker.maillog
        self.transport: asyncio.Transport | None = None
        self.conn: ServerConnection | None = None
        self.address = ""
        self.label = ""
        self.facts: ClientFacts | None = None
        self.tls: TLSInfo | None = None
        self.loop = worker.loop
        self.idle = 0.0  # seconds without input, kept by Worker._sweep
        self.sender = ""
        self.recipients: list[Recipient] = []
        self.mail_params = None
        self.sasl_method: str | None = None
        self._size = 0  # of the message being queued
        self._mech = None  # the SASL mechanism object of an exchange in progress
        self._exchange = None  # or the Dovecot exchange
        self._mech_name = ""
        self._busy = False          # waiting for the queue or a TLS handshake
        self._counted = False
        self._hold_reply = False  # the pending answer waits smtpd_error_sleep_time (see _pump)
        self._error_base = 0  # errors before the last queued message (they no longer count)

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("", 0)
        address = peer[0]
        if address.startswith("::ffff:") and "." in address:
            address = address[7:]  # IPv4-mapped IPv6 counts as IPv4
        self.address = address
        name = _client_name(address)
        self.label = client_label(name, address)
        listener = self.listener
        self.worker.opened(self)
        self.maillog.log(f"connect from {self.label}")
        if listener.wrappermode:
            self.tls = TLSInfo.from_object(transport.get_extra_info("ssl_object"), listener.fingerprint_digest)
            self._log_tls()
        settings = listener.settings
        if settings.bare_newline == "reject" and listener.bare_newline_exclusions.contains(address):
            settings = replace(settings, bare_newline="normalize")
        self.conn = ServerConnection(settings, tls_active=listener.wrappermode)
        self.facts = ClientFacts(address=address, name=name, helo="", sasl_username=None,
                                 tls=self.tls is not None,
                                 ccert_fingerprint=self.tls.peer_fingerprint if self.tls else None)
        count = self.worker.counts.opened(address)
        self._counted = True
        limit = listener.connection_limit
        if limit and count > limit and not listener.limit_exceptions.contains(address):
            self.maillog.warning(f"Connection concurrency limit exceeded: {count} from {self.label} for service {listener.name}")
            self.conn.refuse(Reply(421, "4.7.0", f"{listener.myhostname} Error: too many connections from {address}"))
            self._flush()
            return
        self.conn.greet()
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.idle = 0.0
        conn = self.conn
        if conn is None or conn.closed:
            return
        conn.receive_data(data)
        if not self._busy:
            self._pump()

    def eof_received(self) -> bool:
        conn = self.conn
        if conn is not None and not conn.closed:
            conn.receive_data(b"")
            if not self._busy:
                self._pump()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self.worker.counts.closed(self.address)
            self._counted = False
        conn = self.conn
        if conn is not None:
            if not conn.closed and conn.counters:
                self.maillog.log(f"lost connection after {self._verb()} from {self.label}")
            self.maillog.log(f"disconnect from {self.label}{_command_stats(conn)}")
        self.worker.closed(self)

    # -- the event pump -------------------------------------------------------------------

    def _pump(self) -> None:
        conn = self.conn
        assert conn is not None
        if self._hold_reply:  # the answer of an AUTH step or of queueing begun past the soft limit
            self._hold_reply = False
            out = conn.data_to_send()
            if out:
                self._delay(out)
                return
        sleepy = self.listener.error_sleep > 0
        slow = False
        while True:
            if sleepy and not slow and conn.failures and self._errors() >= self.listener.soft_error_limit:
                slow = True  # from here on every reply waits; what was answered before leaves now
                self._flush()
            event = conn.next_event()
            if event is NEED_DATA or event is PAUSED:
                break
            kind = type(event)
            if kind is RcptTo:
                self._on_rcpt(event)
            elif kind is MailFrom:
                self.sender = "" if event.address.is_null else str(event.address)
                self.recipients = []
                self.mail_params = event.params
                conn.accept()
            elif kind is DataCommand:
                self._on_data_command()
            elif kind is MessageReceived:
                self._busy = True
                self._hold_reply = slow
                self._queue_message(event.data)
                break
            elif kind is Helo:
                self.facts = replace(self.facts, helo=event.name)
                conn.accept()
            elif kind is ProtocolError:
                self._on_protocol_error(event)
            elif kind is StartTLS:
                self._busy = True
                self._flush()
                self.loop.create_task(self._start_tls())
                return
            elif kind is Quit:
                self._flush()
                self._close()
                return
            elif kind is Closing:
                self._on_closing(event)
                return
            elif kind is AuthStart or kind is AuthResponse:
                self._busy = True
                self._hold_reply = slow
                self.loop.create_task(self._auth(event))
                break
            elif kind is Vrfy:
                conn.accept(Reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery"))
            else:  # pragma: no cover - a new core event the shell does not know yet
                log.error("unhandled SMTP event %r", event)
                conn.reject(Reply(451, "4.3.0", "Error: internal error"))
            if slow and self._delay(conn.data_to_send()):
                return
        if slow and not self._hold_reply and self._delay(conn.data_to_send()):
            return
        self._flush()

    def _errors(self) -> int:
        """4xx/5xx replies so far (the core's, the policy's, AUTH's) since mail was last queued."""
        return sum(self.conn.failures.values()) - self._error_base

    def _delay(self, out: bytes) -> bool:
        """Postfix's ``smtpd_error_sleep_time``: past ``smtpd_soft_error_limit`` errors every reply
        waits that long. The reply is held and input paused; the worker serves others meanwhile."""
        if not out or self.transport is None or self.transport.is_closing():
            return False
        self._busy = True
        self.transport.pause_reading()
        self.loop.call_later(self.listener.error_sleep, self._after_sleep, out)
        return True

    def _after_sleep(self, out: bytes) -> None:
        self._busy = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(out)
        transport.resume_reading()
        self._pump()

    def _flush(self) -> None:
        conn = self.conn
        transport = self.transport
        if conn is None or transport is None:
            return
        out = conn.data_to_send()
        if out and not transport.is_closing():
            transport.write(out)
        if conn.closed and not transport.is_closing():
            self._close()

    def _close(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    # -- events ---------------------------------------------------------------------------

    def _on_rcpt(self, event: RcptTo) -> None:
        conn = self.conn
        recipient = str(event.address)
        decision = self.listener.policy.check_recipient(self.facts, self.sender, recipient)
        if decision.rejected:
            reply = Reply(decision.code, decision.enhanced, decision.text)
            self.maillog.log(
                f"NOQUEUE: reject: RCPT from {self.label}: {decision.code} {decision.enhanced} {decision.text};"
                f" from=<{self.sender}> to=<{recipient}> proto={self._proto()} helo=<{self.facts.helo}>"
            )
            conn.reject(reply)
            return
        local = self.listener.local
        if local is not None:
            try:
                unknown = check_recipient(recipient, *local)
            except TableError as exc:
                log.warning("recipient lookup for %s failed: %s", recipient, exc)
                unknown = Reply(451, "4.3.0", f"<{recipient}>: Temporary lookup failure")
            if unknown is not None:
                text = unknown.text if isinstance(unknown.text, str) else " ".join(unknown.text)
                self.maillog.log(
                    f"NOQUEUE: reject: RCPT from {self.label}: {unknown.code} {unknown.enhanced} {text};"
                    f" from=<{self.sender}> to=<{recipient}> proto={self._proto()} helo=<{self.facts.helo}>"
                )
                conn.reject(unknown)
                return
        params = event.params
        self.recipients.append(Recipient(recipient, params.orcpt, params.notify))
        conn.accept()

    def _on_data_command(self) -> None:
        conn = self.conn
        decision = self.listener.policy.check_data(self.facts, self.sender, [r.address for r in self.recipients])
        if decision.rejected:
            self.maillog.log(
                f"NOQUEUE: reject: DATA from {self.label}: {decision.code} {decision.enhanced} {decision.text};"
                f" from=<{self.sender}> proto={self._proto()} helo=<{self.facts.helo}>"
            )
            conn.reject(Reply(decision.code, decision.enhanced, decision.text))
            return
        conn.accept()

    def _on_protocol_error(self, event: ProtocolError) -> None:
        if event.verb == "AUTH" and (self._mech is not None or self._exchange is not None):
            self._end_exchange()  # the core ended it (client "*", bad base64, too long a line)
            self.maillog.warning(f"{self.label}: SASL {self._mech_name} authentication aborted")
        elif event.detail:
            self.maillog.warning(f"{event.detail} from {self.label}")
        reply = event.reply
        if not reply.is_error:
            return
        if reply.code not in _SYNTAX_CODES:
            self._log_reject(event.verb, reply)

    def _log_reject(self, verb: str, reply: Reply) -> None:
        """A reject the core decided (size, bare LF, TLS required, too many recipients...), in
        the form of the policy's ``NOQUEUE: reject:`` lines. The sender is known from RCPT on;
        a refused MAIL command's address is not (the core keeps no client text)."""
        text = reply.text if isinstance(reply.text, str) else " ".join(reply.text)
        enhanced = f" {reply.enhanced}" if reply.enhanced else ""
        envelope = ""
        if verb in ("RCPT", "DATA", "END-OF-MESSAGE"):
            envelope = f" from=<{self.sender}>"
            if verb != "RCPT" and len(self.recipients) == 1:
                envelope += f" to=<{self.recipients[0].address}>"
        self.maillog.log(f"NOQUEUE: reject: {verb} from {self.label}: {reply.code}{enhanced} {text};"
                         f"{envelope} proto={self._proto()} helo=<{self.facts.helo}>")

    def _on_closing(self, event: Closing) -> None:
        reason = event.reason
        if reason == "protocol synchronization":
            self.maillog.log(f"improper command pipelining after {event.verb} from {self.label}")
        elif reason == "pre-greeting input":
            self.maillog.log(f"improper command pipelining before the greeting from {self.label}")
        elif reason == "eof":
            self.maillog.log(f"lost connection after {self._verb()} from {self.label}")
        else:
            self.maillog.log(f"{reason} after {self._verb()} from {self.label}")
        self._flush()
        self._close()

    # -- SMTP AUTH ------------------------------------------------------------------------

    async def _auth(self, event: AuthStart | AuthResponse) -> None:
        """Run one AUTH step: the mechanism's requests go to the password checker or Dovecot."""
        if isinstance(event, AuthStart) and self._auth_rate_exceeded():
            self._busy = False
            self._pump()
            return
        try:
            if self.listener.dovecot is not None:
                await self._auth_dovecot(event)
            else:
                await self._auth_cyrus(event)
        except Exception:  # a bug must not authenticate anyone, nor hang the session
            log.exception("AUTH step failed")
            self._auth_done(None, temporary="internal error")
        self._busy = False
        if self.transport is not None and not self.transport.is_closing():
            self._pump()

    def _auth_parameter(self, params) -> str | None:
        """RFC 4954 §5: AUTH= on MAIL FROM counts only from an authenticated client; from anyone
        else it becomes ``<>`` (the identity is unknown), so it can never be forged onward."""
        value = getattr(params, "auth", None)
        if value is None:
            return self.facts.sasl_username if self.facts.sasl_username else None
        return value if self.facts.sasl_username else "<>"

    def _auth_rate_exceeded(self) -> bool:
        """``smtpd_client_auth_rate_limit``: AUTH commands per client per ``anvil_rate_time_unit``."""
        auth = self.listener.auth
        if not auth.rate_limit or self.listener.limit_exceptions.contains(self.address):
            return False
        count = self.worker.counts.event(self.address, int(time.time() // auth.rate_unit))
        if count <= auth.rate_limit:
            return False
        self.maillog.warning(f"AUTH command rate limit exceeded: {count} from {self.label} for service {self.listener.name}")
        self.conn.auth_fail(Reply(450, "4.7.1", f"Error: too many AUTH commands from {self.address}"))
        return True

    async def _auth_cyrus(self, event: AuthStart | AuthResponse) -> None:
        auth = self.listener.auth
        checker = self.listener.passwords
        if isinstance(event, AuthStart):
            self._mech_name = event.mechanism
            try:
                identity = self._certificate_identity() if event.mechanism == "EXTERNAL" else None
            except TableError as exc:
                self._auth_done(None, temporary=f"relay_clientcerts lookup failed: {exc}")
                return
            context = ServerContext(
                hostname=self.listener.myhostname, nonce=secrets.token_hex(16), server_secret=checker.secret,
                service=auth.service, realm=auth.realm,
                tls_peer_identity=identity,
            )
            self._mech = server_mechanism(event.mechanism, context)
            step = self._mech.start(event.initial_response)
        else:
            step = self._mech.respond(event.data)
        while True:
            if isinstance(step, Challenge):
                self.conn.auth_challenge(step.data)
                return
            if isinstance(step, Success):
                self._auth_done(step.username)
                return
            if isinstance(step, Failure):
                self._auth_done(None, reason=step.reason)
                return
            if isinstance(step, CheckPassword):
                result = await checker.check_password(step.authcid, step.password, auth.service, auth.realm)
                if result.status is AuthStatus.TEMPFAIL:
                    self._auth_done(None, temporary=result.reason)
                    return
                step = self._mech.password_result(result.status is AuthStatus.OK)
            elif isinstance(step, NeedScramCredentials):
                found = await checker.scram_credentials(step.username, step.mechanism, auth.realm)
                if isinstance(found, AuthResult):
                    self._auth_done(None, temporary=found.reason)
                    return
                step = self._mech.credentials(found)
            elif isinstance(step, NeedSecret):  # CRAM-MD5: the user database's HMAC-MD5 states
                found = await checker.cram_secret(step.username, auth.realm)
                if isinstance(found, AuthResult):
                    self._auth_done(None, temporary=found.reason)
                    return
                step = self._mech.secret(found)
            else:  # pragma: no cover - a new step type
                raise TypeError(f"unknown SASL step {step!r}")

    def _certificate_identity(self) -> str | None:
        """AUTH EXTERNAL's identity (RFC 4422 App. A): the name ``relay_clientcerts`` gives the
        fingerprint of the client certificate, which verified against ``smtpd_tls_CAfile`` in the
        handshake (tls.py). A certificate that is not listed has no identity: 535, like a wrong
        password. The CN alone is not trusted: any certificate the CA ever signed would do."""
        fingerprint = self.tls.peer_fingerprint if self.tls is not None else None
        if not fingerprint:
            return None
        return self.listener.policy.client_certificate_name(fingerprint)  # TableError: 454

    async def _auth_dovecot(self, event: AuthStart | AuthResponse) -> None:
        if isinstance(event, AuthStart):
            self._mech_name = event.mechanism
            self._exchange = await self.listener.dovecot.client.start(
                event.mechanism, event.initial_response, secured=self.tls is not None, remote_ip=self.address
            )
            result = self._exchange.result
        else:
            result = await self._exchange.step(event.data)
        if result.status is AuthStatus.CONTINUE:
            self.conn.auth_challenge(result.challenge)
        elif result.status is AuthStatus.OK:
            self._auth_done(result.user)
        elif result.status is AuthStatus.TEMPFAIL:
            self._auth_done(None, temporary=result.reason)
        else:
            self._auth_done(None, reason=result.reason or "authentication failure")

    def _auth_done(self, username: str | None, *, reason: str = "", temporary: str = "") -> None:
        mech = self._mech_name
        self._end_exchange()
        conn = self.conn
        if conn is None or conn.closed:
            return
        if username is not None:
            realm = self.listener.auth.realm
            if realm and "@" not in username:
                username = f"{username}@{realm}"  # as Cyrus reports it with smtpd_sasl_local_domain
            self.facts = replace(self.facts, sasl_username=username)
            self.sasl_method = mech
            conn.auth_success(username)
        elif temporary:
            # The exact cause (e.g. the socket path that could not be reached) is for the admin only.
            self.maillog.warning(f"SASL authentication problem: {temporary}")
            self.maillog.warning(f"{self.label}: SASL {mech} authentication failed: temporary failure")
            conn.auth_fail(replies.AUTH_TEMPORARY_FAILURE)
        else:
            # The line fail2ban's postfix-sasl filter matches.
            self.maillog.warning(f"{self.label}: SASL {mech} authentication failed: {reason or 'authentication failure'}")
            conn.auth_fail(replies.AUTH_FAILED)

    def _end_exchange(self) -> None:
        self._mech = None
        if self._exchange is not None:
            self.loop.create_task(self._exchange.aclose())
            self._exchange = None

    def _queue_message(self, data: bytes) -> None:
        """Hand the message to the store; the reply leaves from :meth:`_queued` once it is durable."""
        queue_id = new_queue_id()
        params = self.mail_params
        proto = self._proto()
        envelope = Envelope(
            sender=self.sender,
            recipients=tuple(self.recipients),
            client_address=self.address,
            client_name=self.facts.name,
            helo=self.facts.helo,
            protocol=proto,
            sasl_username=self.facts.sasl_username,
            body_type=getattr(params, "body", None),
            smtputf8=bool(getattr(params, "smtputf8", False)),
            envid=getattr(params, "envid", None),
            ret=getattr(params, "ret", None),
            auth=self._auth_parameter(params),
        )
        body = self._received_header(queue_id, proto) + data
        self._size = len(body)
        try:
            self.worker.store.submit_nowait(envelope, body, self._queued, queue_id=queue_id)
        except Exception as exc:  # refused before anything was stored (e.g. the store is closed)
            self._queued(queue_id, exc)

    def _queued(self, queue_id: str, error: BaseException | None) -> None:
        conn = self.conn
        if error is not None:  # the queue could not take it: say so; nothing was acknowledged
            log.error("queue write failed: %s", error)
            self.maillog.warning(f"{queue_id}: queue file write error: {error.__class__.__name__}: {error}")
            conn.reject(TEMP_FAIL)
        else:
            if self.facts.sasl_username:
                self.maillog.log(f"{queue_id}: client={self.label}, sasl_method={self.sasl_method},"
                                 f" sasl_username={self.facts.sasl_username}")
            else:
                self.maillog.log(f"{queue_id}: client={self.label}")
            self.maillog.log(
                f"{queue_id}: from=<{self.sender}>, size={self._size}, nrcpt={len(self.recipients)} (queued)"
            )
            conn.accept(Reply(250, "2.0.0", f"Ok: queued as {queue_id}"))
            self.worker.wake_queue_manager()
            self._error_base = sum(conn.failures.values())  # Postfix: errors "without delivering mail"
            self._hold_reply = False
        self.recipients = []
        self._busy = False
        if self.transport is not None and not self.transport.is_closing():
            self._pump()

    async def _start_tls(self) -> None:
        loop = self.loop
        listener = self.listener
        try:
            transport = await loop.start_tls(
                self.transport, self, listener.ssl_context, server_side=True,
                ssl_handshake_timeout=min(listener.timeout, 60.0),
            )
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", None) or exc.__class__.__name__
            self.maillog.warning(f"TLS handshake failed for {self.label}: {reason}")
            if self.transport is not None:  # connection_lost logs "lost connection after STARTTLS"
                self.transport.abort()
            return
        if transport is None:
            return
        self.transport = transport
        self.tls = TLSInfo.from_object(transport.get_extra_info("ssl_object"), listener.fingerprint_digest)
        self.facts = replace(self.facts, tls=True, ccert_fingerprint=self.tls.peer_fingerprint if self.tls else None)
        self._log_tls()
        self.idle = 0.0
        self.conn.tls_established()
        self._busy = False
        self._pump()

    def _log_tls(self) -> None:
        tls = self.tls
        if tls is not None and self.listener.tls_loglevel >= 1:
            if tls.peer_fingerprint:  # verified against smtpd_tls_CAfile, or the handshake had failed
                self.maillog.log(f"Trusted TLS connection established from {self.label}: {tls.describe()}")
                self.maillog.log(f"{self.label}: client certificate verified: CN={tls.peer_subject},"
                                 f" fingerprint={tls.peer_fingerprint}")
            else:
                self.maillog.log(f"Anonymous TLS connection established from {self.label}: {tls.describe()}")

    # -- ends -------------------------------------------------------------------------------

    def timed_out(self) -> None:
        self.maillog.log(f"timeout after {self._verb()} from {self.label}")
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(Reply(421, "4.4.2", f"{self.listener.myhostname} {TIMEOUT}").to_bytes())
            self._close()

    def shutdown(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(
                Reply(421, "4.3.2", f"{self.listener.myhostname} Service shutting down, closing transmission channel").to_bytes()
            )
            self._close()

    # -- helpers ----------------------------------------------------------------------------

    def _verb(self) -> str:
        return self.conn.last_verb if self.conn is not None else "CONNECT"

    def _proto(self) -> str:
        """RFC 3848 protocol names for the log and the Received header."""
        conn = self.conn
        esmtp = conn is not None and conn.session.esmtp
        proto = "ESMTP" if esmtp else "SMTP"
        if esmtp and self.tls is not None:
            proto += "S"
        if esmtp and self.facts is not None and self.facts.sasl_username:
            proto += "A"
        return proto

    def _received_header(self, queue_id: str, proto: str) -> bytes:
        """The trace header (RFC 5321 §4.4), with TLS facts when ``smtpd_tls_received_header``."""
        listener = self.listener
        lines = [f"Received: from {self.facts.helo or 'unknown'} ({self.label.replace('[', ' [', 1)})"]
        if self.tls is not None and listener.tls_received_header:
            lines.append(f"\t(using {self.tls.describe()})")
        if self.facts.sasl_username and listener.auth is not None and listener.auth.authenticated_header:
            lines.append(f"\t(Authenticated sender: {self.facts.sasl_username})")
        by = f"\tby {listener.myhostname} (smarthost) with {proto} id {queue_id}"
        if len(self.recipients) == 1:
            lines.append(by)
            lines.append(f"\tfor <{self.recipients[0].address}>; {_rfc5322_date()}")
        else:
            lines.append(by + f"; {_rfc5322_date()}")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def _command_stats(conn: ServerConnection) -> str:
    """Postfix's disconnect summary: `` ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4``."""
    parts = []
    total = good = 0
    failures = conn.failures
    for verb, n in conn.counters.items():
        failed = failures.get(verb, 0)
        if verb == "data":  # a message refused at its end counts as a failed DATA, as in Postfix
            failed = min(n, failed + failures.get("end-of-message", 0))
        total += n
        good += n - failed
        parts.append(f" {verb}={n - failed}/{n}" if failed else f" {verb}={n}")
    parts.append(f" commands={good}/{total}" if good != total else f" commands={total}")
    return "".join(parts)


_date_cache: list = [0, ""]


def _rfc5322_date() -> str:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = email.utils.formatdate(now, localtime=True)
    return _date_cache[1]
