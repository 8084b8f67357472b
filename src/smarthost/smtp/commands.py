"""Command lines and their arguments: the verb split and the MAIL/RCPT parameters.

Pure parsing, no state.  Errors are raised as :class:`CommandError` carrying
the exact reply the server sends.  Parameters (RFC 5321 §4.1.2
``esmtp-param``) are typed: SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8
(RFC 6531), AUTH (RFC 4954 §5), RET/ENVID/NOTIFY/ORCPT (RFC 3461).  xtext
values (AUTH, ENVID, ORCPT) are validated and kept decoded; use
:func:`xtext_encode` to pass them on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import replies
from .address import Address, AddressError, parse_path, split_path
from .replies import Reply

# RFC 5321 §4.1.2: esmtp-keyword and esmtp-value (RFC 6531 §3.3 allows UTF-8 in values).
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+")
# RFC 3461 §4: xtext = *( xchar / hexchar ), hexchar = "+" 2HEXDIG (upper case).
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")

MAX_ENVID = 100  # RFC 3461 §4.4
MAX_ORCPT = 500  # RFC 3461 §4.2
MAX_SIZE_DIGITS = 20  # RFC 1870 §4: size-value ::= 1*20DIGIT


class CommandError(Exception):
    """A command the server refuses by itself; ``reply`` is what it says."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class MailParams:
    size: int | None = None
    body: str | None = None  # "7BIT" or "8BITMIME"
    smtputf8: bool = False
    auth: str | None = None  # decoded; "<>" when the client said AUTH=<>
    ret: str | None = None  # "FULL" or "HDRS"
    envid: str | None = None  # decoded


@dataclass(frozen=True, slots=True)
class RcptParams:
    notify: tuple[str, ...] | None = None  # ("NEVER",) or a subset of SUCCESS, FAILURE, DELAY
    orcpt: str | None = None  # decoded, "addr-type;address"


def split_command(line: str) -> tuple[str, str]:
    """``"mail FROM:<a@b>"`` -> ``("MAIL", "FROM:<a@b>")``; spaces around the argument dropped."""
    verb, _, argument = line.partition(" ")
    return verb.upper(), argument.strip(" ")


def xtext_decode(text: str) -> str:
    """Decode xtext (RFC 3461 §4); the octets must form UTF-8.  Raises ValueError."""
    if not _XTEXT.fullmatch(text):
        raise ValueError("bad xtext")
    if "+" not in text:
        return text
    octets = bytearray()
    pos = 0
    for match in _HEXCHAR.finditer(text):
        octets += text[pos : match.start()].encode("ascii")
        octets.append(int(match.group(1), 16))
        pos = match.end()
    octets += text[pos:].encode("ascii")
    return octets.decode("utf-8")  # UnicodeDecodeError is a ValueError


def xtext_encode(text: str) -> str:
    return "".join(
        ch if "!" <= ch <= "~" and ch not in "+=" else "".join(f"+{b:02X}" for b in ch.encode("utf-8"))
        for ch in text
    )


def _split_params(rest: str) -> list[tuple[str, str | None]]:
    """``" SIZE=10 BODY=8BITMIME"`` -> ``[("SIZE", "10"), ("BODY", "8BITMIME")]``."""
    if rest and not rest.startswith(" "):
        raise CommandError(replies.syntax("parameters must follow the address after a space"))
    params: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for word in rest.split():
        keyword, eq, value = word.partition("=")
        if not _KEYWORD.fullmatch(keyword) or (eq and not _VALUE.fullmatch(value)):
            raise CommandError(Reply(501, "5.5.4", "Bad parameter syntax"))
        keyword = keyword.upper()
        if keyword in seen:
            raise CommandError(Reply(501, "5.5.4", f"Duplicate parameter: {keyword}"))
        seen.add(keyword)
        params.append((keyword, value if eq else None))
    return params


def _bad_value(keyword: str) -> CommandError:
    return CommandError(Reply(501, "5.5.4", f"Bad {keyword} parameter value"))


def _unsupported(keyword: str) -> CommandError:
    return CommandError(Reply(555, "5.5.4", f"Unsupported option: {keyword}"))


def _xtext_param(keyword: str, value: str | None, limit: int) -> str:
    if value is None or len(value) > limit:
        raise _bad_value(keyword)
    try:
        return xtext_decode(value)
    except ValueError:
        raise _bad_value(keyword) from None


_NO_MAIL_PARAMS = MailParams()  # frozen: one value for every MAIL without parameters
_NO_RCPT_PARAMS = RcptParams()


def _mail_params(rest: str, max_size: int) -> MailParams:
    if not rest:
        return _NO_MAIL_PARAMS
    size = body = auth = ret = envid = None
    smtputf8 = False
    for keyword, value in _split_params(rest):
        if keyword == "SIZE":  # RFC 1870 §6
            if value is None or not value.isdigit() or not value.isascii() or len(value) > MAX_SIZE_DIGITS:
                raise _bad_value(keyword)
            size = int(value)
            if max_size and size > max_size:
                raise CommandError(replies.SIZE_EXCEEDS_LIMIT)
        elif keyword == "BODY":  # RFC 6152 §2; BINARYMIME needs CHUNKING (RFC 3030), not offered
            body = (value or "").upper()
            if body not in ("7BIT", "8BITMIME"):
                raise _bad_value(keyword)
        elif keyword == "SMTPUTF8":  # RFC 6531 §3.4: no value
            if value is not None:
                raise _bad_value(keyword)
            smtputf8 = True
        elif keyword == "AUTH":  # RFC 4954 §5: AUTH=<> or an xtext mailbox
            auth = _xtext_param(keyword, value, MAX_ORCPT)
        elif keyword == "RET":  # RFC 3461 §4.3
            ret = (value or "").upper()
            if ret not in ("FULL", "HDRS"):
                raise _bad_value(keyword)
        elif keyword == "ENVID":  # RFC 3461 §4.4
            envid = _xtext_param(keyword, value, MAX_ENVID)
        else:
            raise _unsupported(keyword)
    return MailParams(size=size, body=body, smtputf8=smtputf8, auth=auth, ret=ret, envid=envid)


def _rcpt_params(rest: str) -> RcptParams:
    if not rest:
        return _NO_RCPT_PARAMS
    notify = orcpt = None
    for keyword, value in _split_params(rest):
        if keyword == "NOTIFY":  # RFC 3461 §4.1
            items = tuple((value or "").upper().split(","))
            if items != ("NEVER",) and not (
                set(items) <= {"SUCCESS", "FAILURE", "DELAY"} and len(set(items)) == len(items)
            ):
                raise _bad_value(keyword)
            notify = items
        elif keyword == "ORCPT":  # RFC 3461 §4.2: addr-type ";" xtext
            orcpt = _xtext_param(keyword, value, MAX_ORCPT)
            addr_type, semicolon, _ = orcpt.partition(";")
            if not semicolon or not _ATOM.fullmatch(addr_type):
                raise _bad_value(keyword)
        else:
            raise _unsupported(keyword)
    return RcptParams(notify=notify, orcpt=orcpt)


def _after_prefix(argument: str, prefix: str, usage: str) -> str:
    """Strip ``FROM:`` / ``TO:`` (any case), tolerating spaces after the colon as Postfix does."""
    if argument[: len(prefix)].upper() != prefix:
        raise CommandError(replies.syntax(usage))
    return argument[len(prefix) :].lstrip(" ")


def parse_mail(argument: str, *, max_size: int = 0) -> tuple[Address, MailParams]:
    """``FROM:<path> [params]`` (RFC 5321 §4.1.1.2)."""
    rest = _after_prefix(argument, "FROM:", "MAIL FROM:<address>")
    try:
        path, rest = split_path(rest)
    except AddressError:
        raise CommandError(replies.BAD_SENDER_SYNTAX) from None
    params = _mail_params(rest, max_size)
    try:
        address = parse_path(path, smtputf8=params.smtputf8, allow_null=True)
    except AddressError as exc:
        raise CommandError(replies.NEED_SMTPUTF8 if exc.non_ascii else replies.BAD_SENDER_SYNTAX) from None
    return address, params


def parse_rcpt(argument: str, *, smtputf8: bool = False) -> tuple[Address, RcptParams]:
    """``TO:<path> [params]`` (RFC 5321 §4.1.1.3); ``<postmaster>`` allowed (§4.5.1)."""
    rest = _after_prefix(argument, "TO:", "RCPT TO:<address>")
    try:
        path, rest = split_path(rest)
    except AddressError:
        raise CommandError(replies.BAD_RECIPIENT_SYNTAX) from None
    params = _rcpt_params(rest)
    try:
        address = parse_path(path, smtputf8=smtputf8, allow_postmaster=True)
    except AddressError as exc:
        raise CommandError(replies.NEED_SMTPUTF8 if exc.non_ascii else replies.BAD_RECIPIENT_SYNTAX) from None
    return address, params
