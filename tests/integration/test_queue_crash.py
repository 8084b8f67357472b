"""kill -9 during load: every id a submitter was given must survive, byte for byte.

A child process submits messages from several asyncio tasks (as an SMTP worker
would) and prints each queue id only after submit() has returned, i.e. when it
would have answered 250. The parent SIGKILLs it mid-load, reopens the queue and
checks every printed id. SIGKILL loses the process, not the kernel's page
cache, so this tests the store's own ordering (body file, then transaction,
then the answer) and SQLite's recovery, not the disk's honesty about fsync.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from smarthost.queue import QueueState, QueueStore

THRESHOLD = 4096

CHILD = r"""
import asyncio, sys
from smarthost.queue import Envelope, QueueStore, Recipient

def body(round_no, i):
    line = b"round %d message %d\r\n" % (round_no, i)
    return line * (400 if i % 5 == 0 else i % 7 + 1)  # every fifth one is a large body file

async def main(directory, round_no):
    store = QueueStore(directory, large_body_threshold=THRESHOLD)
    counter = iter(range(100_000))

    async def session():
        for i in counter:
            envelope = Envelope("s%d@example.org" % i, (Recipient("r@example.com"),))
            queue_id = await store.submit(envelope, body(round_no, i))
            sys.stdout.write("%s %d\n" % (queue_id, i))
            sys.stdout.flush()

    await asyncio.gather(*(session() for _ in range(8)))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
""".replace("THRESHOLD", str(THRESHOLD))


def body(round_no: int, i: int) -> bytes:
    line = b"round %d message %d\r\n" % (round_no, i)
    return line * (400 if i % 5 == 0 else i % 7 + 1)


def acknowledged(lines: list[bytes]) -> dict[str, int]:
    acked = {}
    for line in lines:
        if line.endswith(b"\n"):  # the last line may have been cut by the kill
            queue_id, index = line.split()
            acked[queue_id.decode()] = int(index)
    return acked


def kill_mid_load(queue_dir: Path, round_no: int, kill_after: int) -> dict[str, int]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(queue_dir), str(round_no)],
        stdout=subprocess.PIPE,
    )
    lines = []
    try:
        while len(lines) < kill_after:
            line = child.stdout.readline()
            if not line:
                break
            lines.append(line)
    finally:
        os.kill(child.pid, signal.SIGKILL)
    rest, _ = child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL, "the child stopped before it was killed"
    lines.extend(rest.splitlines(keepends=True))
    return acknowledged(lines)


def test_sigkill_mid_load_loses_no_acknowledged_message(tmp_path: Path) -> None:
    queue_dir = tmp_path / "queue"
    survivors: dict[str, tuple[int, int]] = {}
    for round_no, kill_after in enumerate((50, 400, 1500)):
        acked = kill_mid_load(queue_dir, round_no, kill_after)
        assert len(acked) >= kill_after
        survivors.update({q: (round_no, i) for q, i in acked.items()})

        with QueueStore(queue_dir, large_body_threshold=THRESHOLD) as store:
            entries = {e.id: e for e in store.list()}
            for queue_id, (r, i) in survivors.items():
                assert queue_id in entries, f"acknowledged {queue_id} is lost"
                assert entries[queue_id].envelope.sender == f"s{i}@example.org"
                assert store.read_body(queue_id) == body(r, i)
            # What was committed but not yet acknowledged is whole too.
            for entry in entries.values():
                assert entry.state is QueueState.INCOMING
                store.read_body(entry.id)
            assert store.count(QueueState.CORRUPT) == 0
