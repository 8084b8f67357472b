"""The SMTP server as a pure state machine (sans-I/O, in the style of h11).

The I/O shell feeds bytes with :meth:`ServerConnection.receive_data`, pulls
events with :meth:`~ServerConnection.next_event`, answers the events that
need a decision with :meth:`~ServerConnection.accept` /
:meth:`~ServerConnection.reject`, and writes
:meth:`~ServerConnection.data_to_send` to the wire once ``next_event()``
returns ``NEED_DATA`` or ``PAUSED`` (so the replies to a pipelined group go
out together, RFC 2920 §3.2).

The core answers by itself everything that needs no policy: syntax, command
sequence, RSET/NOOP/HELP/QUIT, limits, pipelining synchronization and the
STARTTLS dance (RFC 3207 §4.2: plaintext pipelined after STARTTLS is thrown
away, never executed — CVE-2011-0411).  It asks the shell about HELO/EHLO,
MAIL, RCPT, DATA, the received message and (when enabled) VRFY.

Event types and when they come:

=====================  =========================================================
``Helo``               decision; default accept reply: the EHLO capabilities
``MailFrom``           decision; default ``250 2.1.0 Ok``
``RcptTo``             decision; default ``250 2.1.5 Ok``
``DataCommand``        decision; default ``354 End data with <CR><LF>.<CR><LF>``
``MessageReceived``    decision; the shell passes ``250 2.0.0 Ok: queued as ID``
``Vrfy``               decision (only when ``vrfy_enabled``)
``StartTLS``           220 queued; flush, handshake, then ``tls_established()``
``Quit``               221 queued; flush and close
``Closing``            a final 421/554 is queued (also at EOF); flush and close
``ProtocolError``      information: the core refused a command by itself
=====================  =========================================================

Choices made here:

* ``forbid_unauth_pipelining`` (Postfix 3.9): a command that must end a
  pipelined group (EHLO, HELO, DATA, VRFY, EXPN, TURN, QUIT, NOOP, STARTTLS),
  or any command or end-of-data when the client did not say EHLO, followed by
  input the client sent before seeing the reply, gets ``554 5.5.0`` and the
  session ends.  Input before the greeting is treated the same way.
* Every 4xx/5xx reply counts towards ``hard_error_limit``; the reply that
  reaches the limit is sent, then ``421`` and close (as Postfix does).  The
  exception is ``452 4.5.3 too many recipients``: RFC 5321 §4.5.3.1.10 lets
  the client send the rest later, and a long list must not end the session.
* Addresses with bad syntax get ``501 5.1.7`` (sender) / ``501 5.1.3``
  (recipient), the RFC 3463 codes for exactly that.
* DSN parameters (NOTIFY, ORCPT, RET, ENVID) are parsed and kept, but DSN is
  not advertised until the queue can honour them.
* QUIT, NOOP and HELP accept and ignore arguments; RSET, DATA and STARTTLS
  with arguments get ``501``.
"""

from __future__ import annotations

import enum
import re
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Union

from . import replies
from .address import Address
from .commands import CommandError, MailParams, RcptParams, parse_mail, parse_rcpt, split_command
from .data import BARE_NEWLINE_MODES, DataFramer, unstuff
from .replies import Reply


class State(enum.Enum):
    CONNECTED = "connected"  # greet() not called yet
    AWAIT_HELO = "await-helo"  # greeting sent, no HELO/EHLO yet
    GREETED = "greeted"  # HELO/EHLO done, no mail transaction
    MAIL = "mail"  # MAIL accepted, no recipient accepted yet
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # reading the message body
    END_OF_DATA = "end-of-data"  # message complete, waiting for the shell's decision
    TLS_HANDSHAKE = "tls-handshake"  # 220 to STARTTLS queued, waiting for tls_established()
    CLOSED = "closed"

    # Members are singletons compared by identity; hash them in C (the
    # state is looked up in sets and dicts for every command).
    __hash__ = object.__hash__


class Signal(enum.Enum):
    NEED_DATA = "need-data"  # feed more bytes
    PAUSED = "paused"  # waiting for accept()/reject() of the last event


NEED_DATA = Signal.NEED_DATA
PAUSED = Signal.PAUSED


@dataclass(frozen=True, slots=True)
class ServerSettings:
    hostname: str
    banner: str = ""  # text after "220 "; defaults to "<hostname> ESMTP"
    max_message_size: int = 10240000  # 0 = unlimited
    max_recipients: int = 1000
    soft_error_limit: int = 10  # the shell may slow down above this (see error_count)
    hard_error_limit: int = 20
    bare_newline: str = "normalize"  # "normalize" | "reject" | "allow", see data.py
    forbid_unauth_pipelining: bool = True
    starttls_available: bool = True
    tls_required: bool = False
    vrfy_enabled: bool = False
    max_command_line: int = 512  # RFC 5321 §4.5.3.1.4, CRLF included
    max_pending_input: int = 1 << 20  # unread command input held; only reached when the shell keeps feeding while PAUSED
    extra_capabilities: tuple[str, ...] = ()  # EHLO lines added after STARTTLS, e.g. "AUTH PLAIN"

    def __post_init__(self) -> None:
        if self.bare_newline not in BARE_NEWLINE_MODES:
            raise ValueError(f"bare_newline must be one of {BARE_NEWLINE_MODES}")
        if self.max_command_line < 64:
            raise ValueError("max_command_line must be at least 64")
        if not self.banner:
            object.__setattr__(self, "banner", f"{self.hostname} ESMTP")


@dataclass(slots=True)
class Session:
    """Facts about the session so far.  Owned by the core: read, never modify."""

    helo: str | None = None
    esmtp: bool = False
    tls_active: bool = False
    sender: Address | None = None
    mail_params: MailParams | None = None
    recipients: list[RcptTo] = field(default_factory=list)


# Events ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Helo:
    name: str
    extended: bool


@dataclass(frozen=True, slots=True)
class MailFrom:
    address: Address
    params: MailParams


@dataclass(frozen=True, slots=True)
class RcptTo:
    address: Address
    params: RcptParams


@dataclass(frozen=True, slots=True)
class DataCommand:
    pass


@dataclass(frozen=True, slots=True)
class MessageReceived:
    data: bytes  # unstuffed, CRLF line endings, ready to store

    def __repr__(self) -> str:
        return f"MessageReceived(<{len(self.data)} bytes>)"


@dataclass(frozen=True, slots=True)
class StartTLS:
    pass


@dataclass(frozen=True, slots=True)
class Vrfy:
    argument: str


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Closing:
    reply: Reply  # already queued
    reason: str  # "eof", "too many errors", "protocol synchronization", "pre-greeting input", "too much input"
    verb: str  # the last command, as in Postfix's "lost connection after DATA"; see ServerConnection.last_verb


@dataclass(frozen=True, slots=True)
class ProtocolError:
    verb: str  # upper case; "UNKNOWN" for unrecognized input, "END-OF-MESSAGE" after DATA
    reply: Reply
    detail: str = ""


Event = Union[Helo, MailFrom, RcptTo, DataCommand, MessageReceived, StartTLS, Vrfy, Quit, Closing, ProtocolError]
Decision = Union[Helo, MailFrom, RcptTo, DataCommand, MessageReceived, Vrfy]

# The command table ----------------------------------------------------------

_COMMAND_STATES = frozenset({State.AWAIT_HELO, State.GREETED, State.MAIL, State.RCPT})


@dataclass(frozen=True, slots=True)
class _Command:
    handler: Callable[[ServerConnection, str], None]
    ends_group: bool  # RFC 2920 §3.1: must be the last command of a pipelined group
    needs_tls: bool  # refused with 530 before STARTTLS when tls_required
    refused: dict[State, Reply]  # states where the command is out of sequence (RFC 5321 §4.1.4)


_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_UTF8_VERBS = frozenset({"MAIL", "RCPT"})  # RFC 6531 §3.3: UTF-8 only in paths


class ServerConnection:
    def __init__(self, settings: ServerSettings, *, tls_active: bool = False) -> None:
        self.settings = settings
        self.state = State.CONNECTED
        self.session = Session(tls_active=tls_active)
        self.error_count = 0
        self.counters: Counter[str] = Counter()  # lower-case verb (or "unknown") -> commands received
        self.failures: Counter[str] = Counter()  # verb -> 4xx/5xx replies to it
        self.discarded_after_starttls = 0  # plaintext octets thrown away (RFC 3207 §4.2)
        # The last command seen: upper-case verb, "UNKNOWN", "CONNECT" before
        # any, "END-OF-MESSAGE" after the end of DATA.  Never client text.
        self.last_verb = "CONNECT"
        self._buf = bytearray()
        self._pos = 0  # start of unread input in _buf
        self._skipping_line = False  # discarding the rest of a too long line
        self._framer: DataFramer | None = None
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._pending: Decision | None = None
        self._late_input = False  # input arrived where the client had to wait for a reply
        self._eof = False

    # The shell's interface ------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def buffered(self) -> int:
        """Unread input held by the core (a shell may stop reading while this is large)."""
        if self._framer is not None:
            return self._framer.buffered
        return len(self._buf) - self._pos

    def greet(self) -> None:
        if self.closed:  # already closed for input sent before the greeting
            return
        self._expect_state(State.CONNECTED)
        if self.settings.forbid_unauth_pipelining and len(self._buf) > self._pos:
            # RFC 5321 §3.1: the client waits for the greeting.
            self._close(replies.SYNCHRONIZATION, "pre-greeting input")
            return
        self.state = State.AWAIT_HELO
        self._send(Reply(220, None, self.settings.banner))

    def refuse(self, reply: Reply) -> None:
        """Answer the connection with ``reply`` (421/554) instead of a greeting, and close."""
        self._expect_state(State.CONNECTED)
        self._send(reply)
        self._discard_input()
        self.state = State.CLOSED

    def receive_data(self, data: bytes | bytearray) -> None:
        """Append input; ``b""`` means the client closed its side."""
        if self.state is State.CLOSED:
            return
        if not data:
            self._eof = True
            return
        if self._pending is not None and self.settings.forbid_unauth_pipelining:
            # The client had to wait for the reply to a group-ending command
            # (or to any command without PIPELINING, RFC 2920 §3.1).
            if isinstance(self._pending, (Helo, DataCommand, Vrfy)) or not self.session.esmtp:
                self._late_input = True
        if self.state is State.DATA:
            assert self._framer is not None
            self._framer.feed(data)
        elif self.state is State.TLS_HANDSHAKE:
            self.discarded_after_starttls += len(data)
        else:
            if self._pos:
                del self._buf[: self._pos]
                self._pos = 0
            self._buf += data
            if len(self._buf) > self.settings.max_pending_input + self.settings.max_command_line:
                self._close(replies.TOO_MUCH_INPUT, "too much input")

    def next_event(self) -> Event | Signal:
        while True:
            if self._events:
                return self._events.popleft()
            if self._pending is not None:
                return PAUSED
            state = self.state
            if state in _COMMAND_STATES:
                progressed = self._read_command()
            elif state is State.DATA:
                progressed = self._read_data()
            elif state is State.CONNECTED and len(self._buf) > self._pos:
                if self.settings.forbid_unauth_pipelining:
                    self._close(replies.SYNCHRONIZATION, "pre-greeting input")
                    continue
                progressed = False  # kept until greet()
            elif state is State.CLOSED:
                return NEED_DATA
            else:
                progressed = False
            if not progressed:
                if self._eof:
                    lost = Reply(421, "4.4.2", f"{self.settings.hostname} Error: lost connection")
                    self._close(lost, "eof")
                    continue
                return NEED_DATA

    def accept(self, reply: Reply | None = None) -> None:
        """Accept the pending decision event; ``None`` sends the default reply."""
        if reply is not None and reply.is_error:
            raise ValueError("accept() needs a success reply; use reject()")
        if reply is not None and isinstance(self._pending, DataCommand) and reply.code != 354:
            raise ValueError("DATA is accepted with a 354 reply")
        event = self._take_pending()
        if event is None:
            return
        if isinstance(event, Helo):
            self.session.helo = event.name
            self.session.esmtp = event.extended
            self._reset_transaction()
            self.state = State.GREETED
            default = self._ehlo_reply() if event.extended else Reply(250, None, self.settings.hostname)
        elif isinstance(event, MailFrom):
            self.session.sender = event.address
            self.session.mail_params = event.params
            self.state = State.MAIL
            default = replies.SENDER_OK
        elif isinstance(event, RcptTo):
            self.session.recipients.append(event)
            self.state = State.RCPT
            default = replies.RECIPIENT_OK
        elif isinstance(event, DataCommand):
            self._framer = DataFramer(self.settings.max_message_size, memoryview(self._buf)[self._pos :])
            self._buf = bytearray()
            self._pos = 0
            self.state = State.DATA
            default = replies.START_DATA
        elif isinstance(event, MessageReceived):
            self._reset_transaction()
            self.state = State.GREETED
            default = replies.OK
        else:
            default = replies.CANNOT_VRFY
        self._decided(reply or default)

    def reject(self, reply: Reply) -> None:
        """Refuse the pending decision event with a 4xx/5xx reply."""
        if not reply.is_error:
            raise ValueError("reject() needs a 4xx or 5xx reply")
        event = self._take_pending()
        if event is None:
            return
        if isinstance(event, MessageReceived):
            self._reset_transaction()
            self.state = State.GREETED
        self.failures[_decision_verb(event)] += 1
        self._decided(reply)

    def tls_established(self) -> None:
        """The shell finished the TLS handshake: start a fresh session (RFC 3207 §4.2)."""
        self._expect_state(State.TLS_HANDSHAKE)
        self.session = Session(tls_active=True)
        self.state = State.AWAIT_HELO

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def capabilities(self) -> list[str]:
        """EHLO keywords (RFC 5321 §4.1.1.1); override or use extra_capabilities to add AUTH."""
        settings = self.settings
        caps = ["PIPELINING"]  # RFC 2920
        caps.append(f"SIZE {settings.max_message_size}" if settings.max_message_size else "SIZE")  # RFC 1870
        if settings.vrfy_enabled:
            caps.append("VRFY")
        if settings.starttls_available and not self.session.tls_active:
            caps.append("STARTTLS")  # RFC 3207
        caps.extend(settings.extra_capabilities)
        caps += ["ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8"]  # RFC 2034, 6152, 6531
        return caps

    # Input --------------------------------------------------------------------

    def _read_command(self) -> bool:
        """Handle one command line if a whole one is buffered; False if more input is needed."""
        buf, pos = self._buf, self._pos
        limit = self.settings.max_command_line
        lf = buf.find(b"\n", pos)
        if self._skipping_line:
            self._pos = len(buf) if lf < 0 else lf + 1
            self._skipping_line = lf < 0
            return lf >= 0
        if lf < 0:
            if len(buf) - pos <= limit:
                return False
            # RFC 5321 §4.5.3.1.4; answer now, then drop the line up to its LF.
            self._pos = len(buf)
            self._skipping_line = True
            self._line_too_long()
            return True
        self._pos = lf + 1
        if lf + 1 - pos > limit:
            self._line_too_long()
            return True
        bare_lf = lf == pos or buf[lf - 1] != 0x0D
        self._command(bytes(buf[pos : lf if bare_lf else lf - 1]), bare_lf)
        return True

    def _line_too_long(self) -> None:
        self.counters["unknown"] += 1
        self.last_verb = "UNKNOWN"
        self._error("UNKNOWN", replies.LINE_TOO_LONG)

    def _command(self, raw: bytes, bare_lf: bool) -> None:
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = ""
        verb, argument = split_command(line)
        command = _COMMANDS.get(verb)
        self.counters[verb.lower() if command else "unknown"] += 1
        self.last_verb = verb if command else "UNKNOWN"
        if (
            self.settings.forbid_unauth_pipelining
            and self._pos < len(self._buf)
            and (not self.session.esmtp or (command is not None and command.ends_group))
        ):
            self._close(replies.SYNCHRONIZATION, "protocol synchronization")
            return
        if bare_lf and self.settings.bare_newline == "reject":
            self._error(verb if command else "UNKNOWN", replies.BARE_LF)
        elif not raw or _CONTROL.search(raw):
            self._error("UNKNOWN", replies.BAD_SYNTAX)
        elif not line:
            self._error("UNKNOWN", replies.BAD_UTF8)
        elif command is None:
            self._error("UNKNOWN", replies.UNKNOWN_COMMAND)
        elif not line.isascii() and verb not in _UTF8_VERBS:
            self._error(verb, replies.BAD_SYNTAX)
        elif self.settings.tls_required and command.needs_tls and not self.session.tls_active:
            self._error(verb, replies.MUST_STARTTLS)
        elif self.state in command.refused:
            self._error(verb, command.refused[self.state])
        else:
            command.handler(self, argument)

    def _read_data(self) -> bool:
        assert self._framer is not None
        end = self._framer.find_end()
        if end is None:
            return False
        self._framer = None
        self._buf = end.rest
        self._pos = 0
        self.last_verb = "END-OF-MESSAGE"
        if end.raw is None:
            self._message_refused(replies.MESSAGE_TOO_BIG)
            return True
        body = unstuff(end.raw, self.settings.bare_newline)
        if body is None:
            self._message_refused(replies.BARE_LF)
            return True
        if self.settings.forbid_unauth_pipelining and end.rest and not self.session.esmtp:
            self._late_input = True  # without PIPELINING the client waits for the 250
        self.state = State.END_OF_DATA
        self._ask(MessageReceived(body))
        return True

    def _message_refused(self, reply: Reply) -> None:
        self._reset_transaction()
        self.state = State.GREETED
        self._error("END-OF-MESSAGE", reply)

    # Command handlers ---------------------------------------------------------

    def _ehlo(self, argument: str) -> None:
        if not argument:
            self._error("EHLO", replies.syntax("EHLO hostname"))
        else:
            self._ask(Helo(argument, True))

    def _helo(self, argument: str) -> None:
        if not argument:
            self._error("HELO", replies.syntax("HELO hostname"))
        else:
            self._ask(Helo(argument, False))

    def _mail(self, argument: str) -> None:
        try:
            address, params = parse_mail(argument, max_size=self.settings.max_message_size)
        except CommandError as exc:
            self._error("MAIL", exc.reply)
        else:
            self._ask(MailFrom(address, params))

    def _rcpt(self, argument: str) -> None:
        if len(self.session.recipients) >= self.settings.max_recipients:
            # RFC 5321 §4.5.3.1.10: the client sends the rest in a later
            # transaction.  Not counted as an error, so a long list does not
            # end the session.
            self._send(replies.TOO_MANY_RECIPIENTS)
            self._events.append(ProtocolError("RCPT", replies.TOO_MANY_RECIPIENTS))
            return
        params = self.session.mail_params
        try:
            address, rcpt_params = parse_rcpt(argument, smtputf8=params is not None and params.smtputf8)
        except CommandError as exc:
            self._error("RCPT", exc.reply)
        else:
            self._ask(RcptTo(address, rcpt_params))

    def _data(self, argument: str) -> None:
        if argument:
            self._error("DATA", replies.syntax("DATA"))
        else:
            self._ask(DataCommand())

    def _rset(self, argument: str) -> None:
        if argument:
            self._error("RSET", replies.syntax("RSET"))
            return
        self._reset_transaction()  # RFC 5321 §4.1.1.5
        if self.state is not State.AWAIT_HELO:
            self.state = State.GREETED
        self._send(replies.OK)

    def _noop(self, argument: str) -> None:
        self._send(replies.OK)  # RFC 5321 §4.1.1.9: an argument is allowed and ignored

    def _help(self, argument: str) -> None:
        self._send(replies.HELP)

    def _quit(self, argument: str) -> None:
        self._send(replies.BYE)
        self._discard_input()
        self.state = State.CLOSED
        self._events.append(Quit())

    def _vrfy(self, argument: str) -> None:
        if not argument:
            self._error("VRFY", replies.syntax("VRFY address"))
        elif self.settings.vrfy_enabled:
            self._ask(Vrfy(argument))
        else:
            self._send(replies.CANNOT_VRFY)

    def _starttls(self, argument: str) -> None:
        if argument:
            self._error("STARTTLS", replies.syntax("STARTTLS"))
        elif self.session.tls_active:
            self._error("STARTTLS", replies.TLS_ALREADY_ACTIVE)
        elif not self.settings.starttls_available:
            self._error("STARTTLS", replies.NOT_IMPLEMENTED)
        else:
            self._send(replies.READY_TO_START_TLS)
            self.state = State.TLS_HANDSHAKE
            # RFC 3207 §4.2 / CVE-2011-0411: plaintext sent after STARTTLS is never executed.
            discarded = self._discard_input()
            if discarded:
                self.discarded_after_starttls += discarded
                detail = f"discarded {discarded} bytes pipelined after STARTTLS"
                self._events.append(ProtocolError("STARTTLS", replies.READY_TO_START_TLS, detail))
            self._events.append(StartTLS())

    # Helpers -----------------------------------------------------------------

    def _send(self, reply: Reply) -> None:
        self._out.append(reply.to_bytes())

    def _ask(self, event: Decision) -> None:
        self._pending = event
        self._events.append(event)

    def _take_pending(self) -> Decision | None:
        """The pending event, or None when the core closed the session meanwhile."""
        event = self._pending
        if event is None:
            if self.closed:
                return None
            raise RuntimeError("no event is waiting for a decision")
        self._pending = None
        return event

    def _decided(self, reply: Reply) -> None:
        self._send(reply)
        if reply.is_error:
            self._count_error()
        if self._late_input and not self.closed:
            self._close(replies.SYNCHRONIZATION, "protocol synchronization")
        self._late_input = False

    def _error(self, verb: str, reply: Reply) -> None:
        self._send(reply)
        self._events.append(ProtocolError(verb, reply))
        self.failures[verb.lower()] += 1
        self._count_error()

    def _count_error(self) -> None:
        self.error_count += 1
        if self.error_count >= self.settings.hard_error_limit:
            reply = Reply(421, "4.7.0", f"{self.settings.hostname} Error: too many errors")
            self._close(reply, "too many errors")

    def _close(self, reply: Reply, reason: str) -> None:
        self._send(reply)
        self._discard_input()
        self._framer = None
        self._pending = None
        self.state = State.CLOSED
        self._events.append(Closing(reply, reason, self.last_verb))

    def _discard_input(self) -> int:
        discarded = len(self._buf) - self._pos
        self._buf = bytearray()
        self._pos = 0
        self._skipping_line = False
        return discarded

    def _reset_transaction(self) -> None:
        self.session.sender = None
        self.session.mail_params = None
        self.session.recipients = []

    def _ehlo_reply(self) -> Reply:
        return Reply(250, None, (self.settings.hostname, *self.capabilities()))

    def _expect_state(self, state: State) -> None:
        if self.state is not state:
            raise RuntimeError(f"not allowed in state {self.state.value}")


def _not_implemented(verb: str) -> Callable[[ServerConnection, str], None]:
    # RFC 5321 §4.2.4: 502 for a recognized command that is not implemented.
    def handler(conn: ServerConnection, argument: str) -> None:
        conn._error(verb, replies.NOT_IMPLEMENTED)

    return handler


def _decision_verb(event: Decision) -> str:
    if isinstance(event, Helo):
        return "ehlo" if event.extended else "helo"
    return _EVENT_VERBS[type(event)]


_EVENT_VERBS: dict[type, str] = {
    MailFrom: "mail",
    RcptTo: "rcpt",
    DataCommand: "data",
    MessageReceived: "data",
    Vrfy: "vrfy",
}

_ANY: dict[State, Reply] = {}  # allowed in every command state
_TRANSACTION = {State.MAIL: replies.TRANSACTION_IN_PROGRESS, State.RCPT: replies.TRANSACTION_IN_PROGRESS}
_COMMANDS: dict[str, _Command] = {
    "EHLO": _Command(ServerConnection._ehlo, ends_group=True, needs_tls=False, refused=_ANY),
    "HELO": _Command(ServerConnection._helo, ends_group=True, needs_tls=False, refused=_ANY),
    "MAIL": _Command(
        ServerConnection._mail,
        ends_group=False,
        needs_tls=True,
        refused={State.AWAIT_HELO: replies.NEED_HELO, State.MAIL: replies.NESTED_MAIL, State.RCPT: replies.NESTED_MAIL},
    ),
    "RCPT": _Command(
        ServerConnection._rcpt,
        ends_group=False,
        needs_tls=True,
        refused={State.AWAIT_HELO: replies.NEED_MAIL, State.GREETED: replies.NEED_MAIL},
    ),
    "DATA": _Command(
        ServerConnection._data,
        ends_group=True,
        needs_tls=True,
        refused={
            State.AWAIT_HELO: replies.NEED_RCPT,
            State.GREETED: replies.NEED_RCPT,
            State.MAIL: replies.NO_VALID_RECIPIENTS,  # RFC 2920 §3.1
        },
    ),
    "RSET": _Command(ServerConnection._rset, ends_group=False, needs_tls=False, refused=_ANY),
    "NOOP": _Command(ServerConnection._noop, ends_group=True, needs_tls=False, refused=_ANY),
    "QUIT": _Command(ServerConnection._quit, ends_group=True, needs_tls=False, refused=_ANY),
    "HELP": _Command(ServerConnection._help, ends_group=False, needs_tls=True, refused=_ANY),
    "VRFY": _Command(ServerConnection._vrfy, ends_group=True, needs_tls=True, refused=_ANY),
    "EXPN": _Command(_not_implemented("EXPN"), ends_group=True, needs_tls=True, refused=_ANY),
    "TURN": _Command(_not_implemented("TURN"), ends_group=True, needs_tls=True, refused=_ANY),
    "ETRN": _Command(_not_implemented("ETRN"), ends_group=False, needs_tls=True, refused=_ANY),
    "STARTTLS": _Command(ServerConnection._starttls, ends_group=True, needs_tls=False, refused=_TRANSACTION),
}
