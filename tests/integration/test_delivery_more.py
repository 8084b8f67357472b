"""More of the relay client end to end on loopback, with the fakes of test_delivery.py (a scripted
smarthost on 127.0.0.1, a resolver that never leaves the machine): master.cf overrides of the
``smtp``/``relay`` transports, implicit TLS, ``secure`` name checks, MX fallback, the SASL
mechanism filter, TLS policy maps, per-destination concurrency, and failures of the machinery."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import dns.exception
import dns.resolver
import pytest
import trustme
from test_delivery import BODY, PASSWORD, FakeSmarthost, Satellite, _selfsigned, run_async, server_context

from smarthost.queue import QueueState
from smarthost.smtp.data import unstuff


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(tmp_path: Path, ca: trustme.CA) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


class _MX:
    def __init__(self, preference: int, exchange: str) -> None:
        self.preference, self.exchange = preference, exchange


class _A:
    def __init__(self, address: str) -> None:
        self.address = address


class MxResolver:
    """DNS with MX records: ``mx`` maps a domain to (preference, host) pairs, ``a`` a host to
    its (loopback) address. ``a_error`` is raised for every A query (a broken name service);
    every query is recorded in ``queries``."""

    def __init__(self, mx: dict[str, list[tuple[int, str]]], a: dict[str, str],
                 a_error: BaseException | None = None) -> None:
        self.mx, self.a, self.a_error = mx, a, a_error
        self.queries: list[tuple[str, str]] = []

    async def resolve(self, qname: str, rdtype: str):
        name = qname.rstrip(".")
        self.queries.append((name, rdtype))
        if rdtype == "MX" and name in self.mx:
            return [_MX(p, h + ".") for p, h in self.mx[name]]
        if rdtype == "A" and self.a_error is not None:
            raise self.a_error
        if rdtype == "A" and name in self.a:
            return [_A(self.a[name])]
        if name in self.mx or name in self.a:
            raise dns.resolver.NoAnswer()
        raise dns.resolver.NXDOMAIN()


def sent_password(server: FakeSmarthost) -> bool:
    """Whether the credentials reached the server in any form we can read."""
    secret = PASSWORD.encode()
    forms = [secret, base64.b64encode(secret), base64.b64encode(b"\0alice\0" + secret)]
    return any(f in c for c in server.commands for f in forms) or any(f in seg for seg in server.segments for f in forms)


async def outcomes(sat: Satellite, *queue_ids: str) -> list[QueueState | None]:
    return [await sat.outcome(q) for q in queue_ids]


@run_async
async def test_master_cf_overrides_of_the_relay_transport_apply(tmp_path: Path) -> None:
    # relay_domains mail goes through relay_transport (= relay), which master.cf makes demand TLS;
    # other mail goes through default_transport (= smtp) with main.cf's "none".
    server = FakeSmarthost(auth=b"")  # no STARTTLS
    port = await server.start()
    sat = Satellite(tmp_path, {"relayhost": f"[127.0.0.1]:{port}", "smtp_tls_security_level": "none",
                               "relay_domains": "example.net"},
                    master_cf="relay unix - - n - - smtp -o smtp_tls_security_level=encrypt\n"
                              "smtp unix - - n - - smtp\n")
    try:
        relayed = await sat.submit(recipients=("bob@example.net",))
        other = await sat.submit(recipients=("carol@example.com",))
        assert await outcomes(sat, relayed, other) == [QueueState.DEFERRED, None]
        log = sat.maillog.text()
        line = next(l for l in sat.maillog.lines if "to=<bob@example.net>" in l)
        assert "status=deferred (TLS is required, but was not offered by host 127.0.0.1[127.0.0.1]" in line, log
        assert "to=<carol@example.com>" in log and "status=sent (250 2.0.0 Ok: queued as FAKE1)" in log
        assert len(server.messages) == 1
    finally:
        await sat.close()
        await server.stop()


@run_async
async def test_wrappermode_delivers_over_implicit_tls(tmp_path: Path, ca, ca_file) -> None:
    server = FakeSmarthost(tls=server_context(ca.issue_cert("127.0.0.1")), implicit_tls=True)
    port = await server.start()
    nexthop = f"[127.0.0.1]:{port}"
    sat = Satellite(tmp_path, {"relayhost": nexthop, "smtp_tls_wrappermode": "yes",
                               "smtp_tls_security_level": "verify", "smtp_tls_CAfile": ca_file,
                               "smtp_sasl_auth_enable": "yes", "smtp_sasl_security_options": "noanonymous"},
                    password_key=nexthop)
    try:
        queue_id = await sat.submit()
        assert await sat.outcome(queue_id) is None, sat.maillog.text()
        assert server.verbs()[:4] == ["EHLO", "AUTH", "MAIL", "RCPT"]  # no STARTTLS: TLS from the first byte
        assert unstuff(server.messages[0][:-3]) == BODY
        assert f"Verified TLS connection established to 127.0.0.1[127.0.0.1]:{port}" in sat.maillog.text()
    finally:
        await sat.close()
        await server.stop()


@pytest.mark.parametrize(("level", "delivered"), [("verify", True), ("secure", False)])
@run_async
async def test_secure_wants_the_nexthop_domain_not_the_mx_host_name(tmp_path: Path, ca, ca_file, level,
                                                                    delivered) -> None:
    # relayhost = example.org:PORT: the MX is mx.other.test, whose certificate names only itself.
    # verify checks the host name (it matches); secure checks the next-hop domain (it does not:
    # a forged MX record must not get the mail, nor the credentials).
    server = FakeSmarthost(tls=server_context(ca.issue_cert("mx.other.test")))
    port = await server.start()
    resolver = MxResolver({"example.org": [(10, "mx.other.test")]}, {"mx.other.test": "127.0.0.1"})
    sat = Satellite(tmp_path, {"relayhost": f"example.org:{port}", "smtp_tls_security_level": level,
                               "smtp_tls_CAfile": ca_file, "smtp_sasl_auth_enable": "yes",
                               "smtp_sasl_security_options": "noanonymous"},
                    password_key=f"example.org:{port}", resolver=resolver)
    try:
        queue_id = await sat.submit()
        state = await sat.outcome(queue_id)
        log = sat.maillog.text()
        if delivered:
            assert state is None, log
            assert "AUTH" in server.verbs() and sent_password(server)  # (so the check below can see it)
        else:
            assert state is QueueState.DEFERRED
            assert "AUTH" not in server.verbs() and "MAIL" not in server.verbs()
            assert not sent_password(server)
            assert (f"status=deferred (Server certificate not verified: host mx.other.test[127.0.0.1]:{port}"
                    " is not one of example.org, .example.org (TLS policy secure))") in log, log
    finally:
        await sat.close()
        await server.stop()


@run_async
async def test_self_signed_certificate_at_secure_defers_without_credentials(tmp_path: Path, ca_file) -> None:
    server = FakeSmarthost(tls=_selfsigned(tmp_path))  # a certificate for mail.example.test, but nobody's CA
    port = await server.start()
    nexthop = f"[mail.example.test]:{port}"
    sat = Satellite(tmp_path, {"relayhost": nexthop, "smtp_tls_security_level": "secure", "smtp_tls_CAfile": ca_file,
                               "smtp_sasl_auth_enable": "yes"},
                    password_key=nexthop, hosts={"mail.example.test"})
    try:
        queue_id = await sat.submit()
        assert await sat.outcome(queue_id) is QueueState.DEFERRED
        assert "AUTH" not in server.verbs() and "MAIL" not in server.verbs()
        assert not sent_password(server)
        assert "status=deferred (Cannot start TLS: handshake failure with mail.example.test[127.0.0.1]" in sat.maillog.text()
    finally:
        await sat.close()
        await server.stop()


@pytest.mark.parametrize("first_mx", ["closed port", "554 greeting"])
@run_async
async def test_mx_delivery_falls_back_to_the_next_mx(tmp_path: Path, first_mx) -> None:
    server = FakeSmarthost(auth=b"")
    port = await server.start("127.0.0.1")
    refuser = None
    if first_mx == "554 greeting":
        refuser = FakeSmarthost(greeting=b"554 5.3.2 not now, not you\r\n")
        await refuser.start("127.0.0.2", port)
    resolver = MxResolver({"example.org": [(20, "mx2.example.org"), (10, "mx1.example.org")]},
                          {"mx1.example.org": "127.0.0.2", "mx2.example.org": "127.0.0.1"})
    sat = Satellite(tmp_path, {"relayhost": f"example.org:{port}", "smtp_tls_security_level": "none"},
                    resolver=resolver)
    try:
        queue_id = await sat.submit()
        assert await sat.outcome(queue_id) is None, sat.maillog.text()
        assert unstuff(server.messages[0][:-3]) == BODY
        assert ("example.org", "MX") in resolver.queries
        assert f"relay=mx2.example.org[127.0.0.1]:{port}," in sat.maillog.text()
        if refuser is not None:
            assert refuser.connections == 1 and refuser.messages == []
    finally:
        await sat.close()
        await server.stop()
        if refuser is not None:
            await refuser.stop()


@run_async
async def test_unbracketed_relayhost_without_port_is_looked_up_by_mx(tmp_path: Path) -> None:
    # relayhost = example.org: MX records first (the A lookups of the MX hosts then fail
    # temporarily here, so nothing connects anywhere); [example.org] would skip the MX lookup.
    resolver = MxResolver({"example.org": [(10, "mx1.example.org")]}, {"mx1.example.org": "127.0.0.1"},
                          a_error=dns.exception.Timeout())
    sat = Satellite(tmp_path, {"relayhost": "example.org", "smtp_tls_security_level": "none"}, resolver=resolver)
    try:
        queue_id = await sat.submit()
        assert await sat.outcome(queue_id) is QueueState.DEFERRED
        assert resolver.queries[0] == ("example.org", "MX")
        assert ("mx1.example.org", "A") in resolver.queries and ("example.org", "A") not in resolver.queries
        assert "status=deferred (Name service error for name=mx1.example.org type=A: timeout)" in sat.maillog.text()
    finally:
        await sat.close()


@run_async
async def test_sasl_mechanism_filter_from_main_cf_is_used(tmp_path: Path, ca) -> None:
    server = FakeSmarthost(tls=server_context(ca.issue_cert("127.0.0.1")), auth=b"PLAIN LOGIN")
    port = await server.start()
    nexthop = f"[127.0.0.1]:{port}"
    sat = Satellite(tmp_path, {"relayhost": nexthop, "smtp_tls_security_level": "encrypt",
                               "smtp_sasl_auth_enable": "yes", "smtp_sasl_security_options": "noanonymous",
                               "smtp_sasl_tls_security_options": "noanonymous",
                               "smtp_sasl_mechanism_filter": "login"},
                    password_key=nexthop)
    try:
        queue_id = await sat.submit()
        await sat.outcome(queue_id)
        [auth] = [c for c in server.commands if c.upper().startswith(b"AUTH")]
        assert auth.upper().startswith(b"AUTH LOGIN")  # although PLAIN was offered first
    finally:
        await sat.close()
        await server.stop()


@run_async
async def test_tls_policy_maps_from_main_cf_apply(tmp_path: Path) -> None:
    # main.cf says "may"; the policy table demands encryption for this next hop, whose
    # server does not offer STARTTLS: deferred. Another next hop in the table does not matter.
    server = FakeSmarthost(auth=b"")
    port = await server.start()
    nexthop = f"[127.0.0.1]:{port}"
    (tmp_path / "tls_policy").write_text(f"[other.example]:25 none\n{nexthop} encrypt\n")
    sat = Satellite(tmp_path, {"relayhost": nexthop, "smtp_tls_security_level": "may",
                               "smtp_tls_policy_maps": f"texthash:{tmp_path / 'tls_policy'}"})
    try:
        queue_id = await sat.submit()
        assert await sat.outcome(queue_id) is QueueState.DEFERRED
        assert "MAIL" not in server.verbs()
        assert f"status=deferred (TLS is required, but was not offered by host 127.0.0.1[127.0.0.1]:{port})" in sat.maillog.text()
    finally:
        await sat.close()
        await server.stop()


@run_async
async def test_destination_concurrency_limit_caps_simultaneous_connections(tmp_path: Path) -> None:
    hold = asyncio.Event()
    server = FakeSmarthost(auth=b"", hold=hold)
    port = await server.start()
    sat = Satellite(tmp_path, {"relayhost": f"[127.0.0.1]:{port}", "smtp_tls_security_level": "none",
                               "default_destination_concurrency_limit": "2"})
    try:
        ids = [await sat.submit(BODY + b"n=%d\r\n" % i) for i in range(6)]
        for _ in range(300):  # wait until two messages are held in DATA
            await asyncio.sleep(0.01)
            if server.active == 2 and server.commands.count(b"DATA") == 2:
                break
        await asyncio.sleep(0.2)  # room for a third connection, if the manager were to open one
        assert server.active == 2 and server.connections == 2
        hold.set()
        assert await outcomes(sat, *ids) == [None] * 6
        assert len(server.messages) == 6
        assert server.max_active == 2
    finally:
        await sat.close()
        await server.stop()


@run_async
async def test_454_to_starttls_at_may_sends_no_credentials_in_plaintext(tmp_path: Path, ca) -> None:
    server = FakeSmarthost(tls=server_context(ca.issue_cert("127.0.0.1")),
                           starttls_reply=b"454 4.7.0 TLS not available due to local problem\r\n")
    port = await server.start()
    nexthop = f"[127.0.0.1]:{port}"
    sat = Satellite(tmp_path, {"relayhost": nexthop, "smtp_tls_security_level": "may",
                               "smtp_sasl_auth_enable": "yes", "smtp_sasl_security_options": "noanonymous"},
                    password_key=nexthop)
    try:
        queue_id = await sat.submit()
        assert await sat.outcome(queue_id) is QueueState.DEFERRED
        assert server.verbs()[:2] == ["EHLO", "STARTTLS"]
        assert "AUTH" not in server.verbs() and "MAIL" not in server.verbs()
        assert not sent_password(server)
        line = next(l for l in sat.maillog.lines if "to=<bob@example.net>" in l)
        assert "dsn=4.7.0, status=deferred (TLS is required for authentication" in line
        assert "credentials not sent" in line
    finally:
        await sat.close()
        await server.stop()


class _BuggyResolver(MxResolver):
    """A name service client with a bug: it raises what no caller expects."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.broken = True

    async def resolve(self, qname: str, rdtype: str):
        if self.broken:
            raise RuntimeError("resolver bug")
        return await super().resolve(qname, rdtype)


@run_async
async def test_a_delivery_agent_that_raises_defers_and_nothing_is_lost(tmp_path: Path) -> None:
    server = FakeSmarthost(auth=b"")
    port = await server.start()
    resolver = _BuggyResolver({"example.org": [(10, "mx1.example.org")]}, {"mx1.example.org": "127.0.0.1"})
    sat = Satellite(tmp_path, {"relayhost": f"example.org:{port}", "smtp_tls_security_level": "none"},
                    resolver=resolver)
    try:
        queue_id = await sat.submit()
        assert await sat.outcome(queue_id) is QueueState.DEFERRED
        line = next(l for l in sat.maillog.lines if "to=<bob@example.net>" in l)
        assert "dsn=4.3.0, status=deferred (internal error in the delivery agent)" in line
        assert sat.store.read_body(queue_id) == BODY  # still queued, byte for byte
        resolver.broken = False
        sat.clock.now = sat.store.get(queue_id).next_attempt
        sat.manager.wake()
        assert await sat.outcome(queue_id) is None
        assert unstuff(server.messages[0][:-3]) == BODY
    finally:
        await sat.close()
        await server.stop()
