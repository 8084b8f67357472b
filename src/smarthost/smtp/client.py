"""The SMTP client as a pure state machine (sans-I/O), the relay client's protocol core.

The I/O shell connects, feeds the server's bytes to
:meth:`ClientConnection.receive_data` (``b""`` at EOF), takes events from
:meth:`~ClientConnection.next_event` until it returns ``NEED_DATA``, calls
command methods in reaction, and writes :meth:`~ClientConnection.data_to_send`.
Nothing here reads the clock: timeouts are the shell's, reported with
:meth:`~ClientConnection.abort`.

A mail transaction is issued in one go: ``mail()``, ``rcpt()`` for each
recipient, ``data()`` and (now or after ``DataReady``) ``send_message()``.
The core releases the commands as the server allows: with PIPELINING
(RFC 2920) MAIL, every RCPT and DATA leave in one write and the replies are
mapped back in order; without it, one command per reply.  When MAIL fails or
no recipient is accepted, the commands still held back are never sent.  The
transaction ends with ``TransactionDone``: one :class:`Outcome` per recipient.

Events:

=====================  ==========================================================
``Greeting``           the 220 banner (or a refusal: then only ``quit()``)
``EhloDone``           EHLO (or, after a 5xx to EHLO, HELO) accepted; capabilities
``TLSReady``           220 to STARTTLS: handshake now, then ``tls_established()``
``AuthDone``           the end of an AUTH exchange; ``ok`` on 235
``SenderResult``       reply to MAIL
``RecipientResult``    reply to the RCPT of recipient ``index``
``DataReady``          354: the message goes out with ``send_message()``
``DataRefused``        reply to DATA other than 354
``MessageResult``      reply to the end of the message
``TransactionDone``    per-recipient outcomes of the transaction
``ResetDone``          reply to ``rset()``
``CommandFailed``      EHLO/HELO or STARTTLS refused
``ProtocolFailure``    the server broke the protocol; the connection is over
``Closed``             last event: close the socket
=====================  ==========================================================

Rules implemented (details at each place):

* Replies are parsed as RFC 5321 §4.2 says, with bounded line length and
  line count; anything else is a ``ProtocolFailure`` and the mail is deferred.
* Bytes that follow the 220 reply to STARTTLS, and everything received
  before ``tls_established()``, are discarded, and the pre-TLS capabilities
  forgotten (RFC 3207 §4.2; the client side of CVE-2011-0411, e.g.
  CVE-2011-1431).
* AUTH is refused, before anything is sent, on a connection without TLS
  unless ``ClientSettings.allow_plaintext_auth`` says otherwise.
* Addresses are checked before they reach the wire: control characters (CR,
  LF, ...) or bad syntax refuse the address permanently.
* SIZE, 8BITMIME, SMTPUTF8 and DSN parameters are sent only when offered.
* A reply's class decides: 2xx done, 5xx permanent, anything else
  (4xx, unknown) temporary.
"""

from __future__ import annotations

import base64
import enum
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol, Union

from .address import AddressError, parse_path
from .commands import MailParams, RcptParams, xtext_encode
from .replies import Reply

# Outcomes ---------------------------------------------------------------------


class Status(enum.Enum):
    SENT = "sent"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


def classify(code: int) -> Status:
    """2xx sent, 5xx bounced, everything else (4xx, unknown) deferred (DESIGN.md principle 8)."""
    if 200 <= code <= 299:
        return Status.SENT
    if 500 <= code <= 599:
        return Status.BOUNCED
    return Status.DEFERRED


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one recipient: the status, an RFC 3463 code and text for the log/DSN.

    ``reply`` is the remote reply the outcome comes from, or None when the
    client decided by itself (then ``text`` says why).
    """

    status: Status
    enhanced: str
    text: str
    reply: Reply | None = None

    @classmethod
    def from_reply(cls, reply: Reply) -> Outcome:
        status = classify(reply.code)
        default = {Status.SENT: "2.0.0", Status.BOUNCED: "5.0.0"}.get(status, "4.0.0")
        return cls(status, reply.enhanced or default, reply_line(reply), reply)

    @classmethod
    def deferred(cls, enhanced: str, text: str) -> Outcome:
        return cls(Status.DEFERRED, enhanced, text)

    @classmethod
    def bounced(cls, enhanced: str, text: str) -> Outcome:
        return cls(Status.BOUNCED, enhanced, text)

    def __str__(self) -> str:
        """``sent (250 2.0.0 Ok: queued as X)``, as in the mail log's ``status=`` field."""
        return f"{self.status.value} ({self.text})"


def reply_line(reply: Reply) -> str:
    """A reply on one line: ``550 5.1.1 first line second line``."""
    prefix = f"{reply.code} {reply.enhanced} " if reply.enhanced else f"{reply.code} "
    return prefix + " ".join(line for line in reply.lines if line)


class Refused(Exception):
    """The core refused a command by itself, before sending anything; ``outcome`` says why."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.text)
        self.outcome = outcome


# Settings, SASL ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientSettings:
    # SAFE: never send credentials in the clear unless the configuration says so.
    allow_plaintext_auth: bool = False
    # smtp_line_length_limit (postconf(5)): longer lines are broken with CRLF SPACE; 0 = never.
    line_length_limit: int = 998
    # RFC 5321 §4.5.3.1.5 allows 512 octets per reply line; real servers send longer ones.
    max_reply_line: int = 4096
    max_reply_lines: int = 200
    max_auth_rounds: int = 10  # 334 challenges per AUTH before the client gives up

    def __post_init__(self) -> None:
        if self.line_length_limit == 1 or self.line_length_limit < 0:
            raise ValueError("line_length_limit must be 0 (no limit) or at least 2")


class ClientMechanism(Protocol):
    """A client-side SASL mechanism (smarthost.sasl.client has the real ones).

    ``start()`` gives the initial response (None: none); ``step()`` answers a
    decoded 334 challenge and raises to abort the exchange.  If the object
    also has ``finish()``, it is called after 235 and may raise when the
    server failed to prove itself (SCRAM); the authentication then counts
    as failed.
    """

    def start(self) -> bytes | None: ...

    def step(self, challenge: bytes) -> bytes: ...


# Events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Greeting:
    reply: Reply

    @property
    def ok(self) -> bool:
        return self.reply.code == 220


@dataclass(frozen=True, slots=True)
class EhloDone:
    reply: Reply
    capabilities: dict[str, str]  # upper-case keyword -> parameters ("" if none)
    esmtp: bool  # False after the fall-back to HELO


@dataclass(frozen=True, slots=True)
class TLSReady:
    pass


@dataclass(frozen=True, slots=True)
class AuthDone:
    """The end of AUTH.  Whatever the code (535 included), a failed authentication should
    defer the mail, not bounce it: the admin fixes the password and the mail goes out."""

    reply: Reply
    error: str = ""  # why the client aborted or rejected the exchange, if it did

    @property
    def ok(self) -> bool:
        return self.reply.code == 235 and not self.error


@dataclass(frozen=True, slots=True)
class SenderResult:
    reply: Reply

    @property
    def accepted(self) -> bool:
        return classify(self.reply.code) is Status.SENT


@dataclass(frozen=True, slots=True)
class RecipientResult:
    index: int
    reply: Reply

    @property
    def accepted(self) -> bool:
        return classify(self.reply.code) is Status.SENT


@dataclass(frozen=True, slots=True)
class DataReady:
    pass


@dataclass(frozen=True, slots=True)
class DataRefused:
    reply: Reply


@dataclass(frozen=True, slots=True)
class MessageResult:
    reply: Reply


@dataclass(frozen=True, slots=True)
class TransactionDone:
    outcomes: tuple[Outcome, ...]  # by recipient index


@dataclass(frozen=True, slots=True)
class ResetDone:
    reply: Reply


@dataclass(frozen=True, slots=True)
class CommandFailed:
    command: str  # "EHLO", "HELO" or "STARTTLS"
    reply: Reply


@dataclass(frozen=True, slots=True)
class ProtocolFailure:
    reason: str  # never holds more than a short, sanitized piece of server text


@dataclass(frozen=True, slots=True)
class Closed:
    reply: Reply | None = None  # the 221 to QUIT, a 421, or None (EOF, failure, abort)


Event = Union[
    Greeting, EhloDone, TLSReady, AuthDone, SenderResult, RecipientResult, DataReady, DataRefused,
    MessageResult, TransactionDone, ResetDone, CommandFailed, ProtocolFailure, Closed,
]  # fmt: skip


class Signal(enum.Enum):
    NEED_DATA = "need-data"


NEED_DATA = Signal.NEED_DATA


class State(enum.Enum):
    CONNECTING = "connecting"  # waiting for the greeting
    REFUSED = "refused"  # the greeting was not 220: only quit()
    AWAIT_EHLO = "await-ehlo"  # greeted (or TLS just started): ehlo() next
    READY = "ready"  # EHLO/HELO done, no transaction
    TRANSACTION = "transaction"  # mail() called, transaction not finished
    TLS_HANDSHAKE = "tls-handshake"  # 220 to STARTTLS; waiting for tls_established()
    CLOSED = "closed"


# Reply parsing --------------------------------------------------------------------

# RFC 5321 §4.2: Reply-code [ ("-" / SP) textstring ]; the first digit is 2-5.
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?", re.DOTALL)
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?= |$)")
_UNSAFE_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class _Garbage(Exception):
    """The server sent something that is not an SMTP reply."""


def _snippet(raw: bytes | bytearray) -> str:
    text = bytes(raw[:40]).decode("ascii", "replace")
    return _UNSAFE_TEXT.sub("?", text) + ("..." if len(raw) > 40 else "")


class _ReplyReader:
    """Cuts the input into replies (RFC 5321 §4.2.1 multi-line form), within bounds."""

    def __init__(self, max_line: int, max_lines: int) -> None:
        self.buf = bytearray()
        self._max_line = max_line
        self._max_lines = max_lines
        self._code = b""
        self._lines: list[str] = []

    def next_reply(self) -> Reply | None:
        while True:
            lf = self.buf.find(b"\n", 0, self._max_line + 1)
            if lf < 0:
                if len(self.buf) > self._max_line:
                    raise _Garbage("reply line too long")
                return None
            raw = bytes(self.buf[: lf - 1 if lf and self.buf[lf - 1] == 0x0D else lf])
            del self.buf[: lf + 1]
            match = _REPLY_LINE.fullmatch(raw)
            if match is None:
                raise _Garbage(f"invalid reply line: {_snippet(raw)}")
            code, sep, text = match.group(1), match.group(2), match.group(3) or b""
            if self._lines and code != self._code:
                raise _Garbage("reply code changed inside a multi-line reply")
            if len(self._lines) >= self._max_lines:
                raise _Garbage("reply has too many lines")
            self._code = code
            self._lines.append(_UNSAFE_TEXT.sub("?", text.decode("utf-8", "replace")))
            if sep != b"-":
                lines, self._lines = self._lines, []
                return _make_reply(int(code), lines)


def _make_reply(code: int, lines: list[str]) -> Reply:
    enhanced = None
    match = _ENHANCED.match(lines[0])
    # RFC 3463 §2 / RFC 2034 §3: an enhanced code of the reply's class starts the text.
    if match and code // 100 != 3 and match.group(1) == str(code // 100):
        enhanced = match.group(0)
        lines = [line[len(enhanced) :].lstrip(" ") if line.startswith(enhanced) else line for line in lines]
    return Reply(code, enhanced, lines[0] if len(lines) == 1 else tuple(lines))


# Message body -----------------------------------------------------------------------

_LINE_ENDING = re.compile(rb"\r\n|\r|\n")


def encode_body(body: bytes, line_length_limit: int = 998) -> bytes:
    """The wire form of a stored message: what follows the 354, final ``.`` line included.

    The inverse of :func:`smarthost.smtp.data.unstuff`:

    * bare CR and bare LF become CRLF, so the receiver sees the lines we mean
      (no SMTP smuggling through us); the body ends with CRLF;
    * lines longer than ``line_length_limit`` octets are broken as Postfix's
      ``smtp_line_length_limit`` does: the first ``limit`` octets, then
      CRLF SPACE and up to ``limit - 1`` octets per continuation line
      (RFC 5322 §2.1.1: 998 octets per line; folding minimizes the damage to
      MIME; 0 turns this off);
    * transparency (RFC 5321 §4.5.2): a line starting with ``.`` gets one more;
    * ``.`` CRLF ends the message (RFC 5321 §4.1.1.4).
    """
    if body.count(b"\r\n") != body.count(b"\n") or body.count(b"\r\n") != body.count(b"\r"):
        body = _LINE_ENDING.sub(b"\r\n", body)
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    if line_length_limit:
        lines = body.split(b"\r\n")  # linear, in C; a regex search for a long line was not
        if len(max(lines, key=len)) > line_length_limit:
            body = b"\r\n".join(_fold(line, line_length_limit) for line in lines)
    body = body.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    return body + b".\r\n"


def _fold(line: bytes, limit: int) -> bytes:
    if len(line) <= limit:
        return line
    pieces = [line[:limit]]
    pieces += [b" " + line[i : i + limit - 1] for i in range(limit, len(line), limit - 1)]
    return b"\r\n".join(pieces)


# The connection ---------------------------------------------------------------------


class _Kind(enum.Enum):
    GREETING = "greeting"
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    BODY = "end of data"
    RSET = "RSET"
    QUIT = "QUIT"


# RFC 2920 §3.1: these may be followed by more commands before their reply;
# every other command ends a pipelined group.
_PIPELINABLE = frozenset({_Kind.MAIL, _Kind.RCPT, _Kind.RSET})
_TRANSACTION_KINDS = frozenset({_Kind.MAIL, _Kind.RCPT, _Kind.DATA, _Kind.BODY})


@dataclass(slots=True)
class _Command:
    kind: _Kind
    wire: bytes
    index: int = -1  # RCPT: recipient index
    silent: bool = False  # RSET sent by the core / "." after a hopeless DATA: no event
    mechanism: ClientMechanism | None = None
    name: str = ""  # AUTH mechanism name
    rounds: int = 0
    cancelled: str = ""  # AUTH: why the client sent "*"

    def __repr__(self) -> str:  # never show the wire form: it may hold credentials
        return f"<{self.kind.value} command>"


@dataclass(slots=True)
class _Transaction:
    smtputf8: bool
    recipients: list[str] = field(default_factory=list)
    mail_reply: Reply | None = None
    rcpt_replies: list[Reply | None] = field(default_factory=list)
    data_called: bool = False
    data_reply: Reply | None = None
    body_done: bool = False  # the reply to the end of data (or to a lone ".") is in
    final_reply: Reply | None = None

    @property
    def mail_failed(self) -> bool:
        return self.mail_reply is not None and classify(self.mail_reply.code) is not Status.SENT

    @property
    def hopeless(self) -> bool:
        """No message can be delivered: MAIL refused, or every recipient's reply is in and none accepted."""
        if self.mail_failed:
            return True
        if not self.recipients:
            return True
        replies = self.rcpt_replies
        return all(r is not None for r in replies) and not any(classify(r.code) is Status.SENT for r in replies)

    def outcomes(self, failure: Outcome) -> tuple[Outcome, ...]:
        """The first definite answer for each recipient, else ``failure``."""
        data = self.data_reply
        if data is not None and data.code != 354 and classify(data.code) is Status.SENT:
            # A 2xx to DATA does not deliver anything.
            data_outcome = Outcome.deferred("4.5.0", f"unexpected reply to DATA: {reply_line(data)}")
        else:
            data_outcome = Outcome.from_reply(data) if data is not None else failure
        mail = self.mail_reply
        result = []
        for reply in self.rcpt_replies:
            if mail is not None and classify(mail.code) is not Status.SENT:
                outcome = Outcome.from_reply(mail)
            elif reply is None:
                outcome = failure
            elif classify(reply.code) is not Status.SENT:
                outcome = Outcome.from_reply(reply)
            elif data is None or data.code != 354:
                outcome = data_outcome
            elif self.final_reply is not None:
                outcome = Outcome.from_reply(self.final_reply)
            else:
                outcome = failure
            result.append(outcome)
        return tuple(result)


_ADDRESS_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_HELO_NAME = re.compile(r"[\x21-\x7e]+")
_NOT_SENT = Outcome.deferred("4.4.2", "transaction not completed")


class ClientConnection:
    def __init__(self, settings: ClientSettings | None = None, *, tls_active: bool = False) -> None:
        """``tls_active``: the connection is TLS from the start (smtp_tls_wrappermode, port 465)."""
        self.settings = settings or ClientSettings()
        self.state = State.CONNECTING
        self.tls_active = tls_active
        self.esmtp = False
        self.capabilities: dict[str, str] = {}
        self.authenticated = False
        self.discarded_after_starttls = 0  # octets thrown away around STARTTLS (RFC 3207 §4.2)
        self._reader = _ReplyReader(self.settings.max_reply_line, self.settings.max_reply_lines)
        self._queue: deque[_Command] = deque()  # issued by the shell, not yet sent
        self._inflight: deque[_Command] = deque([_Command(_Kind.GREETING, b"")])  # sent, awaiting reply
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._txn: _Transaction | None = None
        self._needs_reset = False  # the server may hold transaction state: RSET before the next MAIL
        self._helo_name = ""

    def __repr__(self) -> str:
        return f"<ClientConnection {self.state.value} tls={self.tls_active} auth={self.authenticated}>"

    # What the server offers ------------------------------------------------------

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.capabilities

    @property
    def max_size(self) -> int:
        """The server's SIZE limit (RFC 1870 §4); 0 when none is announced."""
        value = self.capabilities.get("SIZE", "").split(" ")[0]
        return int(value) if value.isdigit() and value.isascii() else 0

    def auth_mechanisms(self) -> list[str]:
        return self.capabilities.get("AUTH", "").upper().split()

    # Input and output --------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed what the server sent; ``b""`` means it closed the connection."""
        if self.state is State.CLOSED:
            return
        if self.state is State.TLS_HANDSHAKE:
            # RFC 3207 §4.2: nothing from before the handshake may be used.
            self.discarded_after_starttls += len(data)
            if not data:
                self._fail("connection closed during the TLS handshake", Outcome.deferred("4.4.2", "lost connection"))
            return
        if not data:
            if self._inflight and self._inflight[0].kind is _Kind.QUIT:
                self._close(None)
            else:
                lost = Outcome.deferred("4.4.2", "lost connection with the server")
                self._fail("connection closed by the server", lost)
            return
        self._reader.buf += data
        while self.state not in (State.CLOSED, State.TLS_HANDSHAKE):
            try:
                reply = self._reader.next_reply()
            except _Garbage as exc:
                self._fail(str(exc), Outcome.deferred("4.5.0", f"protocol error: {exc}"))
                return
            if reply is None:
                return
            self._on_reply(reply)

    def next_event(self) -> Event | Signal:
        return self._events.popleft() if self._events else NEED_DATA

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def tls_established(self) -> None:
        """The shell finished the TLS handshake: a fresh session, EHLO again (RFC 3207 §4.2)."""
        self._expect(State.TLS_HANDSHAKE)
        self.tls_active = True
        self.esmtp = False
        self.capabilities = {}
        self._reader = _ReplyReader(self.settings.max_reply_line, self.settings.max_reply_lines)
        self.state = State.AWAIT_EHLO

    def abort(self, reason: str) -> None:
        """The shell gives up (timeout, TLS failure...): outcomes deferred, then ``Closed``."""
        if self.state is not State.CLOSED:
            self._fail(reason, Outcome.deferred("4.4.2", reason), report=False)

    # Session commands ------------------------------------------------------------------

    def ehlo(self, name: str) -> None:
        """EHLO; on a 5xx reply the core falls back to HELO by itself (RFC 5321 §4.1.4, as Postfix)."""
        self._expect(State.AWAIT_EHLO)
        self._expect_idle()
        if not _HELO_NAME.fullmatch(name):
            raise ValueError("the EHLO name must be printable ASCII without spaces")
        self._helo_name = name
        self._issue(_Command(_Kind.EHLO, f"EHLO {name}\r\n".encode("ascii")))

    def starttls(self) -> None:
        self._expect(State.READY)
        self._expect_idle()
        if self.tls_active:
            raise RuntimeError("TLS is already active")
        if "STARTTLS" not in self.capabilities:
            raise Refused(Outcome.deferred("4.7.4", "the server does not offer STARTTLS"))
        self._issue(_Command(_Kind.STARTTLS, b"STARTTLS\r\n"))

    def auth(self, mechanism: ClientMechanism, name: str) -> None:
        """AUTH (RFC 4954 §4).  Refused without sending anything when the connection is not
        protected by TLS (unless allowed) or the server does not offer ``name``."""
        self._expect(State.READY)
        self._expect_idle()
        if not (self.tls_active or self.settings.allow_plaintext_auth):
            raise Refused(Outcome.deferred("4.7.0", "refusing to send credentials over a connection without TLS"))
        name = name.upper()
        if name not in self.auth_mechanisms():
            raise Refused(Outcome.deferred("4.7.0", f"the server does not offer AUTH {name}"))
        line = f"AUTH {name}"
        initial = mechanism.start()
        if initial is not None:
            # RFC 4954 §4: "=" stands for an empty initial response.
            line += " " + (base64.b64encode(initial).decode("ascii") or "=")
        self._issue(_Command(_Kind.AUTH, line.encode("ascii") + b"\r\n", mechanism=mechanism, name=name))

    def rset(self) -> None:
        self._expect(State.READY)
        self._needs_reset = False
        self._issue(_Command(_Kind.RSET, b"RSET\r\n"))

    def quit(self) -> None:
        if self.state in (State.CLOSED, State.TLS_HANDSHAKE):
            raise RuntimeError(f"not allowed in state {self.state.value}")
        if self._txn is not None and self._txn.data_called and not self._body_issued():
            raise RuntimeError("the message has not been sent")
        self._issue(_Command(_Kind.QUIT, b"QUIT\r\n"))

    # The mail transaction ----------------------------------------------------------------

    def mail(self, sender: str, params: MailParams | None = None) -> None:
        """MAIL FROM (RFC 5321 §4.1.1.2); ``sender`` is ``user@domain`` or ``""`` for ``<>``.

        Give ``params.size`` so the server's SIZE limit is honoured.  Raises
        :class:`Refused` (nothing sent) for a bad address, a message above the
        server's SIZE (5.3.4, RFC 1870 §6.1) or an SMTPUTF8 message to a server
        without SMTPUTF8 (5.6.7, RFC 6531 §3.2).
        """
        self._expect(State.READY)
        self._expect_idle(allow=_Kind.RSET)
        params = params or MailParams()
        path = self._path(sender, sender=True)
        smtputf8 = params.smtputf8 or not sender.isascii()
        caps = self.capabilities
        words = [f"MAIL FROM:{path}"]
        limit = self.max_size
        if params.size is not None and limit and params.size > limit:
            raise Refused(
                Outcome.bounced("5.3.4", f"message size {params.size} exceeds size limit {limit} of the server")
            )
        if params.size is not None and "SIZE" in caps:  # RFC 1870 §5
            words.append(f"SIZE={params.size}")
        if params.body and "8BITMIME" in caps:  # RFC 6152 §2
            words.append(f"BODY={params.body}")
        if smtputf8:
            if "SMTPUTF8" not in caps:
                raise Refused(Outcome.bounced("5.6.7", "SMTPUTF8 is required, but was not offered by the server"))
            words.append("SMTPUTF8")  # RFC 6531 §3.4
        if "DSN" in caps:  # RFC 3461 §4.3, §4.4; dropped when not offered
            if params.ret:
                words.append(f"RET={params.ret}")
            if params.envid:
                words.append(f"ENVID={xtext_encode(params.envid)}")
        self._txn = _Transaction(smtputf8=smtputf8)
        self.state = State.TRANSACTION
        if self._needs_reset:
            self._needs_reset = False
            self._issue(_Command(_Kind.RSET, b"RSET\r\n", silent=True))
        self._issue(_Command(_Kind.MAIL, _encode_line(" ".join(words))))

    def rcpt(self, recipient: str, params: RcptParams | None = None) -> int:
        """RCPT TO (RFC 5321 §4.1.1.3); returns the recipient's index in this transaction.

        Raises :class:`Refused` (nothing sent, no index used) for a bad address
        or a non-ASCII address in a transaction without SMTPUTF8.
        """
        txn = self._transaction()
        if txn.data_called:
            raise RuntimeError("RCPT after DATA")
        params = params or RcptParams()
        path = self._path(recipient, sender=False)
        if not recipient.isascii() and not txn.smtputf8:
            raise Refused(Outcome.bounced("5.6.7", "non-ASCII recipient address in a message without SMTPUTF8"))
        words = [f"RCPT TO:{path}"]
        if "DSN" in self.capabilities:  # RFC 3461 §4.1, §4.2
            if params.notify:
                words.append(f"NOTIFY={','.join(params.notify)}")
            if params.orcpt:
                addr_type, _, address = params.orcpt.partition(";")
                words.append(f"ORCPT={addr_type};{xtext_encode(address)}")
        index = len(txn.recipients)
        txn.recipients.append(recipient)
        txn.rcpt_replies.append(None)
        if not txn.mail_failed:
            self._issue(_Command(_Kind.RCPT, _encode_line(" ".join(words)), index=index))
        return index

    def data(self) -> None:
        """DATA: the recipient list is complete.  Not sent when it cannot help (RFC 2920 §3.1
        allows the pipelined form anyway; without PIPELINING the core knows first)."""
        txn = self._transaction()
        if txn.data_called:
            raise RuntimeError("DATA was already issued")
        txn.data_called = True
        if not (txn.mail_failed or not txn.recipients):
            self._issue(_Command(_Kind.DATA, b"DATA\r\n"))
        self._maybe_finish()

    def send_message(self, body: bytes) -> None:
        """The stored message (CRLF lines, not dot-stuffed); sent once the server says 354."""
        txn = self._transaction()
        if not txn.data_called or self._body_issued():
            raise RuntimeError("send_message() belongs after data(), once")
        self._issue(_Command(_Kind.BODY, encode_body(body, self.settings.line_length_limit)))

    # Internals --------------------------------------------------------------------------

    def _issue(self, command: _Command) -> None:
        self._queue.append(command)
        self._flush()

    def _flush(self) -> None:
        """Send queued commands as far as the rules allow (RFC 2920 §3.1)."""
        queue, inflight = self._queue, self._inflight
        while queue:
            command = queue[0]
            if inflight and not (self.pipelining and inflight[-1].kind in _PIPELINABLE):
                return
            if command.kind is _Kind.BODY and (self._txn is None or self._txn.data_reply is None):
                return  # waits for the 354
            if command.kind is _Kind.DATA and self._txn is not None and self._txn.hopeless:
                # Without PIPELINING the replies are in: DATA would be pointless.
                queue.popleft()
                self._drop_body()
                continue
            queue.popleft()
            self._out.append(command.wire)
            inflight.append(command)

    def _on_reply(self, reply: Reply) -> None:
        if not self._inflight:
            self._fail(f"unexpected reply: {reply_line(reply)[:80]}", Outcome.deferred("4.5.0", "protocol error"))
            return
        command = self._inflight.popleft()
        handler = _HANDLERS[command.kind]
        handler(self, command, reply)
        if self.state is State.CLOSED:
            return
        if reply.code == 421 and command.kind is not _Kind.QUIT:
            # RFC 5321 §3.8: the server is closing the connection.
            self._fail("", Outcome.from_reply(reply), report=False, reply=reply)
            return
        self._flush()
        self._maybe_finish()

    def _on_greeting(self, command: _Command, reply: Reply) -> None:
        self._events.append(Greeting(reply))
        self.state = State.AWAIT_EHLO if reply.code == 220 else State.REFUSED

    def _on_ehlo(self, command: _Command, reply: Reply) -> None:
        if reply.code == 250:
            self.esmtp = True
            self.capabilities = _capabilities(reply)
            self.state = State.READY
            self._events.append(EhloDone(reply, dict(self.capabilities), True))
        elif 500 <= reply.code <= 599:
            self._inflight.appendleft(_Command(_Kind.HELO, f"HELO {self._helo_name}\r\n".encode("ascii")))
            self._out.append(self._inflight[0].wire)
        else:
            self._events.append(CommandFailed("EHLO", reply))

    def _on_helo(self, command: _Command, reply: Reply) -> None:
        if reply.code == 250:
            self.esmtp = False
            self.capabilities = {}
            self.state = State.READY
            self._events.append(EhloDone(reply, {}, False))
        else:
            self._events.append(CommandFailed("HELO", reply))

    def _on_starttls(self, command: _Command, reply: Reply) -> None:
        if reply.code != 220:
            self._events.append(CommandFailed("STARTTLS", reply))
            return
        # RFC 3207 §4.2: a response injected after the 220 is never read.
        self.discarded_after_starttls += len(self._reader.buf)
        self._reader.buf.clear()
        self.capabilities = {}
        self.state = State.TLS_HANDSHAKE
        self._events.append(TLSReady())

    def _on_auth(self, command: _Command, reply: Reply) -> None:
        if reply.code != 334:
            error = command.cancelled
            if reply.code == 235 and not error:
                error = _finish(command.mechanism)
                self.authenticated = not error
            self._events.append(AuthDone(reply, error))
            return
        # RFC 4954 §4: a 334 carries a base64 challenge; "*" cancels the exchange.
        if command.cancelled:
            self._fail("334 after the client cancelled AUTH", Outcome.deferred("4.5.0", "protocol error"))
            return
        command.rounds += 1
        self._inflight.appendleft(command)
        assert command.mechanism is not None
        if command.rounds > self.settings.max_auth_rounds:
            command.cancelled = "too many AUTH challenges"
        else:
            try:
                challenge = base64.b64decode(reply.lines[0].strip(), validate=True)
                response = command.mechanism.step(challenge)
            except ValueError:
                command.cancelled = "the server sent a challenge that is not base64"
            except Exception as exc:  # the mechanism gave up; its messages never hold secrets
                command.cancelled = f"{command.name} failed: {exc}"
            else:
                self._out.append(base64.b64encode(response) + b"\r\n")
                return
        self._out.append(b"*\r\n")

    def _on_mail(self, command: _Command, reply: Reply) -> None:
        txn = self._transaction()
        txn.mail_reply = reply
        self._events.append(SenderResult(reply))
        if txn.mail_failed:
            self._drop_transaction_commands()

    def _on_rcpt(self, command: _Command, reply: Reply) -> None:
        txn = self._transaction()
        txn.rcpt_replies[command.index] = reply
        self._events.append(RecipientResult(command.index, reply))

    def _on_data(self, command: _Command, reply: Reply) -> None:
        txn = self._transaction()
        txn.data_reply = reply
        if reply.code != 354:
            self._events.append(DataRefused(reply))
            self._drop_body()
        elif txn.hopeless:
            # RFC 2920 §3.1: DATA accepted although nothing can be delivered: send an
            # empty message; its reply does not matter.
            self._drop_body()
            self._queue.appendleft(_Command(_Kind.BODY, b".\r\n", silent=True))
        else:
            self._events.append(DataReady())

    def _on_body(self, command: _Command, reply: Reply) -> None:
        txn = self._transaction()
        txn.body_done = True
        if not command.silent:
            txn.final_reply = reply
            self._events.append(MessageResult(reply))

    def _on_rset(self, command: _Command, reply: Reply) -> None:
        if command.silent:
            if classify(reply.code) is not Status.SENT:
                # A server that cannot reset is broken: defer, whatever the code.
                self._fail("RSET refused", Outcome.deferred("4.5.0", f"RSET refused: {reply_line(reply)}"))
            return
        self._events.append(ResetDone(reply))

    def _on_quit(self, command: _Command, reply: Reply) -> None:
        self._close(reply)

    # Helpers ------------------------------------------------------------------------------

    def _maybe_finish(self) -> None:
        """The transaction is over once DATA was asked for and none of its commands is left."""
        txn = self._txn
        if txn is None or not txn.data_called:
            return
        if txn.data_reply is not None and txn.data_reply.code == 354 and not txn.body_done:
            return  # the message is still to come
        if any(c.kind in _TRANSACTION_KINDS for c in self._inflight) or any(
            c.kind in _TRANSACTION_KINDS for c in self._queue
        ):
            return
        self._finish_transaction(_NOT_SENT)

    def _finish_transaction(self, failure: Outcome) -> None:
        txn = self._txn
        if txn is None:
            return
        self._txn = None
        self.state = State.READY
        # After the reply to the end of data the server has reset (RFC 5321 §4.1.1.4);
        # otherwise it may still hold MAIL or RCPT state.
        self._needs_reset = txn.final_reply is None
        self._events.append(TransactionDone(txn.outcomes(failure)))

    def _fail(self, reason: str, outcome: Outcome, *, report: bool = True, reply: Reply | None = None) -> None:
        """End the connection: outcomes for the open transaction, then Closed."""
        if report:
            self._events.append(ProtocolFailure(reason))
        if self._txn is not None:
            self._finish_transaction(outcome)
        self._close(reply)

    def _close(self, reply: Reply | None) -> None:
        self._finish_transaction(_NOT_SENT)
        self.state = State.CLOSED
        self._queue.clear()
        self._inflight.clear()
        self._out.clear()
        self._reader.buf.clear()
        self._events.append(Closed(reply))

    def _drop_transaction_commands(self) -> None:
        self._queue = deque(c for c in self._queue if c.kind not in _TRANSACTION_KINDS)

    def _drop_body(self) -> None:
        self._queue = deque(c for c in self._queue if c.kind is not _Kind.BODY)

    def _body_issued(self) -> bool:
        return any(c.kind is _Kind.BODY for c in (*self._queue, *self._inflight))

    def _transaction(self) -> _Transaction:
        if self._txn is None:
            raise RuntimeError("no mail transaction: call mail() first")
        return self._txn

    def _path(self, address: str, *, sender: bool) -> str:
        """``<address>`` checked so that nothing but a path reaches the wire."""
        code, what = ("5.1.7", "sender") if sender else ("5.1.3", "recipient")
        if _ADDRESS_CONTROL.search(address):
            raise Refused(Outcome.bounced(code, f"{what} address contains control characters"))
        path = f"<{address}>"
        try:
            parse_path(path, smtputf8=True, allow_null=sender, allow_postmaster=not sender)
        except AddressError as exc:
            raise Refused(Outcome.bounced(code, f"bad {what} address syntax: {exc}")) from None
        return path

    def _expect(self, state: State) -> None:
        if self.state is not state:
            raise RuntimeError(f"not allowed in state {self.state.value}")

    def _expect_idle(self, allow: _Kind | None = None) -> None:
        if any(c.kind is not allow for c in (*self._queue, *self._inflight)):
            raise RuntimeError("a command is still waiting for its reply")


_HANDLERS = {
    _Kind.GREETING: ClientConnection._on_greeting,
    _Kind.EHLO: ClientConnection._on_ehlo,
    _Kind.HELO: ClientConnection._on_helo,
    _Kind.STARTTLS: ClientConnection._on_starttls,
    _Kind.AUTH: ClientConnection._on_auth,
    _Kind.MAIL: ClientConnection._on_mail,
    _Kind.RCPT: ClientConnection._on_rcpt,
    _Kind.DATA: ClientConnection._on_data,
    _Kind.BODY: ClientConnection._on_body,
    _Kind.RSET: ClientConnection._on_rset,
    _Kind.QUIT: ClientConnection._on_quit,
}


def _capabilities(reply: Reply) -> dict[str, str]:
    """EHLO keywords (RFC 5321 §4.1.1.1) -> parameters; the old ``AUTH=LOGIN`` form too."""
    caps: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        keyword, eq, inline = keyword.partition("=")
        if eq:
            params = f"{inline} {params}".strip()
        keyword = keyword.upper()
        if keyword:
            caps[keyword] = f"{caps[keyword]} {params}".strip() if keyword in caps else params
    return caps


def _finish(mechanism: ClientMechanism | None) -> str:
    finish = getattr(mechanism, "finish", None)
    if finish is None:
        return ""
    try:
        finish()
    except Exception as exc:  # the server did not prove itself (SCRAM)
        return f"the server's authentication failed: {exc}"
    return ""


def _encode_line(line: str) -> bytes:
    return line.encode("utf-8") + b"\r\n"
