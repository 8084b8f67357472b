"""The queue manager: takes due messages from the queue, delivers them, and removes, defers or bounces.

One ``qmgr`` process runs :func:`run_queue_manager` (forked by the master). It

* at start moves entries left in ``active`` by a crash back to ``incoming`` (delivery is
  at-least-once: a crash may deliver a message twice, never lose it);
* at each wake-up moves what ``smarthost sendmail`` left in the maildrop directory into the
  queue (:func:`smarthost.queue.maildrop.pickup`);
* claims due entries (``incoming``, and ``deferred`` whose time has come) into ``active``;
* routes each recipient (``virtual_alias_maps``, then :func:`smarthost.outbound.routing.route`;
  recipients in ``virtual_mailbox_domains`` go to local delivery), groups the recipients by
  transport and next hop, at most ``*_destination_recipient_limit`` per delivery;
* delivers through the transports (``smtp``/``relay`` and every master.cf service whose command
  is ``smtp``, each with its master.cf ``-o`` overrides: :mod:`smarthost.outbound.smtp`; ``local``/``virtual``:
  :mod:`smarthost.outbound.local`; ``error:`` bounces with its text, ``retry:`` defers, an
  unknown transport defers), with at most ``*_destination_concurrency_limit`` deliveries per
  destination, ``default_process_limit`` in all, and one connection reused for the next
  messages to the same destination;
* records each recipient's outcome durably, then removes the entry (all done), defers it
  (``next_attempt`` from :mod:`smarthost.queue.schedule`) or bounces (RFC 3464 notices from
  :mod:`smarthost.queue.bounce`, queued as new messages from ``<>``). Only recipients not yet
  ``sent`` or ``bounced`` are tried again.

Bounces of bounces (Postfix's bounce(8) rules): a failed message from ``<>`` is reported to
``2bounce_notice_recipient`` (postmaster) from ``double_bounce_sender@$myorigin`` when
``notify_classes`` contains ``2bounce`` or ``bounce``; a failed message from that double-bounce
address is logged and discarded. SAFE: our ``notify_classes`` default adds ``2bounce`` to
Postfix's ``resource, software``, so no undeliverable bounce disappears silently.

Delay warnings: with ``delay_warning_time`` set (default 0: off, as in Postfix), the first
deferral at least that long after arrival sends the sender one RFC 3464 ``Action: delayed``
notice ("sender delay notification: ID"); NOTIFY without DELAY (e.g. NEVER) suppresses it.

Expiry: a message still deferred after ``maximal_queue_lifetime`` (``bounce_queue_lifetime``
for ``<>``) is returned to the sender ("status=expired, returned to sender").

Waking up: an SMTP worker calls :func:`notify_queue_manager` after a ``250``; it sends one
datagram to the unix socket ``$queue_directory/public/qmgr`` and never blocks or fails (a
missing manager only means the message waits for the next scan). ``W`` wakes, ``F`` flushes
(every deferred message due now; also SIGUSR2). Without a wake-up the queue is scanned when
the next deferred entry is due, and at least every ``queue_run_delay``.

Stopping (SIGTERM): no new deliveries start, the ones in progress finish and are recorded;
messages not finished stay ``active`` and are recovered at the next start.

Mail log lines follow Postfix::

    ID: from=<a@example.org>, size=312, nrcpt=1 (queue active)
    ID: to=<b@example.net>, relay=mx.example.net[192.0.2.7]:25, delay=1.2, delays=0.01/0/0.3/0.9,
        dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4XyZ)
    ID: removed
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from smarthost.queue.bounce import Failure, make_bounce, make_delay_notice, make_success_notice
from smarthost.queue.ids import new_queue_id
from smarthost.queue.schedule import RetryParams, delay_warning_due, delay_warning_sent, next_attempt
from smarthost.queue.store import (
    CorruptEntry,
    Envelope,
    NoSuchEntry,
    QueueEntry,
    QueueError,
    QueueState,
    QueueStore,
    Recipient,
)
from smarthost.smtp.client import Outcome, Status
from smarthost.tables import Table, TableError, split_list

log = logging.getLogger(__name__)

WAKE_SOCKET = ("public", "qmgr")  # under queue_directory
_WAKE, _FLUSH = b"W", b"F"
_T = TypeVar("_T")


# -- what a transport sees and returns -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One delivery request: a queued message for some of its recipients, all to one next hop."""

    queue_id: str
    envelope: Envelope
    recipients: tuple[Recipient, ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class Forward:
    """A copy to queue anew (an alias that points elsewhere): same sender, these recipients."""

    recipients: tuple[str, ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What a transport did with a :class:`Message`.

    ``setup_failure`` is set when the next hop could not be used at all (no connection,
    TLS or authentication failure): the manager then gives the other messages queued for
    that destination the same outcome instead of trying each of them now.
    """

    outcomes: tuple[Outcome, ...]  # one per Message.recipients, in order
    relay: str = "none"  # host[address]:port, "local", "none"
    setup_time: float = 0.0  # delays=a/b/c/d: c (connection set-up, 0 when reused)
    transfer_time: float = 0.0  # d (the transaction)
    conn_use: int = 1  # how many deliveries this connection has carried, this one included
    dsn_passed: bool = False  # the next hop offered DSN: NOTIFY went along, it reports from now on
    reusable: bool = True  # the session may take another message
    setup_failure: Outcome | None = None
    forwards: tuple[Forward, ...] = ()


class TransportSession(Protocol):
    async def deliver(self, message: Message) -> DeliveryReport: ...

    async def close(self) -> None: ...


class Transport(Protocol):
    """A delivery agent. Messages whose ``session_key`` is equal may share one session."""

    def session_key(self, nexthop: str, sender: str) -> Hashable: ...

    def session(self, nexthop: str, sender: str) -> TransportSession: ...


# -- local delivery as a transport ----------------------------------------------------------


class LocalTransport:
    """``local`` and ``virtual``: :func:`smarthost.outbound.local.deliver_local` in a thread
    (it writes and fsyncs files, and may fork to change user)."""

    def __init__(self, settings: Any, tables: Any) -> None:
        self._settings = settings
        self._tables = tables

    def session_key(self, nexthop: str, sender: str) -> Hashable:
        return "local"

    def session(self, nexthop: str, sender: str) -> TransportSession:
        return self

    async def deliver(self, message: Message) -> DeliveryReport:
        from smarthost.outbound.local import deliver_local

        outcomes: list[Outcome] = []
        forwards: list[Forward] = []
        for rcpt in message.recipients:
            result = await asyncio.to_thread(
                deliver_local, message.body, rcpt.address, sender=message.envelope.sender,
                settings=self._settings, tables=self._tables, original_recipient=_original_address(rcpt),
            )
            outcomes.append(result.outcome)
            if result.forward and result.forward_message is not None and result.outcome.status is not Status.DEFERRED:
                forwards.append(Forward(result.forward, result.forward_message))
        return DeliveryReport(tuple(outcomes), relay="local", forwards=tuple(forwards))

    async def close(self) -> None:
        pass


def _original_address(rcpt: Recipient) -> str | None:
    if rcpt.orcpt and ";" in rcpt.orcpt:
        return rcpt.orcpt.partition(";")[2] or None
    return None


# -- settings ------------------------------------------------------------------------------------


def _get(params: Mapping[str, Any], name: str, default: Any) -> Any:
    return params[name] if name in params else default


def _words(value: Any) -> list[str]:
    return split_list(value) if isinstance(value, str) else list(value)


def _seconds(value: Any) -> float:
    """A time value; parameters not declared in parameters.py arrive as text such as ``2s``."""
    if isinstance(value, str):
        text = value.strip()
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
        if text[-1:].lower() in units:
            return float(text[:-1]) * units[text[-1:].lower()]
        return float(text)
    return float(value)


@dataclass(frozen=True, slots=True)
class ManagerSettings:
    myhostname: str
    myorigin: str
    retry: RetryParams = RetryParams()
    active_limit: int = 20000  # qmgr_message_active_limit
    process_limit: int = 100  # default_process_limit: deliveries in progress at once
    notify_classes: frozenset[str] = frozenset({"resource", "software", "2bounce"})
    double_bounce_sender: str = "double-bounce"
    twobounce_notice_recipient: str = "postmaster"
    bounce_size_limit: int = 50000
    connection_cache_time: float = 2.0  # smtp_connection_cache_time_limit: an idle session waits this long
    params: Mapping[str, Any] = field(default_factory=dict)  # for per-transport limits

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ManagerSettings:
        return cls(
            myhostname=params["myhostname"],
            myorigin=_get(params, "myorigin", params["myhostname"]),
            retry=RetryParams.from_params(params),
            active_limit=int(_get(params, "qmgr_message_active_limit", 20000)),
            process_limit=int(_get(params, "default_process_limit", 100)),
            notify_classes=frozenset(
                w.lower() for w in _words(_get(params, "notify_classes", "resource, software, 2bounce"))
            ),
            double_bounce_sender=str(_get(params, "double_bounce_sender", "double-bounce")),
            twobounce_notice_recipient=str(_get(params, "2bounce_notice_recipient", "postmaster")),
            bounce_size_limit=int(_get(params, "bounce_size_limit", 50000)),
            connection_cache_time=_seconds(_get(params, "smtp_connection_cache_time_limit", 2.0)),
            params=params,
        )

    def limit(self, transport: str, what: str, default: int) -> int:
        """``<transport>_destination_<what>_limit``, else ``default_destination_<what>_limit``."""
        value = _get(self.params, f"{transport}_destination_{what}_limit", None)
        if value is None:
            value = _get(self.params, f"default_destination_{what}_limit", default)
        return max(1, int(value))

    @property
    def double_bounce_address(self) -> str:
        return f"{self.double_bounce_sender}@{self.myorigin}"


@dataclass(frozen=True, slots=True)
class Routing:
    """Routing collaborators (see smarthost.outbound.routing)."""

    params: Any  # RoutingParams
    tables: Any  # RoutingTables
    virtual_alias_maps: tuple[Table, ...] = ()
    is_local_domain: Callable[[str], bool] = lambda domain: False
    is_virtual_mailbox_domain: Callable[[str], bool] = lambda domain: False
    recipient_delimiter: str = ""


# -- bookkeeping -----------------------------------------------------------------------------------


_SEVERITY = {Status.SENT: 0, Status.BOUNCED: 1, Status.DEFERRED: 2}


@dataclass(slots=True)
class _Active:
    """A message being delivered."""

    entry: QueueEntry
    body: bytes
    activated: float
    pending: int = 0  # jobs not finished
    results: dict[int, Outcome] = field(default_factory=dict)  # by recipient index, this attempt
    relays: dict[int, str] = field(default_factory=dict)
    dsn_passed: set[int] = field(default_factory=set)  # recipients whose DSN request went onward
    forwards: list[Forward] = field(default_factory=list)


@dataclass(slots=True)
class _Job:
    active: _Active
    message: Message
    indices: tuple[int, ...]  # the envelope index of each Message.recipients entry


@dataclass(slots=True)
class _Destination:
    key: Hashable
    transport_name: str
    transport: Transport
    nexthop: str
    limit: int
    jobs: deque[_Job] = field(default_factory=deque)
    workers: int = 0
    idle: int = 0  # workers holding an open session, waiting for the next job
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


def _format_delay(seconds: float) -> str:
    """Postfix's style: 0, 0.28, 1.2, 12."""
    if seconds < 0.005:
        return "0"
    if seconds < 1:
        return f"{seconds:.2f}".rstrip("0").rstrip(".")
    if seconds < 10:
        return f"{seconds:.1f}".rstrip("0").rstrip(".")
    return str(round(seconds))


def _error_outcome(text: str | None, status: Status) -> Outcome:
    """``error:5.1.1 no such user`` / ``retry:4.3.0 ...`` (error(8)): an optional DSN code first."""
    text = (text or "").strip()
    code, _, rest = text.partition(" ")
    parts = code.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and code[0] in "245":
        enhanced, text = code, rest.strip()
    else:
        enhanced = "5.0.0" if status is Status.BOUNCED else "4.0.0"
    if status is Status.BOUNCED and enhanced[0] != "5":
        enhanced = "5" + enhanced[1:]
    if status is Status.DEFERRED and enhanced[0] != "4":
        enhanced = "4" + enhanced[1:]
    return Outcome(status, enhanced, text or ("mail transport unavailable" if status is Status.DEFERRED else "undeliverable"))


class QueueManager:
    """See the module docstring. ``transports`` and ``routing`` default to what ``config``
    describes; tests pass fakes, and a fake ``clock``."""

    def __init__(
        self,
        config: Any,
        store: QueueStore,
        maillog: Any,
        *,
        resolver: Any = None,
        clock: Callable[[], float] = time.time,
        transports: Mapping[str, Transport] | None = None,
        routing: Routing | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.maillog = maillog
        self.settings = ManagerSettings.from_params(config.params)
        self._clock = clock
        if routing is None or transports is None:
            built_routing, built_transports = build_delivery(config, maillog, resolver=resolver)
            routing = routing or built_routing
            transports = transports if transports is not None else built_transports
        self.routing = routing
        self.transports = dict(transports)
        self._wake_event = asyncio.Event()
        self._flush_requested = False
        self._stopping = False
        self._active: dict[str, _Active] = {}
        self._removals: list[tuple[str, asyncio.Future]] = []  # finished entries waiting for one commit
        self._removing = False
        self._destinations: dict[Hashable, _Destination] = {}
        self._running = 0  # deliveries in progress (worker tasks)
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake_socket: socket.socket | None = None

    # -- control --------------------------------------------------------------------------

    def wake(self) -> None:
        """Look at the queue now (new mail, or the operator changed something)."""
        self._wake_event.set()

    def flush(self) -> None:
        """Deliver every deferred message now (``smarthost queue flush``, SIGUSR2)."""
        self._flush_requested = True
        self._wake_event.set()

    def stop(self) -> None:
        """Graceful stop: finish the deliveries in progress, start no new ones."""
        self._stopping = True
        self._wake_event.set()
        for dest in self._destinations.values():
            dest.arrived.set()

    @property
    def idle(self) -> bool:
        """No message is being delivered (for tests and the status display)."""
        return not self._active

    # -- the main loop ----------------------------------------------------------------------

    async def run(self) -> None:
        recovered = await self._db(self.store.recover_active)
        if recovered:
            self.maillog.log(f"recovered {recovered} message(s) left active by an earlier run")
        self._open_wake_socket()
        try:
            while not self._stopping:
                self._wake_event.clear()
                if self._flush_requested:
                    self._flush_requested = False
                    await self._db(self.store.make_deferred_due, self._clock())
                await self._pickup()
                await self._schedule_due()
                if self._stopping:
                    break
                timeout = await self._idle_time()
                if timeout > 0:
                    try:
                        async with asyncio.timeout(timeout):
                            await self._wake_event.wait()
                    except TimeoutError:
                        pass
        finally:
            self._close_wake_socket()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._save_unfinished()

    async def _db(self, function: Callable[..., _T], *args: Any) -> _T:
        """Store calls commit with fsync: keep them off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, partial(function, *args))

    async def _idle_time(self) -> float:
        delay = self.settings.retry.queue_run_delay or 300.0
        due = await self._db(self.store.next_due)
        if due is not None and len(self._active) < self.settings.active_limit:
            delay = min(delay, due - self._clock())
        return max(0.0, delay)

    async def _pickup(self) -> None:
        """Mail that ``smarthost sendmail`` left in the maildrop directory joins the queue."""
        from smarthost.queue.maildrop import pickup

        try:
            queued = await self._db(partial(
                pickup, self.store, received_by=self.settings.myhostname,
                max_size=int(_get(self.settings.params, "message_size_limit", 10240000)),
            ))
        except (QueueError, OSError) as exc:
            self.maillog.error(f"maildrop pickup failed: {exc}")
            return
        for queue_id in queued:
            self.maillog.log(f"{queue_id}: picked up from maildrop")

    async def _schedule_due(self) -> None:
        room = self.settings.active_limit - len(self._active)
        if room <= 0:
            return
        try:
            entries = await self._db(self.store.claim_due, self._clock(), room)
        except QueueError as exc:
            self.maillog.error(f"cannot read the queue: {exc}")
            return
        readable = [e.id for e in entries if e.state is not QueueState.CORRUPT and e.envelope is not None]
        try:
            reads = await self._db(self._read_entries, readable) if readable else {}
        except Exception as exc:  # noqa: BLE001 - each entry below meets the same failure
            reads = dict.fromkeys(readable, exc)
        for entry in entries:
            try:
                await self._activate(entry, reads.get(entry.id))
            except Exception:  # a bug defers mail, never bounces or loses it (DESIGN.md principle 8)
                log.exception("%s: cannot schedule the delivery", entry.id)
                self._active.pop(entry.id, None)
                retry = self._clock() + max(self.settings.retry.minimal_backoff_time, 1.0)
                self.maillog.error(f"{entry.id}: internal error while scheduling the delivery; deferred")
                await self._db(partial(self.store.record_attempt, entry.id, {}, next_attempt=retry))
        self._start_workers()

    # -- one message -------------------------------------------------------------------------

    def _read_entries(self, queue_ids: list[str]) -> dict[str, tuple[bytes, list] | Exception]:
        """Bodies and recorded outcomes of the entries just claimed, in one trip to the store's
        thread (not one per message); an entry that cannot be read maps to its exception."""
        out: dict[str, tuple[bytes, list] | Exception] = {}
        for queue_id in queue_ids:
            try:
                out[queue_id] = (self.store.read_body(queue_id), self.store.recipient_results(queue_id))
            except Exception as exc:  # noqa: BLE001 - judged per entry by _activate
                out[queue_id] = exc
        return out

    async def _remove(self, queue_id: str) -> None:
        """Delete a finished entry. Removals that come while one is being committed are
        committed together (one fsync), the way the SMTP side commits new mail."""
        future = asyncio.get_running_loop().create_future()
        self._removals.append((queue_id, future))
        if not self._removing:
            self._removing = True
            asyncio.get_running_loop().create_task(self._commit_removals())
        await future

    async def _commit_removals(self) -> None:
        try:
            while self._removals:
                batch, self._removals = self._removals, []
                try:
                    await self._db(self.store.delete_many, [queue_id for queue_id, _ in batch])
                except Exception as exc:  # noqa: BLE001 - each waiter decides what it means
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
        finally:
            self._removing = False

    async def _activate(self, entry: QueueEntry, read: tuple[bytes, list] | Exception | None) -> None:
        queue_id = entry.id
        if entry.state is QueueState.CORRUPT or entry.envelope is None:
            self.maillog.warning(f"{queue_id}: corrupt queue entry moved to corrupt (envelope unreadable)")
            return
        try:
            if isinstance(read, Exception):
                raise read
            body, prior = read  # every entry that reaches here was read by _schedule_due
        except CorruptEntry as exc:
            self.maillog.warning(f"{queue_id}: corrupt queue entry: {exc}")
            return
        except NoSuchEntry:
            return  # deleted by the operator meanwhile
        env = entry.envelope
        now = self._clock()
        self.maillog.log(f"{queue_id}: from=<{env.sender}>, size={entry.size}, nrcpt={len(env.recipients)} (queue active)")
        active = _Active(entry, body, now)
        self._active[queue_id] = active
        groups: dict[tuple[str, str], list[tuple[int, Recipient]]] = {}
        immediate: list[tuple[int, Recipient, Outcome]] = []
        for index, rcpt in enumerate(env.recipients):
            if index < len(prior) and prior[index][0] in ("sent", "bounced"):
                continue
            for target, route_to in self._route(rcpt, env.sender):
                if isinstance(route_to, Outcome):
                    immediate.append((index, target, route_to))
                else:
                    groups.setdefault(route_to, []).append((index, target))
        for index, rcpt, outcome in immediate:
            self._record(active, index, outcome, "none")
            self._log_recipient(active, rcpt, DeliveryReport((outcome,)), outcome, now)
        jobs: list[tuple[str, str, _Job]] = []
        for (transport_name, nexthop), members in groups.items():
            chunk = self.settings.limit(transport_name, "recipient", 50)
            for start in range(0, len(members), chunk):
                part = members[start : start + chunk]
                message = Message(queue_id, env, tuple(r for _, r in part), body)
                jobs.append((transport_name, nexthop, _Job(active, message, tuple(i for i, _ in part))))
        active.pending = len(jobs)
        if not jobs:
            await self._finish(active)
            return
        for transport_name, nexthop, job in jobs:
            self._enqueue(transport_name, nexthop, job)

    def _route(self, rcpt: Recipient, sender: str) -> list[tuple[Recipient, tuple[str, str] | Outcome]]:
        """(recipient to deliver to, (transport, next hop) or an outcome decided here)."""
        from smarthost.outbound.aliases import AliasError, expand_virtual_aliases
        from smarthost.outbound.routing import route

        r = self.routing
        try:
            addresses = expand_virtual_aliases(
                rcpt.address, r.virtual_alias_maps, is_local_domain=r.is_local_domain,
                myorigin=self.settings.myorigin, recipient_delimiter=r.recipient_delimiter,
            )
        except AliasError as exc:
            return [(rcpt, Outcome.bounced(exc.enhanced, exc.text))]
        except TableError as exc:
            return [(rcpt, Outcome.deferred("4.3.0", f"virtual_alias_maps lookup error: {exc}"))]
        results: list[tuple[Recipient, tuple[str, str] | Outcome]] = []
        for address in addresses:
            target = rcpt
            if address != rcpt.address:
                target = Recipient(address, rcpt.orcpt or f"rfc822;{rcpt.address}", rcpt.notify)
            domain = address.rpartition("@")[2].lower()
            try:
                if domain and r.is_virtual_mailbox_domain(domain) and not r.is_local_domain(domain):
                    results.append((target, ("virtual", domain)))
                    continue
                where = route(address, sender, r.params, r.tables)
            except TableError as exc:
                results.append((target, Outcome.deferred("4.3.0", f"routing table lookup error: {exc}")))
                continue
            name = where.transport.lower()
            if name == "error":
                results.append((target, _error_outcome(where.error_text, Status.BOUNCED)))
            elif name == "retry":
                results.append((target, _error_outcome(where.error_text, Status.DEFERRED)))
            elif name not in self.transports:
                results.append((target, Outcome.deferred("4.3.0", f"mail transport unavailable: {where.transport}")))
            else:
                results.append((target, (name, where.nexthop or "")))
        return results

    def _record(self, active: _Active, index: int, outcome: Outcome, relay: str) -> None:
        """Keep the worst outcome of a recipient's deliveries (an alias may expand to several)."""
        old = active.results.get(index)
        if old is None or _SEVERITY[outcome.status] > _SEVERITY[old.status]:
            active.results[index] = outcome
            active.relays[index] = relay

    def _log_recipient(self, active: _Active, rcpt: Recipient, report: DeliveryReport, outcome: Outcome,
                       started: float) -> None:
        now = self._clock()
        arrival = active.entry.arrival
        a = max(0.0, active.activated - arrival)
        b = max(0.0, started - active.activated)
        c, d = report.setup_time, report.transfer_time
        parts = [f"{active.entry.id}: to=<{rcpt.address}>"]
        original = _original_address(rcpt)
        if original and original != rcpt.address:
            parts.append(f"orig_to=<{original}>")
        parts.append(f"relay={report.relay}")
        if report.conn_use > 1:
            parts.append(f"conn_use={report.conn_use}")
        parts.append(f"delay={_format_delay(max(0.0, now - arrival))}")
        parts.append(f"delays={'/'.join(_format_delay(x) for x in (a, b, c, d))}")
        parts.append(f"dsn={outcome.enhanced}")
        parts.append(f"status={outcome}")
        self.maillog.log(", ".join(parts))

    # -- destinations and workers -----------------------------------------------------------

    def _enqueue(self, transport_name: str, nexthop: str, job: _Job) -> None:
        transport = self.transports[transport_name]
        key = (transport_name, transport.session_key(nexthop, job.message.envelope.sender))
        dest = self._destinations.get(key)
        if dest is None:
            limit = self.settings.limit(transport_name, "concurrency", 20)
            dest = self._destinations[key] = _Destination(key, transport_name, transport, nexthop, limit)
        dest.jobs.append(job)
        dest.arrived.set()

    def _start_workers(self) -> None:
        if self._stopping:
            return
        for dest in list(self._destinations.values()):
            # Idle workers with an open session take the next jobs first (connection reuse).
            while (len(dest.jobs) > dest.idle and dest.workers < dest.limit
                   and self._running < self.settings.process_limit):
                dest.workers += 1
                self._running += 1
                task = asyncio.get_running_loop().create_task(self._worker(dest))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _worker(self, dest: _Destination) -> None:
        session: TransportSession | None = None
        try:
            while not self._stopping:
                if not dest.jobs:
                    if session is None or not await self._wait_for_job(dest):
                        break
                    continue
                job = dest.jobs.popleft()
                if session is None:
                    session = dest.transport.session(dest.nexthop, job.message.envelope.sender)
                started = self._clock()
                try:
                    report = await session.deliver(job.message)
                except Exception:  # a bug defers mail, never bounces it (DESIGN.md principle 8)
                    log.exception("%s: delivery through %s failed", job.message.queue_id, dest.transport_name)
                    failure = Outcome.deferred("4.3.0", "internal error in the delivery agent")
                    report = DeliveryReport((failure,) * len(job.message.recipients), reusable=False)
                await self._job_done(job, report, started)
                if report.setup_failure is not None:
                    await self._suspend(dest, report)
                    break
                if not report.reusable:
                    await session.close()
                    session = None
        finally:
            if session is not None:
                try:
                    await session.close()
                except Exception:
                    log.exception("closing a %s session failed", dest.transport_name)
            dest.workers -= 1
            self._running -= 1
            if not dest.jobs and dest.workers == 0 and self._destinations.get(dest.key) is dest:
                del self._destinations[dest.key]
            self._start_workers()

    async def _wait_for_job(self, dest: _Destination) -> bool:
        """Keep an open session for a while: mail for the same destination often follows
        (Postfix's connection cache, smtp_connection_cache_time_limit). The idle worker does
        not count against default_process_limit."""
        dest.idle += 1
        self._running -= 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.connection_cache_time
        try:
            # One arrival wakes every idle worker of the destination; those that find the job
            # taken by another go on waiting (and keep their session) until the deadline.
            while not dest.jobs and not self._stopping:
                dest.arrived.clear()
                async with asyncio.timeout_at(deadline):
                    await dest.arrived.wait()
        except TimeoutError:
            pass
        finally:
            dest.idle -= 1
            self._running += 1
        return bool(dest.jobs) and not self._stopping

    async def _suspend(self, dest: _Destination, report: DeliveryReport) -> None:
        """The destination failed before any mail could be sent: its other messages get the
        same outcome now instead of a connection attempt each (Postfix: "delivery temporarily
        suspended")."""
        failure = report.setup_failure
        assert failure is not None
        if failure.status is Status.DEFERRED:
            failure = Outcome(failure.status, failure.enhanced, f"delivery temporarily suspended: {failure.text}")
        while dest.jobs and not self._stopping:
            job = dest.jobs.popleft()
            outcomes = (failure,) * len(job.message.recipients)
            await self._job_done(job, DeliveryReport(outcomes, relay=report.relay, reusable=False), self._clock())

    async def _job_done(self, job: _Job, report: DeliveryReport, started: float) -> None:
        active = job.active
        outcomes = report.outcomes
        if len(outcomes) != len(job.message.recipients):  # a transport bug: defer, never bounce
            log.error("%s: transport returned %d outcomes for %d recipients", job.message.queue_id,
                      len(outcomes), len(job.message.recipients))
            outcomes = (Outcome.deferred("4.3.0", "internal error in the delivery agent"),) * len(job.message.recipients)
        for rcpt, index, outcome in zip(job.message.recipients, job.indices, outcomes):
            self._record(active, index, outcome, report.relay)
            if report.dsn_passed:
                active.dsn_passed.add(index)
            self._log_recipient(active, rcpt, report, outcome, started)
        active.forwards.extend(report.forwards)
        active.pending -= 1
        if active.pending == 0:
            await self._finish(active)

    # -- the end of an attempt ----------------------------------------------------------------

    async def _finish(self, active: _Active) -> None:
        entry = active.entry
        queue_id = entry.id
        try:
            await self._conclude(active)
        except QueueError as exc:
            # The entry stays active; the next start recovers it (at-least-once).
            self.maillog.error(f"{queue_id}: cannot update the queue: {exc}")
        finally:
            self._active.pop(queue_id, None)
            self.wake()  # room for more

    async def _conclude(self, active: _Active) -> None:
        entry = active.entry
        env = entry.envelope
        assert env is not None
        now = self._clock()
        results = dict(active.results)
        deferred = [i for i, o in results.items() if o.status is Status.DEFERRED]
        retry_at = None
        if deferred:
            retry_at = next_attempt(entry.attempts + 1, entry.arrival, now, self.settings.retry, null_sender=not env.sender)
            if retry_at is None:  # expired: return what is left to the sender
                for i in deferred:
                    o = results[i]
                    results[i] = Outcome(Status.BOUNCED, o.enhanced, o.text, o.reply)
                self.maillog.log(f"{entry.id}: from=<{env.sender}>, status=expired, returned to sender")
                deferred = []
        bounced = sorted(i for i, o in results.items() if o.status is Status.BOUNCED)
        if bounced:
            await self._notify_failure(active, bounced, results, now)
        if deferred:
            await self._notify_delay(active, sorted(deferred), results, now)
        await self._notify_success(active, results, now)
        for forward in active.forwards:
            new_id = await self.store.submit(
                Envelope(env.sender, tuple(Recipient(a) for a in forward.recipients), protocol="local"), forward.body
            )
            self.maillog.log(f"{entry.id}: forwarded as {new_id}")
        if deferred:
            statuses = {i: (o.status.value, str(o)) for i, o in results.items()}
            await self._db(partial(self.store.record_attempt, entry.id, statuses, next_attempt=retry_at))
        else:
            await self._remove(entry.id)
            self.maillog.log(f"{entry.id}: removed")

    async def _notify_failure(self, active: _Active, bounced: list[int], results: dict[int, Outcome], now: float) -> None:
        """Queue the non-delivery notice, or handle a bounce that bounced (module docstring)."""
        entry = active.entry
        env = entry.envelope
        assert env is not None
        failed = _failures(active, bounced, results)
        settings = self.settings
        if env.sender.lower() == settings.double_bounce_address.lower():
            self.maillog.warning(f"{entry.id}: undeliverable postmaster notification discarded")
            return
        report_env, label = env, "sender"
        if not env.sender:
            if not settings.notify_classes & {"2bounce", "bounce"}:
                self.maillog.log(f"{entry.id}: undeliverable bounce discarded (notify_classes has no 2bounce)")
                return
            # The postmaster gets the report, "from" the double-bounce address so that a
            # failure of this report ends here (above).
            report_env, label = replace(env, sender=settings.twobounce_notice_recipient), "postmaster"
        notice_id = new_queue_id()
        notice = make_bounce(
            report_env, active.body, failed, queue_id=entry.id, reporting_mta=settings.myhostname, now=now,
            message_id=f"{notice_id}@{settings.myhostname}", arrival=entry.arrival,
            bounce_size_limit=settings.bounce_size_limit,
        )
        if notice is None:  # NOTIFY=NEVER, or NOTIFY without FAILURE (RFC 3461 §4.1)
            return
        sender = settings.double_bounce_address if label == "postmaster" else ""
        envelope = Envelope(sender, (Recipient(notice.recipient),), protocol="local", arrival=now)
        await self.store.submit(envelope, notice.message, queue_id=notice_id)
        self.maillog.log(f"{entry.id}: {label} non-delivery notification: {notice_id}")

    async def _notify_delay(self, active: _Active, deferred: list[int], results: dict[int, Outcome], now: float) -> None:
        """``delay_warning_time``: one "delayed mail" notice (RFC 3464 ``Action: delayed``) to the
        sender, at the first deferral at least that long after arrival (queue/schedule.py tells
        whether an earlier attempt already sent it). As in Postfix, nothing is sent while
        ``delay_warning_time`` is 0 (the default), also not for NOTIFY=DELAY, which RFC 3461 §4.1
        makes a request the MTA may decline; NOTIFY without DELAY (e.g. NEVER) suppresses it per
        recipient. Never to the null sender or for the double-bounce address."""
        entry = active.entry
        env = entry.envelope
        assert env is not None
        settings = self.settings
        retry = settings.retry
        if env.sender.lower() == settings.double_bounce_address.lower():
            return
        if not delay_warning_due(entry.arrival, now, retry, null_sender=not env.sender,
                                 already_sent=delay_warning_sent(entry.arrival, entry.next_attempt, retry)):
            return
        delayed = _failures(active, deferred, results)
        notice_id = new_queue_id()
        notice = make_delay_notice(
            env, active.body, delayed, queue_id=entry.id, reporting_mta=settings.myhostname, now=now,
            message_id=f"{notice_id}@{settings.myhostname}", arrival=entry.arrival,
            bounce_size_limit=settings.bounce_size_limit,
            will_retry_until=entry.arrival + retry.maximal_queue_lifetime,
        )
        if notice is None:  # NOTIFY without DELAY for every delayed recipient
            return
        envelope = Envelope("", (Recipient(notice.recipient),), protocol="local", arrival=now)
        await self.store.submit(envelope, notice.message, queue_id=notice_id)
        self.maillog.log(f"{entry.id}: sender delay notification: {notice_id}")

    async def _notify_success(self, active: _Active, results: dict[int, Outcome], now: float) -> None:
        """RFC 3461 §4.1 NOTIFY=SUCCESS: tell the sender what was delivered here (action
        ``delivered``) or handed to a next hop that does not speak DSN (``relayed``); a next hop
        that offered DSN got the request along and reports itself."""
        entry = active.entry
        env = entry.envelope
        assert env is not None
        if not env.sender:
            return
        done = []
        for i, outcome in sorted(results.items()):
            notify = env.recipients[i].notify or ()
            if outcome.status is not Status.SENT or "SUCCESS" not in notify or i in active.dsn_passed:
                continue
            relay = active.relays.get(i, "none")
            action = "delivered" if relay in ("local", "none") else "relayed"
            remote = relay.partition("[")[0] if "[" in relay else None
            done.append(Failure(env.recipients[i].address, outcome.enhanced, outcome.text, remote, action=action))
        if not done:
            return
        settings = self.settings
        notice_id = new_queue_id()
        notice = make_success_notice(
            env, active.body, done, queue_id=entry.id, reporting_mta=settings.myhostname, now=now,
            message_id=f"{notice_id}@{settings.myhostname}", arrival=entry.arrival,
            bounce_size_limit=settings.bounce_size_limit,
        )
        if notice is None:
            return
        envelope = Envelope("", (Recipient(notice.recipient),), protocol="local", arrival=now)
        await self.store.submit(envelope, notice.message, queue_id=notice_id)
        self.maillog.log(f"{entry.id}: sender delivery status notification: {notice_id}")

    async def _save_unfinished(self) -> None:
        """At stop: outcomes already known for messages still active are stored (the entry
        stays active, to be recovered and retried for the rest at the next start)."""
        for active in list(self._active.values()):
            if not active.results:
                continue
            statuses = {i: (o.status.value, str(o)) for i, o in active.results.items()
                        if o.status is not Status.DEFERRED}
            try:
                await self._db(self.store.record_attempt, active.entry.id, statuses)
            except QueueError as exc:
                self.maillog.error(f"{active.entry.id}: cannot save delivery results: {exc}")

    # -- wake-up socket -------------------------------------------------------------------------

    def _open_wake_socket(self) -> None:
        path = wake_socket_path(self.store.directory)
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(path))
            os.chmod(path, 0o666)  # the SMTP workers (mail_owner) send here; public/ guards who may
            sock.setblocking(False)
        except OSError as exc:
            self.maillog.warning(f"cannot listen on {path} ({exc.strerror or exc}); new mail waits for queue scans")
            return
        self._wake_socket = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_wake_datagram)

    def _on_wake_datagram(self) -> None:
        sock = self._wake_socket
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if data.startswith(_FLUSH):
                self.flush()
            else:
                self.wake()

    def _close_wake_socket(self) -> None:
        sock, self._wake_socket = self._wake_socket, None
        if sock is None:
            return
        asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        try:
            wake_socket_path(self.store.directory).unlink()
        except OSError:
            pass


# -- waking the manager from other processes -----------------------------------------------------


def wake_socket_path(queue_directory: Path | str) -> Path:
    return Path(queue_directory).joinpath(*WAKE_SOCKET)


_notify_sock: socket.socket | None = None


def _forget_notify_socket() -> None:
    global _notify_sock
    _notify_sock = None  # the child must not share the parent's socket object


os.register_at_fork(after_in_child=_forget_notify_socket)


_notify_paths: dict[Path | str, str] = {}


def notify_queue_manager(queue_directory: Path | str, *, flush: bool = False) -> None:
    """Tell the queue manager that there is new mail (or, ``flush``, to retry deferred mail now).

    One non-blocking datagram; never raises and never waits: when no manager listens, the
    message is delivered at the next queue scan anyway.
    """
    global _notify_sock
    try:
        path = _notify_paths.get(queue_directory)
        if path is None:
            path = _notify_paths[queue_directory] = str(wake_socket_path(queue_directory))
        if _notify_sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            _notify_sock = sock
        _notify_sock.sendto(_FLUSH if flush else _WAKE, path)
    except OSError:
        pass


# -- building it from the configuration ----------------------------------------------------------


def build_delivery(config: Any, maillog: Any, *, resolver: Any = None) -> tuple[Routing, dict[str, Transport]]:
    """Routing and transports as main.cf and master.cf describe them. Raises TableError,
    TLSConfigError (smarthost.tls) for unusable settings."""
    from smarthost.inbound.policy import Policy, PolicySettings
    from smarthost.outbound.local import LocalSettings, open_local_tables
    from smarthost.outbound.routing import RoutingParams, RoutingTables
    from smarthost.outbound.smtp import SmtpTransport
    from smarthost.tables import open_table

    params = config.params
    opener = partial(open_table, config_dir=config.config_dir)
    policy = Policy.build(
        PolicySettings(
            mydestination=params["mydestination"],
            relay_domains=params["relay_domains"],
            myhostname=params["myhostname"],
            inet_addresses_for_ip_literals=("127.0.0.1", "::1"),
            recipient_delimiter=params["recipient_delimiter"],
        ),
        open_table=opener,
    )
    routing_tables = RoutingTables(
        domains=policy,
        transport_maps=tuple(opener(s) for s in params["transport_maps"]),
        sender_dependent_relayhost_maps=tuple(opener(s) for s in params["sender_dependent_relayhost_maps"]),
    )
    local_tables = open_local_tables(params, opener, is_local_domain=policy.is_local_domain)
    routing = Routing(
        params=RoutingParams.from_params(params),
        tables=routing_tables,
        virtual_alias_maps=tuple(local_tables.virtual_alias_maps),
        is_local_domain=policy.is_local_domain,
        is_virtual_mailbox_domain=local_tables.is_virtual_mailbox_domain,
        recipient_delimiter=params["recipient_delimiter"],
    )
    local = LocalTransport(LocalSettings.from_params(params), local_tables)
    # default_transport (smtp) and relay_transport (relay) are master.cf services as in Postfix:
    # a line "relay unix - - n - - smtp -o smtp_tls_security_level=encrypt" gives that transport
    # its own settings. Without such a line (our built-in master.cf has none), or one without
    # -o overrides, the transport uses main.cf's settings, and smtp and relay share one client.
    smtp = SmtpTransport.from_params(params, config.config_dir, log=maillog.log, resolver=resolver)
    transports: dict[str, Transport] = {"smtp": smtp, "relay": smtp, "local": local, "virtual": local}
    for service in getattr(config, "services", ()):
        if service.type == "unix" and service.command == "smtp":
            if service.overrides:
                transports[service.name] = SmtpTransport.from_params(
                    service.params, config.config_dir, log=maillog.log, resolver=resolver
                )
            else:
                transports[service.name] = smtp
    return routing, transports


async def run_queue_manager(config_dir: Path, maillog: Any) -> None:
    """The ``qmgr`` process's main coroutine (the master runs it under ``asyncio.run``).

    SIGTERM (and SIGINT) stop it gracefully; SIGUSR2 flushes the deferred queue. A setting
    that cannot be used (a missing table, a bad TLS option) is logged as ``fatal:`` and the
    process exits with status 1.
    """
    from smarthost.config import ConfigError, load
    from smarthost.inbound.policy import PolicyError
    from smarthost.tls import TLSConfigError

    loop = asyncio.get_running_loop()
    maillog.set_process("qmgr")
    maillog.attach(loop)
    try:
        config = load(Path(config_dir))
        params = config.params
        store = QueueStore(params["queue_directory"], large_body_threshold=params["queue_large_body_threshold"])
    except (ConfigError, QueueError) as exc:
        maillog.fatal(str(exc))
        maillog.flush()
        raise SystemExit(1) from None
    try:
        try:
            manager = QueueManager(config, store, maillog)
        except (TableError, TLSConfigError, PolicyError) as exc:
            # Nothing starts half-configured (DESIGN.md principle 5): say what to fix, exit.
            maillog.fatal(f"cannot start the queue manager: {exc}")
            raise SystemExit(1) from None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, manager.stop)
        loop.add_signal_handler(signal.SIGUSR2, manager.flush)
        await manager.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
            loop.remove_signal_handler(sig)
        store.close()
        maillog.flush()


def _failures(active: _Active, indices: list[int], results: dict[int, Outcome]) -> list[Failure]:
    """The notice lines of recipients ``indices``: address, status, text, and the remote MTA
    (the relay's host name) when the reply came from one."""
    failures = []
    for i in indices:
        outcome = results[i]
        relay = active.relays.get(i, "none")
        remote = relay.partition("[")[0] if outcome.reply is not None and "[" in relay else None
        failures.append(Failure(active.entry.envelope.recipients[i].address, outcome.enhanced, outcome.text, remote))
    return failures


__all__ = [
    "DeliveryReport",
    "Forward",
    "LocalTransport",
    "ManagerSettings",
    "Message",
    "QueueManager",
    "Routing",
    "Transport",
    "TransportSession",
    "build_delivery",
    "notify_queue_manager",
    "run_queue_manager",
    "wake_socket_path",
]

