"""The queue manager with a fake transport and a fake clock: what leaves the queue, when, and what
the mail log says."""

from __future__ import annotations

import asyncio
import functools
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from smarthost.config import load
from smarthost.outbound.routing import RoutingParams, RoutingTables
from smarthost.queue import Envelope, QueueState, QueueStore, Recipient
from smarthost.queue.manager import DeliveryReport, Message, QueueManager, Routing, notify_queue_manager
from smarthost.smtp.client import Outcome
from smarthost.smtp.replies import Reply
from smarthost.tables import open_table

T0 = 1_700_000_000.0


def run_async(test):
    """Run an async test function on a fresh event loop (no pytest plugin needed)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return wrapper


BODY = b"Subject: hello\r\nMessage-ID: <m1@example.org>\r\n\r\nHi there.\r\n.leading dot\r\n"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class MailLog:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)

    def warning(self, line: str) -> None:
        self.lines.append("warning: " + line)

    def error(self, line: str) -> None:
        self.lines.append("error: " + line)

    def grep(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


def sent(text: str = "250 2.0.0 Ok: queued as REMOTE1") -> Outcome:
    return Outcome.from_reply(Reply(250, "2.0.0", text[10:]))


def reply(code: int, enhanced: str, text: str) -> Outcome:
    return Outcome.from_reply(Reply(code, enhanced, text))


class FakeTransport:
    """Answers per recipient address from ``script`` (default: 250); records every delivery."""

    def __init__(self, script: dict[str, Outcome] | None = None) -> None:
        self.script = script or {}
        self.deliveries: list[tuple[int, Message]] = []  # (session number, message)
        self.sessions = 0
        self.gate: asyncio.Event | None = None  # when set, deliveries wait for it
        self.dsn = False  # whether the fake next hop offers DSN

    def session_key(self, nexthop: str, sender: str):
        return nexthop

    def session(self, nexthop: str, sender: str):
        self.sessions += 1
        return FakeSession(self, self.sessions)

    def for_address(self, address: str) -> list[Message]:
        return [m for _, m in self.deliveries if any(r.address == address for r in m.recipients)]


class FakeSession:
    def __init__(self, transport: FakeTransport, number: int) -> None:
        self.transport = transport
        self.number = number
        self.uses = 0

    async def deliver(self, message: Message) -> DeliveryReport:
        if self.transport.gate is not None:
            await self.transport.gate.wait()
        self.uses += 1
        self.transport.deliveries.append((self.number, message))
        outcomes = tuple(self.transport.script.get(r.address, sent()) for r in message.recipients)
        return DeliveryReport(outcomes, relay="relay.example.net[192.0.2.1]:25", conn_use=self.uses,
                              dsn_passed=self.transport.dsn)

    async def close(self) -> None:
        pass


class Domains:
    def is_local_domain(self, domain: str) -> bool:
        return domain == "mx.example.test"

    def is_relay_domain(self, domain: str) -> bool:
        return False


class Harness:
    def __init__(self, tmp_path: Path, main_cf: dict[str, str], transport_maps: str = "") -> None:
        cfg = {"myhostname": "mx.example.test", "queue_directory": str(tmp_path / "queue"),
               "mydestination": "mx.example.test", "relayhost": "[smarthost.example.net]:587", **main_cf}
        (tmp_path / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in cfg.items()))
        (tmp_path / "master.cf").write_text("")
        self.config = load(tmp_path)
        self.store = QueueStore(tmp_path / "queue", synchronous=False)
        self.clock = Clock()
        self.maillog = MailLog()
        self.smtp = FakeTransport()
        self.local = FakeTransport()
        tables = RoutingTables(Domains(), transport_maps=[open_table(transport_maps)] if transport_maps else ())
        routing = Routing(RoutingParams.from_params(self.config.params), tables)
        self.manager = QueueManager(self.config, self.store, self.maillog, clock=self.clock,
                                    transports={"smtp": self.smtp, "relay": self.smtp, "local": self.local}, routing=routing)
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.manager.run())

    async def stop(self) -> None:
        self.manager.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)

    async def submit(self, sender: str, recipients: list[str], body: bytes = BODY, **kw) -> str:
        envelope = Envelope(sender, tuple(Recipient(r) for r in recipients), arrival=self.clock.now, **kw)
        return await self.store.submit(envelope, body)

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        for _ in range(int(timeout / 0.01)):
            if predicate() and self.manager.idle:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}; log:\n" + "\n".join(self.maillog.lines))

    async def settle(self) -> None:
        """Let the manager look at the queue and finish what it started."""
        self.manager.wake()
        for _ in range(5):
            await asyncio.sleep(0.02)
        await self.until(lambda: True, "the manager to go idle")

    def state(self, queue_id: str) -> QueueState | None:
        entry = self.store.get(queue_id)
        return None if entry is None else entry.state


@pytest.fixture
def harness(tmp_path: Path):
    made: list[Harness] = []

    def make(main_cf: dict[str, str] | None = None, **kw) -> Harness:
        h = Harness(tmp_path / f"h{len(made)}", main_cf or {}, **kw)
        made.append(h)
        return h

    for p in range(3):
        (tmp_path / f"h{p}").mkdir()
    yield make
    for h in made:
        h.store.close()


@run_async
async def test_new_mail_is_delivered_at_once_on_wake_and_removed(harness) -> None:
    h = harness()
    h.start()
    await asyncio.sleep(0.05)  # the manager is now waiting (queue_run_delay: 300s)
    queue_id = await h.submit("alice@example.org", ["bob@example.net"])
    notify_queue_manager(h.store.directory)  # what the SMTP worker does after its 250
    await h.until(lambda: h.store.count() == 0, "delivery")
    [(_, message)] = h.smtp.deliveries
    assert message.body == BODY and message.envelope.sender == "alice@example.org"
    assert h.maillog.grep(f"{queue_id}: from=<alice@example.org>, size={len(BODY)}, nrcpt=1 (queue active)")
    [line] = h.maillog.grep(f"{queue_id}: to=<bob@example.net>")
    assert "relay=relay.example.net[192.0.2.1]:25, delay=0, delays=0/0/0/0, dsn=2.0.0," in line
    assert line.endswith("status=sent (250 2.0.0 Ok: queued as REMOTE1)")
    assert h.maillog.lines[-1] == f"{queue_id}: removed"
    await h.stop()


@run_async
async def test_notify_without_a_manager_neither_blocks_nor_fails(tmp_path: Path) -> None:
    notify_queue_manager(tmp_path / "nothing-here")
    notify_queue_manager(tmp_path / "nothing-here", flush=True)


@run_async
async def test_temporary_failure_defers_and_retries_on_schedule(harness) -> None:
    h = harness({"minimal_backoff_time": "300s", "queue_run_delay": "300s"})
    h.smtp.script["bob@example.net"] = reply(451, "4.3.0", "try again later")
    queue_id = await h.submit("alice@example.org", ["bob@example.net"])
    h.start()
    await h.until(lambda: h.state(queue_id) is QueueState.DEFERRED, "the deferral")
    entry = h.store.get(queue_id)
    assert entry.next_attempt == T0 + 300 and entry.attempts == 1
    assert h.maillog.grep("dsn=4.3.0, status=deferred (451 4.3.0 try again later)")
    h.clock.now = T0 + 299
    await h.settle()
    assert len(h.smtp.deliveries) == 1  # not due yet
    del h.smtp.script["bob@example.net"]
    h.clock.now = T0 + 300
    await h.settle()
    assert len(h.smtp.deliveries) == 2 and h.store.count() == 0
    await h.stop()


@run_async
async def test_permanent_failure_bounces_to_the_sender_as_a_new_message_from_null(harness) -> None:
    h = harness()
    h.smtp.script["bob@example.net"] = reply(550, "5.1.1", "<bob@example.net>: User unknown")
    queue_id = await h.submit("alice@example.org", ["bob@example.net"])
    h.start()
    await h.until(lambda: len(h.smtp.deliveries) == 2 and h.store.count() == 0, "the bounce")
    assert h.maillog.grep("dsn=5.1.1, status=bounced (550 5.1.1 <bob@example.net>: User unknown)")
    [notice_line] = h.maillog.grep(f"{queue_id}: sender non-delivery notification: ")
    notice_id = notice_line.rsplit(" ", 1)[1]
    [bounce] = h.smtp.for_address("alice@example.org")
    assert bounce.queue_id == notice_id and bounce.envelope.sender == ""
    assert b"Undelivered Mail Returned to Sender" in bounce.body
    assert b"Final-Recipient: rfc822; bob@example.net" in bounce.body
    assert b"550 5.1.1 <bob@example.net>: User unknown" in bounce.body
    await h.stop()


@run_async
async def test_expired_message_is_returned_to_sender(harness) -> None:
    h = harness({"maximal_queue_lifetime": "1h", "minimal_backoff_time": "300s", "maximal_backoff_time": "4000s"})
    h.smtp.script["bob@example.net"] = reply(421, "4.4.2", "service not available")
    queue_id = await h.submit("alice@example.org", ["bob@example.net"])
    h.start()
    await h.until(lambda: h.state(queue_id) is QueueState.DEFERRED, "the first deferral")
    h.clock.now = T0 + 3600
    await h.settle()
    assert h.store.get(queue_id) is None
    assert h.maillog.grep(f"{queue_id}: from=<alice@example.org>, status=expired, returned to sender")
    [bounce] = h.smtp.for_address("alice@example.org")
    assert bounce.envelope.sender == "" and b"421 4.4.2 service not available" in bounce.body
    await h.stop()


@run_async
async def test_a_bounce_that_bounces_goes_to_postmaster_from_the_double_bounce_address(harness) -> None:
    h = harness()
    h.smtp.script["gone@example.net"] = reply(550, "5.1.1", "no such user")
    queue_id = await h.submit("", ["gone@example.net"])
    h.start()
    await h.until(lambda: h.store.count() == 0 and h.local.deliveries, "the postmaster notice")
    assert h.maillog.grep(f"{queue_id}: postmaster non-delivery notification: ")
    [(_, notice)] = h.local.deliveries  # postmaster is local
    assert b"550 5.1.1 no such user" in notice.body
    assert [r.address for r in notice.recipients] == ["postmaster"]
    assert notice.envelope.sender == "double-bounce@mx.example.test"
    await h.stop()


@run_async
async def test_failed_postmaster_notice_is_discarded_not_bounced_again(harness) -> None:
    h = harness()
    h.smtp.script["postmaster@example.net"] = reply(550, "5.1.1", "no such user")
    queue_id = await h.submit("double-bounce@mx.example.test", ["postmaster@example.net"])
    h.start()
    await h.until(lambda: h.store.count() == 0, "the discard")
    assert len(h.smtp.deliveries) == 1
    assert h.maillog.grep(f"warning: {queue_id}: undeliverable postmaster notification discarded")
    await h.stop()


@run_async
async def test_without_2bounce_in_notify_classes_a_failed_bounce_is_logged_and_dropped(harness) -> None:
    h = harness({"notify_classes": "resource, software"})
    h.smtp.script["gone@example.net"] = reply(550, "5.1.1", "no such user")
    queue_id = await h.submit("", ["gone@example.net"])
    h.start()
    await h.until(lambda: h.store.count() == 0, "the drop")
    assert len(h.smtp.deliveries) == 1
    assert h.maillog.grep(f"{queue_id}: undeliverable bounce discarded")
    await h.stop()


@run_async
async def test_entries_left_active_by_a_crash_are_delivered_at_start(harness) -> None:
    h = harness()
    queue_id = await h.submit("alice@example.org", ["bob@example.net"])
    h.store.move(queue_id, QueueState.ACTIVE)  # what a kill -9 during delivery leaves
    h.start()
    await h.until(lambda: h.store.count() == 0, "the recovered delivery")
    assert h.maillog.grep("recovered 1 message(s)")
    assert [m.queue_id for _, m in h.smtp.deliveries] == [queue_id]
    await h.stop()


@run_async
async def test_partial_success_retries_only_the_deferred_recipient(harness) -> None:
    h = harness()
    h.smtp.script["later@example.net"] = reply(452, "4.2.2", "mailbox full")
    queue_id = await h.submit("alice@example.org", ["now@example.net", "later@example.net"])
    h.start()
    await h.until(lambda: h.state(queue_id) is QueueState.DEFERRED, "the deferral")
    del h.smtp.script["later@example.net"]
    h.clock.now = T0 + 300
    await h.settle()
    assert h.store.count() == 0
    first, second = (m for _, m in h.smtp.deliveries)
    assert [r.address for r in first.recipients] == ["now@example.net", "later@example.net"]
    assert [r.address for r in second.recipients] == ["later@example.net"]
    await h.stop()


@run_async
async def test_corrupt_entry_goes_to_corrupt_and_the_queue_keeps_running(harness) -> None:
    h = harness()
    bad = await h.submit("alice@example.org", ["bob@example.net"])
    with sqlite3.connect(h.store.directory / "queue.db") as db:
        db.execute("DELETE FROM bodies WHERE id = ?", (bad,))
    good = await h.submit("carol@example.org", ["dave@example.net"])
    h.start()
    await h.until(lambda: h.store.get(good) is None, "the good message")
    assert h.state(bad) is QueueState.CORRUPT
    assert h.maillog.grep(f"warning: {bad}: corrupt queue entry")
    assert [m.queue_id for _, m in h.smtp.deliveries] == [good]
    await h.stop()


@run_async
async def test_messages_to_one_next_hop_share_a_connection(harness) -> None:
    h = harness({"smtp_destination_concurrency_limit": "1"})
    ids = [await h.submit("alice@example.org", [f"u{i}@example.net"]) for i in range(3)]
    h.start()
    await h.until(lambda: h.store.count() == 0, "the deliveries")
    assert h.smtp.sessions == 1
    assert sorted(m.queue_id for _, m in h.smtp.deliveries) == ids
    assert h.maillog.grep("conn_use=3")
    await h.stop()


@run_async
async def test_idle_sessions_that_lose_the_race_for_a_job_stay_open(harness) -> None:
    # One new message wakes every idle session to its next hop; only one gets it, and the
    # others must go on waiting (smtp_connection_cache_time_limit), not hang up: the next
    # burst then finds them open instead of opening new connections.
    h = harness({"smtp_destination_concurrency_limit": "3"})
    h.smtp.gate = asyncio.Event()
    for i in range(3):
        await h.submit("alice@example.org", [f"u{i}@example.net"])
    h.start()
    for _ in range(200):
        if h.smtp.sessions == 3:
            break
        await asyncio.sleep(0.01)
    assert h.smtp.sessions == 3  # three deliveries wait at the gate, one connection each
    h.smtp.gate.set()
    await h.until(lambda: h.store.count() == 0, "the first three")
    await h.submit("alice@example.org", ["u3@example.net"])
    h.manager.wake()
    await h.until(lambda: h.store.count() == 0, "the fourth")
    h.smtp.gate.clear()
    for i in range(4, 7):
        await h.submit("alice@example.org", [f"u{i}@example.net"])
    h.manager.wake()
    await asyncio.sleep(0.2)  # the three take a session each and wait at the gate
    h.smtp.gate.set()
    await h.until(lambda: h.store.count() == 0, "the last three")
    assert h.smtp.sessions == 3
    assert len(h.smtp.deliveries) == 7
    await h.stop()


@run_async
async def test_error_transport_bounces_with_its_text(harness) -> None:
    h = harness(transport_maps="inline:{ { closed.example = error:5.7.1 we do not send there } }")
    queue_id = await h.submit("alice@example.org", ["x@closed.example"])
    h.start()
    await h.until(lambda: h.store.count() == 0, "the bounce")
    assert h.maillog.grep(f"{queue_id}: to=<x@closed.example>, relay=none,")
    assert h.maillog.grep("dsn=5.7.1, status=bounced (we do not send there)")
    [bounce] = h.smtp.for_address("alice@example.org")
    assert b"we do not send there" in bounce.body
    await h.stop()


@run_async
async def test_dsn_notify_never_suppresses_the_bounce(harness) -> None:
    h = harness()
    h.smtp.script["bob@example.net"] = reply(550, "5.1.1", "no such user")
    envelope = Envelope("alice@example.org", (Recipient("bob@example.net", notify=("NEVER",)),), arrival=T0)
    await h.store.submit(envelope, BODY)
    h.start()
    await h.until(lambda: h.store.count() == 0, "the failure")
    assert len(h.smtp.deliveries) == 1  # no bounce was queued
    await h.stop()


@run_async
async def test_stop_finishes_deliveries_in_progress_and_leaves_the_rest_active(harness) -> None:
    h = harness({"smtp_destination_concurrency_limit": "1"})
    h.smtp.gate = asyncio.Event()
    first = await h.submit("alice@example.org", ["a@example.net"])
    second = await h.submit("alice@example.org", ["b@example.net"])
    h.start()
    await asyncio.sleep(0.1)  # the first delivery now waits at the gate
    h.manager.stop()
    h.smtp.gate.set()
    await asyncio.wait_for(h.task, 5)
    assert h.store.get(first) is None
    assert h.state(second) is QueueState.ACTIVE  # recovered at the next start
    assert [m.queue_id for _, m in h.smtp.deliveries] == [first]


@run_async
async def test_flush_makes_deferred_mail_due_now(harness) -> None:
    h = harness()
    h.smtp.script["bob@example.net"] = reply(451, "4.3.0", "later")
    queue_id = await h.submit("alice@example.org", ["bob@example.net"])
    h.start()
    await h.until(lambda: h.state(queue_id) is QueueState.DEFERRED, "the deferral")
    del h.smtp.script["bob@example.net"]
    notify_queue_manager(h.store.directory, flush=True)
    await h.until(lambda: h.store.count() == 0, "the flushed delivery")
    await h.stop()


@run_async
async def test_maildrop_files_are_picked_up_and_delivered(harness) -> None:
    from smarthost.queue import maildrop

    h = harness()
    drop = maildrop.ensure_maildrop(h.store.directory)
    envelope = Envelope("root@mx.example.test", (Recipient("bob@example.net"),))
    maildrop.write(drop, envelope, BODY)
    h.clock.now = time.time() + 1  # the store stamps picked-up mail with the real time
    h.start()
    await h.until(lambda: len(h.smtp.deliveries) == 1 and h.store.count() == 0, "the pickup")
    [(_, message)] = h.smtp.deliveries
    assert message.body.endswith(BODY) and message.body.startswith(b"Received: by mx.example.test")
    assert h.maillog.grep("picked up from maildrop")
    await h.stop()


RUN_QMGR = """
import asyncio, sys
from pathlib import Path
from smarthost.maillog import MailLog
from smarthost.queue.manager import run_queue_manager
asyncio.run(run_queue_manager(Path(sys.argv[1]), MailLog(sys.argv[2], hostname="test")))
"""


def _qmgr_process(tmp_path: Path, main_cf: str):
    import subprocess
    import sys

    (tmp_path / "main.cf").write_text(f"myhostname = mx.example.test\nqueue_directory = {tmp_path / 'q'}\n" + main_cf)
    (tmp_path / "master.cf").write_text("")
    return subprocess.Popen([sys.executable, "-c", RUN_QMGR, str(tmp_path), str(tmp_path / "maillog")])


def test_qmgr_process_stops_on_sigterm(tmp_path: Path) -> None:
    import signal

    proc = _qmgr_process(tmp_path, "alias_maps =\n")
    try:
        for _ in range(500):
            if (tmp_path / "q" / "public" / "qmgr").exists():
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
    assert not (tmp_path / "q" / "public" / "qmgr").exists()


def test_qmgr_process_with_a_missing_table_says_what_to_fix(tmp_path: Path) -> None:
    proc = _qmgr_process(tmp_path, f"alias_maps = hash:{tmp_path}/aliases\n")
    assert proc.wait(10) == 1
    log = (tmp_path / "maillog").read_text()
    assert f"fatal: cannot start the queue manager: hash:{tmp_path}/aliases" in log
    assert "run smarthost postmap" in log


@run_async
async def test_a_bug_while_routing_defers_the_message_and_the_queue_keeps_running(harness) -> None:
    h = harness()

    class Broken:
        def is_local_domain(self, domain: str) -> bool:
            raise RuntimeError("bug")

        is_relay_domain = is_local_domain

    h.manager.routing = Routing(h.manager.routing.params, RoutingTables(Broken()))
    queue_id = await h.submit("alice@example.org", ["bob@example.net"])
    h.start()
    await h.until(lambda: h.state(queue_id) is QueueState.DEFERRED, "the deferral")
    assert h.maillog.grep(f"error: {queue_id}: internal error while scheduling the delivery; deferred")
    assert h.store.get(queue_id).next_attempt == T0 + 300
    await h.stop()


TCP_REPAIR = getattr(socket, "TCP_REPAIR", 19)  # Linux: a socket closed in repair mode sends nothing


async def _forget_every_connection(listener: socket.socket) -> None:
    """A next hop whose kernel drops each connection without a FIN or reset: what a server behind
    SYN cookies does with a handshake whose last ACK finds its accept queue full. Our side stays
    established and waits for a greeting that never comes."""
    loop = asyncio.get_running_loop()
    while True:
        conn, _ = await loop.sock_accept(listener)
        conn.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
        conn.close()


@run_async
async def test_a_connection_the_next_hop_forgot_defers_instead_of_staying_active(harness, monkeypatch) -> None:
    from smarthost.outbound import smtp

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    try:
        probe = socket.socket()
        probe.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
        probe.close()
    except OSError:
        listener.close()
        pytest.skip("TCP_REPAIR needs Linux and CAP_NET_ADMIN")
    forgetter = asyncio.create_task(_forget_every_connection(listener))
    port = listener.getsockname()[1]
    monkeypatch.setattr(smtp, "_GREETING_PROBES", (1, 1, 3))  # the real timing is 5s
    h = harness({"relayhost": f"[127.0.0.1]:{port}", "smtp_tls_security_level": "none"})
    h.manager.transports["smtp"] = h.manager.transports["relay"] = smtp.SmtpTransport.from_params(
        h.config.params, None, log=h.maillog.log)
    queue_id = await h.submit("alice@example.org", ["bob@example.net"])
    h.start()
    # Without the probes the greeting is awaited for smtp_helo_timeout (300s), the entry active.
    await h.until(lambda: h.state(queue_id) is QueueState.DEFERRED, "the deferral")
    [line] = h.maillog.grep(f"{queue_id}: to=<bob@example.net>")
    assert line.endswith(f"status=deferred (conversation with 127.0.0.1[127.0.0.1]:{port} failed: lost connection)")
    await h.stop()
    forgetter.cancel()
    listener.close()


@run_async
async def test_notify_success_gets_a_relayed_notice_unless_the_next_hop_speaks_dsn(harness) -> None:
    h = harness()
    h.start()
    envelope = Envelope("alice@example.org", (Recipient("bob@example.net", notify=("SUCCESS",)),
                                              Recipient("carol@example.net")), arrival=h.clock.now)
    queue_id = await h.store.submit(envelope, BODY)
    h.manager.wake()
    await h.until(lambda: h.store.count() == 0 and h.smtp.for_address("alice@example.org"), "the notice")
    [notice] = h.smtp.for_address("alice@example.org")
    assert notice.envelope.sender == ""  # notices come from the null sender (RFC 3461 §6.2)
    text = notice.body.decode()
    assert "report-type=delivery-status" in text
    assert "Final-Recipient: rfc822; bob@example.net" in text and "Action: relayed" in text
    assert "carol@example.net" not in text.split("message/delivery-status", 1)[1].split("text/rfc822-headers")[0]
    assert h.maillog.grep(f"{queue_id}: sender delivery status notification:")
    # A next hop that offers DSN got NOTIFY along: it reports, we do not.
    h.smtp.dsn = True
    before = len(h.smtp.deliveries)
    await h.store.submit(envelope, BODY)
    h.manager.wake()
    await h.until(lambda: h.store.count() == 0 and len(h.smtp.deliveries) > before, "the delivery")
    await h.settle()
    assert len(h.smtp.for_address("alice@example.org")) == 1
    await h.stop()


async def _retry_until(h: Harness, queue_id: str, age: float) -> None:
    """Let the deferred message be retried on its schedule until it has been queued ``age`` seconds."""
    while True:
        entry = h.store.get(queue_id)
        if entry.next_attempt - T0 > age:
            return
        h.clock.now = entry.next_attempt
        await h.settle()


@run_async
async def test_delay_warning_is_sent_once_after_delay_warning_time(harness) -> None:
    h = harness({"delay_warning_time": "1h", "minimal_backoff_time": "300s", "maximal_backoff_time": "4000s"})
    h.smtp.script["bob@example.net"] = reply(451, "4.7.1", "greylisted, try later")
    queue_id = await h.submit("alice@example.org", ["bob@example.net"])
    h.start()
    await h.until(lambda: h.state(queue_id) is QueueState.DEFERRED, "the first deferral")
    await _retry_until(h, queue_id, 3000)
    assert h.smtp.for_address("alice@example.org") == []  # not yet an hour
    assert not h.maillog.grep("delay notification")
    await _retry_until(h, queue_id, 6 * 3600)  # past the hour, and several more attempts
    assert len(h.smtp.for_address("bob@example.net")) > 5
    [line] = h.maillog.grep(f"{queue_id}: sender delay notification: ")
    [notice] = h.smtp.for_address("alice@example.org")
    assert notice.queue_id == line.rsplit(" ", 1)[1] and notice.envelope.sender == ""
    assert b"Subject: Delayed Mail (still being retried)" in notice.body
    assert b"Action: delayed" in notice.body and b"Status: 4.7.1" in notice.body
    assert b"451 4.7.1 greylisted, try later" in notice.body
    assert b"Will-Retry-Until: " in notice.body
    assert h.state(queue_id) is QueueState.DEFERRED  # the message itself is still being retried
    await h.stop()


@pytest.mark.parametrize(("delay_warning_time", "notify"), [
    ("0h", ("DELAY",)),  # Postfix's default: no warnings, even when NOTIFY=DELAY asks for one
    ("1h", ("NEVER",)),
    ("1h", ("FAILURE",)),
])
@run_async
async def test_no_delay_warning_when_off_or_not_wanted(harness, delay_warning_time, notify) -> None:
    h = harness({"delay_warning_time": delay_warning_time, "minimal_backoff_time": "300s"})
    h.smtp.script["bob@example.net"] = reply(451, "4.7.1", "try later")
    envelope = Envelope("alice@example.org", (Recipient("bob@example.net", notify=notify),), arrival=T0)
    queue_id = await h.store.submit(envelope, BODY)
    h.start()
    await h.until(lambda: h.state(queue_id) is QueueState.DEFERRED, "the first deferral")
    await _retry_until(h, queue_id, 3 * 3600)
    assert len(h.smtp.for_address("bob@example.net")) > 3
    assert h.smtp.for_address("alice@example.org") == []
    assert not h.maillog.grep("delay notification")
    await h.stop()
