"""``smarthost probe``: what swaks and posttls-finger tell an admin about an SMTP server, in one report.

:func:`probe` connects to the one address it is given (nothing else: no MX lookup, no second
host), drives the pure SMTP client core (:class:`smarthost.smtp.client.ClientConnection`) and
collects the facts into a :class:`ProbeReport`:

1. the banner and the EHLO capabilities before TLS;
2. TLS: STARTTLS (RFC 3207), or implicit TLS from the first byte (RFC 8314 §3.3, port 465), or
   none; the protocol and cipher, the server's certificate chain and whether it verifies for the
   name (OpenSSL's verdict, as ``openssl s_client`` reports it, against ``ca_file`` or the system
   trust store). When it does not verify, the probe records why and connects once more without
   verification to report the rest;
3. the EHLO capabilities and AUTH mechanisms after TLS (RFC 3207 §4.2: the server must forget
   what it said before);
4. with ``relay_test``: unauthenticated relay probes, each a MAIL/RCPT pair followed by RSET, never
   DATA (an accepted probe ends the connection with QUIT and the next probe reconnects);
5. with a user: a test authentication (RFC 4954) with the best mechanism offered; credentials go
   only over TLS (unless ``allow_plaintext_auth``) whose certificate verified (unless
   ``auth_unverified``);
6. with a sender and recipients: a test message.

Exit status (:attr:`ProbeReport.exit_status`): 0 all good, 1 a problem found (each in
:attr:`ProbeReport.problems`: a certificate that does not verify, no STARTTLS, AUTH offered before
TLS, a failed login or test message, an open relay), 2 could not connect.
Every network step has a timeout. The password never appears in the report, its repr or logs.

The certificate chain is the whole chain the server sent, leaf first (``SSLObject.get_unverified_chain``,
public from Python 3.13, reached through the underlying object on 3.10-3.12: :func:`peer_chain`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
import ssl
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from smarthost.certs import describe
from smarthost.sasl import ClientContext, client_mechanism, select_client_mechanism
from smarthost.smtp.client import (
    NEED_DATA,
    AuthDone,
    ClientConnection,
    ClientSettings,
    Closed,
    CommandFailed,
    DataRefused,
    EhloDone,
    Greeting,
    MessageResult,
    ProtocolFailure,
    RecipientResult,
    Refused,
    SenderResult,
    State,
    Status,
    TLSReady,
    TransactionDone,
    reply_line,
)

STARTTLS, IMPLICIT, NO_TLS = "starttls", "implicit", "none"
SMTPS_PORT = 465
DEFAULT_TIMEOUT = 30.0
#: RFC 5737 TEST-NET-1: a foreign address literal nobody should relay to.
FOREIGN_LITERAL = "192.0.2.1"
_MAX_BUFFERED = 1 << 18


@dataclass(frozen=True)
class ProbeOptions:
    """What to probe and how. ``host`` is where to connect (a name or an address)."""

    host: str
    port: int = 25
    tls_mode: str | None = None  # STARTTLS, IMPLICIT, NO_TLS; None: implicit on port 465, else STARTTLS
    name: str | None = None  # the name the certificate must carry; default: host
    ca_file: Path | None = None  # trust anchors; default: the system's
    helo: str = "probe.invalid"
    timeout: float = DEFAULT_TIMEOUT
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    mechanism: str | None = None
    allow_plaintext_auth: bool = False
    auth_unverified: bool = False
    sender: str | None = None
    recipients: tuple[str, ...] = ()
    body: bytes | None = field(default=None, repr=False)
    relay_test: bool = False
    relay_domain: str | None = None  # the server's own domain for the tricks; default: its EHLO name
    foreign_domain: str = "example.net"

    @property
    def mode(self) -> str:
        if self.tls_mode is not None:
            return self.tls_mode
        return IMPLICIT if self.port == SMTPS_PORT else STARTTLS


@dataclass
class CertificateFacts:
    subject: str
    issuer: str
    names: list[str]
    not_before: str
    not_after: str
    days_left: int
    fingerprint: str  # SHA-256, colon-separated hex

    @classmethod
    def from_der(cls, der: bytes) -> CertificateFacts:
        info = describe(x509.load_der_x509_certificate(der))
        return cls(info.subject, info.issuer, list(info.names), info.not_before.isoformat(),
                   info.not_after.isoformat(), info.days_left(), info.fingerprint)


@dataclass
class TLSFacts:
    mode: str
    protocol: str = ""
    cipher: str = ""
    bits: int = 0
    verified: bool = False
    verify_name: str = ""
    verify_error: str = ""
    trust: str = ""  # "CA file PATH" or "system trust store"
    chain: list[CertificateFacts] = field(default_factory=list)
    error: str = ""  # the handshake failed (other than verification)


@dataclass
class AuthFacts:
    user: str
    mechanism: str = ""
    ok: bool = False
    reply: str = ""
    error: str = ""


@dataclass
class RelayProbe:
    trick: str
    sender: str
    recipient: str
    reply: str = ""
    accepted: bool = False


@dataclass
class MessageFacts:
    sender: str
    recipients: list[str]
    replies: list[str] = field(default_factory=list)  # MAIL, each RCPT, DATA/end of data, in order
    accepted: list[str] = field(default_factory=list)  # recipients the server took the message for
    ok: bool = False


@dataclass
class ProbeReport:
    target: str
    connected: bool = False
    error: str = ""  # why the probe could not connect
    banner: str = ""
    ehlo_name: str = ""
    capabilities_before_tls: dict[str, str] | None = None
    capabilities_after_tls: dict[str, str] | None = None
    auth_before_tls: list[str] = field(default_factory=list)
    auth_after_tls: list[str] = field(default_factory=list)
    tls: TLSFacts | None = None
    auth: AuthFacts | None = None
    relay_test: list[RelayProbe] | None = None
    message: MessageFacts | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        if not self.connected:
            return 2
        return 1 if self.problems else 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["exit_status"] = self.exit_status
        return data


class _Unreachable(Exception):
    """The session cannot go on (connect, timeout, refusal); before a 220 greeting: exit status 2."""


class _VerifyFailed(Exception):
    """The certificate did not verify; the probe goes on without verification."""


class _Wire(asyncio.Protocol):
    """The socket as a buffer we control, so that bytes from before STARTTLS can be dropped
    (RFC 3207 §4.2: nothing the server sent before the handshake may be used after it)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self._readable = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._readable.set()
        if len(self.buffer) > _MAX_BUFFERED and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        self._readable.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._readable.set()

    async def read(self) -> bytes:
        while not self.buffer and not self.eof:
            self._readable.clear()
            await self._readable.wait()
        data = bytes(self.buffer)
        self.buffer.clear()
        if self.transport is not None and not self.eof:
            self.transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def tls_context(verify: bool, ca_file: Path | None) -> ssl.SSLContext:
    """A client context: verifying (chain and name, against ``ca_file`` or the system's CAs), or
    one that accepts any certificate so the probe can still show it."""
    if verify:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def peer_chain(obj: ssl.SSLObject) -> list[bytes]:
    """The certificates the server sent, leaf first, as DER (before any verification, so also
    when it failed). ``SSLObject.get_unverified_chain`` is public from Python 3.13; on 3.10-3.12
    the same method exists on the underlying ``_ssl._SSLSocket`` (``obj._sslobj``) and returns
    ``_ssl.Certificate`` objects. [] when neither is there."""
    public = getattr(obj, "get_unverified_chain", None)
    if public is not None:
        return [bytes(der) for der in public() or ()]
    inner = getattr(getattr(obj, "_sslobj", None), "get_unverified_chain", None)  # Python 3.10-3.12
    if inner is None:
        return []
    return [ssl.PEM_cert_to_DER_cert(cert.public_bytes()) for cert in inner() or ()]  # public_bytes: PEM


def relay_probes(domain: str, foreign: str) -> list[RelayProbe]:
    """The classic unauthenticated relay tricks: a foreign sender and recipient, then the
    address forms old mailers routed onward (RFC 1123 §5.2.16 ``%``, quoted ``@``, the RFC 5321
    §4.1.2 source route, UUCP ``!``) and an address literal of a foreign host."""
    user = "relaytest"
    outsider = f"{user}@{foreign}"
    local = f"postmaster@{domain}"
    return [
        RelayProbe("foreign sender, foreign recipient", f"{user}@probe.{foreign}", outsider),
        RelayProbe("percent hack", local, f"{user}%{foreign}@{domain}"),
        RelayProbe("quoted local part", local, f'"{user}@{foreign}"@{domain}'),
        RelayProbe("source route", local, f"@{domain}:{user}@{foreign}"),
        RelayProbe("bang path", local, f"{foreign}!{user}@{domain}"),
        RelayProbe("address literal", local, f"{user}@[{FOREIGN_LITERAL}]"),
        RelayProbe("local sender, foreign recipient", local, outsider),
    ]


def default_body(sender: str, recipients: tuple[str, ...], target: str) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: {', '.join(f'<{r}>' for r in recipients)}\r\n"
        f"Subject: smarthost probe test message\r\n"
        f"Message-ID: <{secrets.token_hex(12)}@probe.invalid>\r\n\r\n"
        f"A test message sent by `smarthost probe {target}`.\r\n"
    ).encode()


class _Session:
    """One connection: the core, the wire, and the event pump with a timeout per step."""

    def __init__(self, options: ProbeOptions) -> None:
        self.o = options
        self.wire = _Wire()
        self.conn: ClientConnection | None = None
        self.ssl_object: ssl.SSLObject | None = None

    async def next(self) -> Any:
        conn = self.conn
        assert conn is not None
        while True:
            event = conn.next_event()
            if event is not NEED_DATA:
                if isinstance(event, Closed):
                    self.wire.close()
                return event
            out = conn.data_to_send()
            if out:
                self.wire.write(out)
                continue
            try:
                async with asyncio.timeout(self.o.timeout):
                    conn.receive_data(await self.wire.read())
            except TimeoutError:
                conn.abort("timeout")
                self.wire.close()
                raise _Unreachable(f"no reply from the server within {self.o.timeout:g}s") from None

    async def until(self, *kinds: type) -> Any:
        """The next event of one of ``kinds``; ``Closed`` and ``ProtocolFailure`` always end the wait."""
        while True:
            event = await self.next()
            if isinstance(event, (*kinds, Closed, ProtocolFailure)):
                return event

    async def connect(self, context: ssl.SSLContext | None) -> None:
        o = self.o
        loop = asyncio.get_running_loop()
        name = o.name or o.host
        try:
            async with asyncio.timeout(o.timeout):
                await loop.create_connection(
                    lambda: self.wire, o.host, o.port, ssl=context,
                    server_hostname=(None if _is_ip(name) else name) if context else None,
                    ssl_handshake_timeout=o.timeout if context else None)
        except ssl.SSLCertVerificationError as exc:
            raise _VerifyFailed(exc.verify_message or str(exc)) from None
        except ssl.SSLError as exc:
            raise _Unreachable(f"TLS handshake failed: {exc.reason or exc}") from None
        except TimeoutError:
            raise _Unreachable(f"connect to {o.host}:{o.port}: timed out after {o.timeout:g}s") from None
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)  # "Connection refused"
            raise _Unreachable(f"connect to {o.host}:{o.port}: {why}") from None
        self.conn = ClientConnection(ClientSettings(allow_plaintext_auth=o.allow_plaintext_auth),
                                     tls_active=context is not None)
        if context is not None and self.wire.transport is not None:
            self.ssl_object = self.wire.transport.get_extra_info("ssl_object")

    async def starttls(self, context: ssl.SSLContext) -> str:
        """STARTTLS and the handshake; returns '' or why TLS could not start (verification
        failures raise _VerifyFailed)."""
        conn, wire, o = self.conn, self.wire, self.o
        assert conn is not None and wire.transport is not None
        conn.starttls()
        event = await self.until(TLSReady, CommandFailed)
        if not isinstance(event, TLSReady):
            return _why(event, "STARTTLS")
        wire.buffer.clear()  # RFC 3207 §4.2: bytes pipelined after the 220 are discarded
        name = o.name or o.host
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(o.timeout):
                transport = await loop.start_tls(wire.transport, wire, context, server_side=False,
                                                 server_hostname=None if _is_ip(name) else name,
                                                 ssl_handshake_timeout=o.timeout)
        except ssl.SSLCertVerificationError as exc:
            conn.abort("certificate verification failed")
            raise _VerifyFailed(exc.verify_message or str(exc)) from None
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as exc:
            conn.abort("TLS handshake failed")
            reason = exc.reason if isinstance(exc, ssl.SSLError) else (str(exc) or type(exc).__name__)
            return f"TLS handshake failed: {reason}"
        wire.transport = transport
        self.ssl_object = transport.get_extra_info("ssl_object")
        conn.tls_established()
        return ""

    async def ehlo(self) -> EhloDone | str:
        assert self.conn is not None
        self.conn.ehlo(self.o.helo)
        event = await self.until(EhloDone, CommandFailed)
        return event if isinstance(event, EhloDone) else _why(event, "EHLO")

    async def quit(self) -> None:
        conn = self.conn
        if conn is not None and conn.state in (State.READY, State.TRANSACTION):
            conn.quit()
            try:
                await self.until()
            except Exception:  # closing anyway
                pass
        self.wire.close()


def _why(event: Any, command: str) -> str:
    if isinstance(event, (CommandFailed, Closed)) and event.reply is not None:
        return f"{command} refused: {reply_line(event.reply)}"
    if isinstance(event, ProtocolFailure):
        return f"{command}: protocol error: {event.reason}"
    return f"{command}: the server closed the connection"


class _Prober:
    def __init__(self, options: ProbeOptions) -> None:
        self.o = options
        self.report = ProbeReport(target=f"{options.host}:{options.port}")
        self.verify = True  # False after a verification failure: the rest is probed unverified
        self.verify_error = ""

    async def open(self) -> _Session:
        """A session up to the point where commands may be sent: banner, EHLO, TLS, EHLO.
        Facts are recorded the first time only (a reconnect for the relay test adds nothing)."""
        o, r = self.o, self.report
        first = not r.connected
        while True:
            try:
                context = tls_context(self.verify, o.ca_file) if o.mode != NO_TLS else None
            except (OSError, ssl.SSLError) as exc:
                raise _Unreachable(f"cannot load the CA file {o.ca_file}: {exc}") from None
            session = _Session(o)
            try:
                await session.connect(context if o.mode == IMPLICIT else None)
                hint = " (does it speak TLS from the first byte? try --implicit)" if o.mode == STARTTLS else ""
                try:
                    greeting = await session.until(Greeting)
                except _Unreachable as exc:
                    raise _Unreachable(f"{exc}{hint}") from None
                if not isinstance(greeting, Greeting):
                    raise _Unreachable(_why(greeting, "greeting") + hint)
                if first:
                    r.banner = reply_line(greeting.reply)
                if not greeting.ok:
                    raise _Unreachable(f"the server refused the session: {reply_line(greeting.reply)}")
                r.connected = True
                if o.mode == IMPLICIT and first:
                    self._record_tls(session)
                ehlo = await session.ehlo()
                if isinstance(ehlo, str):
                    raise _Unreachable(ehlo)
                if first:
                    r.ehlo_name = ehlo.reply.lines[0].split(" ")[0]
                if o.mode == IMPLICIT:
                    if first:
                        self._after_tls(ehlo)
                    return session
                if first:
                    r.capabilities_before_tls = ehlo.capabilities
                    r.auth_before_tls = session.conn.auth_mechanisms()
                if o.mode == NO_TLS:
                    return session
                if "STARTTLS" not in ehlo.capabilities:
                    if first:
                        r.tls = TLSFacts(mode=STARTTLS, error="STARTTLS is not offered")
                        r.problems.append("the server does not offer STARTTLS")
                    return session
                error = await session.starttls(context)
                if error:
                    if first:
                        r.tls = TLSFacts(mode=STARTTLS, error=error)
                        r.problems.append(error)
                    if session.conn.state is State.READY:
                        return session  # STARTTLS refused: go on in plaintext
                    raise _Unreachable(error)
                if first:
                    self._record_tls(session)
                ehlo = await session.ehlo()
                if isinstance(ehlo, str):
                    raise _Unreachable(ehlo)
                if first:
                    self._after_tls(ehlo)
                return session
            except _VerifyFailed as failed:
                session.wire.close()
                if not self.verify:
                    raise _Unreachable(str(failed)) from None
                self.verify = False
                self.verify_error = str(failed)
            except BaseException:
                session.wire.close()
                raise

    def _record_tls(self, session: _Session) -> None:
        o, r = self.o, self.report
        obj = session.ssl_object
        facts = TLSFacts(mode=o.mode, verify_name=o.name or o.host,
                         trust=f"CA file {o.ca_file}" if o.ca_file else "system trust store")
        if obj is not None:
            cipher = obj.cipher()
            facts.protocol = obj.version() or ""
            if cipher:
                facts.cipher, facts.bits = cipher[0], int(cipher[2] or 0)
            ders = peer_chain(obj)
            if not ders:
                leaf = obj.getpeercert(binary_form=True)
                ders = [leaf] if leaf else []
            facts.chain = [CertificateFacts.from_der(d) for d in ders]
        facts.verified = self.verify
        if not self.verify:
            facts.verify_error = self.verify_error
            r.problems.append(f"the certificate does not verify for {facts.verify_name}: {facts.verify_error}")
        r.tls = facts

    def _after_tls(self, ehlo: EhloDone) -> None:
        r = self.report
        r.capabilities_after_tls = ehlo.capabilities
        r.auth_after_tls = ehlo.capabilities.get("AUTH", "").upper().split()

    def _auth_before_tls(self) -> None:
        """AUTH offered in plaintext is a problem however the session went on (STARTTLS, no TLS
        asked for, none offered, a failed handshake)."""
        r = self.report
        if r.auth_before_tls:
            r.problems.append(f"AUTH is offered before TLS ({' '.join(r.auth_before_tls)}): clients may send "
                              "passwords in the clear (on the server: smtpd_tls_auth_only = yes)")

    async def run(self) -> ProbeReport:
        o, r = self.o, self.report
        try:
            session = await self.open()
        except _Unreachable as exc:
            if r.connected:
                r.problems.append(str(exc))
                self._auth_before_tls()
            else:
                r.error = str(exc)
            return r
        self._auth_before_tls()
        try:
            if o.relay_test:
                session = await self.relay_test(session)
            if o.user is not None and session is not None:
                await self.authenticate(session)
            if o.sender is not None and o.recipients and session is not None:
                await self.send_message(session)
        except _Unreachable as exc:
            r.problems.append(str(exc))
            session = None
        finally:
            if session is not None:
                await session.quit()
        return r

    async def relay_test(self, session: _Session) -> _Session | None:
        o, r = self.o, self.report
        domain = o.relay_domain or r.ehlo_name or o.host
        r.relay_test = relay_probes(domain, o.foreign_domain)
        for probe in r.relay_test:
            if session is None or session.conn is None or session.conn.state is not State.READY:
                if session is not None:
                    session.wire.close()
                session = await self.open()
            conn = session.conn
            try:
                conn.mail(probe.sender)
                conn.rcpt(probe.recipient)
            except Refused as refused:
                probe.reply = f"not sent: {refused.outcome.text}"
                if conn.state is State.TRANSACTION:
                    conn.data()  # nothing to send: ends the transaction
                    await session.until(TransactionDone)
                continue
            event = await session.until(SenderResult)
            if isinstance(event, SenderResult):
                if not event.accepted:
                    probe.reply = f"MAIL: {reply_line(event.reply)}"
                    conn.data()  # MAIL failed: no DATA goes out; waits for a pipelined RCPT's reply
                    await session.until(TransactionDone)
                    continue
                event = await session.until(RecipientResult)
            if isinstance(event, RecipientResult):
                probe.reply = reply_line(event.reply)
                probe.accepted = event.accepted
            elif isinstance(event, (Closed, ProtocolFailure)):
                probe.reply = _why(event, "RCPT")
                session = None
                continue
            if probe.accepted:
                # Never DATA: leave this connection; the next probe opens a new one.
                r.problems.append(f"open relay: the server accepted RCPT TO:<{probe.recipient}> "
                                  f"from MAIL FROM:<{probe.sender}> without authentication ({probe.trick})")
                await session.quit()
                session = None
                continue
            conn.data()  # sends nothing: no recipient was accepted (RFC 2920 §3.1)
            await session.until(TransactionDone)
        if any(p.accepted for p in r.relay_test):
            r.warnings.append("a client in mynetworks may relay: if this probe ran from such a network, "
                              "run it from outside to see what strangers can do")
        if session is None:
            session = await self.open()
        return session

    async def authenticate(self, session: _Session) -> None:
        o, r = self.o, self.report
        conn = session.conn
        r.auth = facts = AuthFacts(user=o.user or "")
        offered = conn.auth_mechanisms()
        if not offered:
            facts.error = "the server offers no AUTH mechanism" + ("" if conn.tls_active else " without TLS")
        elif conn.tls_active and not self.verify and not o.auth_unverified:
            facts.error = ("credentials not sent: the server's certificate did not verify "
                           "(give --ca, or --auth-unverified to send them anyway)")
        else:
            name = o.mechanism.upper() if o.mechanism else select_client_mechanism(offered, (), ("noanonymous",))
            if name is None or name not in offered:
                facts.error = f"no usable mechanism (offered: {' '.join(offered)})"
            else:
                facts.mechanism = name
                try:
                    mechanism = client_mechanism(name, o.user or "", o.password or "",
                                                 ClientContext(nonce=secrets.token_urlsafe(18)))
                    conn.auth(mechanism, name)
                except ValueError as exc:
                    facts.error = str(exc)
                except Refused as refused:
                    facts.error = f"credentials not sent: {refused.outcome.text}"
                else:
                    event = await session.until(AuthDone)
                    if isinstance(event, AuthDone):
                        facts.reply = reply_line(event.reply)
                        facts.ok = event.ok
                        facts.error = event.error
                    else:
                        facts.error = _why(event, "AUTH")
        if not facts.ok:
            r.problems.append(f"authentication as {facts.user} failed: {facts.error or facts.reply}")

    async def send_message(self, session: _Session) -> None:
        o, r = self.o, self.report
        conn = session.conn
        if conn is None or conn.state is not State.READY:
            return
        r.message = facts = MessageFacts(sender=o.sender or "", recipients=list(o.recipients))
        body = o.body if o.body is not None else default_body(facts.sender, o.recipients, r.target)
        try:
            conn.mail(facts.sender)
            for rcpt in o.recipients:
                conn.rcpt(rcpt)
        except Refused as refused:
            facts.replies.append(f"not sent: {refused.outcome.text}")
            r.problems.append(f"test message not sent: {refused.outcome.text}")
            if conn.state is State.TRANSACTION:
                conn.data()
            return
        conn.data()
        conn.send_message(body)
        while True:
            event = await session.until(SenderResult, RecipientResult, DataRefused, MessageResult, TransactionDone)
            if isinstance(event, SenderResult):
                facts.replies.append(f"MAIL: {reply_line(event.reply)}")
            elif isinstance(event, RecipientResult):
                facts.replies.append(f"RCPT <{o.recipients[event.index]}>: {reply_line(event.reply)}")
            elif isinstance(event, DataRefused):
                facts.replies.append(f"DATA: {reply_line(event.reply)}")
            elif isinstance(event, MessageResult):
                facts.replies.append(f"end of data: {reply_line(event.reply)}")
            elif isinstance(event, TransactionDone):
                facts.accepted = [rcpt for rcpt, out in zip(o.recipients, event.outcomes) if out.status is Status.SENT]
                break
            elif isinstance(event, (Closed, ProtocolFailure)):
                facts.replies.append(_why(event, "DATA"))
                break
        facts.ok = facts.accepted == list(o.recipients)
        if not facts.ok:
            r.problems.append("the test message was not accepted for every recipient: " + "; ".join(facts.replies))


async def probe(options: ProbeOptions) -> ProbeReport:
    """Probe ``options.host``:``options.port``; never raises for network trouble (see the report)."""
    return await _Prober(options).run()


def parse_target(target: str, default_port: int = 25) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[IPv6]:PORT`` or a bare IPv6 address -> (host, port)."""
    host, port = target, ""
    if target.startswith("["):
        host, sep, rest = target[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{target!r}: write [IPv6-address]:port")
        port = rest[1:]
    elif target.count(":") == 1:
        host, port = target.split(":")
    if not host:
        raise ValueError(f"{target!r}: no host")
    if not port:
        return host, default_port
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{target!r}: {port!r} is not a port number")
    return host, int(port)


# --- the human report ----------------------------------------------------------------------


def _caps_text(caps: dict[str, str] | None) -> str:
    if caps is None:
        return "(not seen)"
    return ", ".join(f"{k} {v}".strip() for k, v in caps.items()) or "(none: HELO only)"


def _line(label: str, text: str, indent: int = 0) -> str:
    return f"{' ' * indent}{label + ':':<{21 - indent}}{text}"


def format_report(r: ProbeReport) -> str:
    """The report for a terminal: one fact per line, problems last."""
    lines = [f"Probe of {r.target}"]
    if not r.connected:
        if r.banner:
            lines.append(_line("Banner", r.banner))
        lines.append(_line("Could not connect", r.error))
        return "\n".join(lines) + "\n"
    lines.append(_line("Banner", r.banner or "(none)"))
    if r.capabilities_before_tls is not None:
        lines.append(_line("EHLO before TLS", _caps_text(r.capabilities_before_tls)))
        lines.append(_line("AUTH before TLS", " ".join(r.auth_before_tls) or "none offered"))
    tls = r.tls
    if tls is not None:
        label = f"TLS ({tls.mode})"
        if tls.error:
            lines.append(_line(label, f"failed: {tls.error}"))
        else:
            lines.append(_line(label, f"{tls.protocol} with cipher {tls.cipher} ({tls.bits} bits)"))
            for i, cert in enumerate(tls.chain):
                lines.append(_line(f"certificate {i}", f"subject {cert.subject}", 2))
                lines.append(_line("names", ", ".join(cert.names) or "(no subjectAltName)", 4))
                lines.append(_line("issuer", cert.issuer, 4))
                lines.append(_line("valid", f"{cert.not_before} to {cert.not_after} ({cert.days_left} days left)", 4))
                lines.append(_line("SHA-256", cert.fingerprint, 4))
            verdict = "OK" if tls.verified else f"FAILED: {tls.verify_error}"
            lines.append(_line("verification", f"{verdict} (name {tls.verify_name}, {tls.trust})", 2))
    if r.capabilities_after_tls is not None:
        lines.append(_line("EHLO after TLS", _caps_text(r.capabilities_after_tls)))
        lines.append(_line("AUTH after TLS", " ".join(r.auth_after_tls) or "none offered"))
    if r.relay_test is not None:
        lines.append("Relay test (unauthenticated):")
        for p in r.relay_test:
            verdict = "ACCEPTED" if p.accepted else "refused "
            lines.append(f"  {verdict} {p.trick}: MAIL FROM:<{p.sender}> RCPT TO:<{p.recipient}>: {p.reply}")
    if r.auth is not None:
        a = r.auth
        detail = "; ".join(x for x in (a.reply, a.error) if x)
        lines.append(_line(f"AUTH as {a.user}", f"{'OK' if a.ok else 'FAILED'}"
                           f"{' with ' + a.mechanism if a.mechanism else ''} ({detail})"))
    if r.message is not None:
        lines.append(_line("Test message", f"from <{r.message.sender}>: "
                           f"{'accepted' if r.message.ok else 'NOT accepted'}"))
        lines.extend(f"  {reply}" for reply in r.message.replies)
    lines.extend(f"warning: {warning}" for warning in r.warnings)
    if r.problems:
        lines.append(f"Result: {len(r.problems)} problem{'s' if len(r.problems) > 1 else ''}:")
        lines.extend(f"  - {p}" for p in r.problems)
    else:
        lines.append("Result: OK")
    return "\n".join(lines) + "\n"
