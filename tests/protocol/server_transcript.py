"""A fake shell around the pure SMTP server, and a C:/S: transcript runner.

``FakeShell`` drives a ServerConnection the way the asyncio shell does: feed
bytes, pull events until NEED_DATA/PAUSED, decide, flush.  By default it
accepts everything and answers a message with ``250 2.0.0 Ok: queued as
TEST``; ``decide`` can return a Reply to answer differently (a 4xx/5xx reply
rejects).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from smarthost.smtp.replies import Reply
from smarthost.smtp.server import (
    NEED_DATA,
    PAUSED,
    DataCommand,
    Helo,
    MailFrom,
    MessageReceived,
    RcptTo,
    ServerConnection,
    ServerSettings,
    Vrfy,
)

QUEUED = Reply(250, "2.0.0", "Ok: queued as TEST")
DECISIONS = (Helo, MailFrom, RcptTo, DataCommand, MessageReceived, Vrfy)


def settings(**overrides) -> ServerSettings:
    values = dict(hostname="mx.example.com", banner="mx.example.com ESMTP smarthost")
    values.update(overrides)
    return ServerSettings(**values)


def default_decide(event) -> Reply | None:
    return QUEUED if isinstance(event, MessageReceived) else None


@dataclass
class FakeShell:
    settings: ServerSettings = field(default_factory=settings)
    tls_active: bool = False
    greet: bool = True
    decide: Callable[[object], Reply | None] = default_decide
    events: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.conn = ServerConnection(self.settings, tls_active=self.tls_active)
        if self.greet:
            self.conn.greet()
        self.greeting = self.conn.data_to_send()

    @property
    def messages(self) -> list[bytes]:
        return [e.data for e in self.events if isinstance(e, MessageReceived)]

    def of_type(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    def send(self, data: bytes) -> bytes:
        """Feed ``data`` (b"" = EOF), process everything, return what the server wrote."""
        self.conn.receive_data(data)
        return self.drain()

    def drain(self) -> bytes:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA or event is PAUSED:
                return self.conn.data_to_send()
            self.events.append(event)
            if isinstance(event, DECISIONS):
                reply = self.decide(event)
                if reply is not None and reply.is_error:
                    self.conn.reject(reply)
                else:
                    self.conn.accept(reply)


def transcript(script: str, shell: FakeShell | None = None) -> FakeShell:
    """Run a script of ``C: line`` / ``S: line`` lines and assert the exact server output.

    Leading indentation is ignored.  Consecutive ``C:`` lines go out in one write (a pipelined group); each run
    of ``S:`` lines is compared with everything the server wrote since the
    previous one.  ``C: <EOF>`` closes the client side.
    """
    shell = shell or FakeShell()
    written, shell.greeting = shell.greeting, b""
    outgoing: list[bytes] = []
    expected: list[str] = []

    def flush_client() -> None:
        nonlocal written
        if outgoing:
            for chunk in outgoing:
                written += shell.send(chunk)
            outgoing.clear()

    def check_server() -> None:
        nonlocal written
        if expected:
            want = "".join(line + "\r\n" for line in expected)
            assert written == want.encode("utf-8")
            written = b""
            expected.clear()

    for line in script.splitlines():
        line = line.lstrip()
        if not line:
            continue
        kind, text = line[:2], line[3:]
        if kind == "C:":
            check_server()
            if text == "<EOF>":
                flush_client()
                outgoing.append(b"")
            elif outgoing and outgoing[-1] != b"":
                outgoing[-1] += text.encode("utf-8") + b"\r\n"
            else:
                outgoing.append(text.encode("utf-8") + b"\r\n")
        elif kind == "S:":
            flush_client()
            expected.append(text)
        else:
            raise ValueError(f"bad transcript line: {line!r}")
    flush_client()
    check_server()
    assert written == b"", f"unexpected server output: {written!r}"
    return shell
