"""The durable queue store: what is stored comes back byte for byte, batches
commit together, failures reach every waiter, unreadable entries go to corrupt."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smarthost.queue import (
    CorruptEntry,
    Envelope,
    NoSuchEntry,
    QueueError,
    QueueState,
    QueueStore,
    Recipient,
    ids,
    new_queue_id,
    queue_id_time,
)

ENVELOPE = Envelope(
    sender="alice@example.org",
    recipients=(
        Recipient("bob@example.com"),
        Recipient("carol@example.net", orcpt="rfc822;carol@example.net", notify=("SUCCESS", "DELAY")),
        Recipient("postmaster", notify=("NEVER",)),
    ),
    client_address="192.0.2.7",
    client_name="client.example.org",
    helo="client.example.org",
    protocol="ESMTPSA",
    sasl_username="alice",
    body_type="8BITMIME",
    smtputf8=True,
    envid="QQ314159",
    ret="HDRS",
)
SMALL = b"Subject: hi\r\n\r\n" + bytes(range(256)) + b"\r\n.\r\n..\r\n"
THRESHOLD = 4096
LARGE = bytes(range(256)) * 40  # 10240 bytes > THRESHOLD


@pytest.fixture
def queue_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "queue"


@pytest.fixture
def store(queue_dir: Path):
    with QueueStore(queue_dir, large_body_threshold=THRESHOLD) as store:
        yield store


def body_files(queue_dir: Path) -> list[str]:
    return sorted(os.listdir(queue_dir / "bodies"))


def lock_database(queue_dir: Path) -> sqlite3.Connection:
    """Another writer (another process, say) holding the write lock."""
    locker = sqlite3.connect(queue_dir / "queue.db", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    return locker


# -- what goes in comes out ----------------------------------------------------


def test_submit_sync_then_get_and_read_body(store: QueueStore) -> None:
    before = time.time()
    queue_id = store.submit_sync(ENVELOPE, SMALL)
    entry = store.get(queue_id)
    assert entry is not None
    assert entry.id == queue_id
    assert entry.state is QueueState.INCOMING
    assert entry.size == len(SMALL)
    assert entry.attempts == 0
    assert before <= entry.arrival <= time.time()
    assert entry.next_attempt == entry.arrival
    assert entry.envelope == dataclasses.replace(ENVELOPE, arrival=entry.arrival)
    assert store.read_body(queue_id) == SMALL


def test_async_submit_small_body_stays_in_the_database(store: QueueStore, queue_dir: Path) -> None:
    queue_id = asyncio.run(store.submit(ENVELOPE, SMALL))
    assert store.read_body(queue_id) == SMALL
    assert body_files(queue_dir) == []


def test_large_body_goes_to_its_own_private_file(store: QueueStore, queue_dir: Path) -> None:
    queue_id = asyncio.run(store.submit(ENVELOPE, LARGE))
    assert body_files(queue_dir) == [queue_id]
    path = queue_dir / "bodies" / queue_id
    assert path.read_bytes() == LARGE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.read_body(queue_id) == LARGE
    sync_id = store.submit_sync(ENVELOPE, LARGE)
    assert store.read_body(sync_id) == LARGE


def test_body_of_exactly_the_threshold_stays_in_the_database(store, queue_dir) -> None:
    queue_id = store.submit_sync(ENVELOPE, b"x" * THRESHOLD)
    assert body_files(queue_dir) == []
    assert store.read_body(queue_id) == b"x" * THRESHOLD


def test_empty_body_and_null_sender(store: QueueStore) -> None:
    bounce = Envelope(sender="", recipients=(Recipient("alice@example.org"),), arrival=1000.5)
    queue_id = store.submit_sync(bounce, b"")
    entry = store.get(queue_id)
    assert entry.envelope == bounce
    assert entry.arrival == 1000.5
    assert store.read_body(queue_id) == b""


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
OPTIONAL = st.none() | TEXT
RECIPIENTS = st.lists(
    st.builds(
        Recipient,
        address=TEXT.filter(bool),
        orcpt=OPTIONAL,
        notify=st.none() | st.lists(st.sampled_from(["SUCCESS", "FAILURE", "DELAY", "NEVER"]),
                                    min_size=1, max_size=3).map(tuple),
    ),
    min_size=1,
    max_size=5,
).map(tuple)
ENVELOPES = st.builds(
    Envelope,
    sender=TEXT,
    recipients=RECIPIENTS,
    client_address=TEXT,
    client_name=TEXT,
    helo=TEXT,
    protocol=TEXT,
    sasl_username=OPTIONAL,
    body_type=OPTIONAL,
    smtputf8=st.booleans(),
    envid=OPTIONAL,
    ret=OPTIONAL,
    arrival=st.floats(min_value=0, max_value=2**40, allow_nan=False),
)


def test_any_envelope_and_body_round_trip(tmp_path: Path) -> None:
    with QueueStore(tmp_path / "q", large_body_threshold=64, synchronous=False) as store:

        @settings(max_examples=150, deadline=None)
        @given(envelope=ENVELOPES, body=st.binary(max_size=200))
        def check(envelope: Envelope, body: bytes) -> None:
            queue_id = store.submit_sync(envelope, body)
            assert store.get(queue_id).envelope == envelope
            assert store.read_body(queue_id) == body

        check()


def test_envelopes_differing_in_one_fact_keep_their_own_and_memory_stays_bounded(tmp_path: Path) -> None:
    # The store remembers the JSON of the envelope facts it saw last (they repeat within a
    # session); more distinct ones than it keeps must neither mix up nor grow it without bound.
    from smarthost.queue import store as store_module

    bound = store_module._encode_values.cache_info().maxsize
    count = bound + 40
    with QueueStore(tmp_path / "q", synchronous=False) as store:
        queued = [store.submit_sync(dataclasses.replace(ENVELOPE, helo=f"h{i}.example"), b"x") for i in range(count)]
        queued.append(store.submit_sync(dataclasses.replace(ENVELOPE, helo="h3.example", sasl_username="u"), b"x"))
        assert store_module._encode_values.cache_info().currsize <= bound
        for i, queue_id in enumerate(queued[:-1]):
            expected = dataclasses.replace(ENVELOPE, helo=f"h{i}.example")
            assert dataclasses.replace(store.get(queue_id).envelope, arrival=None) == expected
        assert store.get(queued[-1]).envelope.sasl_username == "u"


def test_caller_may_bring_its_own_queue_id(store: QueueStore, queue_dir: Path) -> None:
    early = new_queue_id()  # e.g. for the Received header's "id" clause
    assert asyncio.run(store.submit(ENVELOPE, LARGE, queue_id=early)) == early
    assert body_files(queue_dir) == [early]
    other = new_queue_id()
    assert store.submit_sync(ENVELOPE, SMALL, queue_id=other) == other
    assert store.read_body(early) == LARGE and store.read_body(other) == SMALL
    with pytest.raises(ValueError, match="new_queue_id"):
        store.submit_sync(ENVELOPE, SMALL, queue_id="../../etc/x")
    assert store.count() == 2


def test_directories_are_private(store: QueueStore, queue_dir: Path) -> None:
    assert stat.S_IMODE(queue_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((queue_dir / "bodies").stat().st_mode) == 0o700


def test_entries_survive_reopening(queue_dir: Path) -> None:
    with QueueStore(queue_dir, large_body_threshold=THRESHOLD) as store:
        small_id = store.submit_sync(ENVELOPE, SMALL)
        large_id = store.submit_sync(ENVELOPE, LARGE)
    with QueueStore(queue_dir, large_body_threshold=THRESHOLD) as store:
        assert [e.id for e in store.list()] == sorted([small_id, large_id])
        assert store.read_body(small_id) == SMALL
        assert store.read_body(large_id) == LARGE


# -- queue ids --------------------------------------------------------------------


def test_queue_id_format_and_order() -> None:
    made = [new_queue_id() for _ in range(5000)]
    assert len(set(made)) == 5000
    assert made == sorted(made)  # sortable by time, also within one microsecond
    for queue_id in made[:10]:
        assert len(queue_id) == 15 and queue_id.isalnum() and queue_id.isascii()
    assert abs(queue_id_time(made[0]) - time.time()) < 5


def test_queue_ids_keep_increasing_when_the_clock_steps_back(monkeypatch) -> None:
    first = new_queue_id()
    monkeypatch.setattr(ids, "time", SimpleNamespace(time_ns=lambda: 1_000_000_000))
    later = [new_queue_id() for _ in range(5)]
    assert sorted(set([first] + later)) == [first] + later


def test_queue_id_time_refuses_other_text() -> None:
    with pytest.raises(ValueError, match="not a queue id"):
        queue_id_time("../etc/passwd")


def test_ids_unique_under_concurrency(store: QueueStore) -> None:
    async def many() -> list[str]:
        return await asyncio.gather(*(store.submit(ENVELOPE, b"%d" % i) for i in range(300)))

    from_threads: list[str] = []

    def sync_client() -> None:
        for i in range(50):
            from_threads.append(store.submit_sync(ENVELOPE, b"t%d" % i))

    threads = [threading.Thread(target=sync_client) for _ in range(4)]
    for t in threads:
        t.start()
    from_loop = asyncio.run(many())
    for t in threads:
        t.join()
    every = from_loop + from_threads
    assert len(set(every)) == 500
    assert store.count() == 500
    assert [store.read_body(q) for q in from_loop] == [b"%d" % i for i in range(300)]


CHILD = """
import sys
from smarthost.queue import QueueStore, Envelope, Recipient
store = QueueStore(sys.argv[1])
env = Envelope("a@example.org", (Recipient("b@example.org"),))
print(" ".join(store.submit_sync(env, b"%s %d" % (sys.argv[2].encode(), i)) for i in range(200)))
store.close()
"""


def test_ids_unique_across_two_processes(queue_dir: Path) -> None:
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(queue_dir), name], stdout=subprocess.PIPE)
        for name in ("one", "two")
    ]
    outputs = [child.communicate(timeout=30)[0].split() for child in children]
    assert [child.returncode for child in children] == [0, 0]
    all_ids = [q.decode() for out in outputs for q in out]
    assert len(all_ids) == len(set(all_ids)) == 400
    with QueueStore(queue_dir) as store:
        assert store.count() == 400
        assert store.read_body(outputs[1][7].decode()) == b"two 7"


# -- group commit -------------------------------------------------------------------


class CountingLoop(asyncio.SelectorEventLoop):
    wakeups = 0

    def call_soon_threadsafe(self, *args, **kwargs):
        self.wakeups += 1
        return super().call_soon_threadsafe(*args, **kwargs)


def test_what_arrives_during_a_commit_is_committed_together(store, queue_dir) -> None:
    async def scenario() -> list[str]:
        locker = lock_database(queue_dir)  # the first commit waits for this lock
        first = asyncio.ensure_future(store.submit(ENVELOPE, b"first"))
        await asyncio.sleep(0.1)  # the committer has taken "first" and waits
        rest = [asyncio.ensure_future(store.submit(ENVELOPE, b"%d" % i)) for i in range(49)]
        await asyncio.sleep(0.1)
        locker.execute("COMMIT")
        locker.close()
        return await asyncio.gather(first, *rest)

    loop = CountingLoop()
    try:
        queue_ids = loop.run_until_complete(scenario())
    finally:
        loop.close()
    stats = store.stats
    assert (stats.commits, stats.messages, stats.largest_batch) == (2, 50, 49)
    assert loop.wakeups == 2  # one call_soon_threadsafe per batch, not per message
    assert len(set(queue_ids)) == 50 and store.count() == 50


def test_concurrent_sessions_share_commits(store: QueueStore) -> None:
    async def many() -> None:
        await asyncio.gather(*(store.submit(ENVELOPE, SMALL) for _ in range(64)))

    asyncio.run(many())
    stats = store.stats
    assert stats.messages == 64
    assert stats.commits <= 16 and stats.largest_batch >= 4


# With a gather time far beyond any test's patience, a commit held back by the gathering
# shows as a hang (asyncio.wait_for's 20 s), not as a slow test.
LONG_GATHER = 120.0


def _commits_of(store: QueueStore, groups: list[int]) -> list[int]:
    """Submit ``groups[i]`` messages in loop iteration i (one hand-over each), each group once
    the previous one is queued; the store's commit count after each group."""
    async def scenario() -> list[int]:
        counts = []
        for size in groups:
            await asyncio.wait_for(asyncio.gather(*(store.submit(ENVELOPE, SMALL) for _ in range(size))), 20)
            counts.append(store.stats.commits)
        return counts

    return asyncio.run(scenario())


def test_a_lone_message_is_never_held_back_by_the_gathering(queue_dir: Path) -> None:
    with QueueStore(queue_dir, gather_time=LONG_GATHER) as store:
        assert _commits_of(store, [1, 1, 1]) == [1, 2, 3]  # each at once, on its own


def test_after_a_busy_batch_the_committer_gathers_up_to_eight_messages(queue_dir: Path) -> None:
    with QueueStore(queue_dir, gather_time=LONG_GATHER) as store:
        async def scenario() -> tuple[int, int]:
            await asyncio.gather(store.submit(ENVELOPE, SMALL), store.submit(ENVELOPE, SMALL))
            busy = store.stats.commits  # one batch of two: the committer expects more
            first = asyncio.ensure_future(store.submit(ENVELOPE, SMALL))
            for _ in range(7):  # one hand-over per loop iteration, 10 ms apart
                await asyncio.sleep(0.01)
                assert not first.done()  # held for the others
                asyncio.ensure_future(store.submit(ENVELOPE, SMALL))
            await asyncio.wait_for(first, 20)  # the eighth message ends the wait
            return busy, store.stats.commits

        assert asyncio.run(scenario()) == (1, 2)
        stats = store.stats
        assert (stats.messages, stats.largest_batch) == (10, 8)
        assert store.count() == 10


def test_gather_time_bounds_the_wait(queue_dir: Path) -> None:
    with QueueStore(queue_dir, gather_time=0.05) as store:
        # After the batch of three the next message waits up to 50 ms for company, finds none
        # and is committed alone; the one after that is not held at all.
        assert _commits_of(store, [3, 1, 1]) == [1, 2, 3]
        assert store.stats.largest_batch == 3


def test_closing_while_gathering_commits_what_was_gathered(queue_dir: Path) -> None:
    store = QueueStore(queue_dir, gather_time=LONG_GATHER)

    async def scenario() -> str:
        await asyncio.gather(store.submit(ENVELOPE, SMALL), store.submit(ENVELOPE, SMALL))
        held = asyncio.ensure_future(store.submit(ENVELOPE, b"held"))
        await asyncio.sleep(0.05)  # handed over; the committer is gathering
        assert not held.done()
        await asyncio.get_running_loop().run_in_executor(None, store.close)
        return await asyncio.wait_for(held, 20)

    queue_id = asyncio.run(scenario())
    with QueueStore(queue_dir) as reopened:
        assert reopened.read_body(queue_id) == b"held"
        assert reopened.count() == 3


def test_a_failed_commit_fails_every_waiter_and_leaves_nothing(queue_dir: Path) -> None:
    store = QueueStore(queue_dir, large_body_threshold=THRESHOLD, busy_timeout=0.3)
    locker = lock_database(queue_dir)

    async def scenario() -> list[object]:
        first = asyncio.ensure_future(store.submit(ENVELOPE, LARGE))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(store.submit(ENVELOPE, b)) for b in (SMALL, LARGE) * 5]
        return await asyncio.gather(first, *rest, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert len(outcomes) == 11
    for outcome in outcomes:
        assert isinstance(outcome, QueueError)
        assert "queue commit failed: database is locked" in str(outcome)
    stats = store.stats
    assert (stats.commits, stats.messages, stats.failed_commits) == (0, 0, 2)
    locker.execute("ROLLBACK")
    locker.close()
    assert store.count() == 0
    assert body_files(queue_dir) == []  # no orphaned large bodies
    queue_id = store.submit_sync(ENVELOPE, SMALL)  # the committer carries on
    assert store.read_body(queue_id) == SMALL
    store.close()


def test_submit_sync_gets_the_failure_too(queue_dir: Path) -> None:
    with QueueStore(queue_dir, busy_timeout=0.1) as store:
        locker = lock_database(queue_dir)
        with pytest.raises(QueueError, match="database is locked"):
            store.submit_sync(ENVELOPE, SMALL)
        locker.close()


def test_close_commits_what_is_pending(queue_dir: Path) -> None:
    store = QueueStore(queue_dir)

    async def scenario() -> list[str]:
        tasks = [asyncio.ensure_future(store.submit(ENVELOPE, b"%d" % i)) for i in range(20)]
        await asyncio.sleep(0)  # every task has handed its message over
        store.close()
        return await asyncio.gather(*tasks)

    queue_ids = asyncio.run(scenario())
    with pytest.raises(QueueError, match="closed"):
        store.submit_sync(ENVELOPE, SMALL)
    with QueueStore(queue_dir) as reopened:
        assert sorted(e.id for e in reopened.list()) == sorted(queue_ids)


def test_a_cancelled_session_still_leaves_its_message_queued(queue_dir: Path) -> None:
    store = QueueStore(queue_dir)

    async def scenario() -> None:
        task = asyncio.ensure_future(store.submit(ENVELOPE, SMALL))
        await asyncio.sleep(0)
        task.cancel()
        store.close()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    with QueueStore(queue_dir) as reopened:
        assert reopened.count() == 1


def test_bad_input_is_refused_without_harming_others(store: QueueStore) -> None:
    with pytest.raises(ValueError, match="at least one recipient"):
        store.submit_sync(Envelope("a@example.org", ()), SMALL)
    with pytest.raises(ValueError, match="recipient address is empty"):
        store.submit_sync(Envelope("a@example.org", (Recipient(""),)), SMALL)
    bad = "caf\udce9@example.org"  # bytes decoded with surrogateescape
    with pytest.raises(ValueError, match="recipient address is not valid Unicode"):
        store.submit_sync(Envelope("a@example.org", (Recipient(bad),)), SMALL)
    with pytest.raises(TypeError):
        store.submit_sync(ENVELOPE, "text")  # type: ignore[arg-type]
    assert store.count() == 0
    assert store.read_body(store.submit_sync(ENVELOPE, SMALL)) == SMALL


# -- managing -----------------------------------------------------------------------


def test_move_list_count_delete(store: QueueStore) -> None:
    a, b, c = (store.submit_sync(ENVELOPE, b"%d" % i) for i in range(3))
    store.move(b, QueueState.HOLD)
    store.move(c, QueueState.DEFERRED)
    assert [e.id for e in store.list(QueueState.INCOMING)] == [a]
    assert [e.id for e in store.list(QueueState.HOLD)] == [b]
    assert [e.id for e in store.list()] == [a, b, c]
    assert store.list(QueueState.HOLD)[0].envelope.recipients == ENVELOPE.recipients
    assert (store.count(), store.count(QueueState.DEFERRED), store.count(QueueState.ACTIVE)) == (3, 1, 0)
    store.delete(b)
    assert store.get(b) is None
    assert store.count() == 2
    with pytest.raises(NoSuchEntry):
        store.read_body(b)
    with pytest.raises(NoSuchEntry):
        store.delete(b)
    with pytest.raises(NoSuchEntry):
        store.move(b, QueueState.ACTIVE)
    with pytest.raises(ValueError):
        store.move(a, "lost")  # type: ignore[arg-type]


def test_delete_removes_the_body_file(store: QueueStore, queue_dir: Path) -> None:
    queue_id = store.submit_sync(ENVELOPE, LARGE)
    assert body_files(queue_dir) == [queue_id]
    store.delete(queue_id)
    assert body_files(queue_dir) == []
    assert store.count() == 0


# -- corrupt entries ------------------------------------------------------------------


def test_missing_body_file_moves_the_entry_to_corrupt(store, queue_dir) -> None:
    queue_id = store.submit_sync(ENVELOPE, LARGE)
    (queue_dir / "bodies" / queue_id).unlink()
    with pytest.raises(CorruptEntry, match=f"{queue_id}: cannot read body file .*bodies/{queue_id}"):
        store.read_body(queue_id)
    entry = store.get(queue_id)
    assert entry.state is QueueState.CORRUPT and entry.envelope.sender == ENVELOPE.sender
    assert [e.id for e in store.list(QueueState.CORRUPT)] == [queue_id]
    assert store.count() == 1  # kept for the operator


def test_truncated_body_file_is_corrupt(store, queue_dir) -> None:
    queue_id = store.submit_sync(ENVELOPE, LARGE)
    (queue_dir / "bodies" / queue_id).write_bytes(LARGE[:100])
    with pytest.raises(CorruptEntry, match=f"body has 100 bytes, expected {len(LARGE)}"):
        store.read_body(queue_id)
    assert store.get(queue_id).state is QueueState.CORRUPT


def test_undecodable_envelope_moves_the_entry_to_corrupt(store, queue_dir) -> None:
    good = store.submit_sync(ENVELOPE, SMALL)
    bad = store.submit_sync(ENVELOPE, SMALL)
    with sqlite3.connect(queue_dir / "queue.db") as db:
        db.execute("UPDATE messages SET envelope = '{\"helo\": 7}' WHERE id = ?", (bad,))
    assert [e.id for e in store.list(QueueState.INCOMING)] == [good]
    entry = store.get(bad)
    assert entry.state is QueueState.CORRUPT and entry.envelope is None
    assert [e.id for e in store.list(QueueState.CORRUPT)] == [bad]
    assert store.read_body(bad) == SMALL  # the body is still there for the operator


def test_newer_schema_is_refused_with_the_file_name(queue_dir: Path) -> None:
    QueueStore(queue_dir).close()
    with sqlite3.connect(queue_dir / "queue.db") as db:
        db.execute("PRAGMA user_version=99")
    with pytest.raises(QueueError, match=r"queue\.db has schema version 99"):
        QueueStore(queue_dir)


def test_remove_orphan_bodies_keeps_referenced_and_young_files(store, queue_dir) -> None:
    kept = store.submit_sync(ENVELOPE, LARGE)
    orphan, young = queue_dir / "bodies" / "orphan", queue_dir / "bodies" / "young"
    orphan.write_bytes(b"left by a crash")
    young.write_bytes(b"being submitted")
    hour_ago = time.time() - 3700
    for path in (orphan, queue_dir / "bodies" / kept):
        os.utime(path, (hour_ago, hour_ago))
    assert store.remove_orphan_bodies() == 1
    assert body_files(queue_dir) == sorted([kept, "young"])
    assert store.read_body(kept) == LARGE


def test_a_writer_lock_held_forever_fails_the_batch_after_busy_timeout(queue_dir: Path) -> None:
    # A hung tool (another process) holding the writers' flock: the commit must give up after
    # busy_timeout with QueueError (the shell's 451), not block every session forever.
    import fcntl

    with QueueStore(queue_dir, busy_timeout=0.5) as store:
        holder = os.open(queue_dir / "queue.lock", os.O_RDWR)
        fcntl.flock(holder, fcntl.LOCK_EX)
        try:
            outcome: list[object] = []
            worker = threading.Thread(target=lambda: outcome.append(_attempt(store)), daemon=True)
            worker.start()
            worker.join(10)
            assert not worker.is_alive(), "the commit is still waiting for the lock"
            assert isinstance(outcome[0], QueueError) and "queue lock" in str(outcome[0])
            with pytest.raises(QueueError, match="queue lock"):
                store.move(new_queue_id(), QueueState.HOLD)  # the management side gives up too
        finally:
            fcntl.flock(holder, fcntl.LOCK_UN)
            os.close(holder)
        queue_id = store.submit_sync(ENVELOPE, SMALL)  # released: the next batch commits
        assert store.read_body(queue_id) == SMALL
        assert store.count() == 1


def test_the_management_connection_waits_for_a_held_writer_lock_and_lets_go_of_it(queue_dir: Path) -> None:
    # Another writer holds the flock for a while: a management write waits (within busy_timeout)
    # and goes through once it is free; a wait given up on never leaves the lock taken.
    import fcntl

    def lock_is_free() -> bool:
        probe = os.open(queue_dir / "queue.lock", os.O_RDWR)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(probe)

    with QueueStore(queue_dir, busy_timeout=5) as store:
        queue_id = store.submit_sync(ENVELOPE, SMALL)
        holder = os.open(queue_dir / "queue.lock", os.O_RDWR)
        fcntl.flock(holder, fcntl.LOCK_EX)
        releaser = threading.Timer(0.3, lambda: (fcntl.flock(holder, fcntl.LOCK_UN), os.close(holder)))
        releaser.start()
        started = time.monotonic()
        store.move(queue_id, QueueState.HOLD)
        assert 0.25 <= time.monotonic() - started < 3
        assert store.get(queue_id).state is QueueState.HOLD
        assert lock_is_free()  # the descriptor the wait took it on was closed

    with QueueStore(queue_dir, busy_timeout=0.2) as store:
        holder = os.open(queue_dir / "queue.lock", os.O_RDWR)
        fcntl.flock(holder, fcntl.LOCK_EX)
        try:
            with pytest.raises(QueueError, match="not obtained within 0.2s"):
                store.move(queue_id, QueueState.INCOMING)
        finally:
            fcntl.flock(holder, fcntl.LOCK_UN)
            os.close(holder)
        deadline = time.monotonic() + 5
        while not lock_is_free() and time.monotonic() < deadline:  # the given-up waiter lets go
            time.sleep(0.01)
        assert lock_is_free()
        store.move(queue_id, QueueState.INCOMING)  # and the next write is not disturbed by it
        assert store.get(queue_id).state is QueueState.INCOMING
        assert lock_is_free()


def test_a_writer_lock_held_forever_answers_the_servers_messages_after_busy_timeout(queue_dir: Path) -> None:
    # The SMTP server's path (submit_nowait from the event loop): the committer blocks on the
    # lock, the loop answers QueueError (451) once busy_timeout has passed, and what it answered
    # is never committed later, when the lock comes free.
    import fcntl

    with QueueStore(queue_dir, busy_timeout=0.5) as store:
        holder = os.open(queue_dir / "queue.lock", os.O_RDWR)
        fcntl.flock(holder, fcntl.LOCK_EX)

        async def scenario() -> list[object]:
            loop = asyncio.get_running_loop()
            outcomes: list[object] = []
            finished = asyncio.Event()

            def done(queue_id: str, error: BaseException | None) -> None:
                outcomes.append(error or queue_id)
                if len(outcomes) == 3:
                    finished.set()

            for i in range(3):
                store.submit_nowait(ENVELOPE, b"%d" % i, done)
            started = loop.time()
            await asyncio.wait_for(finished.wait(), 5)
            assert loop.time() - started >= 0.5
            return outcomes

        try:
            outcomes = asyncio.run(scenario())
        finally:
            fcntl.flock(holder, fcntl.LOCK_UN)
            os.close(holder)
        assert all(isinstance(o, QueueError) and "queue lock" in str(o) for o in outcomes), outcomes
        queue_id = store.submit_sync(ENVELOPE, SMALL)  # released: the next batch commits
        assert [e.id for e in store.list()] == [queue_id]


def _attempt(store: QueueStore) -> object:
    try:
        return store.submit_sync(ENVELOPE, SMALL)
    except QueueError as exc:
        return exc
