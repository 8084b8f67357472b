"""Dovecot's authentication protocol (the ``auth-client`` socket), sans I/O, both sides.

What Postfix's ``smtpd_sasl_type = dovecot`` speaks. Facts from Dovecot's "Authentication
Protocol" document (v1.2/1.3):

- LF-terminated lines ``COMMAND TAB param TAB ...``; optional parameters are ``name=value`` or a
  bare boolean word; unknown optional parameters are ignored. Lines are expected to fit into
  16384 bytes; we refuse longer ones.
- Values use tab-escaping: ``\\001`` followed by ``0`` (NUL), ``1`` (``\\001``), ``t`` (TAB),
  ``r`` (CR) or ``n`` (LF); ``\\001`` before anything else stands for that character.
- Handshake: the client sends ``VERSION 1 x`` and ``CPID pid``; the server sends ``VERSION 1 x``,
  ``MECH name [flags]`` per mechanism, ``SPID``, ``CUID``, ``COOKIE`` and ``DONE``. Both sides
  disconnect on a different major version.
- Authentication: ``AUTH id mech service=... [secured] [resp=base64] ...``; the server answers
  ``CONT id base64`` (the client answers with ``CONT id base64``), ``OK id user=...`` or
  ``FAIL id [reason=...] [temp] [code=...]``.

``DovecotServer`` is the daemon's side, ``DovecotClient`` the SMTP server's side. Both raise
``ProtocolError`` for input that is not the protocol; messages never quote SASL data.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

MAJOR_VERSION = 1
MINOR_VERSION = 2
MAX_LINE = 16384
MAX_PARAMS = 64

# Mechanism flags of a MECH line, as Dovecot names them.
MECH_FLAGS = frozenset({"anonymous", "plaintext", "dictionary", "active", "forward-secrecy", "mutual-auth", "private"})

_UNESCAPE = {"0": "\0", "1": "\001", "t": "\t", "r": "\r", "n": "\n"}
_ESCAPE = {v: "\001" + k for k, v in _UNESCAPE.items()}


class ProtocolError(ValueError):
    """The peer does not speak Dovecot's auth protocol (the message quotes no SASL data)."""


def escape(value: str) -> str:
    return "".join(_ESCAPE.get(c, c) for c in value)


def unescape(value: str) -> str:
    if "\001" not in value:
        return value
    out = []
    chars = iter(value)
    for c in chars:
        if c == "\001":
            nxt = next(chars, "")
            out.append(_UNESCAPE.get(nxt, nxt))
        else:
            out.append(c)
    return "".join(out)


def _line(*parts: str) -> bytes:
    return ("\t".join(parts) + "\n").encode("utf-8")


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None


def _options(params: list[str]) -> dict[str, str]:
    """Optional parameters: ``name=value`` → value, a bare word → ``""`` (a set boolean)."""
    options: dict[str, str] = {}
    for param in params:
        name, _, value = param.partition("=")
        options.setdefault(name, unescape(value))
    return options


class _Lines:
    """Splits a byte stream into decoded, tab-split lines, at most ``MAX_LINE`` bytes each."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[list[str]]:
        self._buffer += data
        lines = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if len(raw) > MAX_LINE:
                raise ProtocolError(f"line longer than {MAX_LINE} bytes")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError("line is not UTF-8") from None
            parts = text.split("\t")
            if len(parts) > MAX_PARAMS:
                raise ProtocolError(f"more than {MAX_PARAMS} parameters")
            lines.append(parts)
        if len(self._buffer) > MAX_LINE:
            raise ProtocolError(f"line longer than {MAX_LINE} bytes")
        return lines


def _check_version(parts: list[str]) -> None:
    if len(parts) < 3 or parts[1] != str(MAJOR_VERSION):
        raise ProtocolError(f"unsupported protocol version (want major {MAJOR_VERSION})")


def _request_id(text: str) -> str:
    if not (text.isascii() and text.isdigit() and 0 < len(text) <= 10):
        raise ProtocolError("bad request id")
    return text


@dataclass(frozen=True)
class Mechanism:
    name: str
    flags: frozenset[str] = frozenset()


# --- events the server side sees ---------------------------------------------------------


@dataclass(frozen=True)
class AuthBegin:
    """``AUTH``: start mechanism ``mechanism`` under ``id``; ``initial`` is the decoded ``resp=``
    (``None`` without one); ``options`` holds the other optional parameters (``service``,
    ``secured``, ``lip``, ``rip``, ...)."""

    id: str
    mechanism: str
    initial: bytes | None = field(repr=False)
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AuthContinue:
    id: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class AuthInvalid:
    """A request the server must answer with ``FAIL`` (bad base64), the connection stays usable."""

    id: str
    reason: str


class DovecotServer:
    """The auth daemon's side of one connection.

    ``greeting()`` is the server handshake, sent at once; ``feed(data)`` returns the
    ``AuthBegin`` / ``AuthContinue`` / ``AuthInvalid`` events of complete lines; ``ok``, ``cont``
    and ``fail`` give the bytes of the answers.
    """

    def __init__(self, mechanisms: list[Mechanism], *, spid: int, cuid: int, cookie: str) -> None:
        self.mechanisms = {m.name.upper(): m for m in mechanisms}
        self._spid, self._cuid, self._cookie = spid, cuid, cookie
        self._lines = _Lines()
        self._version_seen = False

    def greeting(self) -> bytes:
        out = [_line("VERSION", str(MAJOR_VERSION), str(MINOR_VERSION))]
        out += [_line("MECH", m.name, *sorted(m.flags)) for m in self.mechanisms.values()]
        out += [_line("SPID", str(self._spid)), _line("CUID", str(self._cuid)), _line("COOKIE", self._cookie), _line("DONE")]
        return b"".join(out)

    def feed(self, data: bytes) -> list[AuthBegin | AuthContinue | AuthInvalid]:
        events: list[AuthBegin | AuthContinue | AuthInvalid] = []
        for parts in self._lines.feed(data):
            command = parts[0]
            if not self._version_seen:
                if command != "VERSION":
                    raise ProtocolError("the client did not start with VERSION")
                _check_version(parts)
                self._version_seen = True
            elif command == "AUTH":
                events.append(self._auth(parts))
            elif command == "CONT":
                if len(parts) < 3:
                    raise ProtocolError("CONT without data")
                request_id = _request_id(parts[1])
                decoded = _b64decode(parts[2])
                events.append(AuthInvalid(request_id, "invalid base64 data") if decoded is None
                              else AuthContinue(request_id, decoded))
            elif command not in ("CPID", "VERSION"):
                raise ProtocolError("unknown command")
        return events

    def _auth(self, parts: list[str]) -> AuthBegin | AuthInvalid:
        if len(parts) < 3:
            raise ProtocolError("AUTH without id and mechanism")
        request_id = _request_id(parts[1])
        options = _options(parts[3:])
        initial = None
        if "resp" in options:
            initial = _b64decode(options.pop("resp"))
            if initial is None:
                return AuthInvalid(request_id, "invalid base64 data")
        return AuthBegin(request_id, parts[2].upper(), initial, options)

    @staticmethod
    def ok(request_id: str, user: str) -> bytes:
        return _line("OK", request_id, "user=" + escape(user))

    @staticmethod
    def cont(request_id: str, challenge: bytes) -> bytes:
        return _line("CONT", request_id, _b64encode(challenge))

    @staticmethod
    def fail(request_id: str, reason: str = "", *, temporary: bool = False, user: str = "") -> bytes:
        params = ["FAIL", request_id]
        if user:
            params.append("user=" + escape(user))
        if reason:
            params.append("reason=" + escape(reason))
        if temporary:
            params += ["temp", "code=temp_fail"]
        return _line(*params)


# --- events the client side sees ---------------------------------------------------------


@dataclass(frozen=True)
class HandshakeDone:
    mechanisms: list[Mechanism]


@dataclass(frozen=True)
class AuthOk:
    id: str
    user: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AuthChallenge:
    id: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class AuthFail:
    id: str
    reason: str = ""
    temporary: bool = False
    options: dict[str, str] = field(default_factory=dict)


class DovecotClient:
    """The SMTP server's side of one connection to a Dovecot auth socket.

    Send ``hello()`` first; ``feed(data)`` returns ``HandshakeDone`` once the server's handshake
    is complete, then ``AuthOk`` / ``AuthChallenge`` / ``AuthFail`` for answers to ``auth`` and
    ``cont``.
    """

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._lines = _Lines()
        self._version_seen = False
        self._mechanisms: list[Mechanism] | None = None
        self._pending: list[Mechanism] = []

    def hello(self) -> bytes:
        return _line("VERSION", str(MAJOR_VERSION), str(MINOR_VERSION)) + _line("CPID", str(self._pid))

    @property
    def ready(self) -> bool:
        return self._mechanisms is not None

    def auth(
        self,
        request_id: str,
        mechanism: str,
        initial: bytes | None,
        *,
        service: str = "smtp",
        secured: bool = False,
        local_ip: str = "",
        remote_ip: str = "",
    ) -> bytes:
        params = ["AUTH", _request_id(request_id), mechanism, "service=" + escape(service), "nologin"]
        if secured:
            params.append("secured")
        if local_ip:
            params.append("lip=" + escape(local_ip))
        if remote_ip:
            params.append("rip=" + escape(remote_ip))
        if initial is not None:
            params.append("resp=" + _b64encode(initial))
        return _line(*params)

    @staticmethod
    def cont(request_id: str, data: bytes) -> bytes:
        return _line("CONT", _request_id(request_id), _b64encode(data))

    def feed(self, data: bytes) -> list[HandshakeDone | AuthOk | AuthChallenge | AuthFail]:
        events: list[HandshakeDone | AuthOk | AuthChallenge | AuthFail] = []
        for parts in self._lines.feed(data):
            command = parts[0]
            if not self._version_seen:
                if command != "VERSION":
                    raise ProtocolError("the server did not start with VERSION")
                _check_version(parts)
                self._version_seen = True
            elif self._mechanisms is None:
                if command == "MECH":
                    if len(parts) < 2 or not parts[1]:
                        raise ProtocolError("MECH without a name")
                    self._pending.append(Mechanism(parts[1].upper(), frozenset(parts[2:]) & MECH_FLAGS))
                elif command == "DONE":
                    self._mechanisms = self._pending
                    events.append(HandshakeDone(list(self._mechanisms)))
                # SPID, CUID, COOKIE and unknown handshake lines carry nothing we use
            else:
                events.append(self._answer(command, parts))
        return events

    @staticmethod
    def _answer(command: str, parts: list[str]) -> AuthOk | AuthChallenge | AuthFail:
        if command not in ("OK", "CONT", "FAIL") or len(parts) < 2:
            raise ProtocolError("unexpected line from the auth server")
        request_id = _request_id(parts[1])
        if command == "CONT":
            decoded = _b64decode(parts[2]) if len(parts) > 2 else b""
            if decoded is None:
                raise ProtocolError("CONT with invalid base64")
            return AuthChallenge(request_id, decoded)
        options = _options(parts[2:])
        if command == "OK":
            if not options.get("user"):
                raise ProtocolError("OK without user=")
            return AuthOk(request_id, options.pop("user"), options)
        temporary = "temp" in options or options.get("code") == "temp_fail"
        return AuthFail(request_id, options.get("reason", ""), temporary, options)
