"""CPU of SMTP sessions in the server's Python code, without sockets or the kernel.

Drives :class:`smarthost.inbound.server.Session` with a fake transport through a whole session
(greeting, EHLO, MAIL, RCPT, DATA with a 4 KB body, QUIT) and reports the main thread's CPU
per session, excluding the wait for the queue commit. The queue is a real store in a temporary
directory (fsync off: the committer thread is not what this measures). Use it to see what a
change to the SMTP core or the shell costs; whole-system numbers come from ``accept.py``.

``--submission`` measures the shape of ``auth.py`` instead, with its configuration: one session that said EHLO over
(implicit) TLS and authenticated with AUTH PLAIN (the password check answered in-process: the
auth daemon's round trip is not measured), then messages as ``bench/authload.c`` sends them
(MAIL, RCPT and DATA in one write, then the 4 KB body), each through the restrictions, the Received
header, the store's preparation and the commit's callback (called directly), per message.

    .venv/bin/python bench/session_cpu.py [--sessions 3000] [--profile]
    .venv/bin/python bench/session_cpu.py --submission [--messages 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import pstats
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from auth import smtpd_conf
from common import make_tls_files, smarthost_auth_server

from smarthost.authd.client import AuthResult, AuthStatus
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


class FakeTLSObject:
    def cipher(self):
        return ("TLS_AES_256_GCM_SHA384", "TLSv1.3", 256)

    def version(self) -> str:
        return "TLSv1.3"

    def getpeercert(self, binary_form: bool = False):
        return None


class FakeTLSTransport(FakeTransport):
    def get_extra_info(self, key: str, default=None):
        return FakeTLSObject() if key == "ssl_object" else super().get_extra_info(key, default)


SUBMISSION_COMMANDS = b"MAIL FROM:<submitter@example.test>\r\nRCPT TO:<rcpt@remote.example>\r\nDATA\r\n"
SUBMISSION_BODY = b"Subject: x\r\n\r\n" + (b"y" * 76 + b"\r\n") * 52 + b".\r\n"


async def run_submission(directory: Path, messages: int) -> float:
    # auth.py's own smarthost configuration; the listener is told TLS is up from the start
    # (implicit TLS), as the fake transport cannot do a STARTTLS handshake.
    instance = smarthost_auth_server(directory / "smarthost", make_tls_files(directory / "tls"),
                                     smtpd_conf("saslauthd", saslauthd_path=str(directory / "mux")), {})
    listener = replace(build_runtime(load(instance.config_dir)).bindings[0][0], wrappermode=True)

    async def password_ok(*_args) -> AuthResult:
        return AuthResult(AuthStatus.OK)

    listener.passwords.check_password = password_ok
    store = QueueStore(instance.queue_dir, synchronous=False)
    loop = asyncio.get_running_loop()
    maillog = MailLog(str(instance.maillog))
    maillog.attach(loop)
    worker = Worker(store, maillog, loop, ClientCounts().bind(0))
    worker.wake_queue_manager = lambda: None
    prepare = store._prepare
    committed = []

    def submit(envelope, body, done, *, queue_id=None):
        prepare(envelope, body, queue_id)  # the rows, as for a real commit
        committed.append((done, queue_id))
        return queue_id

    store.submit_nowait = submit
    try:
        session = Session(worker, listener)
        session.connection_made(FakeTLSTransport())
        session.data_received(b"EHLO client.example\r\n")
        session.data_received(b"AUTH PLAIN " + base64.b64encode(b"\0user@example.test\0secret") + b"\r\n")
        while session._busy:
            await asyncio.sleep(0)
        assert session.facts.sasl_username, "AUTH did not succeed"
        start = time.thread_time()
        for i in range(messages):
            session.data_received(SUBMISSION_COMMANDS)
            session.data_received(SUBMISSION_BODY)
            done, queue_id = committed.pop()
            done(queue_id, None)
            if i % 200 == 199:
                await asyncio.sleep(0)  # the mail log's write, once per loop iteration as in a worker
        return (time.thread_time() - start) / messages
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print the top functions by own time")
    parser.add_argument("--submission", action="store_true",
                        help="an authenticated session's messages, as auth.py sends them (CPU per message)")
    parser.add_argument("--messages", type=int, default=5000, help="messages per run with --submission")
    args = parser.parse_args()
    results = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            profiler = cProfile.Profile() if args.profile else None
            if profiler:
                profiler.enable()
            if args.submission:
                results.append(asyncio.run(run_submission(Path(tmp), args.messages)))
            else:
                results.append(asyncio.run(run(Path(tmp), args.sessions)))
            if profiler:
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    what = "message" if args.submission else "session"
    print(f"main-thread CPU per {what}: min {min(results) * 1e6:.1f} us, median {statistics.median(results) * 1e6:.1f} us "
          f"(runs: {', '.join(f'{r * 1e6:.1f}' for r in results)})")


if __name__ == "__main__":
    main()
