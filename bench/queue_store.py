"""Benchmark the queue store: CPU per message and messages/s at several concurrencies.

    .venv/bin/python bench/queue_store.py [--messages 4000] [--size 4096] [--dir /var/tmp]
    .venv/bin/python bench/queue_store.py --schema   # body in the row vs a separate table

CPU is the whole process (event loop + committer thread), from
time.process_time(); it includes building the envelope and the asyncio
tasks, i.e. what an SMTP worker pays for its queue.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from smarthost.queue import Envelope, QueueStore, Recipient

try:
    import uvloop
except ImportError:  # plain asyncio where uvloop is missing
    uvloop = None

ENVELOPE = Envelope(
    "sender@example.org",
    (Recipient("rcpt@example.com"),),
    client_address="127.0.0.1",
    client_name="localhost",
    helo="client.example.org",
)


async def _load(store: QueueStore, concurrency: int, messages: int, body: bytes) -> None:
    remaining = messages

    async def client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await store.submit(ENVELOPE, body)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(client())


def run_store(base: Path, concurrency: int, messages: int, size: int) -> None:
    directory = base / f"queue-c{concurrency}"
    store = QueueStore(directory)
    body = os.urandom(size // 2).hex().encode()[:size]
    runner = uvloop.run if uvloop else asyncio.run
    cpu, wall = time.process_time(), time.perf_counter()
    runner(_load(store, concurrency, messages, body))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    stats = store.stats
    store.close()
    shutil.rmtree(directory)
    print(
        f"concurrency {concurrency:4d}: {messages / wall:8.0f} msgs/s  "
        f"{cpu / messages * 1e6:6.1f} µs CPU/msg  "
        f"mean batch {stats.messages / stats.commits:5.1f}  largest {stats.largest_batch}"
    )


def run_schema(base: Path, messages: int, size: int, batch: int = 16) -> None:
    """Raw SQLite, synchronous=FULL: the body in the messages row, or in its own table."""
    body = os.urandom(size)
    envelope = '{"client_address":"127.0.0.1","client_name":"localhost","helo":"x"}'
    for variant in ("in-row", "table"):
        path = base / f"schema-{variant}.db"
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        extra = ", body BLOB" if variant == "in-row" else ""
        conn.execute(
            "CREATE TABLE messages (id TEXT PRIMARY KEY, state TEXT, arrival REAL, size INT,"
            f" sender TEXT, envelope TEXT, next_attempt REAL, attempts INT{extra})"
        )
        conn.execute("CREATE INDEX due ON messages (state, next_attempt)")
        conn.execute("CREATE TABLE bodies (id TEXT PRIMARY KEY, data BLOB)")
        ids = [f"{i:015d}" for i in range(messages)]
        chunks = [ids[i : i + batch] for i in range(0, messages, batch)]

        def timed(statements) -> float:
            start = time.process_time()
            for chunk in chunks:
                conn.execute("BEGIN IMMEDIATE")
                for sql, make in statements:
                    conn.executemany(sql, [make(i) for i in chunk])
                conn.execute("COMMIT")
            return (time.process_time() - start) / messages * 1e6

        row = lambda i: (i, "incoming", 1.0, size, "a@b", envelope, 0.0, 0)  # noqa: E731
        if variant == "in-row":
            insert = timed([("INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?)", lambda i: row(i) + (body,))])
        else:
            insert = timed(
                [
                    ("INSERT INTO messages VALUES (?,?,?,?,?,?,?,?)", row),
                    ("INSERT INTO bodies VALUES (?,?)", lambda i: (i, body)),
                ]
            )
        update = timed(
            [("UPDATE messages SET state='active', attempts=attempts+1 WHERE id=?", lambda i: (i,))]
        )
        deletes = [("DELETE FROM messages WHERE id=?", lambda i: (i,))]
        if variant == "table":
            deletes.append(("DELETE FROM bodies WHERE id=?", lambda i: (i,)))
        delete = timed(deletes)
        conn.close()
        print(
            f"body {variant:6s}: insert {insert:5.1f}  state update {update:5.1f}  "
            f"delete {delete:5.1f}  µs CPU/msg (batches of {batch}, {size}-byte bodies)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--dir", default=None, help="where to create the queues (a real disk)")
    parser.add_argument("--schema", action="store_true", help="compare body placements")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        if args.schema:
            run_schema(Path(tmp), args.messages, args.size)
            return
        for concurrency in (1, 16, 100):
            run_store(Path(tmp), concurrency, args.messages, args.size)


if __name__ == "__main__":
    main()
