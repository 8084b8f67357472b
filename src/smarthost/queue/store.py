"""The durable mail queue: SQLite in WAL mode, written by one group-committing thread.

The queue is the only durable state and the only hand-off between receiving
and delivering. A message is accepted (``250`` after DATA) only once
:meth:`QueueStore.submit` has returned, and it returns only after the
transaction holding the message has been committed with ``synchronous=FULL``,
i.e. fsync'd (RFC 5321 §6.1: once the server has accepted the message it must
not lose it).

Group commit: each process runs one committer thread. An event loop hands
the messages that ended in one loop iteration over together (one wake-up of
the committer for all of them); the committer takes the writers' lock, then
everything that is waiting, commits it as one transaction and wakes the
waiters, with one ``call_soon_threadsafe`` per event loop. The next batch is
whatever arrived while the last commit ran (or while another process held the
lock). Under load (the last batch held several messages) the committer waits up to
``gather_time`` for more to join before it commits (up to ``GATHER_MAX``); a lone message is
never held back, since a batch of one ends the gathering until the next busy spell.

Bodies larger than ``large_body_threshold`` go to their own file
``bodies/<queue id>``, written and fsync'd by the submitter before the message
is handed to the committer; the committer fsyncs the ``bodies`` directory once
per batch before the transaction that references the files. Smaller bodies
live in the ``bodies`` table, apart from the ``messages`` rows that the queue
manager updates often (an UPDATE rewrites the whole row, body included).

Several processes may open the same queue; writers take ``queue.lock`` (flock) and
then the database lock with ``BEGIN IMMEDIATE``, and wait up to ``busy_timeout`` for
each; a batch that does not get them in time fails with QueueError (451). A store must not be
used across ``fork()``: open it in the process that uses it.

ARCHITECTURE.md ("The queue store") describes the schema and the durability argument.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import fcntl
import functools
import json
import logging
import operator
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .ids import is_queue_id, new_queue_id

log = logging.getLogger(__name__)

DB_NAME = "queue.db"
BODIES_DIR = "bodies"
LOCK_NAME = "queue.lock"  # writers take it (flock) around each write transaction
SCHEMA_VERSION = 1

_SCHEMA = (
    """CREATE TABLE messages (
        id           TEXT PRIMARY KEY,
        state        TEXT NOT NULL
                     CHECK (state IN ('incoming', 'active', 'deferred', 'hold', 'corrupt')),
        arrival      REAL NOT NULL,
        size         INTEGER NOT NULL,
        sender       TEXT NOT NULL,
        envelope     TEXT NOT NULL,
        body_file    TEXT,
        next_attempt REAL NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX messages_due ON messages (state, next_attempt)",
    """CREATE TABLE bodies (
        id   TEXT PRIMARY KEY,
        data BLOB NOT NULL
    )""",
    """CREATE TABLE recipients (
        message_id TEXT NOT NULL,
        idx        INTEGER NOT NULL,
        address    TEXT NOT NULL,
        orcpt      TEXT,
        notify     TEXT,
        status     TEXT CHECK (status IN ('sent', 'bounced', 'deferred')),
        reply      TEXT,
        PRIMARY KEY (message_id, idx)
    ) WITHOUT ROWID""",
)

_INSERT_MESSAGE = (
    "INSERT INTO messages (id, state, arrival, size, sender, envelope, body_file, next_attempt)"
    " VALUES (?, 'incoming', ?, ?, ?, ?, ?, ?)"
)
_INSERT_RECIPIENT = (
    "INSERT INTO recipients (message_id, idx, address, orcpt, notify) VALUES (?, ?, ?, ?, ?)"
)
_INSERT_BODY = "INSERT INTO bodies (id, data) VALUES (?, ?)"
_SELECT_MESSAGES = (
    "SELECT m.id, m.state, m.arrival, m.size, m.sender, m.envelope, m.next_attempt, m.attempts"
    " FROM messages m"
)
_SELECT_RECIPIENTS = (
    "SELECT r.message_id, r.address, r.orcpt, r.notify FROM recipients r"
    " JOIN messages m ON m.id = r.message_id"
)
_RECIPIENT_ORDER = " ORDER BY r.message_id, r.idx"


class QueueState(enum.StrEnum):
    """Postfix's queue states."""

    INCOMING = "incoming"  # accepted, not yet seen by the queue manager
    ACTIVE = "active"  # being delivered
    DEFERRED = "deferred"  # waiting for the next attempt
    HOLD = "hold"  # held by the operator
    CORRUPT = "corrupt"  # unreadable; kept for the operator, never deleted by us


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str
    orcpt: str | None = None  # RFC 3461 §4.2 ORCPT
    notify: tuple[str, ...] | None = None  # RFC 3461 §4.1 NOTIFY


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: str  # '' for the null reverse-path <>
    recipients: tuple[Recipient, ...]
    client_address: str = ""
    client_name: str = ""
    helo: str = ""
    protocol: str = "ESMTP"  # RFC 3848 with-protocol type
    sasl_username: str | None = None
    body_type: str | None = None  # RFC 6152 BODY=7BIT / 8BITMIME
    smtputf8: bool = False  # RFC 6531
    envid: str | None = None  # RFC 3461 §4.4 ENVID
    ret: str | None = None  # RFC 3461 §4.3 RET
    auth: str | None = None  # RFC 4954 §5 AUTH= of MAIL FROM: the submitter, or "<>" when not trusted
    arrival: float | None = None  # epoch seconds; the store fills time.time() if None


@dataclass(frozen=True, slots=True)
class QueueEntry:
    id: str
    state: QueueState
    envelope: Envelope | None  # None only for a corrupt entry whose envelope does not decode
    size: int  # body length in bytes
    arrival: float
    next_attempt: float
    attempts: int


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What the committer thread has done since the store was opened."""

    commits: int  # transactions committed
    messages: int  # messages in those transactions
    failed_commits: int  # transactions that failed (their waiters got QueueError)
    largest_batch: int


class QueueError(Exception):
    """The queue could not do what was asked; the SMTP shell answers 451 4.3.0."""


class NoSuchEntry(QueueError, LookupError):
    """No queue entry has this id."""


class CorruptEntry(QueueError):
    """The entry cannot be read; it has been moved to the corrupt state."""


# Envelope facts kept as JSON in messages.envelope, with their allowed types.
_ENVELOPE_FIELDS: dict[str, tuple[type, ...]] = {
    "client_address": (str,),
    "client_name": (str,),
    "helo": (str,),
    "protocol": (str,),
    "sasl_username": (str, type(None)),
    "body_type": (str, type(None)),
    "smtputf8": (bool,),
    "envid": (str, type(None)),
    "ret": (str, type(None)),
    "auth": (str, type(None)),
}


_ENVELOPE_NAMES = tuple(_ENVELOPE_FIELDS)
_envelope_values = operator.attrgetter(*_ENVELOPE_NAMES)


def _encode_envelope(envelope: Envelope) -> str:
    return _encode_values(_envelope_values(envelope))


# The facts repeat from message to message (a session's client, HELO, login and protocol), so
# their JSON is remembered: a lookup costs ≈ 0.5 µs, json.dumps ≈ 4 µs (≈ 9% of an authenticated
# submission's Python per message in bench/session_cpu.py).
@functools.lru_cache(maxsize=512)
def _encode_values(values: tuple) -> str:
    return json.dumps(dict(zip(_ENVELOPE_NAMES, values)))


def _decode_envelope(
    sender: str, arrival: float, text: str, recipients: list[tuple[str, str | None, str | None]]
) -> Envelope:
    """Rebuild an Envelope from its row; ValueError if anything does not fit."""
    fields = json.loads(text)
    if not isinstance(fields, dict):
        raise ValueError("envelope is not a JSON object")
    for name, value in fields.items():
        allowed = _ENVELOPE_FIELDS.get(name)
        if allowed is None:
            raise ValueError(f"unknown envelope field {name!r}")
        if not isinstance(value, allowed):
            raise ValueError(f"envelope field {name!r} has the wrong type")
    if not recipients:
        raise ValueError("no recipients")
    rcpts = tuple(
        Recipient(address, orcpt, None if notify is None else _split_notify(notify))
        for address, orcpt, notify in recipients
    )
    return Envelope(sender=sender, recipients=rcpts, arrival=arrival, **fields)


def _split_notify(text: str) -> tuple[str, ...]:
    return tuple(text.split(",")) if text else ()


def _check_text(what: str, value: str) -> None:
    # A lone surrogate (bytes decoded with surrogateescape) cannot be stored as
    # SQLite TEXT; refusing it here keeps one bad message from failing a batch.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode text") from None


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_private_directory(path: Path) -> None:
    """Create ``path`` mode 0700 if missing, and make its entry durable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    _fsync_directory(path.parent)


def _lock_within(fd: int, timeout: float, path: Path) -> int:
    """Take the writers' ``flock`` (the file at ``path``, open as ``fd``) within ``timeout``
    seconds; returns the descriptor that holds it: ``fd``, or one opened for the wait, which the
    caller closes to let go.

    A free lock costs one non-blocking try. A held one is waited for in the kernel, like the
    committers wait (a poller would lose every race to them while the SMTP workers commit
    without pause), by a thread on a descriptor of its own: ``flock`` cannot time out, so that
    is how the wait is bounded. A holder that never lets go (a hung tool) fails the caller with
    QueueError after ``timeout``; the thread left waiting lets go of the lock as soon as it gets
    it, on its own descriptor, so it never touches a lock taken later through ``fd``.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        pass
    waiter = _LockWaiter(path)
    if not waiter.wait(timeout):
        raise _lock_timeout(path, timeout)
    return waiter.fd


def _lock_timeout(path: Path, timeout: float) -> QueueError:
    return QueueError(f"queue lock {path} not obtained within {timeout:g}s")


class _LockWaiter:
    """A blocking ``flock`` on a new descriptor of ``path``, in a thread; see ``_lock_within``."""

    def __init__(self, path: Path) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise QueueError(f"queue lock {path}: {exc.strerror}") from exc
        self._path = path
        self._taken = threading.Event()
        self._lock = threading.Lock()
        self._abandoned = False
        self._error: OSError | None = None
        threading.Thread(target=self._run, name="queue-lock-wait", daemon=True).start()

    def _run(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as exc:
            self._error = exc
        with self._lock:
            abandoned = self._abandoned
            self._taken.set()
        if abandoned or self._error is not None:
            os.close(self.fd)  # lets go of the lock, if it was taken

    def wait(self, timeout: float) -> bool:
        """True once the lock is held through ``self.fd``; False (given up) after ``timeout``."""
        if not self._taken.wait(timeout):
            with self._lock:
                if not self._taken.is_set():
                    self._abandoned = True
                    return False
        if self._error is not None:
            raise QueueError(f"queue lock {self._path}: {self._error.strerror}")
        return True


def _failure(cause: BaseException) -> QueueError:
    error = QueueError(f"queue commit failed: {cause}")
    error.__cause__ = cause
    return error


def _resolve_futures(
    waiters: list[tuple[Callable[[str, BaseException | None], None], str]], cause: BaseException | None
) -> None:
    """Runs in the event loop: tell every submitter of one batch."""
    error = None if cause is None else _failure(cause)
    for done, queue_id in waiters:
        try:
            done(queue_id, error)
        except Exception:  # one caller's bug must not keep the others waiting
            log.exception("queue commit callback for %s failed", queue_id)


@dataclass(slots=True)
class _Pending:
    """One submitted message on its way to the committer."""

    queue_id: str
    message_row: tuple
    recipient_rows: list[tuple]
    body_row: tuple[str, bytes] | None  # for the bodies table
    body_file: str | None  # relative to the queue directory
    # With ``loop``: a callable done(queue_id, error) run in that loop; without: a concurrent Future.
    waiter: Callable[[str, BaseException | None], None] | concurrent.futures.Future[str] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    state: int = 0  # _WAITING, _TAKEN (by the committer) or _ABANDONED (answered 451); _state_lock


_WAITING, _TAKEN, _ABANDONED = 0, 1, 2
GATHER_MAX = 8  # messages that end the committer's wait for more (gather_time)
_EXPIRY_CHECK = 1.0  # seconds between the event loop's checks for messages waiting too long


def _take(item: list[_Pending] | None, batch: list[_Pending]) -> bool:
    """Add a hand-over to ``batch``; True for the sentinel that closes the store."""
    if item is None:
        return True
    batch.extend(item)
    return False


class QueueStore:
    """The queue directory's SQLite database, its body files and its committer thread."""

    def __init__(
        self,
        queue_directory: Path | str,
        *,
        large_body_threshold: int = 262144,
        synchronous: bool = True,
        busy_timeout: float = 10.0,
        gather_time: float = 0.0,
    ) -> None:
        self.directory = Path(queue_directory)
        self._gather_time = gather_time  # seconds; 0: commit whatever is there at once
        self.large_body_threshold = large_body_threshold
        self._synchronous = synchronous  # False only for tests and benchmarks
        self._busy_timeout = busy_timeout
        self._bodies = self.directory / BODIES_DIR
        _make_private_directory(self.directory)
        _make_private_directory(self._bodies)

        self._writer = self._connect()  # the committer thread's connection
        self._init_schema()
        self._conn = self._connect()  # reads and management, under _conn_lock
        self._conn_lock = threading.Lock()
        self._bodies_fd = os.open(self._bodies, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # Writers queue up on this lock (the committer blocks on it; the management connection
        # waits for it with a bound, _lock_within) instead of polling SQLite's
        # write lock with its busy handler, which sleeps 1 ms and more between tries: with several
        # worker processes that sleep was most of a message's latency. One descriptor per
        # connection, so the committer and the management connection exclude each other too.
        lock_path = self.directory / LOCK_NAME
        self._writer_lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._conn_lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

        self._pending: queue.SimpleQueue[list[_Pending] | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop submit() last ran on
        self._submit_lock = threading.Lock()
        self._staged: list[_Pending] = []  # submitted in this loop iteration (submit_nowait)
        self._state_lock = threading.Lock()  # _Pending.state changes
        self._expiry: deque[tuple[float, list[_Pending]]] = deque()  # handed over by the loop, oldest first
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._expiry_loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._commits = self._messages = self._failed_commits = self._largest_batch = 0
        self._thread = threading.Thread(target=self._run, name="queue-committer", daemon=True)
        self._thread.start()

    # -- setup -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        path = self.directory / DB_NAME
        try:
            conn = sqlite3.connect(
                path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            mode = self._enable_wal(conn)
            conn.execute(f"PRAGMA synchronous={'FULL' if self._synchronous else 'OFF'}")
        except sqlite3.Error as exc:
            raise QueueError(f"cannot open queue database {path}: {exc}") from exc
        if mode != "wal":
            conn.close()
            raise QueueError(f"queue database {path}: cannot use WAL mode (got {mode!r})")
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> str:
        # Two processes creating the queue at once: one of them may get
        # SQLITE_BUSY here without SQLite calling its busy handler, so wait here.
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                return conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
            time.sleep(0.01)

    def _init_schema(self) -> None:
        conn = self._writer
        path = self.directory / DB_NAME
        try:
            conn.execute("BEGIN IMMEDIATE")  # several processes may start at once
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise QueueError(
                    f"queue database {path} has schema version {version};"
                    f" this smarthost understands version {SCHEMA_VERSION}"
                )
            conn.execute("COMMIT")
        except (sqlite3.Error, QueueError) as exc:
            conn.close()
            if isinstance(exc, QueueError):
                raise
            raise QueueError(f"cannot set up queue database {path}: {exc}") from exc

    # -- submitting ------------------------------------------------------------

    async def submit(
        self, envelope: Envelope, body: bytes, *, queue_id: str | None = None
    ) -> str:
        """Queue a message; return its id once it is on stable storage.

        ``queue_id``, if given, must come from :func:`new_queue_id` (a caller
        that wants the id early, e.g. for its Received header); by default the
        store makes one. Raises QueueError if the message could not be stored
        (answer 451 4.3.0). Cancelling the caller does not withdraw the message.
        """
        future = self._running_loop().create_future()

        def done(queue_id: str, error: BaseException | None) -> None:
            if future.done():  # the caller went away; its message stays queued
                return
            if error is None:
                future.set_result(queue_id)
            else:
                future.set_exception(error)

        self.submit_nowait(envelope, body, done, queue_id=queue_id)
        return await future

    def submit_nowait(
        self, envelope: Envelope, body: bytes, done: Callable[[str, BaseException | None], None],
        *, queue_id: str | None = None,
    ) -> str:
        """Queue a message from the event loop without waiting; return its queue id at once.

        ``done(queue_id, error)`` runs in this loop when the message's batch is on stable
        storage (``error`` None) or could not be stored (a QueueError: answer 451). This is
        the SMTP server's path: the 250 leaves from ``done`` in the same loop iteration that
        learns of the commit, with no task to wake in between. Bad input raises at once.
        """
        item = self._prepare(envelope, body, queue_id)
        loop = self._running_loop()
        item.loop = loop
        item.waiter = done
        if item.body_file is None:
            # Handed over once per loop iteration: the messages that ended in one iteration
            # share a commit, and the committer is woken once for them.
            staged = self._staged
            staged.append(item)
            if len(staged) == 1:
                loop.call_soon(self._hand_over)
        else:  # the large body's own file is written and fsync'd first, off the loop
            written = loop.run_in_executor(None, self._write_body_file, item.body_file, body)
            written.add_done_callback(lambda f: self._body_written(item, f))
        return item.queue_id

    def _hand_over(self) -> None:
        items, self._staged = self._staged, []
        self._enqueue_watched(items)

    def _body_written(self, item: _Pending, written: asyncio.Future) -> None:
        error = written.exception()
        if error is None:
            self._enqueue_watched([item])
        else:
            item.waiter(item.queue_id, error if isinstance(error, QueueError) else _failure(error))

    def _enqueue_watched(self, items: list[_Pending]) -> None:
        """Hand ``items`` to the committer from the event loop, and watch how long they wait."""
        try:
            self._enqueue(items)
        except QueueError as exc:  # closed meanwhile: nothing was stored
            for item in items:
                item.waiter(item.queue_id, exc)
            return
        self._expiry.append((time.monotonic() + self._busy_timeout, items))
        loop = items[0].loop
        if self._expiry_timer is None or self._expiry_loop is not loop:  # none yet, or one of a loop now closed
            self._expiry_loop = loop
            self._expiry_timer = loop.call_later(_EXPIRY_CHECK, self._check_expiry)

    def _check_expiry(self) -> None:
        """Answer 451 for messages the committer has not taken within ``busy_timeout``.

        The committer blocks on the writers' lock (a wake-up exactly when it is free, instead
        of polling); a holder that never lets go (a hung tool) would block it for ever, so the
        event loop bounds the wait instead: what is still waiting after ``busy_timeout`` is
        abandoned (the committer skips it) and its sender told ``451``.
        """
        self._expiry_timer = None
        expiry = self._expiry
        now = time.monotonic()
        while expiry:
            deadline, items = expiry[0]
            if items[0].state == _WAITING and deadline > now:
                break
            expiry.popleft()
            if items[0].state == _WAITING:  # a list is taken as a whole
                self._abandon(items)
        if expiry:
            self._expiry_timer = self._expiry_loop.call_later(_EXPIRY_CHECK, self._check_expiry)

    def _abandon(self, items: list[_Pending]) -> list[_Pending]:
        """Withdraw the items the committer has not taken; answer their waiters with QueueError."""
        with self._state_lock:
            lost = [item for item in items if item.state == _WAITING]
            for item in lost:
                item.state = _ABANDONED
        error = _lock_timeout(self.directory / LOCK_NAME, self._busy_timeout)
        for item in lost:
            if item.body_file is not None:
                self._remove_body_file(item.body_file)
            if item.loop is not None:
                item.waiter(item.queue_id, error)
        if lost:
            log.error("%d message(s) not queued: %s", len(lost), error)
        return lost

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():  # get_running_loop() costs a getpid() syscall
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def submit_sync(
        self, envelope: Envelope, body: bytes, *, queue_id: str | None = None
    ) -> str:
        """Blocking :meth:`submit`, for tools such as sendmail (not from an event loop)."""
        item = self._prepare(envelope, body, queue_id)
        if item.body_file is not None:
            self._write_body_file(item.body_file, body)
        waiter: concurrent.futures.Future[str] = concurrent.futures.Future()
        item.waiter = waiter
        self._enqueue([item])
        try:
            return waiter.result(timeout=self._busy_timeout)
        except concurrent.futures.TimeoutError:
            if self._abandon([item]):
                raise _lock_timeout(self.directory / LOCK_NAME, self._busy_timeout) from None
            return waiter.result()  # taken by the committer: its commit is under way

    def _prepare(self, envelope: Envelope, body: bytes, queue_id: str | None) -> _Pending:
        if queue_id is None:
            queue_id = new_queue_id()
        elif not is_queue_id(queue_id):  # it names a file: letters and digits only
            raise ValueError("queue_id must come from new_queue_id()")
        if not isinstance(body, bytes):
            raise TypeError("body must be bytes")
        if not envelope.recipients:
            raise ValueError("an envelope needs at least one recipient")  # RFC 5321 §3.3
        _check_text("sender", envelope.sender)
        arrival = time.time() if envelope.arrival is None else envelope.arrival
        recipient_rows = []
        for index, rcpt in enumerate(envelope.recipients):
            if not rcpt.address:
                raise ValueError("a recipient address is empty")
            _check_text("recipient address", rcpt.address)
            notify = None if rcpt.notify is None else ",".join(rcpt.notify)
            recipient_rows.append((queue_id, index, rcpt.address, rcpt.orcpt, notify))
        large = len(body) > self.large_body_threshold
        body_file = f"{BODIES_DIR}/{queue_id}" if large else None
        message_row = (
            queue_id,
            arrival,
            len(body),
            envelope.sender,
            _encode_envelope(envelope),  # ensure_ascii: any str encodes
            body_file,
            arrival,  # next_attempt: due at once
        )
        body_row = None if large else (queue_id, body)
        return _Pending(queue_id, message_row, recipient_rows, body_row, body_file)

    def _write_body_file(self, name: str, body: bytes) -> None:
        """Write and fsync one large body; its directory entry is fsync'd by the committer."""
        path = self.directory / name
        try:
            with open(path, "xb", opener=_private_opener) as f:
                f.write(body)
                f.flush()
                if self._synchronous:
                    os.fsync(f.fileno())
        except OSError as exc:
            self._remove_body_file(name)
            raise QueueError(f"cannot write body file {path}: {exc.strerror}") from exc

    def _remove_body_file(self, name: str) -> None:
        try:
            os.unlink(self.directory / name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove body file %s: %s", self.directory / name, exc.strerror)

    def _enqueue(self, items: list[_Pending]) -> None:
        with self._submit_lock:
            if not self._closed:
                self._pending.put(items)
                return
        for item in items:
            if item.body_file is not None:
                self._remove_body_file(item.body_file)
        raise QueueError("queue store is closed")

    # -- the committer thread ------------------------------------------------

    def _run(self) -> None:
        pending = self._pending
        last = 0  # messages in the last batch
        while True:
            batch: list[_Pending] = []
            closing = _take(pending.get(), batch)
            if last > 1 and self._gather_time and not closing:
                closing = self._gather(batch)
            # The writers' lock first, then the rest of the batch: whatever arrives while another
            # process commits (several workers share the queue) joins this batch instead of
            # waiting for a commit of its own. Blocking: a wait longer than busy_timeout is
            # answered by the submitters' side (_check_expiry, submit_sync), which abandons what
            # it answered.
            try:
                fcntl.flock(self._writer_lock_fd, fcntl.LOCK_EX)
            except OSError as exc:
                lock_error: QueueError | None = QueueError(f"cannot lock {self.directory / LOCK_NAME}: {exc}")
            else:
                lock_error = None
            while True:
                try:
                    closing |= _take(pending.get_nowait(), batch)
                except queue.Empty:
                    break
            with self._state_lock:  # abandoned items were answered 451: never commit them
                batch = [item for item in batch if item.state == _WAITING]
                for item in batch:
                    item.state = _TAKEN
            last = len(batch)
            try:
                if batch:
                    self._commit_batch(batch, lock_error)
            finally:
                if lock_error is None:
                    fcntl.flock(self._writer_lock_fd, fcntl.LOCK_UN)
            if closing:
                return

    def _gather(self, batch: list[_Pending]) -> bool:
        """Wait up to ``gather_time`` for more messages to join ``batch``; True once closing.

        Only called under load. On two cores shared with the load generator, waiting up to 2 ms
        for up to 8 messages took 5–9% off the CPU per message and 2–3% off the wall time of
        smtp-source runs at 20 sessions, and with ``SCHED_BATCH`` (master.py) 9–12% and 7–9%
        (ARCHITECTURE.md, "Performance notes"): fewer commits, so fewer fdatasyncs and fewer
        wake-ups of the event loops, for a message waiting at most that long more. Before the
        writers' lock, so another process commits meanwhile.
        """
        deadline = time.monotonic() + self._gather_time
        while len(batch) < GATHER_MAX:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                if _take(self._pending.get(timeout=remaining), batch):
                    return True
            except queue.Empty:
                return False
        return False

    def _commit_batch(self, batch: list[_Pending], lock_error: QueueError | None) -> None:
        try:
            if lock_error is not None:
                raise lock_error
            self._write_batch(batch)
        except Exception as exc:  # disk full, I/O error, lock timeout, ...: 451 for all
            self._failed_commits += 1
            log.error("queue commit of %d message(s) failed: %s", len(batch), exc)
            for item in batch:
                if item.body_file is not None:
                    self._remove_body_file(item.body_file)
            self._settle(batch, exc)
        else:
            self._commits += 1
            self._messages += len(batch)
            self._largest_batch = max(self._largest_batch, len(batch))
            self._settle(batch, None)

    def _write_batch(self, batch: list[_Pending]) -> None:
        """One transaction for the batch; the caller holds the writers' lock."""
        if self._synchronous and any(item.body_file is not None for item in batch):
            os.fsync(self._bodies_fd)  # body files' directory entries before the rows
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT_MESSAGE, [item.message_row for item in batch])
            conn.executemany(_INSERT_RECIPIENT, [r for item in batch for r in item.recipient_rows])
            bodies = [item.body_row for item in batch if item.body_row is not None]
            if bodies:
                conn.executemany(_INSERT_BODY, bodies)
            conn.execute("COMMIT")
        except BaseException:
            self._abandon_transaction()
            raise

    def _abandon_transaction(self) -> None:
        if not self._writer.in_transaction:
            return
        try:
            self._writer.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.error("queue rollback failed (%s); reopening the database", exc)
            self._writer.close()
            self._writer = self._connect()

    def _settle(self, batch: list[_Pending], cause: Exception | None) -> None:
        """Wake every waiter of a batch: one call_soon_threadsafe per event loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[str], str]]] = {}
        for item in batch:
            if item.loop is not None:
                by_loop.setdefault(item.loop, []).append((item.waiter, item.queue_id))
            elif cause is None:
                item.waiter.set_result(item.queue_id)
            else:
                item.waiter.set_exception(_failure(cause))
            # The event loop's expiry list holds the item for up to a second more: let go of the
            # session (through its callback) and of the message now.
            item.waiter = item.body_row = None
            item.message_row = item.recipient_rows = ()
        for loop, waiters in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve_futures, waiters, cause)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    # -- reading and managing ----------------------------------------------

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        """A transaction on the management connection; sqlite errors become QueueError."""
        writing = begin != "BEGIN"
        with self._conn_lock:
            conn = self._conn
            held = _lock_within(self._conn_lock_fd, self._busy_timeout, self.directory / LOCK_NAME) if writing else None
            try:
                conn.execute(begin)
                try:
                    yield conn
                    conn.execute("COMMIT")
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise QueueError(f"queue database {self.directory / DB_NAME}: {exc}") from exc
            finally:
                if held == self._conn_lock_fd:
                    fcntl.flock(held, fcntl.LOCK_UN)
                elif held is not None:
                    os.close(held)  # the descriptor the wait took it on

    def list(self, state: QueueState | None = None) -> list[QueueEntry]:
        """Entries in ``state`` (all if None), oldest id first."""
        if state is None:
            where, params = "", ()
        else:
            where, params = " WHERE m.state = ?", (QueueState(state).value,)
        with self._transaction("BEGIN") as conn:  # one snapshot for both queries
            rows = conn.execute(_SELECT_MESSAGES + where + " ORDER BY m.id", params).fetchall()
            rcpt_rows = conn.execute(
                _SELECT_RECIPIENTS + where + _RECIPIENT_ORDER, params
            ).fetchall()
        recipients: dict[str, list] = {}
        for message_id, *rcpt in rcpt_rows:
            recipients.setdefault(message_id, []).append(rcpt)
        entries = [self._entry(row, recipients.get(row[0], [])) for row in rows]
        if state not in (None, QueueState.CORRUPT):
            entries = [e for e in entries if e.state is not QueueState.CORRUPT]
        return entries

    def get(self, queue_id: str) -> QueueEntry | None:
        with self._transaction("BEGIN") as conn:
            row = conn.execute(_SELECT_MESSAGES + " WHERE m.id = ?", (queue_id,)).fetchone()
            rcpt_rows = conn.execute(
                _SELECT_RECIPIENTS + " WHERE m.id = ?" + _RECIPIENT_ORDER, (queue_id,)
            ).fetchall()
        if row is None:
            return None
        return self._entry(row, [rcpt for _, *rcpt in rcpt_rows])

    def _entry(self, row: tuple, recipients: list) -> QueueEntry:
        """Build an entry; one whose envelope does not decode is moved to corrupt."""
        queue_id, state, arrival, size, sender, envelope_json, next_attempt, attempts = row
        try:
            envelope = _decode_envelope(sender, arrival, envelope_json, recipients)
        except (ValueError, TypeError) as exc:
            envelope = None
            if state != QueueState.CORRUPT:
                self._mark_corrupt(queue_id, f"envelope does not decode: {exc}")
                state = QueueState.CORRUPT
        return QueueEntry(
            queue_id, QueueState(state), envelope, size, arrival, next_attempt, attempts
        )

    def read_body(self, queue_id: str) -> bytes:
        """The message body, byte for byte.

        Raises NoSuchEntry, or CorruptEntry after moving the entry to corrupt
        when its body is missing, unreadable or of the wrong size.
        """
        with self._transaction("BEGIN") as conn:
            row = conn.execute(
                "SELECT m.size, m.body_file, b.data FROM messages m"
                " LEFT JOIN bodies b ON b.id = m.id WHERE m.id = ?",
                (queue_id,),
            ).fetchone()
        if row is None:
            raise NoSuchEntry(f"no queue entry {queue_id}")
        size, body_file, data = row
        problem = None
        if body_file is None:
            if data is None:
                problem = "body is missing from the database"
        elif body_file != f"{BODIES_DIR}/{queue_id}":
            problem = f"unexpected body file name {body_file!r}"
        else:
            path = self.directory / body_file
            try:
                data = path.read_bytes()
            except OSError as exc:
                problem = f"cannot read body file {path}: {exc.strerror}"
        if problem is None and len(data) != size:
            problem = f"body has {len(data)} bytes, expected {size}"
        if problem is not None:
            self._mark_corrupt(queue_id, problem)
            raise CorruptEntry(f"queue entry {queue_id}: {problem}; moved to corrupt")
        return data

    def _mark_corrupt(self, queue_id: str, reason: str) -> None:
        log.error("%s: moved to corrupt: %s", queue_id, reason)
        with self._transaction("BEGIN IMMEDIATE") as conn:
            conn.execute(
                "UPDATE messages SET state = 'corrupt' WHERE id = ?", (queue_id,)
            )

    def move(self, queue_id: str, state: QueueState) -> None:
        state = QueueState(state)
        with self._transaction("BEGIN IMMEDIATE") as conn:
            cursor = conn.execute(
                "UPDATE messages SET state = ? WHERE id = ?", (state.value, queue_id)
            )
            if cursor.rowcount == 0:
                raise NoSuchEntry(f"no queue entry {queue_id}")

    def delete(self, queue_id: str) -> None:
        """Remove the entry, its recipients and its body (table row or file)."""
        if not self.delete_many([queue_id]):
            raise NoSuchEntry(f"no queue entry {queue_id}")

    def delete_many(self, queue_ids: list[str]) -> list[str]:
        """Remove several entries in one transaction (one fsync); returns the ids that existed."""
        with self._transaction("BEGIN IMMEDIATE") as conn:
            found = []
            for queue_id in queue_ids:
                row = conn.execute("SELECT body_file FROM messages WHERE id = ?", (queue_id,)).fetchone()
                if row is None:
                    continue
                found.append((queue_id, row[0]))
                conn.execute("DELETE FROM recipients WHERE message_id = ?", (queue_id,))
                conn.execute("DELETE FROM bodies WHERE id = ?", (queue_id,))
                conn.execute("DELETE FROM messages WHERE id = ?", (queue_id,))
        # After the commit: a crash in between leaves an orphan file, never a
        # row without its body (remove_orphan_bodies() cleans up orphans).
        for _, body_file in found:
            if body_file is not None:
                self._remove_body_file(body_file)
        return [queue_id for queue_id, _ in found]

    def count(self, state: QueueState | None = None) -> int:
        with self._transaction("BEGIN") as conn:
            if state is None:
                row = conn.execute("SELECT count(*) FROM messages").fetchone()
            else:
                row = conn.execute(
                    "SELECT count(*) FROM messages WHERE state = ?", (QueueState(state).value,)
                ).fetchone()
        return row[0]

    # -- the queue manager's operations --------------------------------------------
    # Only the queue manager moves entries into and out of ``active``.

    def recover_active(self) -> int:
        """After a crash: every ``active`` entry goes back to ``incoming`` (delivery is
        at-least-once). Returns how many entries were recovered."""
        with self._transaction("BEGIN IMMEDIATE") as conn:
            return conn.execute(
                "UPDATE messages SET state = 'incoming' WHERE state = 'active'"
            ).rowcount

    def claim_due(self, now: float, limit: int) -> list[QueueEntry]:
        """Move up to ``limit`` entries that are due (incoming, or deferred with
        ``next_attempt <= now``) to ``active`` in one transaction and return them, earliest
        first. Entries whose envelope does not decode come back in state corrupt."""
        with self._transaction("BEGIN IMMEDIATE") as conn:
            ids = [row[0] for row in conn.execute(
                "SELECT id FROM messages WHERE state IN ('incoming', 'deferred')"
                " AND next_attempt <= ? ORDER BY next_attempt, id LIMIT ?",
                (now, max(0, limit)),
            )]
            conn.executemany(
                "UPDATE messages SET state = 'active' WHERE id = ?", [(i,) for i in ids]
            )
        entries = [self.get(queue_id) for queue_id in ids]
        return [entry for entry in entries if entry is not None]

    def next_due(self) -> float | None:
        """The earliest ``next_attempt`` of an incoming or deferred entry (None: none waits)."""
        with self._transaction("BEGIN") as conn:
            row = conn.execute(
                "SELECT min(next_attempt) FROM messages WHERE state IN ('incoming', 'deferred')"
            ).fetchone()
        return row[0]

    def recipient_results(self, queue_id: str) -> list[tuple[str | None, str | None]]:
        """``(status, reply)`` of each recipient, by index: status is None (not tried or
        not finished), 'sent', 'bounced' or 'deferred'."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(
                "SELECT status, reply FROM recipients WHERE message_id = ? ORDER BY idx",
                (queue_id,),
            ).fetchall()
        return [(status, reply) for status, reply in rows]

    def record_attempt(
        self,
        queue_id: str,
        results: dict[int, tuple[str, str]],
        *,
        next_attempt: float | None = None,
    ) -> None:
        """Store the outcome of a delivery attempt durably, in one transaction.

        ``results`` maps recipient index to ``(status, reply)`` with status 'sent',
        'bounced' or 'deferred'. With ``next_attempt`` the entry also moves to ``deferred``
        (attempts + 1) to be tried again at that time.
        """
        with self._transaction("BEGIN IMMEDIATE") as conn:
            if next_attempt is None:
                found = conn.execute("SELECT 1 FROM messages WHERE id = ?", (queue_id,)).fetchone()
            else:
                found = conn.execute(
                    "UPDATE messages SET state = 'deferred', next_attempt = ?,"
                    " attempts = attempts + 1 WHERE id = ?",
                    (next_attempt, queue_id),
                ).rowcount
            if not found:
                raise NoSuchEntry(f"no queue entry {queue_id}")
            conn.executemany(
                "UPDATE recipients SET status = ?, reply = ? WHERE message_id = ? AND idx = ?",
                [(status, reply, queue_id, index) for index, (status, reply) in results.items()],
            )

    def make_deferred_due(self, now: float) -> int:
        """Flush: every deferred entry becomes due at ``now``. Returns how many."""
        with self._transaction("BEGIN IMMEDIATE") as conn:
            return conn.execute(
                "UPDATE messages SET next_attempt = ? WHERE state = 'deferred'", (now,)
            ).rowcount

    # -- operator tools (smarthost queue ...) --------------------------------------

    def flush(self, now: float | None = None) -> int:
        """Make every deferred entry due at ``now``; return how many were waiting longer."""
        now = time.time() if now is None else now
        with self._transaction("BEGIN IMMEDIATE") as conn:
            cursor = conn.execute(
                "UPDATE messages SET next_attempt = ? WHERE state = 'deferred' AND next_attempt > ?",
                (now, now),
            )
        return cursor.rowcount

    def hold(self, queue_id: str) -> bool:
        """Put an entry on hold; False when it is corrupt (corrupt entries stay where they are)."""
        return self._change_state(queue_id, "hold", "state != 'corrupt'", None)

    def release(self, queue_id: str, now: float | None = None) -> bool:
        """Move an entry from hold to deferred, due at ``now``; False when it is not on hold."""
        return self._change_state(queue_id, "deferred", "state = 'hold'", now)

    def requeue(self, queue_id: str, now: float | None = None) -> bool:
        """Send an entry through the queue manager again (state incoming, due at ``now``), with
        its deferred recipients' outcomes forgotten; False when it is corrupt."""
        done = self._change_state(queue_id, "incoming", "state != 'corrupt'", now)
        if done:
            with self._transaction("BEGIN IMMEDIATE") as conn:
                conn.execute(
                    "UPDATE recipients SET status = NULL, reply = NULL"
                    " WHERE message_id = ? AND status = 'deferred'",
                    (queue_id,),
                )
        return done

    def _change_state(self, queue_id: str, state: str, condition: str, now: float | None) -> bool:
        with self._transaction("BEGIN IMMEDIATE") as conn:
            if now is None and state != "hold":
                now = time.time()
            if now is None:
                cursor = conn.execute(
                    f"UPDATE messages SET state = ? WHERE id = ? AND {condition}", (state, queue_id)
                )
            else:
                cursor = conn.execute(
                    f"UPDATE messages SET state = ?, next_attempt = ? WHERE id = ? AND {condition}",
                    (state, now, queue_id),
                )
            if cursor.rowcount:
                return True
            if conn.execute("SELECT 1 FROM messages WHERE id = ?", (queue_id,)).fetchone() is None:
                raise NoSuchEntry(f"no queue entry {queue_id}")
            return False

    def recipient_statuses(self, queue_id: str) -> list[tuple[str, str | None, str | None]]:
        """``(address, status, reply)`` per recipient, in order; status None while pending."""
        with self._transaction("BEGIN") as conn:
            return conn.execute(
                "SELECT address, status, reply FROM recipients WHERE message_id = ? ORDER BY idx",
                (queue_id,),
            ).fetchall()

    def remove_orphan_bodies(self, older_than: float = 3600.0) -> int:
        """Remove body files that no entry references and that are older than
        ``older_than`` seconds (left by a crash between writing the file and
        committing its row, or between deleting a row and its file). Younger
        files may belong to a submit in progress in another process.
        Returns how many files were removed."""
        cutoff = time.time() - older_than
        removed = 0
        for dirent in os.scandir(self._bodies):
            try:
                if dirent.stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
            name = f"{BODIES_DIR}/{dirent.name}"
            with self._transaction("BEGIN") as conn:
                referenced = conn.execute(
                    "SELECT 1 FROM messages WHERE id = ? AND body_file = ?", (dirent.name, name)
                ).fetchone()
            if referenced is None:
                self._remove_body_file(name)
                removed += 1
        return removed

    @property
    def stats(self) -> QueueStats:
        return QueueStats(
            self._commits, self._messages, self._failed_commits, self._largest_batch
        )

    def close(self) -> None:
        """Commit what is pending, stop the committer thread, close the database."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            if self._staged:  # submitted in this loop iteration: committed too
                self._pending.put(self._staged)
                self._staged = []
            self._pending.put(None)
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        self._thread.join(self._busy_timeout + 5.0)
        if self._thread.is_alive():  # blocked on a lock a hung process holds; it is a daemon thread
            log.error("queue committer still waiting for %s; not waiting any longer", self.directory / LOCK_NAME)
        else:
            self._writer.close()
        with self._conn_lock:
            self._conn.close()
        os.close(self._bodies_fd)
        os.close(self._writer_lock_fd)
        os.close(self._conn_lock_fd)

    def __enter__(self) -> QueueStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_CLOEXEC, 0o600)
