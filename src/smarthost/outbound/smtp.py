"""The relay client's I/O: asyncio around the sans-I/O :class:`~smarthost.smtp.client.ClientConnection`.

A :class:`SmtpTransport` makes one :class:`SmtpSession` per destination; a session connects on
its first delivery and carries further messages over the same connection (the core sends
``RSET`` between transactions when the server may still hold state) until the manager closes
it. For each delivery it returns a :class:`~smarthost.queue.manager.DeliveryReport` with one
outcome per recipient, as the core decided it.

Connection set-up (smtp(8)):

1. The next hop: ``[host]:port`` as it is, ``host`` through its MX records
   (:mod:`smarthost.outbound.mx`); at most ``smtp_mx_address_limit`` addresses are tried,
   in ``smtp_address_preference`` order. Any failure before the mail transaction (connect,
   greeting, EHLO, TLS, AUTH) moves on to the next address; when all fail, the last reason
   is reported as ``setup_failure`` (temporary, unless DNS says the domain does not exist).
2. ``smtp_tls_wrappermode`` (port 465): TLS from the first byte. Otherwise EHLO
   (``smtp_helo_name``, default ``$myhostname``), then STARTTLS per the TLS policy
   (:mod:`smarthost.outbound.tlspolicy`). At ``encrypt``/``verify``/``secure`` a missing
   STARTTLS, a refusal (``454``), a failed handshake or (verify/secure) a certificate that
   does not chain to a trusted CA or does not carry the right name defers the mail. Bytes the
   server sends after its ``220`` to STARTTLS are discarded (the core; and this shell throws
   away whatever it had buffered before the handshake), and EHLO is sent again over TLS.
3. AUTH when ``smtp_sasl_auth_enable = yes`` and ``smtp_sasl_password_maps`` has credentials
   (:func:`smarthost.outbound.credentials.lookup_credentials`); the mechanism is the best one
   the server offers that passes ``smtp_sasl_mechanism_filter`` and
   ``smtp_sasl_tls_security_options`` (over TLS) or ``smtp_sasl_security_options`` (without).
   A failed authentication (``535`` included) defers: the admin fixes the password, and the
   mail goes out.

SAFE (where Postfix is not): credentials are sent only over TLS. Without TLS they are sent
only when ``smtp_tls_security_level = none`` for that destination, i.e. the configuration
explicitly says "no TLS here", and then only with a mechanism that
``smtp_sasl_security_options`` allows (its default ``noplaintext`` keeps PLAIN and LOGIN off
the wire). At ``may``, a server that does not offer STARTTLS (or refuses it: a stripping
attacker looks just like that) gets no credentials: when credentials exist for it, the mail
is deferred with "TLS is required for authentication" instead of being sent in plaintext.

Timeouts (postconf(5) names, Postfix's defaults): ``smtp_connect_timeout`` 30s,
``smtp_helo_timeout`` 300s (greeting, EHLO, AUTH), ``smtp_starttls_timeout`` 300s,
``smtp_mail_timeout``/``smtp_rcpt_timeout`` 300s, ``smtp_data_init_timeout`` 120s,
``smtp_data_xfer_timeout`` 180s (each write), ``smtp_data_done_timeout`` 600s,
``smtp_rset_timeout`` 20s, ``smtp_quit_timeout`` 300s.

A connection the server does not know: a server behind SYN cookies whose accept queue is
full drops the last ACK of the handshake, and has no such connection, while ours is
established. The server speaks first, so we send nothing, TCP never learns it, and the
greeting would be awaited for all of ``smtp_helo_timeout``. While waiting for the greeting,
keepalive probes therefore run (after 5s of silence, every 5s, 30s unanswered at most): the
server's kernel answers a probe for an unknown connection with a reset (RFC 9293 §3.5.2,
§3.8.4), and the delivery is deferred at once. A server that is merely slow to greet answers
the probes and is waited for as before. After the greeting every wait follows a command we
sent, whose own segments get that reset.

Mail log: a line per TLS connection (``Verified TLS connection established to
host[addr]:port: TLSv1.3 with cipher ...``, ``Untrusted`` when the certificate was not
checked, or was checked and failed); the queue manager logs
the delivery lines. Credentials never reach the log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smarthost.outbound.credentials import lookup_credentials
from smarthost.outbound.mx import DnsError, destinations, host_addresses
from smarthost.outbound.routing import NextHop, NextHopError, parse_nexthop
from smarthost.outbound.tlspolicy import ClientTLSSettings, Level, TLSPolicies, TLSPolicy, certificate_matches
from smarthost.queue.manager import DeliveryReport, Message
from smarthost.sasl import ClientContext, client_mechanism, select_client_mechanism
from smarthost.smtp.client import (
    NEED_DATA,
    AuthDone,
    ClientConnection,
    ClientSettings,
    Closed,
    CommandFailed,
    DataReady,
    EhloDone,
    Greeting,
    Outcome,
    ProtocolFailure,
    Refused,
    State,
    Status,
    TLSReady,
    TransactionDone,
    reply_line,
)
from smarthost.smtp.commands import MailParams, RcptParams
from smarthost.tables import Table, TableError
from smarthost.tls import TLSConfigError, TLSInfo

log = logging.getLogger(__name__)

_READ_SIZE = 65536
_MAX_BUFFERED = 1 << 18  # stop reading from a server that sends faster than we parse
_GREETING_PROBES = (5, 5, 6)  # TCP keepalive while awaiting the greeting: idle, interval, count


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    helo_name: str
    connect_timeout: float = 30.0
    helo_timeout: float = 300.0
    starttls_timeout: float = 300.0
    mail_timeout: float = 300.0
    rcpt_timeout: float = 300.0
    data_init_timeout: float = 120.0
    data_xfer_timeout: float = 180.0
    data_done_timeout: float = 600.0
    rset_timeout: float = 20.0
    quit_timeout: float = 300.0
    line_length_limit: int = 998
    mx_address_limit: int = 5
    address_preference: str = "any"  # ipv6, ipv4, any
    sasl_auth_enable: bool = False
    sasl_security_options: tuple[str, ...] = ("noplaintext", "noanonymous")
    sasl_tls_security_options: tuple[str, ...] = ("noplaintext", "noanonymous")
    sasl_mechanism_filter: tuple[str, ...] = ()
    sender_dependent_authentication: bool = False

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SmtpSettings:
        def get(name: str, default: Any) -> Any:
            return params[name] if name in params else default

        def seconds(name: str, default: float) -> float:
            value = get(name, default)
            if isinstance(value, str):  # not declared in parameters.py yet: "300s", "5m", "300"
                units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
                value = value.strip()
                unit = units.get(value[-1:].lower(), None)
                value = float(value[:-1]) * unit if unit else float(value)
            return float(value)

        def words(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
            value = get(name, default)
            if isinstance(value, str):
                value = value.replace(",", " ").split()
            return tuple(value)

        return cls(
            helo_name=str(get("smtp_helo_name", params["myhostname"])),
            connect_timeout=seconds("smtp_connect_timeout", 30),
            helo_timeout=seconds("smtp_helo_timeout", 300),
            starttls_timeout=seconds("smtp_starttls_timeout", 300),
            mail_timeout=seconds("smtp_mail_timeout", 300),
            rcpt_timeout=seconds("smtp_rcpt_timeout", 300),
            data_init_timeout=seconds("smtp_data_init_timeout", 120),
            data_xfer_timeout=seconds("smtp_data_xfer_timeout", 180),
            data_done_timeout=seconds("smtp_data_done_timeout", 600),
            rset_timeout=seconds("smtp_rset_timeout", 20),
            quit_timeout=seconds("smtp_quit_timeout", 300),
            line_length_limit=int(get("smtp_line_length_limit", 998)),
            mx_address_limit=int(get("smtp_mx_address_limit", 5)),
            address_preference=str(get("smtp_address_preference", "any")),
            sasl_auth_enable=bool(get("smtp_sasl_auth_enable", False)),
            sasl_security_options=words("smtp_sasl_security_options", ("noplaintext", "noanonymous")),
            sasl_tls_security_options=words("smtp_sasl_tls_security_options", ("noplaintext", "noanonymous")),
            sasl_mechanism_filter=words("smtp_sasl_mechanism_filter", ()),
            sender_dependent_authentication=bool(get("smtp_sender_dependent_authentication", False)),
        )


class SmtpTransport:
    """The ``smtp``/``relay`` transport: sessions to next hops, with shared settings and tables."""

    def __init__(
        self,
        settings: SmtpSettings,
        tls: TLSPolicies,
        *,
        password_maps: Sequence[Table] = (),
        resolver: Any = None,
        log: Callable[[str], None] = lambda line: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.tls = tls
        self.password_maps = tuple(password_maps)
        self._resolver = resolver
        self.log = log
        self.clock = clock

    @classmethod
    def from_params(cls, params: Mapping[str, Any], config_dir: Path | None, *, log: Callable[[str], None],
                    resolver: Any = None) -> SmtpTransport:
        """Raises TLSConfigError or TableError for unusable settings."""
        from smarthost.tables import open_table

        def tables(name: str) -> list[Table]:
            value = params[name] if name in params else []
            return [open_table(spec, config_dir=config_dir) for spec in value]

        settings = SmtpSettings.from_params(params)
        tls = TLSPolicies(ClientTLSSettings.from_params(params), tables("smtp_tls_policy_maps"))
        return cls(settings, tls, password_maps=tables("smtp_sasl_password_maps"), resolver=resolver, log=log)

    @property
    def resolver(self) -> Any:
        if self._resolver is None:
            import dns.asyncresolver

            self._resolver = dns.asyncresolver.Resolver()
        return self._resolver

    def session_key(self, nexthop: str, sender: str) -> Hashable:
        # With sender-dependent credentials, one connection serves one sender only.
        return (nexthop, sender if self.settings.sender_dependent_authentication else "")

    def session(self, nexthop: str, sender: str) -> SmtpSession:
        return SmtpSession(self, nexthop)


class _SetupFailed(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.text)
        self.outcome = outcome


class _Pipe(asyncio.Protocol):
    """The socket, as a byte buffer we control: what arrived before STARTTLS can be thrown away
    (a StreamReader would hand it to us after the handshake as if it were protected)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._eof = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._readable.set()
        if len(self._buffer) > _MAX_BUFFERED and self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._readable.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._readable.set()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def read(self) -> bytes:
        """What has arrived (waiting for something); ``b""`` once the server has closed."""
        while not self._buffer and not self._eof:
            self._readable.clear()
            await self._readable.wait()
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._reading_paused and self.transport is not None and not self._eof:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    def discard(self) -> int:
        n = len(self._buffer)
        self._buffer.clear()
        return n

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        await self._writable.wait()

    @property
    def closed(self) -> bool:
        return self._eof

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _keepalive(pipe: _Pipe, on: bool) -> None:
    """Turn TCP keepalive probes (``_GREETING_PROBES``) on or off for this connection."""
    sock = pipe.transport.get_extra_info("socket") if pipe.transport is not None else None
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(on))
        if on:
            for name, value in zip(("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT"), _GREETING_PROBES):
                if hasattr(socket, name):  # Linux names; elsewhere the system's timing applies
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:  # the connection is already gone: the next read says so
        pass


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _said(label: str, reply: Any, command: str) -> str:
    return f"host {label} said: {reply_line(reply)} (in reply to {command} command)"


class SmtpSession:
    """One connection to a next hop, opened on the first delivery, reused for the next ones."""

    def __init__(self, transport: SmtpTransport, nexthop: str) -> None:
        self.t = transport
        self.nexthop = nexthop
        self.conn: ClientConnection | None = None
        self.pipe: _Pipe | None = None
        self.relay = "none"
        self.uses = 0

    # -- the manager's interface ---------------------------------------------------------

    async def deliver(self, message: Message) -> DeliveryReport:
        clock = self.t.clock
        n = len(message.recipients)
        started = clock()
        setup_time = 0.0
        if self.conn is None or self.conn.state is not State.READY or self.pipe is None or self.pipe.closed:
            # (A server may close a connection that waited in our cache: open a new one.)
            await self.close()
            try:
                await self._open(message.envelope.sender)
            except _SetupFailed as failed:
                await self.close()
                return DeliveryReport((failed.outcome,) * n, relay=self.relay, setup_time=clock() - started,
                                      reusable=False, setup_failure=failed.outcome)
            setup_time = clock() - started
        begin = clock()
        self.uses += 1
        outcomes = await self._transaction(message)
        conn = self.conn
        reusable = conn is not None and conn.state is State.READY
        return DeliveryReport(tuple(outcomes), relay=self.relay, setup_time=setup_time,
                              transfer_time=clock() - begin, conn_use=self.uses, reusable=reusable,
                              dsn_passed=conn is not None and "DSN" in conn.capabilities)

    async def close(self) -> None:
        """QUIT when the connection is idle, then close it."""
        conn, pipe = self.conn, self.pipe
        self.conn = self.pipe = None
        if pipe is None:
            return
        if conn is not None and conn.state is State.READY and not pipe.closed:
            try:
                conn.quit()
                await self._until((Closed,), min(self.t.settings.quit_timeout, 10.0), conn, pipe)
            except (RuntimeError, _SetupFailed):
                pass
        pipe.close()

    # -- set-up ---------------------------------------------------------------------------

    async def _open(self, sender: str) -> None:
        try:
            nexthop = parse_nexthop(self.nexthop)
        except NextHopError as exc:
            raise _SetupFailed(Outcome.deferred("4.3.5", f"bad next hop: {exc}")) from None
        try:
            policy = self.t.tls.for_nexthop(nexthop)
        except TableError as exc:
            raise _SetupFailed(Outcome.deferred("4.3.0", f"smtp_tls_policy_maps lookup error: {exc}")) from None
        except TLSConfigError as exc:
            raise _SetupFailed(Outcome.deferred("4.7.5", f"unusable TLS policy: {exc}")) from None
        candidates = await self._addresses(nexthop)
        failure: Outcome | None = None
        for hostname, address in candidates:
            try:
                await self._try(hostname, address, nexthop, policy, sender)
                return
            except _SetupFailed as failed:
                await self.close()
                if failure is None or failure.status is not Status.DEFERRED:
                    failure = failed.outcome
                else:
                    failure = failed.outcome if failed.outcome.status is Status.DEFERRED else failure
        assert failure is not None
        raise _SetupFailed(failure)

    async def _addresses(self, nexthop: NextHop) -> list[tuple[str, str]]:
        """(host name, address) pairs to try, best first, at most smtp_mx_address_limit."""
        if nexthop.is_address:
            return [(nexthop.host, nexthop.host)]
        try:
            hosts = await destinations(nexthop, self.t.resolver)
        except DnsError as exc:
            raise _SetupFailed(exc.outcome()) from None
        families = ("ipv4", "ipv6") if self.t.settings.address_preference == "ipv4" else ("ipv6", "ipv4")
        pairs: list[tuple[str, str]] = []
        failure: Outcome | None = None
        limit = max(1, self.t.settings.mx_address_limit)
        for host in hosts:
            try:
                addresses = await host_addresses(host.name, self.t.resolver, families)
            except DnsError as exc:
                if failure is None or exc.outcome().status is Status.DEFERRED:
                    failure = exc.outcome()
                continue
            pairs += [(host.name, address) for address in addresses]
            if len(pairs) >= limit:
                break
        if not pairs:
            assert failure is not None
            raise _SetupFailed(failure)
        return pairs[:limit]

    async def _try(self, hostname: str, address: str, nexthop: NextHop, policy: TLSPolicy, sender: str) -> None:
        s = self.t.settings
        port = nexthop.port
        label = f"{hostname}[{address}]:{port}"
        self.relay = label
        wrapper = self.t.tls.settings.wrappermode
        sni = None if _is_ip(hostname) else hostname
        if wrapper and policy.context is None:
            raise _SetupFailed(Outcome.deferred(
                "4.7.5", "smtp_tls_wrappermode = yes needs a TLS security level other than none"))
        pipe = _Pipe()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(s.connect_timeout):
                if wrapper:
                    await loop.create_connection(lambda: pipe, address, port, ssl=policy.context,
                                                 server_hostname=sni or "", ssl_handshake_timeout=s.connect_timeout)
                else:
                    await loop.create_connection(lambda: pipe, address, port)
        except TimeoutError:
            raise _SetupFailed(Outcome.deferred("4.4.1", f"connect to {label}: Connection timed out")) from None
        except ssl.SSLError as exc:
            raise _SetupFailed(Outcome.deferred("4.7.5", f"TLS handshake with {label} failed: {_ssl_reason(exc)}")) from None
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)  # "Connection refused", as Postfix
            raise _SetupFailed(Outcome.deferred("4.4.1", f"connect to {label}: {why}")) from None
        self.pipe = pipe
        conn = ClientConnection(
            ClientSettings(allow_plaintext_auth=policy.level is Level.NONE, line_length_limit=s.line_length_limit),
            tls_active=wrapper,
        )
        self.conn = conn
        self.uses = 0
        if wrapper:
            self._check_tls(policy, label, hostname, nexthop)
        _keepalive(pipe, True)  # see the module docstring: a connection the server forgot
        event = await self._until((Greeting,), s.helo_timeout, conn, pipe)
        _keepalive(pipe, False)
        if not event.ok:
            raise _SetupFailed(Outcome.deferred(
                "4.3.0", f"host {label} refused to talk to me: {reply_line(event.reply)}"))
        caps = await self._ehlo(label)
        if not conn.tls_active and policy.level is not Level.NONE:
            if "STARTTLS" in caps:
                await self._starttls(policy, label, hostname, nexthop)
            elif policy.level.mandatory:
                raise _SetupFailed(Outcome.deferred("4.7.4", f"TLS is required, but was not offered by host {label}"))
        if s.sasl_auth_enable:
            await self._authenticate(label, hostname, nexthop, policy, sender)

    async def _ehlo(self, label: str) -> dict[str, str]:
        conn, pipe = self.conn, self.pipe
        assert conn is not None and pipe is not None
        conn.ehlo(self.t.settings.helo_name)
        event = await self._until((EhloDone, CommandFailed), self.t.settings.helo_timeout, conn, pipe)
        if isinstance(event, CommandFailed):
            raise _SetupFailed(Outcome.deferred("4.3.0", _said(label, event.reply, event.command)))
        return event.capabilities

    async def _starttls(self, policy: TLSPolicy, label: str, hostname: str, nexthop: NextHop) -> None:
        conn, pipe = self.conn, self.pipe
        assert conn is not None and pipe is not None and pipe.transport is not None
        conn.starttls()
        event = await self._until((TLSReady, CommandFailed), self.t.settings.starttls_timeout, conn, pipe)
        if isinstance(event, CommandFailed):
            if policy.level.mandatory:
                raise _SetupFailed(Outcome.deferred(
                    "4.7.4", f"TLS is required, but host {label} refused to start TLS: {reply_line(event.reply)}"))
            # Opportunistic TLS: go on in plaintext (but no credentials, see _authenticate).
            return
        pipe.discard()  # RFC 3207 §4.2: nothing from before the handshake counts
        loop = asyncio.get_running_loop()
        assert policy.context is not None
        try:
            async with asyncio.timeout(self.t.settings.starttls_timeout):
                tls_transport = await loop.start_tls(
                    pipe.transport, pipe, policy.context, server_side=False,
                    server_hostname=None if _is_ip(hostname) else hostname,
                    ssl_handshake_timeout=self.t.settings.starttls_timeout,
                )
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as exc:
            reason = _ssl_reason(exc) if isinstance(exc, ssl.SSLError) else (str(exc) or type(exc).__name__)
            conn.abort("TLS handshake failed")
            raise _SetupFailed(Outcome.deferred("4.7.5", f"Cannot start TLS: handshake failure with {label}: {reason}")) from None
        pipe.transport = tls_transport
        conn.tls_established()
        self._check_tls(policy, label, hostname, nexthop)
        await self._ehlo(label)

    def _check_tls(self, policy: TLSPolicy, label: str, hostname: str, nexthop: NextHop) -> None:
        """The name check for verify/secure (the chain was verified in the handshake); log the session."""
        pipe = self.pipe
        assert pipe is not None and pipe.transport is not None
        ssl_object = pipe.transport.get_extra_info("ssl_object")
        info = TLSInfo.from_object(ssl_object)
        described = info.describe() if info else "TLS"
        if policy.level.verifies:
            cert = ssl_object.getpeercert() if ssl_object is not None else None
            names = policy.names_for(hostname, nexthop.host)
            if not cert or not certificate_matches(cert, names):
                self.t.log(f"Untrusted TLS connection established to {label}: {described}")
                raise _SetupFailed(Outcome.deferred(
                    "4.7.5", f"Server certificate not verified: host {label} is not one of {', '.join(names)}"
                    f" (TLS policy {policy.level.value})"))
            self.t.log(f"Verified TLS connection established to {label}: {described}")
        else:
            self.t.log(f"Untrusted TLS connection established to {label}: {described}")

    async def _authenticate(self, label: str, hostname: str, nexthop: NextHop, policy: TLSPolicy, sender: str) -> None:
        s = self.t.settings
        conn, pipe = self.conn, self.pipe
        assert conn is not None and pipe is not None
        try:
            creds = lookup_credentials(self.t.password_maps, sender=sender, host=hostname, nexthop=nexthop.text,
                                       sender_dependent=s.sender_dependent_authentication)
        except TableError as exc:
            raise _SetupFailed(Outcome.deferred("4.3.0", f"smtp_sasl_password_maps lookup error: {exc}")) from None
        if creds is None:
            return  # no credentials for this destination: deliver without AUTH, as Postfix
        if not conn.tls_active and policy.level is not Level.NONE:
            raise _SetupFailed(Outcome.deferred(
                "4.7.0", f"TLS is required for authentication, but the session with host {label} is not encrypted"
                " (no STARTTLS, or it was refused); credentials not sent"))
        offered = conn.auth_mechanisms()
        if not offered:
            return  # the server does not ask for authentication
        options = s.sasl_tls_security_options if conn.tls_active else s.sasl_security_options
        name = select_client_mechanism(offered, s.sasl_mechanism_filter, options)
        if name is None:
            raise _SetupFailed(Outcome.deferred(
                "4.7.0", f"SASL authentication failed; cannot authenticate to server {label}: no mechanism available"
                f" (offered: {' '.join(offered)})"))
        mechanism = client_mechanism(name, creds.username, creds.password,
                                     ClientContext(nonce=secrets.token_urlsafe(18)))
        try:
            conn.auth(mechanism, name)
        except Refused as refused:
            raise _SetupFailed(refused.outcome) from None
        event = await self._until((AuthDone,), s.helo_timeout, conn, pipe)
        if not event.ok:
            why = f"{reply_line(event.reply)}" + (f" ({event.error})" if event.error else "")
            raise _SetupFailed(Outcome.deferred(
                "4.7.0", f"SASL authentication failed; server {label} said: {why}"))

    # -- the transaction ----------------------------------------------------------------------

    async def _transaction(self, message: Message) -> list[Outcome]:
        s = self.t.settings
        conn, pipe = self.conn, self.pipe
        assert conn is not None and pipe is not None
        env = message.envelope
        n = len(message.recipients)
        outcomes: list[Outcome | None] = [None] * n
        try:
            conn.mail(env.sender, MailParams(size=len(message.body), body=env.body_type, smtputf8=env.smtputf8,
                                             ret=env.ret, envid=env.envid))
        except Refused as refused:
            return [refused.outcome] * n
        positions: dict[int, int] = {}  # the core's recipient index -> our position
        for position, rcpt in enumerate(message.recipients):
            try:
                index = conn.rcpt(rcpt.address, RcptParams(notify=rcpt.notify, orcpt=rcpt.orcpt))
            except Refused as refused:
                outcomes[position] = refused.outcome
                continue
            positions[index] = position
        conn.data()
        if positions:
            conn.send_message(message.body)
        timeout = max(s.mail_timeout, s.rcpt_timeout, s.data_init_timeout)
        while True:
            event = await self._next(timeout, conn, pipe)
            if isinstance(event, DataReady):
                timeout = s.data_done_timeout
            elif isinstance(event, TransactionDone):
                for index, outcome in enumerate(event.outcomes):
                    outcomes[positions[index]] = self._explain(outcome)
                break
            elif isinstance(event, Closed):
                break
        lost = Outcome.deferred("4.4.2", f"lost connection with {self.relay}")
        return [o if o is not None else lost for o in outcomes]

    def _explain(self, outcome: Outcome) -> Outcome:
        """Postfix's wording for the log and the bounce: who said it, or what went wrong where."""
        if outcome.reply is not None:
            if outcome.status is Status.SENT:
                return outcome
            return Outcome(outcome.status, outcome.enhanced, f"host {self.relay} said: {outcome.text}", outcome.reply)
        if outcome.status is Status.DEFERRED:
            return Outcome(outcome.status, outcome.enhanced, f"conversation with {self.relay} failed: {outcome.text}")
        return outcome

    # -- the event pump --------------------------------------------------------------------------

    async def _next(self, timeout: float, conn: ClientConnection, pipe: _Pipe) -> Any:
        """The core's next event, writing what it has to send and reading replies as needed.
        A timeout aborts the connection (the core then reports deferred outcomes)."""
        while True:
            event = conn.next_event()
            if event is not NEED_DATA:
                if isinstance(event, ProtocolFailure):
                    log.info("%s: %s", self.relay, event.reason)
                if isinstance(event, Closed):
                    pipe.close()
                return event
            out = conn.data_to_send()
            try:
                async with asyncio.timeout(self.t.settings.data_xfer_timeout if out else timeout):
                    if out:
                        pipe.write(out)
                        await pipe.drain()
                    else:
                        conn.receive_data(await pipe.read())
            except TimeoutError:
                conn.abort(f"timeout talking to {self.relay}")

    async def _until(self, kinds: tuple[type, ...], timeout: float, conn: ClientConnection, pipe: _Pipe) -> Any:
        """Events until one of ``kinds``; the connection closing first is a set-up failure."""
        while True:
            event = await self._next(timeout, conn, pipe)
            if isinstance(event, kinds):
                return event
            if isinstance(event, Closed):
                why = reply_line(event.reply) if event.reply is not None else "lost connection"
                raise _SetupFailed(Outcome.deferred("4.4.2", f"conversation with {self.relay} failed: {why}"))


def _ssl_reason(exc: ssl.SSLError) -> str:
    return str(getattr(exc, "verify_message", "") or exc.reason or exc)
