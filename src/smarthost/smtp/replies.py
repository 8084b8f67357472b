"""SMTP replies as frozen values, and the fixed replies the server core uses.

A reply is a code (RFC 5321 §4.2), an optional enhanced status code
(RFC 3463, carried on every line per RFC 2034 §3) and one or more lines of
text.  Replies that depend on the server's hostname (greeting, EHLO, 421)
are built by the server; everything else lives here as module constants so
the wording is in one place.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field

_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_CHECKED: set[tuple[int, str]] = set()  # (code, enhanced) pairs already found valid


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: str | None
    text: str | tuple[str, ...]
    _wire: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code out of range: {self.code}")
        if self.enhanced is not None and (self.code, self.enhanced) not in _CHECKED:
            # RFC 3463 §2: the class digit matches the reply's first digit.
            if not _ENHANCED.fullmatch(self.enhanced) or self.enhanced[0] != str(self.code)[0]:
                raise ValueError(f"bad enhanced status code {self.enhanced!r} for {self.code}")
            if len(_CHECKED) < 1024:  # the same few pairs come back all the time: check once
                _CHECKED.add((self.code, self.enhanced))
        for line in self.lines:
            if "\r" in line or "\n" in line:
                raise ValueError("reply text must not contain CR or LF")
        object.__setattr__(self, "_wire", self._encode())

    @property
    def lines(self) -> tuple[str, ...]:
        return (self.text,) if isinstance(self.text, str) else self.text

    @property
    def is_error(self) -> bool:
        return self.code >= 400

    def to_bytes(self) -> bytes:
        """Wire form: ``250-first`` continuation lines, ``250 last`` (RFC 5321 §4.2.1)."""
        return self._wire

    def _encode(self) -> bytes:
        prefix = f"{self.enhanced} " if self.enhanced else ""
        if isinstance(self.text, str):  # the common case: one line
            return f"{self.code} {prefix}{self.text}\r\n".encode("utf-8")
        lines = self.text or ("",)
        last = len(lines) - 1
        return "".join(
            f"{self.code}{' ' if i == last else '-'}{prefix}{line}\r\n"
            for i, line in enumerate(lines)
        ).encode("utf-8")


# Success.
OK = Reply(250, "2.0.0", "Ok")
SENDER_OK = Reply(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")
START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
BYE = Reply(221, "2.0.0", "Bye")
HELP = Reply(214, "2.0.0", "See RFC 5321")
READY_TO_START_TLS = Reply(220, "2.0.0", "Ready to start TLS")
# RFC 5321 §3.5.3: 252 when the server will not verify but will try delivery.
CANNOT_VRFY = Reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery")

# Syntax errors (RFC 5321 §4.2.2, RFC 3463 X.5.2 / X.5.4).
BAD_SYNTAX = Reply(500, "5.5.2", "Error: bad syntax")
BAD_UTF8 = Reply(500, "5.5.2", "Error: bad UTF-8 syntax")
UNKNOWN_COMMAND = Reply(500, "5.5.2", "Error: command not recognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Error: line too long")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Error: command not implemented")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
# RFC 6531 §3.5 / RFC 6533: non-ASCII address without the SMTPUTF8 parameter.
NEED_SMTPUTF8 = Reply(553, "5.6.7", "Error: non-ASCII address requires SMTPUTF8")


def syntax(usage: str) -> Reply:
    """``501 5.5.4 Syntax: <usage>`` for a command with bad arguments."""
    return Reply(501, "5.5.4", f"Syntax: {usage}")


# Bad sequence (RFC 5321 §4.1.4).
NEED_HELO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
TRANSACTION_IN_PROGRESS = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
# RFC 2920 §3.1: DATA after only rejected recipients.
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "Error: no valid recipients")
TLS_ALREADY_ACTIVE = Reply(554, "5.5.1", "Error: TLS already active")
MUST_STARTTLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")

# Limits.
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")
# RFC 1870 §6.1: SIZE= above the fixed limit at MAIL time.
SIZE_EXCEEDS_LIMIT = Reply(552, "5.3.4", "Message size exceeds fixed limit")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Error: message file too big")
BARE_LF = Reply(550, "5.5.2", "Error: bare <LF> received")
SYNCHRONIZATION = Reply(554, "5.5.0", "Error: SMTP protocol synchronization")
TOO_MUCH_INPUT = Reply(421, "4.7.0", "Error: too much pipelined input")

# SMTP AUTH (RFC 4954 §4, §6; texts as Postfix words them).
AUTH_SUCCESSFUL = Reply(235, "2.7.0", "Authentication successful")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Error: already authenticated")
UNSUPPORTED_MECHANISM = Reply(504, "5.5.4", "Unsupported authentication mechanism")
# RFC 4954 §6: the mechanism may be used only under an encryption layer (STARTTLS first).
ENCRYPTION_REQUIRED = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
CANNOT_DECODE = Reply(501, "5.5.2", "Cannot decode response")
AUTH_ABORTED = Reply(501, "5.7.0", "Authentication aborted")
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication Exchange line is too long")
AUTH_FAILED = Reply(535, "5.7.8", "Error: authentication failed: authentication failure")
AUTH_TEMPORARY_FAILURE = Reply(454, "4.7.0", "Temporary authentication failure")


def auth_challenge(data: bytes) -> Reply:
    """``334 <base64>``: a server challenge (RFC 4954 §4); empty data gives ``334 `` and nothing after."""
    return Reply(334, None, base64.b64encode(data).decode("ascii"))
