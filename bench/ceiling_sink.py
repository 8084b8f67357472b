"""The ceiling of the accept path on this machine: the least a durable SMTP server in Python
can do per message, to compare smarthost and Postfix with.

Not a mail server. It answers every command with a canned reply and checks nothing (no
syntax, no restrictions, no log, no envelope kept); it only reads each message's data up to
``CRLF.CRLF``. With ``--sync`` (the default) it answers ``250`` only after the message is on
stable storage, the way smarthost does: per worker process one thread appends every batch of
messages that ended meanwhile to a preallocated journal file with one ``pwrite`` and one
``fdatasync`` (the cheapest durable write there is: no file per message, no database, no
size change to sync). With ``--no-sync`` nothing is stored (the round trips only).

With ``--tls-cert``, ``--tls-key`` and ``--users`` (``login<TAB>password`` lines) it offers
STARTTLS (RFC 3207) and, after it, AUTH PLAIN with an initial response (RFC 4954, RFC 4616),
checked against those users in memory: the least an authenticated submission server can do.

What it costs per message is what the machine charges for the round trips, the kernel's
loopback TCP, the event loop and (with ``--sync``) the disk's flush; everything a real server
adds (parsing, restrictions, logging, a queue that can be read back) comes on top. So the ratio
of this sink to Postfix is the highest ratio smarthost's design can reach here.

Used by ``bench/accept.py`` (targets ``ceiling`` and ``ceiling-nosync``) and ``bench/auth.py``
(target ``ceiling``); by hand:
``.venv/bin/python bench/ceiling_sink.py --port 2600 --dir /var/tmp/sink`` (``--workers 2``).
It counts the messages it has stored in ``DIR/counts`` (one 8-byte little-endian counter per
worker), which is how the benchmark checks that none was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hmac
import os
import queue
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
from pathlib import Path

import uvloop

JOURNAL_SIZE = 256 * 1024 * 1024  # per worker; written round and round
MAX_LINE = 4096  # a command line longer than this ends the session (bounded, like a real server)
MAX_DATA = 16 * 1024 * 1024


def _ehlo(extension: bytes) -> bytes:
    return b"250-sink.bench.example\r\n250-PIPELINING\r\n250-" + extension + b"\r\n250 SIZE 10240000\r\n"


EHLO_REPLY, EHLO_STARTTLS, EHLO_AUTH = _ehlo(b"8BITMIME"), _ehlo(b"STARTTLS"), _ehlo(b"AUTH PLAIN")
OK = b"250 2.0.0 Ok\r\n"
QUEUED = b"250 2.0.0 Ok: queued\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"


class Journal:
    """One worker's committer thread: a batch, one pwrite, one fdatasync, then the replies."""

    def __init__(self, directory: Path, index: int, sync: bool) -> None:
        self.sync = sync
        self.index = index
        self.count = 0
        self.offset = 0
        self.fd = os.open(directory / f"journal.{index}", os.O_RDWR | os.O_CREAT, 0o600)
        if sync:
            os.posix_fallocate(self.fd, 0, JOURNAL_SIZE)
            os.fsync(self.fd)  # the allocation once, so that a batch's sync flushes data only
        self.counts = os.open(directory / "counts", os.O_RDWR)
        self.loop = asyncio.get_running_loop()
        self.staged: list[tuple[bytes, asyncio.Transport]] = []
        self.pending: queue.SimpleQueue[list[tuple[bytes, asyncio.Transport]]] = queue.SimpleQueue()
        threading.Thread(target=self._run, daemon=True).start()

    def submit(self, body: bytes, transport: asyncio.Transport) -> None:
        # As smarthost's store does: what ends in one loop iteration goes over together.
        self.staged.append((body, transport))
        if len(self.staged) == 1:
            self.loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        items, self.staged = self.staged, []
        if self.sync:
            self.pending.put(items)
        else:
            self._done(items)

    def _run(self) -> None:
        while True:
            batch = self.pending.get()
            while True:
                try:
                    batch.extend(self.pending.get_nowait())
                except queue.Empty:
                    break
            data = b"".join(body for body, _ in batch)
            if self.offset + len(data) > JOURNAL_SIZE:
                self.offset = 0
            os.pwrite(self.fd, data, self.offset)
            self.offset += len(data)
            os.fdatasync(self.fd)
            self.loop.call_soon_threadsafe(self._done, batch)

    def _done(self, batch: list[tuple[bytes, asyncio.Transport]]) -> None:
        self.count += len(batch)
        os.pwrite(self.counts, struct.pack("<Q", self.count), 8 * self.index)
        for _, transport in batch:
            if not transport.is_closing():
                transport.write(QUEUED)


class Session(asyncio.Protocol):
    def __init__(self, journal: Journal, tls: ssl.SSLContext | None, users: dict[bytes, bytes]) -> None:
        self.journal = journal
        self.tls = tls
        self.users = users
        self.buffer = b""
        self.in_data = False
        self.secure = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.write(b"220 sink.bench.example ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        replies = []
        while buffer:
            if self.in_data:
                # RFC 5321 §4.1.1.4: the data ends at CRLF.CRLF (the 354 came after a CRLF).
                end = buffer.find(b"\r\n.\r\n") if not buffer.startswith(b".\r\n") else -2
                if end == -1:
                    if len(buffer) > MAX_DATA:
                        self.transport.close()
                        return
                    break
                body, buffer = buffer[: end + 2], buffer[end + 5:]
                self.in_data = False
                self.journal.submit(body, self.transport)
                continue
            line_end = buffer.find(b"\r\n")
            if line_end == -1:
                if len(buffer) > MAX_LINE:
                    self.transport.close()
                    return
                break
            line, buffer = buffer[:line_end], buffer[line_end + 2:]
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                replies.append(EHLO_REPLY if self.tls is None else EHLO_AUTH if self.secure else EHLO_STARTTLS)
            elif verb == b"STAR" and self.tls is not None and not self.secure:
                replies.append(b"220 2.0.0 Ready to start TLS\r\n")
                self.transport.write(b"".join(replies))
                self.buffer = b""  # RFC 3207 §4.2: nothing sent before the handshake counts
                asyncio.ensure_future(self._start_tls())
                return
            elif verb == b"AUTH" and self.secure:
                replies.append(self._auth(line))
            elif verb == b"DATA":
                replies.append(GO_AHEAD)
                self.in_data = True
            elif verb == b"QUIT":
                replies.append(b"221 2.0.0 Bye\r\n")
                self.transport.write(b"".join(replies))
                self.transport.close()
                return
            else:
                replies.append(OK)
        self.buffer = buffer
        if replies:
            self.transport.write(b"".join(replies))


    async def _start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.transport = await loop.start_tls(self.transport, self, self.tls, server_side=True)
        except (OSError, ssl.SSLError):
            self.transport.close()
            return
        self.secure = True

    def _auth(self, line: bytes) -> bytes:
        # AUTH PLAIN <base64 of authzid NUL authcid NUL password> (RFC 4616 §2)
        try:
            _, mechanism, response = line.split(b" ", 2)
            _, login, password = base64.b64decode(response, validate=True).split(b"\0")
        except ValueError:
            return b"501 5.5.4 Syntax error\r\n"
        if mechanism.upper() == b"PLAIN" and hmac.compare_digest(self.users.get(login, b"\0"), password):
            return b"235 2.7.0 Authentication successful\r\n"
        return b"535 5.7.8 Error: authentication failed\r\n"


async def serve(sock: socket.socket, directory: Path, index: int, sync: bool,
                tls: ssl.SSLContext | None, users: dict[bytes, bytes]) -> None:
    journal = Journal(directory, index, sync)
    server = await asyncio.get_running_loop().create_server(lambda: Session(journal, tls, users), sock=sock)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dir", required=True, help="where the journals and the counts go")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2, as smarthost)")
    p.add_argument("--no-sync", dest="sync", action="store_false", help="store nothing")
    p.add_argument("--tls-cert", help="offer STARTTLS with this certificate chain (PEM)")
    p.add_argument("--tls-key", help="and this private key (PEM)")
    p.add_argument("--users", help="login<TAB>password lines: offer AUTH PLAIN after STARTTLS")
    args = p.parse_args(argv)
    tls = None
    users: dict[bytes, bytes] = {}
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
        if args.users:
            for entry in Path(args.users).read_bytes().splitlines():
                login, _, password = entry.partition(b"\t")
                users[login] = password
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "counts").write_bytes(bytes(8 * args.workers))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))  # loopback only
    sock.listen(1024)
    sock.setblocking(False)
    children = []
    for index in range(args.workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            uvloop.run(serve(sock, directory, index, args.sync, tls, users))
            os._exit(0)
        children.append(pid)
    signal.signal(signal.SIGTERM, lambda *_: [os.kill(pid, signal.SIGTERM) for pid in children])
    for pid in children:
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
    return 0


def stored(directory: Path) -> int:
    """How many messages the sink's workers have stored (and answered 250 for)."""
    data = (directory / "counts").read_bytes()
    return sum(struct.unpack(f"<{len(data) // 8}Q", data))


class Sink:
    """This sink as a subprocess on a free loopback port, for the benchmarks."""

    def __init__(self, directory: Path, *, sync: bool = True, workers: int | None = None,
                 tls_cert: Path | None = None, tls_key: Path | None = None, users: Path | None = None) -> None:
        from peers import free_port, wait_for_port  # tests/interop, on sys.path through bench/common

        self.dir = directory
        self.port = free_port()
        command = [sys.executable, __file__, "--port", str(self.port), "--dir", str(directory),
                   "--workers", str(workers or 2)]
        if not sync:
            command.append("--no-sync")
        if tls_cert is not None:
            command += ["--tls-cert", str(tls_cert), "--tls-key", str(tls_key)]
        if users is not None:
            command += ["--users", str(users)]
        directory.mkdir()
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        wait_for_port(self.port, alive=lambda: self.process.poll() is None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def queued(self) -> int:
        return stored(self.dir)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
