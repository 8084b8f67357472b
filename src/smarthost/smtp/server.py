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
MAIL, RCPT, DATA, the received message, (when enabled) VRFY, and the SASL
steps of AUTH (RFC 4954).

Event types and when they come:

=====================  =========================================================
``Helo``               decision; default accept reply: the EHLO capabilities
``MailFrom``           decision; default ``250 2.1.0 Ok``
``RcptTo``             decision; default ``250 2.1.5 Ok``
``DataCommand``        decision; default ``354 End data with <CR><LF>.<CR><LF>``
``MessageReceived``    decision; the shell passes ``250 2.0.0 Ok: queued as ID``
``Vrfy``               decision (only when ``vrfy_enabled``)
``AuthStart``          AUTH step: answer ``auth_challenge`` / ``auth_success`` / ``auth_fail``
``AuthResponse``       AUTH step: the client's decoded answer to a challenge; same answers
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
* DSN (RFC 3461) is advertised: NOTIFY, ORCPT, RET and ENVID are parsed and kept,
  and the queue manager honours them (failure, success notices; passed onward).
* QUIT, NOOP and HELP accept and ignore arguments; RSET, DATA and STARTTLS
  with arguments get ``501``.

AUTH (RFC 4954):

* Two mechanism lists, as Postfix has two sets of security options:
  ``auth_mechanisms`` before TLS (``smtpd_sasl_security_options``) and
  ``auth_tls_mechanisms`` once TLS is up (``smtpd_sasl_tls_security_options``;
  ``None``: the same list).  EHLO advertises, and AUTH accepts, the list of
  the current state; a mechanism offered only after TLS is answered ``538
  5.7.11`` before it (RFC 4954 §6), without looking at the credentials.
* Without any mechanism AUTH is an unknown command (``500``), as it
  was before AUTH existed.  (Postfix answers ``503 5.5.1 Error:
  authentication not enabled``; a server that offers no AUTH extension does
  not know the verb.)
* The core checks everything that needs no credentials: sequence (after
  HELO/EHLO, not in a transaction, not twice), TLS (``auth_requires_tls``:
  ``530`` and no event, credentials never looked at), the mechanism
  (``504``), base64 (``501 5.5.2``), ``*`` (``501 5.7.0``, §4) and the
  response length (``500 5.5.6``; the rest of the line is discarded, so
  memory stays bounded).  The shell runs the SASL mechanism and answers each
  ``AuthStart`` / ``AuthResponse`` with ``auth_challenge``, ``auth_success``
  or ``auth_fail``.  While an exchange runs, input lines are responses, not
  commands.
* An AUTH command line may be longer than ``max_command_line`` by up to
  ``max_sasl_response`` octets: it can carry an initial response (§4).
* Pipelining (§4): AUTH ends a pipelined group, except ``AUTH PLAIN`` and
  ``AUTH EXTERNAL`` with an initial response (one round trip, no security
  layer): commands sent after those run once the shell has answered.  A
  response line must not be followed by more input either (the client
  waits for the 334/235).  With ``forbid_unauth_pipelining`` a violation
  gets ``554 5.5.0`` and the session ends, as for other commands.
* Every AUTH for an offered mechanism that passes the sequence and TLS
  checks and does not end in ``235`` counts as a failed authentication:
  cancelled, undecodable, too long, or refused by the shell.  (An AUTH line
  too long to be parsed at all is a protocol error only.)  After
  ``max_auth_failures`` of them the session ends with ``421 4.7.0``.  The
  replies also count towards ``hard_error_limit``.
* RSET and EHLO keep the authentication; the TLS handshake resets it (and
  STARTTLS after AUTH is refused with ``503``).
"""

from __future__ import annotations

import base64
import binascii
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
    AUTH = "auth"  # a SASL exchange is running: lines are responses (RFC 4954 §4)
    CLOSED = "closed"

    # Members are singletons compared by identity; hash them in C (the
    # state is looked up in sets and dicts for every command).
    __hash__ = object.__hash__


_MECHANISM_NAME = re.compile(r"[A-Z0-9_-]{1,20}")


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
    extra_capabilities: tuple[str, ...] = ()  # EHLO lines added after STARTTLS and AUTH
    auth_mechanisms: tuple[str, ...] = ()  # SASL mechanisms offered before TLS, upper case
    auth_tls_mechanisms: tuple[str, ...] | None = None  # offered once TLS is up; None: auth_mechanisms
    auth_requires_tls: bool = True  # smtpd_tls_auth_only: no AUTH (not even advertised) before TLS
    max_auth_failures: int = 3  # failed AUTH exchanges per session, then 421
    max_sasl_response: int = 12288  # smtpd_sasl_response_limit: octets of one base64 response line
    broken_sasl_auth_clients: bool = False  # also advertise the pre-RFC "AUTH=" line (old Outlook)

    def __post_init__(self) -> None:
        if self.auth_tls_mechanisms is None:
            object.__setattr__(self, "auth_tls_mechanisms", self.auth_mechanisms)
        for name in (*self.auth_mechanisms, *self.auth_tls_mechanisms):
            if not _MECHANISM_NAME.fullmatch(name):
                raise ValueError(f"bad SASL mechanism name {name!r} (RFC 4422 §3.1: 1-20 of A-Z 0-9 - _)")
        if self.max_auth_failures < 1 or self.max_sasl_response < 1:
            raise ValueError("max_auth_failures and max_sasl_response must be at least 1")
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
    authenticated: str | None = None  # the SASL user name after 235
    auth_mechanism: str | None = None  # the mechanism that succeeded


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
class AuthStart:
    """AUTH passed the core's checks.  ``initial_response`` is decoded; ``None`` when the client sent none."""

    mechanism: str  # upper case, one of ServerSettings.auth_mechanisms
    initial_response: bytes | None

    def __repr__(self) -> str:  # the response may hold a password
        size = "none" if self.initial_response is None else f"{len(self.initial_response)} bytes"
        return f"AuthStart({self.mechanism}, <initial response: {size}>)"


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """The client's decoded answer to the last challenge."""

    data: bytes

    def __repr__(self) -> str:
        return f"AuthResponse(<{len(self.data)} bytes>)"


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


Event = Union[
    Helo, MailFrom, RcptTo, DataCommand, MessageReceived, StartTLS, Vrfy, Quit, Closing, ProtocolError,
    AuthStart, AuthResponse,
]
Decision = Union[Helo, MailFrom, RcptTo, DataCommand, MessageReceived, Vrfy, AuthStart, AuthResponse]

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
# RFC 4954 §4: AUTH with an initial response may be followed by pipelined
# commands only for one-round-trip mechanisms without a security layer.
_ONE_ROUND_TRIP = frozenset({"PLAIN", "EXTERNAL"})
_AUTH_PREFIX_LEN = 32  # room for "AUTH " + a 20-octet mechanism + " " + CRLF on an AUTH line


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
        self.auth_failures = 0  # failed AUTH exchanges in this session
        self._auth_mechanism: str | None = None  # the mechanism of the exchange in progress
        self._auth_may_pipeline = False  # the pending AuthStart may be followed by commands
        self._auth_known = bool(settings.auth_mechanisms or settings.auth_tls_mechanisms)  # AUTH is a command

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
        self._send(_plain_reply(220, self.settings.banner))

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
            pending = self._pending
            if (
                isinstance(pending, (Helo, DataCommand, Vrfy, AuthResponse))
                or not self.session.esmtp
                or (isinstance(pending, AuthStart) and not self._auth_may_pipeline)
            ):
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
            elif state is State.AUTH:
                progressed = self._read_auth_response()
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
        kind = type(event)  # events are final classes: compared by identity, the common ones first
        if kind is RcptTo:
            self.session.recipients.append(event)
            self.state = State.RCPT
            default = replies.RECIPIENT_OK
        elif kind is MailFrom:
            self.session.sender = event.address
            self.session.mail_params = event.params
            self.state = State.MAIL
            default = replies.SENDER_OK
        elif kind is DataCommand:
            self._framer = DataFramer(self.settings.max_message_size, memoryview(self._buf)[self._pos :])
            self._buf = bytearray()
            self._pos = 0
            self.state = State.DATA
            default = replies.START_DATA
        elif kind is MessageReceived:
            self._reset_transaction()
            self.state = State.GREETED
            default = replies.OK
        elif kind is Helo:
            self.session.helo = event.name
            self.session.esmtp = event.extended
            self._reset_transaction()
            self.state = State.GREETED
            default = self._ehlo_reply() if event.extended else _plain_reply(250, self.settings.hostname)
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

    def auth_challenge(self, data: bytes) -> None:
        """Answer the pending AUTH step with ``334 base64(data)``; the next line is the client's response."""
        if self._take_auth() is None:
            return
        if self._late_input:
            # The client did not wait for this challenge (RFC 4954 §4).
            self._close(replies.SYNCHRONIZATION, "protocol synchronization")
            return
        self._send(replies.auth_challenge(data))

    def auth_success(self, username: str) -> None:
        """End the exchange with ``235 2.7.0``: the session is authenticated as ``username``."""
        if self._take_auth() is None:
            return
        self.session.authenticated = username
        self.session.auth_mechanism = self._auth_mechanism
        self._auth_mechanism = None
        self.state = State.GREETED
        self._decided(replies.AUTH_SUCCESSFUL)

    def auth_fail(self, reply: Reply) -> None:
        """End the exchange with a 4xx/5xx ``reply`` (e.g. ``replies.AUTH_FAILED``); counts a failure."""
        if not reply.is_error:
            raise ValueError("auth_fail() needs a 4xx or 5xx reply")
        if self._take_auth() is None:
            return
        self.state = State.GREETED
        self._auth_mechanism = None
        self.failures["auth"] += 1
        self._decided(reply)
        self._count_auth_failure()

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
        """EHLO keywords (RFC 5321 §4.1.1.1); AUTH only where it may be used (not before TLS when required)."""
        settings = self.settings
        caps = ["PIPELINING"]  # RFC 2920
        caps.append(f"SIZE {settings.max_message_size}" if settings.max_message_size else "SIZE")  # RFC 1870
        if settings.vrfy_enabled:
            caps.append("VRFY")
        if settings.starttls_available and not self.session.tls_active:
            caps.append("STARTTLS")  # RFC 3207
        offered = self._auth_offered()
        if offered and not self._auth_needs_tls():
            mechanisms = " ".join(offered)
            caps.append(f"AUTH {mechanisms}")  # RFC 4954 §3
            if settings.broken_sasl_auth_clients:
                caps.append(f"AUTH={mechanisms}")  # what clients from before RFC 2554 look for
        caps.extend(settings.extra_capabilities)
        caps += ["ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8"]  # RFC 2034, 6152, 3461, 6531
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
            if len(buf) - pos <= limit or self._long_auth_line_fits(buf, pos, len(buf) - pos):
                return False
            # RFC 5321 §4.5.3.1.4; answer now, then drop the line up to its LF.
            self._pos = len(buf)
            self._skipping_line = True
            self._line_too_long(buf, pos)
            return True
        self._pos = lf + 1
        if lf + 1 - pos > limit and not self._long_auth_line_fits(buf, pos, lf + 1 - pos):
            self._line_too_long(buf, pos)
            return True
        bare_lf = lf == pos or buf[lf - 1] != 0x0D
        self._command(bytes(buf[pos : lf if bare_lf else lf - 1]), bare_lf)
        return True

    def _long_auth_line_fits(self, buf: bytearray, pos: int, length: int) -> bool:
        """An AUTH line may carry an initial response (RFC 4954 §4): allow it up to its own limit."""
        return self._is_auth_line(buf, pos) and length <= self.settings.max_sasl_response + _AUTH_PREFIX_LEN

    def _is_auth_line(self, buf: bytearray, pos: int) -> bool:
        return self._auth_known and buf[pos : pos + 5].upper() == b"AUTH "

    def _line_too_long(self, buf: bytearray, pos: int) -> None:
        if self._is_auth_line(buf, pos):
            self.counters["auth"] += 1
            self.last_verb = "AUTH"
            self._error("AUTH", replies.AUTH_LINE_TOO_LONG)
            return
        self.counters["unknown"] += 1
        self.last_verb = "UNKNOWN"
        self._error("UNKNOWN", replies.LINE_TOO_LONG)

    def _read_auth_response(self) -> bool:
        """Handle one response line of a running AUTH exchange (RFC 4954 §4)."""
        buf, pos = self._buf, self._pos
        limit = self.settings.max_sasl_response + 2  # CRLF
        lf = buf.find(b"\n", pos)
        if lf < 0:
            if len(buf) - pos <= limit:
                return False
            # Answer now and discard the rest of the line as it arrives: memory stays bounded.
            self._pos = len(buf)
            self._skipping_line = True
            self._end_auth(replies.AUTH_LINE_TOO_LONG, "response too long")
            return True
        self._pos = lf + 1
        if lf + 1 - pos > limit:
            self._end_auth(replies.AUTH_LINE_TOO_LONG, "response too long")
            return True
        if self.settings.forbid_unauth_pipelining and self._pos < len(buf):
            self._close(replies.SYNCHRONIZATION, "protocol synchronization")
            return True
        line = bytes(buf[pos : lf - 1 if lf > pos and buf[lf - 1] == 0x0D else lf])
        if line == b"*":
            self._end_auth(replies.AUTH_ABORTED, "cancelled by the client")
            return True
        data = _decode_base64(line)
        if data is None:
            self._end_auth(replies.CANNOT_DECODE, "response is not base64")
        else:
            self._ask(AuthResponse(data))
        return True

    def _end_auth(self, reply: Reply, detail: str) -> None:
        """The core ends a running exchange by itself: a failed authentication."""
        self.state = State.GREETED
        self._auth_mechanism = None
        self._error("AUTH", reply, detail)
        self._count_auth_failure()

    def _count_auth_failure(self) -> None:
        self.auth_failures += 1
        if self.auth_failures >= self.settings.max_auth_failures and not self.closed:
            reply = Reply(421, "4.7.0", f"{self.settings.hostname} Error: too many failed authentications")
            self._close(reply, "too many failed authentications")

    def _auth_offered(self) -> tuple[str, ...]:
        """The mechanisms of the current state: before TLS, or once it is up."""
        settings = self.settings
        return settings.auth_tls_mechanisms if self.session.tls_active else settings.auth_mechanisms

    def _auth_needs_tls(self) -> bool:
        settings = self.settings
        return (settings.auth_requires_tls or settings.tls_required) and not self.session.tls_active

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
        if command is _AUTH_COMMAND and not self._auth_known:
            command = None  # without mechanisms the server does not know AUTH (RFC 5321 §4.2.4: 500)
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
        elif self.session.authenticated is not None:
            self._error("STARTTLS", replies.ALREADY_AUTHENTICATED)
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

    def _auth(self, argument: str) -> None:
        settings = self.settings
        mechanism, _, response = argument.partition(" ")
        mechanism = mechanism.upper()
        may_pipeline = bool(response) and mechanism in _ONE_ROUND_TRIP
        if settings.forbid_unauth_pipelining and self._pos < len(self._buf) and not may_pipeline:
            self._close(replies.SYNCHRONIZATION, "protocol synchronization")
        elif self.session.authenticated is not None:
            self._error("AUTH", replies.ALREADY_AUTHENTICATED)  # RFC 4954 §4
        elif self._auth_needs_tls():
            self._error("AUTH", replies.MUST_STARTTLS)  # the credentials are not looked at
        elif not mechanism or " " in response:
            self._error("AUTH", replies.syntax("AUTH mechanism [initial-response]"))
        elif mechanism not in self._auth_offered():
            if not self.session.tls_active and mechanism in settings.auth_tls_mechanisms:
                self._error("AUTH", replies.ENCRYPTION_REQUIRED)  # RFC 4954 §6: offered after STARTTLS only
            else:
                self._error("AUTH", replies.UNSUPPORTED_MECHANISM)
        else:
            self.state = State.AUTH
            self._auth_mechanism = mechanism
            if len(response) > settings.max_sasl_response:
                self._end_auth(replies.AUTH_LINE_TOO_LONG, "initial response too long")
                return
            # RFC 4954 §4: "=" is an empty initial response.
            initial = None if not response else b"" if response == "=" else _decode_base64(response.encode())
            if response and initial is None:
                self._end_auth(replies.CANNOT_DECODE, "initial response is not base64")
                return
            self._auth_may_pipeline = may_pipeline
            self._ask(AuthStart(mechanism, initial))

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
        if isinstance(event, (AuthStart, AuthResponse)):
            raise RuntimeError("answer AUTH steps with auth_challenge(), auth_success() or auth_fail()")
        self._pending = None
        return event

    def _take_auth(self) -> AuthStart | AuthResponse | None:
        """The pending AUTH step, or None when the core closed the session meanwhile."""
        event = self._pending
        if not isinstance(event, (AuthStart, AuthResponse)):
            if event is None and self.closed:
                return None
            raise RuntimeError("no AUTH step is waiting for an answer")
        self._pending = None
        return event

    def _decided(self, reply: Reply) -> None:
        self._send(reply)
        if reply.is_error:
            self._count_error()
        if self._late_input and not self.closed:
            self._close(replies.SYNCHRONIZATION, "protocol synchronization")
        self._late_input = False

    def _error(self, verb: str, reply: Reply, detail: str = "") -> None:
        self._send(reply)
        self._events.append(ProtocolError(verb, reply, detail))
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
        return _plain_reply(250, (self.settings.hostname, *self.capabilities()))

    def _expect_state(self, state: State) -> None:
        if self.state is not state:
            raise RuntimeError(f"not allowed in state {self.state.value}")


_PLAIN_REPLIES: dict[tuple[int, str | tuple[str, ...]], Reply] = {}


def _plain_reply(code: int, text: str | tuple[str, ...]) -> Reply:
    """A reply without an enhanced code that recurs per session (the greeting, HELO's, EHLO's:
    a handful of variants per configuration), built once instead of once per session."""
    key = (code, text)
    reply = _PLAIN_REPLIES.get(key)
    if reply is None:
        if len(_PLAIN_REPLIES) >= 128:  # bounded, whatever the configurations seen
            _PLAIN_REPLIES.clear()
        reply = _PLAIN_REPLIES[key] = Reply(code, None, text)
    return reply


def _not_implemented(verb: str) -> Callable[[ServerConnection, str], None]:
    # RFC 5321 §4.2.4: 502 for a recognized command that is not implemented.
    def handler(conn: ServerConnection, argument: str) -> None:
        conn._error(verb, replies.NOT_IMPLEMENTED)

    return handler


def _decode_base64(text: bytes) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        return None


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
    # ends_group is decided by _auth itself (RFC 4954 §4).
    "AUTH": _Command(
        ServerConnection._auth,
        ends_group=False,
        needs_tls=True,
        refused={State.AWAIT_HELO: replies.NEED_HELO, **_TRANSACTION},
    ),
}
_AUTH_COMMAND = _COMMANDS["AUTH"]
