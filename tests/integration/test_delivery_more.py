"""More of the relay client end to end on loopback, with the fakes of test_delivery.py (a scripted
smarthost on 127.0.0.1, a resolver that never leaves the machine): master.cf overrides of the
``smtp``/``relay`` transports, implicit TLS, ``secure`` name checks, MX fallback, the SASL
mechanism filter, TLS policy maps, per-destination concurrency, and failures of the machinery."""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_delivery import BODY, PASSWORD, FakeSmarthost, Satellite, run_async, server_context  # noqa: F401

from smarthost.queue import QueueState
from smarthost.smtp.data import unstuff


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
