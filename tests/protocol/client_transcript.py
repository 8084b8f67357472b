"""A C:/S: transcript runner for the pure SMTP client, and small fakes.

``Wire.play(script)`` checks a script of ``S: line`` (the server sends) and
``C: line`` (the client must have written exactly this) lines.  Consecutive
``S:`` lines reach the client in one segment; consecutive ``C:`` lines are
compared with everything the client wrote since the previous check, so a
pipelined group shows up as several ``C:`` lines before any ``S:`` line.
Events are collected in ``Wire.events``.  The shell's actions (``conn.mail``
...) happen in the test between ``play`` calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from smarthost.smtp.client import NEED_DATA, ClientConnection, ClientSettings

GREETING = "S: 220 mx.example.com ESMTP\n"
EHLO_REPLY = """
S: 250-mx.example.com
S: 250-PIPELINING
S: 250-SIZE 1000000
S: 250-8BITMIME
S: 250-SMTPUTF8
S: 250-DSN
S: 250-STARTTLS
S: 250-AUTH PLAIN LOGIN
S: 250 ENHANCEDSTATUSCODES
"""


@dataclass
class Wire:
    conn: ClientConnection
    events: list = field(default_factory=list)

    def play(self, script: str) -> list:
        """Run the script; returns the events it produced."""
        start = len(self.events)
        sent: list[str] = []
        expected: list[str] = []
        for line in script.splitlines():
            line = line.strip()
            if not line:
                continue
            kind, text = line[:2], line[3:]
            if kind == "S:":
                self._check(expected)
                sent.append(text)
            elif kind == "C:":
                self._feed(sent)
                expected.append(text)
            else:
                raise ValueError(f"bad transcript line: {line!r}")
        self._feed(sent)
        self._check(expected)
        assert self.conn.data_to_send() == b"", "the client wrote more than the script says"
        return self.events[start:]

    def feed(self, data: bytes) -> list:
        start = len(self.events)
        self.conn.receive_data(data)
        self.drain()
        return self.events[start:]

    def drain(self) -> None:
        while (event := self.conn.next_event()) is not NEED_DATA:
            self.events.append(event)

    def of_type(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    def _feed(self, sent: list[str]) -> None:
        if sent:
            self.feed("".join(f"{s}\r\n" for s in sent).encode("utf-8"))
            sent.clear()

    def _check(self, expected: list[str]) -> None:
        if expected:
            want = "".join(f"{e}\r\n" for e in expected).encode("utf-8")
            assert self.conn.data_to_send() == want
            expected.clear()


def connect(settings: ClientSettings | None = None, *, tls_active: bool = False) -> Wire:
    return Wire(ClientConnection(settings, tls_active=tls_active))


def session(
    ehlo_reply: str = EHLO_REPLY, *, settings: ClientSettings | None = None, tls_active: bool = False
) -> Wire:
    """A connection past the greeting and EHLO."""
    wire = connect(settings, tls_active=tls_active)
    wire.play(GREETING)
    wire.conn.ehlo("client.example.org")
    wire.play("C: EHLO client.example.org\n" + ehlo_reply)
    wire.events.clear()
    return wire


class FakePlain:
    """RFC 4616 PLAIN, enough to test the AUTH exchange."""

    def __init__(self, username: str, password: str, *, initial: bool = True) -> None:
        self._message = f"\0{username}\0{password}".encode()
        self._initial = initial
        self.challenges: list[bytes] = []

    def start(self) -> bytes | None:
        return self._message if self._initial else None

    def step(self, challenge: bytes) -> bytes:
        self.challenges.append(challenge)
        return self._message
