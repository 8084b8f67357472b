"""CPU of one SMTP session in the server's Python code, without sockets or the kernel.

Drives :class:`smarthost.inbound.server.Session` with a fake transport through a whole session
(greeting, EHLO, MAIL, RCPT, DATA with a 4 KB body, QUIT) and reports the main thread's CPU
per session, excluding the wait for the queue commit. The queue is a real store in a temporary
directory (fsync off: the committer thread is not what this measures). Use it to see what a
change to the SMTP core or the shell costs; whole-system numbers come from ``accept.py``.

    .venv/bin/python bench/session_cpu.py [--sessions 3000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import tempfile
import time
from pathlib import Path

from smarthost.config import load
from smarthost.inbound.limits import ClientCounts
from smarthost.inbound.server import Session, Worker
from smarthost.maillog import MailLog
from smarthost.master import build_runtime
from smarthost.queue import QueueStore

BODY = b"Subject: x\r\n\r\n" + b"y" * 4000 + b"\r\n.\r\n"
COMMANDS = (b"EHLO client.example\r\n", b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.test>\r\n",
            b"DATA\r\n", BODY)


class FakeTransport:
    def __init__(self) -> None:
        self.closing = False

    def get_extra_info(self, key: str, default=None):
        return ("127.0.0.1", 40000) if key == "peername" else default

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def run(directory: Path, sessions: int) -> float:
    (directory / "main.cf").write_text(
        "myhostname = mx.example.test\nmydestination = example.test\nmynetworks = 127.0.0.0/8\n"
        f"queue_directory = {directory}/queue\nlocal_recipient_maps =\nmaillog_file = {directory}/maillog\n"
    )
    (directory / "master.cf").write_text("127.0.0.1:2999 inet n - n - - smtpd\n")
    listener = build_runtime(load(directory)).bindings[0][0]
    store = QueueStore(directory / "queue", synchronous=False)
    maillog = MailLog(str(directory / "maillog"))
    maillog.attach(asyncio.get_running_loop())  # as in a worker: one write per loop iteration
    worker = Worker(store, maillog, asyncio.get_running_loop(), ClientCounts().bind(0))
    cpu = 0.0
    try:
        for _ in range(sessions):
            start = time.thread_time()
            session = Session(worker, listener)
            session.connection_made(FakeTransport())
            for data in COMMANDS:
                session.data_received(data)
            cpu += time.thread_time() - start
            while session._busy:  # the commit: not measured
                await asyncio.sleep(0.0002)
            start = time.thread_time()
            session.data_received(b"QUIT\r\n")
            session.connection_lost(None)
            cpu += time.thread_time() - start
    finally:
        store.close()
    return cpu / sessions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print the top functions by own time")
    args = parser.parse_args()
    results = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            profiler = cProfile.Profile() if args.profile else None
            if profiler:
                profiler.enable()
            results.append(asyncio.run(run(Path(tmp), args.sessions)))
            if profiler:
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    print(f"main-thread CPU per session: median {statistics.median(results) * 1e6:.1f} us "
          f"(runs: {', '.join(f'{r * 1e6:.1f}' for r in results)})")


if __name__ == "__main__":
    main()
