"""The relay client end to end on loopback: the queue manager with the real SMTP transport,
relaying into a scripted fake smarthost (asyncio on 127.0.0.1) that records every byte.

Each test configures main.cf the way an admin would (relayhost, TLS level, SASL password map),
queues a message, and checks what the smarthost saw, what became of the queue entry, and what
the mail log says.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import ssl
from pathlib import Path

import dns.resolver
import pytest
import trustme

from smarthost import certs
from smarthost.config import load
from smarthost.queue import Envelope, QueueState, QueueStore, Recipient
from smarthost.queue.manager import QueueManager
from smarthost.smtp.data import unstuff

T0 = 1_700_000_000.0
PASSWORD = "s3cret pass:word"
BODY = (b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: relay test\r\n\r\n"
        b"line one\r\n.starts with a dot\r\n\r\nlast line\r\n")


def run_async(test):
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return wrapper


class FakeSmarthost:
    """A scripted SMTP server. ``commands`` holds every command line it received (decrypted
    after STARTTLS), ``segments`` the raw reads, ``messages`` each DATA as it came on the wire."""

    def __init__(self, *, tls: ssl.SSLContext | None = None, offer_starttls: bool = True,
                 starttls_reply: bytes = b"220 2.0.0 Ready to start TLS\r\n", auth: bytes = b"PLAIN LOGIN",
                 auth_reply: bytes = b"235 2.7.0 Authentication successful\r\n", drop_in_data: int = 0,
                 slow_data: int = 0, slowness: float = 0.0, implicit_tls: bool = False,
                 greeting: bytes = b"220 fake.example.test ESMTP\r\n", hold: asyncio.Event | None = None) -> None:
        self.tls = tls
        self.implicit_tls = implicit_tls  # TLS from the first byte (port 465), ``tls`` is its context
        self.greeting = greeting
        self.hold = hold  # when given, the reply to each message's final dot waits for it
        self.active = self.max_active = 0  # sessions open now, and the most at once
        self.offer_starttls = offer_starttls
        self.starttls_reply = starttls_reply
        self.auth = auth
        self.auth_reply = auth_reply
        self.drop_in_data = drop_in_data  # close the connection in the middle of this many DATAs
        self.slow_data = slow_data  # answer this many messages only after ``slowness`` seconds
        self.slowness = slowness
        self.commands: list[bytes] = []
        self.segments: list[bytes] = []
        self.messages: list[bytes] = []
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.server = await asyncio.start_server(self._session, host, port,
                                                 ssl=self.tls if self.implicit_tls else None)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()

    def verbs(self) -> list[str]:
        return [c.split(b" ")[0].decode().upper() for c in self.commands]

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        buf = bytearray()
        tls = self.implicit_tls

        async def more() -> bool:
            chunk = await reader.read(65536)
            if chunk:
                self.segments.append(chunk)
                buf.extend(chunk)
            return bool(chunk)

        try:
            writer.write(self.greeting)
            if not self.greeting.startswith(b"220"):
                await writer.drain()
                return
            while True:
                while b"\r\n" not in buf:
                    if not await more():
                        return
                end = buf.index(b"\r\n")
                line = bytes(buf[:end])
                del buf[: end + 2]
                self.commands.append(line)
                verb = line.split(b" ")[0].upper()
                if verb == b"EHLO":
                    caps = [b"fake.example.test", b"PIPELINING", b"SIZE 10000000", b"8BITMIME"]
                    if self.tls is not None and self.offer_starttls and not tls:
                        caps.append(b"STARTTLS")
                    if self.auth:
                        caps.append(b"AUTH " + self.auth)
                    writer.write(b"".join(b"250-" + c + b"\r\n" for c in caps[:-1]) + b"250 " + caps[-1] + b"\r\n")
                elif verb == b"STARTTLS":
                    writer.write(self.starttls_reply)
                    await writer.drain()
                    if self.starttls_reply.startswith(b"220"):
                        await writer.start_tls(self.tls)
                        tls = True
                        buf.clear()
                elif verb == b"AUTH":
                    writer.write(self.auth_reply)
                elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    writer.write(b"250 2.1.0 Ok\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    await writer.drain()
                    if self.drop_in_data:
                        self.drop_in_data -= 1
                        await more()
                        return  # the connection drops in the middle of the message
                    while b"\r\n.\r\n" not in b"\r\n" + buf:
                        if not await more():
                            return
                    end = (b"\r\n" + buf).index(b"\r\n.\r\n")
                    message = bytes(buf[: end + 3])
                    del buf[: end + 3]
                    if self.slow_data:
                        self.slow_data -= 1
                        await asyncio.sleep(self.slowness)  # a slow smarthost: the client gives up first
                        continue
                    if self.hold is not None:
                        await self.hold.wait()
                    self.messages.append(message)
                    writer.write(b"250 2.0.0 Ok: queued as FAKE%d\r\n" % len(self.messages))
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(b"502 5.5.2 Error: command not recognized\r\n")
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self.active -= 1
            writer.close()


class FakeResolver:
    """DNS for the tests: names in ``hosts`` resolve to 127.0.0.1; nothing leaves the machine."""

    def __init__(self, hosts: set[str]) -> None:
        self.hosts = hosts

    async def resolve(self, qname: str, rdtype: str):
        name = qname.rstrip(".")
        if name not in self.hosts:
            raise dns.resolver.NXDOMAIN()
        if rdtype != "A":
            raise dns.resolver.NoAnswer()
        return [type("A", (), {"address": "127.0.0.1"})()]


class MailLog:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)

    warning = error = log

    def text(self) -> str:
        return "\n".join(self.lines)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Satellite:
    """smarthost's delivery side, configured by main.cf, relaying to the fake smarthost."""

    def __init__(self, directory: Path, main_cf: dict[str, str], *, password_key: str | None = None,
                 hosts: set[str] | dict[str, object] = frozenset(), master_cf: str = "",
                 resolver: object = None) -> None:
        cfg = {"myhostname": "satellite.example.test", "mydestination": "satellite.example.test",
               "queue_directory": str(directory / "queue"), "alias_maps": "",
               "smtp_sasl_password_maps": f"texthash:{directory / 'sasl_passwd'}", **main_cf}
        (directory / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in cfg.items()))
        (directory / "master.cf").write_text(master_cf)
        (directory / "sasl_passwd").write_text(f"{password_key} alice:{PASSWORD}\n" if password_key else "")
        self.store = QueueStore(directory / "queue", synchronous=False)
        self.clock = Clock()
        self.maillog = MailLog()
        self.manager = QueueManager(load(directory), self.store, self.maillog, clock=self.clock,
                                    resolver=resolver or FakeResolver(set(hosts)))
        self.task: asyncio.Task | None = None

    async def submit(self, body: bytes = BODY, recipients: tuple[str, ...] = ("bob@example.net",)) -> str:
        envelope = Envelope("alice@example.org", tuple(Recipient(r) for r in recipients), arrival=self.clock.now)
        queue_id = await self.store.submit(envelope, body)
        if self.task is None:
            self.task = asyncio.create_task(self.manager.run())
        self.manager.wake()
        return queue_id

    async def outcome(self, queue_id: str) -> QueueState | None:
        """Wait until the delivery attempt is over: None (delivered, removed) or DEFERRED."""
        for _ in range(1000):
            await asyncio.sleep(0.01)
            entry = self.store.get(queue_id)
            if (entry is None or entry.state is QueueState.DEFERRED) and self.manager.idle:
                return None if entry is None else entry.state
        raise AssertionError("delivery did not finish; log:\n" + self.maillog.text())

    async def close(self) -> None:
        if self.task is not None:
            self.manager.stop()
            await asyncio.wait_for(self.task, 10)
        self.store.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    return ctx


@pytest.fixture
def ca_file(tmp_path: Path, ca: trustme.CA) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def relay(tmp_path: Path, server: FakeSmarthost, main_cf: dict[str, str], *, creds: bool = True,
                nexthop_host: str = "127.0.0.1") -> tuple[Satellite, str, QueueState | None]:
    port = await server.start()
    host = nexthop_host
    nexthop = f"[{host}]:{port}"
    sat = Satellite(tmp_path, {"relayhost": nexthop, **main_cf}, password_key=nexthop if creds else None,
                    hosts={host})
    queue_id = await sat.submit()
    state = await sat.outcome(queue_id)
    return sat, queue_id, state


@run_async
async def test_pipelined_delivery_arrives_byte_for_byte_after_starttls_and_auth(tmp_path, ca, ca_file) -> None:
    server = FakeSmarthost(tls=server_context(ca.issue_cert("127.0.0.1")))
    sat, queue_id, state = await relay(tmp_path, server, {
        "smtp_tls_security_level": "encrypt", "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_security_options": "noanonymous"})
    try:
        assert state is None, sat.maillog.text()
        assert server.verbs()[:7] == ["EHLO", "STARTTLS", "EHLO", "AUTH", "MAIL", "RCPT", "DATA"]
        [message] = server.messages
        assert unstuff(message[:-3]) == BODY  # the body, dot-stuffed on the wire, comes back exactly
        assert b"\r\n..starts with a dot\r\n" in message
        auth_line = next(c for c in server.commands if c.startswith(b"AUTH"))
        assert auth_line.startswith(b"AUTH PLAIN ")
        log = sat.maillog.text()
        assert f"Untrusted TLS connection established to 127.0.0.1[127.0.0.1]:{server.server.sockets[0].getsockname()[1]}" in log
        assert "status=sent (250 2.0.0 Ok: queued as FAKE1)" in log
        assert PASSWORD not in log
    finally:
        await sat.close()
        await server.stop()


@run_async
async def test_pipelining_sends_mail_rcpt_data_in_one_segment(tmp_path) -> None:
    server = FakeSmarthost(auth=b"")
    sat, _, state = await relay(tmp_path, server, {"smtp_tls_security_level": "none"}, creds=False)
    try:
        assert state is None, sat.maillog.text()
        assert b"MAIL FROM:<alice@example.org> SIZE=%d\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n" % len(BODY) in server.segments
        assert unstuff(server.messages[0][:-3]) == BODY
    finally:
        await sat.close()
        await server.stop()


@run_async
async def test_stripped_starttls_defers_and_sends_no_credentials(tmp_path, ca) -> None:
    server = FakeSmarthost(tls=server_context(ca.issue_cert("127.0.0.1")), offer_starttls=False)
    sat, _, state = await relay(tmp_path, server, {"smtp_tls_security_level": "may", "smtp_sasl_auth_enable": "yes",
                                                    "smtp_sasl_security_options": "noanonymous"})
    try:
        assert state is QueueState.DEFERRED
        assert "AUTH" not in server.verbs() and "MAIL" not in server.verbs()
        assert not any(PASSWORD.encode() in seg for seg in server.segments)
        assert "status=deferred (TLS is required for authentication" in sat.maillog.text()
    finally:
        await sat.close()
        await server.stop()


@run_async
async def test_454_to_starttls_defers_at_encrypt(tmp_path, ca) -> None:
    server = FakeSmarthost(tls=server_context(ca.issue_cert("127.0.0.1")),
                           starttls_reply=b"454 4.7.0 TLS not available due to local problem\r\n")
    sat, _, state = await relay(tmp_path, server, {"smtp_tls_security_level": "encrypt", "smtp_sasl_auth_enable": "yes"})
    try:
        assert state is QueueState.DEFERRED
        assert server.verbs() == ["EHLO", "STARTTLS", "QUIT"]
        assert ("dsn=4.7.4, status=deferred (TLS is required, but host 127.0.0.1[127.0.0.1]:"
                in sat.maillog.text())
        assert "refused to start TLS: 454 4.7.0 TLS not available due to local problem)" in sat.maillog.text()
    finally:
        await sat.close()
        await server.stop()


@run_async
async def test_bytes_injected_after_the_220_to_starttls_are_discarded(tmp_path, ca, ca_file) -> None:
    # The injected "250" would answer the client's next command if it were believed.
    server = FakeSmarthost(tls=server_context(ca.issue_cert("127.0.0.1")),
                           starttls_reply=b"220 2.0.0 Go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n")
    sat, _, state = await relay(tmp_path, server, {"smtp_tls_security_level": "verify", "smtp_tls_CAfile": ca_file,
                                                    "smtp_sasl_auth_enable": "yes",
                                                    "smtp_sasl_security_options": "noanonymous"})
    try:
        assert state is None, sat.maillog.text()
        assert server.verbs()[:4] == ["EHLO", "STARTTLS", "EHLO", "AUTH"]  # a fresh EHLO over TLS
        assert len(server.messages) == 1
        assert "Verified TLS connection established to 127.0.0.1[127.0.0.1]" in sat.maillog.text()
    finally:
        await sat.close()
        await server.stop()


def _selfsigned(tmp_path: Path) -> ssl.SSLContext:
    key = certs.generate_key()
    cert = certs.build_selfsigned(key, "mail.example.test", ["mail.example.test"])
    (tmp_path / "self.pem").write_bytes(certs.pem(cert) + certs.key_pem(key))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "self.pem")
    return ctx


@pytest.mark.parametrize("problem", ["self-signed", "wrong name", "expired"])
@run_async
async def test_bad_certificate_at_verify_defers_without_credentials(tmp_path, ca, ca_file, problem) -> None:
    if problem == "self-signed":
        ctx = _selfsigned(tmp_path)
        expected = "handshake failure with mail.example.test[127.0.0.1]"
    elif problem == "wrong name":
        ctx = server_context(ca.issue_cert("other.example.test"))
        expected = "Server certificate not verified: host mail.example.test[127.0.0.1]"
    else:
        past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)
        ctx = server_context(ca.issue_cert("mail.example.test", not_before=past - dt.timedelta(days=30), not_after=past))
        expected = "certificate has expired"
    server = FakeSmarthost(tls=ctx)
    sat, _, state = await relay(tmp_path, server, {"smtp_tls_security_level": "verify", "smtp_tls_CAfile": ca_file,
                                                    "smtp_sasl_auth_enable": "yes"}, nexthop_host="mail.example.test")
    try:
        assert state is QueueState.DEFERRED
        assert "AUTH" not in server.verbs() and "MAIL" not in server.verbs()
        assert expected in sat.maillog.text()
        assert "status=deferred" in sat.maillog.text()
    finally:
        await sat.close()
        await server.stop()


@run_async
async def test_secure_level_checks_the_nexthop_domain(tmp_path, ca, ca_file) -> None:
    server = FakeSmarthost(tls=server_context(ca.issue_cert("*.example.test")))
    sat, _, state = await relay(tmp_path, server, {"smtp_tls_security_level": "secure", "smtp_tls_CAfile": ca_file},
                                creds=False, nexthop_host="mail.example.test")
    try:
        assert state is None, sat.maillog.text()
        assert "Verified TLS connection established to mail.example.test[127.0.0.1]" in sat.maillog.text()
    finally:
        await sat.close()
        await server.stop()


@run_async
async def test_535_defers_with_the_reason_logged(tmp_path, ca) -> None:
    server = FakeSmarthost(tls=server_context(ca.issue_cert("127.0.0.1")),
                           auth_reply=b"535 5.7.8 Error: authentication failed: bad password\r\n")
    sat, queue_id, state = await relay(tmp_path, server, {"smtp_tls_security_level": "encrypt",
                                                           "smtp_sasl_auth_enable": "yes",
                                                           "smtp_sasl_security_options": "noanonymous"})
    try:
        assert state is QueueState.DEFERRED  # not bounced: the admin fixes the password
        assert "MAIL" not in server.verbs()
        line = next(l for l in sat.maillog.lines if "to=<bob@example.net>" in l)
        assert "dsn=4.7.0, status=deferred (SASL authentication failed; server 127.0.0.1[127.0.0.1]:" in line
        assert "said: 535 5.7.8 Error: authentication failed: bad password)" in line
        assert PASSWORD not in sat.maillog.text()
    finally:
        await sat.close()
        await server.stop()


@run_async
async def test_connection_drop_in_data_defers_then_the_retry_delivers(tmp_path) -> None:
    server = FakeSmarthost(auth=b"", drop_in_data=1)
    sat, queue_id, state = await relay(tmp_path, server, {"smtp_tls_security_level": "none"}, creds=False)
    try:
        assert state is QueueState.DEFERRED
        assert "status=deferred (conversation with 127.0.0.1[127.0.0.1]:" in sat.maillog.text()
        sat.clock.now = sat.store.get(queue_id).next_attempt
        sat.manager.wake()
        assert await sat.outcome(queue_id) is None
        assert unstuff(server.messages[0][:-3]) == BODY
        assert server.connections == 2
    finally:
        await sat.close()
        await server.stop()


@run_async
async def test_slow_smarthost_defers_then_the_retry_delivers(tmp_path) -> None:
    server = FakeSmarthost(auth=b"", slow_data=1, slowness=5.0)
    sat, queue_id, state = await relay(tmp_path, server, {"smtp_tls_security_level": "none",
                                                          "smtp_data_done_timeout": "1s"}, creds=False)
    try:
        assert state is QueueState.DEFERRED
        log = sat.maillog.text()
        assert "dsn=4.4.2, status=deferred (conversation with 127.0.0.1[127.0.0.1]:" in log, log
        assert "failed: timeout talking to 127.0.0.1[127.0.0.1]:" in log, log
        assert server.messages == []  # the slow server never acknowledged it
        sat.clock.now = sat.store.get(queue_id).next_attempt
        sat.manager.wake()
        assert await sat.outcome(queue_id) is None
        assert unstuff(server.messages[0][:-3]) == BODY
    finally:
        await sat.close()
        await server.stop()


@run_async
async def test_smarthost_down_defers(tmp_path) -> None:
    server = FakeSmarthost()
    port = await server.start()
    await server.stop()
    await asyncio.sleep(0.05)
    sat = Satellite(tmp_path, {"relayhost": f"[127.0.0.1]:{port}"})
    try:
        queue_id = await sat.submit()
        assert await sat.outcome(queue_id) is QueueState.DEFERRED
        assert f"status=deferred (connect to 127.0.0.1[127.0.0.1]:{port}: Connection refused)" in sat.maillog.text()
    finally:
        await sat.close()


@run_async
async def test_several_messages_share_one_connection(tmp_path) -> None:
    server = FakeSmarthost(auth=b"")
    port = await server.start()
    sat = Satellite(tmp_path, {"relayhost": f"[127.0.0.1]:{port}", "smtp_tls_security_level": "none",
                               "smtp_destination_concurrency_limit": "1"})
    try:
        ids = [await sat.submit(BODY + b"n=%d\r\n" % i) for i in range(3)]
        for queue_id in ids:
            assert await sat.outcome(queue_id) is None
        assert server.connections == 1 and len(server.messages) == 3
        assert "conn_use=3" in sat.maillog.text()
    finally:
        await sat.close()
        await server.stop()
