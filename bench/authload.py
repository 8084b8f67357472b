"""Load client for authenticated submission (bench/auth.py runs it as its own process).

``smtp-source`` cannot authenticate, so this is a small asyncio client on the standard library
only (``asyncio`` streams and ``ssl``). Each of ``clients`` concurrent clients repeats a session
until the run's messages are used up:

    connect, 220, EHLO, STARTTLS (RFC 3207), TLS handshake verifying the server's certificate,
    EHLO again, AUTH PLAIN with an initial response (RFC 4954, RFC 4616), 235,
    then ``per_conn`` messages: MAIL FROM, RCPT TO and DATA sent together (PIPELINING,
    RFC 2920), 250 250 354, the message and ".", 250; then QUIT.

It measures, per message, the time from when the client started on it until its ``250`` (for
the first message of a session this includes connecting, TLS and AUTH: what a submitting
program waits), per session the set-up time (connect until ``235``), the run's wall time, and
its own CPU time (user + system, from getrusage). No TLS session resumption: every connection
does a full handshake.

Input: one JSON object on stdin (host, port, clients, messages, per_conn, size, users as
``[[login, password], ...]``, cafile, server_name, sender, recipient; ``warmup: true`` makes
each user authenticate once, one after another, and send nothing). Output: one JSON object on
stdout. Exit status 0 even when some sessions failed: the caller reads ``errors``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import resource
import ssl
import statistics
import sys
import time

REPLY_TIMEOUT = 60.0
MAX_ERRORS_KEPT = 5


class SMTPError(Exception):
    pass


class Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def reply(self, expected: int) -> str:
        """Read one (possibly multi-line) reply; SMTPError unless its code is ``expected``."""
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), REPLY_TIMEOUT)
            if not line.endswith(b"\n"):
                raise SMTPError(f"connection closed while waiting for {expected}")
            lines.append(line.decode("ascii", "replace").rstrip())
            if line[3:4] != b"-":
                break
        if not lines[-1][:3].isdigit() or int(lines[-1][:3]) != expected:
            raise SMTPError(f"expected {expected}, got {' / '.join(lines)!r}")
        return lines[-1]

    async def command(self, line: bytes, expected: int) -> str:
        self.writer.write(line)
        return await self.reply(expected)


def make_message(sender: str, recipient: str, size: int) -> bytes:
    """Headers and a body of 70-character lines, about ``size`` bytes, dot-stuffing not needed."""
    head = (f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: authenticated submission benchmark\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n").encode()
    line = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ01234567\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body + b".\r\n"


def plain_response(login: str, password: str) -> bytes:
    return base64.b64encode(b"\0" + login.encode() + b"\0" + password.encode())


class Load:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.remaining = spec.get("messages", 0)
        self.ok = 0
        self.errors: list[str] = []
        self.error_count = 0
        self.latencies: list[float] = []
        self.transactions: list[float] = []
        self.setups: list[float] = []
        self.tls: str = ""
        self.tls_context = ssl.create_default_context(cafile=spec["cafile"])
        self.message = make_message(spec["sender"], spec["recipient"], spec["size"])
        self.envelope = (f"MAIL FROM:<{spec['sender']}>\r\nRCPT TO:<{spec['recipient']}>\r\nDATA\r\n").encode()

    def error(self, text: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(text)

    async def open_session(self, login: str, password: str) -> Session:
        spec = self.spec
        reader, writer = await asyncio.open_connection(spec["host"], spec["port"])
        s = Session(reader, writer)
        await s.reply(220)
        await s.command(b"EHLO client.bench.example\r\n", 250)
        await s.command(b"STARTTLS\r\n", 220)
        await writer.start_tls(self.tls_context, server_hostname=spec["server_name"])
        if not self.tls:
            obj = writer.get_extra_info("ssl_object")
            self.tls = f"{obj.version()} {obj.cipher()[0]}"
        await s.command(b"EHLO client.bench.example\r\n", 250)
        await s.command(b"AUTH PLAIN " + plain_response(login, password) + b"\r\n", 235)
        return s

    async def session(self, count: int, login: str, password: str) -> None:
        start = time.perf_counter()
        s = None
        try:
            s = await self.open_session(login, password)
            self.setups.append(time.perf_counter() - start)
            for _ in range(count):
                began = time.perf_counter()
                s.writer.write(self.envelope)
                await s.reply(250)
                await s.reply(250)
                await s.reply(354)
                s.writer.write(self.message)
                await s.reply(250)
                done = time.perf_counter()
                self.ok += 1
                count -= 1
                self.transactions.append(done - began)
                self.latencies.append(done - start)
                start = done  # the next message waits from here
            await s.command(b"QUIT\r\n", 221)
        except (OSError, SMTPError, asyncio.TimeoutError, ssl.SSLError) as e:
            for _ in range(count):
                self.error(f"{e.__class__.__name__}: {e}")
        finally:
            if s is not None:
                s.writer.close()
                try:
                    await s.writer.wait_closed()
                except (OSError, ssl.SSLError):
                    pass

    async def client(self, index: int) -> None:
        users = self.spec["users"]
        login, password = users[index % len(users)]
        while self.remaining > 0:
            count = min(self.spec["per_conn"], self.remaining)
            self.remaining -= count
            await self.session(count, login, password)

    async def run(self) -> dict:
        cpu_before = _cpu_seconds()
        start = time.perf_counter()
        await asyncio.gather(*(self.client(i) for i in range(self.spec["clients"])))
        wall = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu_before
        return {
            "ok": self.ok,
            "error_count": self.error_count,
            "errors": self.errors,
            "wall_s": wall,
            "msgs_per_s": self.ok / wall if wall else 0.0,
            "client_cpu_s": cpu,
            "sessions": len(self.setups),
            "tls": self.tls,
            "latency_ms": percentiles(self.latencies),
            "transaction_ms": percentiles(self.transactions),
            "setup_ms": percentiles(self.setups),
        }

    async def warmup(self) -> dict:
        """Each user authenticates once (fills the auth daemons' credential caches)."""
        for login, password in self.spec["users"]:
            try:
                s = await self.open_session(login, password)
                await s.command(b"QUIT\r\n", 221)
                s.writer.close()
            except (OSError, SMTPError, asyncio.TimeoutError, ssl.SSLError) as e:
                self.error(f"{login}: {e.__class__.__name__}: {e}")
        return {"error_count": self.error_count, "errors": self.errors}


def percentiles(seconds: list[float]) -> dict:
    """Median, 99th percentile (nearest rank) and maximum, in milliseconds."""
    if not seconds:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    ms = sorted(x * 1e3 for x in seconds)
    return {"p50": statistics.median(ms), "p99": ms[math.ceil(0.99 * len(ms)) - 1], "max": ms[-1]}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    spec = json.load(sys.stdin)
    load = Load(spec)
    result = asyncio.run(load.warmup() if spec.get("warmup") else load.run())
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
