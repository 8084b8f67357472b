"""Envelope addresses: the RFC 5321 §4.1.2 path grammar.

``parse_path("<user@example.com>")`` returns an :class:`Address` whose local
part and domain are exactly as the client wrote them (quotes, ``%`` and ``!``
included) so that relay policy judges what was really asked for.  Source
routes (``<@a,@b:user@c>``) are accepted and dropped (RFC 5321 §4.1.1.3,
Appendix C).  UTF-8 in the local part and domain is accepted only when the
caller says SMTPUTF8 was requested (RFC 6531 §3.3).  Lengths are bounded as
in RFC 5321 §4.5.3.1.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import ClassVar

MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255  # §4.5.3.1.2
MAX_PATH = 256  # §4.5.3.1.3, including the angle brackets
MAX_LABEL = 63  # RFC 1035 §2.3.4


class AddressError(ValueError):
    """The text is not a valid path.  ``non_ascii`` is set when the only
    problem is UTF-8 used without SMTPUTF8."""

    def __init__(self, message: str, *, non_ascii: bool = False) -> None:
        super().__init__(message)
        self.non_ascii = non_ascii


@dataclass(frozen=True, slots=True)
class Address:
    local: str
    domain: str
    raw: str  # the path as written, brackets included

    NULL: ClassVar[Address]

    @property
    def is_null(self) -> bool:
        return not self.local and not self.domain

    @property
    def is_ip_literal(self) -> bool:
        return self.domain.startswith("[")

    def __str__(self) -> str:
        if self.is_null:
            return ""
        return f"{self.local}@{self.domain}" if self.domain else self.local


Address.NULL = Address("", "", "<>")


def _grammar(non_ascii: str) -> re.Pattern[str]:
    # RFC 5321 §4.1.2; RFC 6531 §3.3 adds UTF8-non-ascii to atext, qtextSMTP
    # and sub-domain (U-labels).
    atext = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{non_ascii}]"
    dot_string = rf"{atext}+(?:\.{atext}+)*"
    quoted = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{non_ascii}]|\\[\x20-\x7e])*"'
    let_dig = rf"[A-Za-z0-9{non_ascii}]"
    sub_domain = rf"{let_dig}(?:[A-Za-z0-9\-{non_ascii}]*{let_dig})?"
    domain = rf"{sub_domain}(?:\.{sub_domain})*"
    literal = r"\[[\x21-\x5a\x5e-\x7e]+\]"  # dcontent, checked further below
    adl = rf"@{domain}(?:,@{domain})*"
    return re.compile(rf"<(?:{adl}:)?({dot_string}|{quoted})@({domain}|{literal})>")


_PATH_ASCII = _grammar("")
_PATH_UTF8 = _grammar("\u0080-\U0010ffff")
_IPV4 = re.compile(r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}")
_GENERAL_TAG = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]")


def _check_literal(literal: str) -> None:
    """RFC 5321 §4.1.3: IPv4, ``IPv6:`` or a General-address-literal."""
    inner = literal[1:-1]
    if _IPV4.fullmatch(inner):
        return
    tag, colon, content = inner.partition(":")
    if not colon:
        raise AddressError("bad address literal")
    if tag.lower() == "ipv6":
        try:
            ipaddress.IPv6Address(content)
        except ValueError:
            raise AddressError("bad IPv6 address literal") from None
        if "%" in content:  # a zone index is not part of the grammar
            raise AddressError("bad IPv6 address literal")
        return
    if not _GENERAL_TAG.fullmatch(tag):
        raise AddressError("bad address literal")


def parse_path(
    text: str,
    *,
    smtputf8: bool = False,
    allow_null: bool = False,
    allow_postmaster: bool = False,
) -> Address:
    """Parse ``<...>`` into an Address or raise AddressError.

    ``allow_null`` accepts ``<>`` (reverse-path, RFC 5321 §4.1.1.2);
    ``allow_postmaster`` accepts ``<postmaster>`` without a domain (§4.5.1).
    """
    if text == "<>":
        if allow_null:
            return Address.NULL
        raise AddressError("null path not allowed here")
    ascii_only = text.isascii()
    size = len if ascii_only else _utf8_length  # the limits count octets
    if size(text) > MAX_PATH:
        raise AddressError("path too long")
    if allow_postmaster and text.lower() == "<postmaster>":
        return Address(text[1:-1], "", text)
    match = (_PATH_ASCII if ascii_only else _PATH_UTF8).fullmatch(text)
    if match is None:
        raise AddressError("bad path syntax")
    if not ascii_only and not smtputf8:
        raise AddressError("non-ASCII address without SMTPUTF8", non_ascii=True)
    local, domain = match.group(1), match.group(2)
    if size(local) > MAX_LOCAL_PART:
        raise AddressError("local part too long")
    if size(domain) > MAX_DOMAIN:
        raise AddressError("domain too long")
    if domain.startswith("["):
        _check_literal(domain)
    elif size(domain) > MAX_LABEL and any(size(label) > MAX_LABEL for label in domain.split(".")):
        raise AddressError("domain label too long")
    return Address(local, domain, text)


def _utf8_length(text: str) -> int:
    return len(text.encode("utf-8"))


def split_path(argument: str) -> tuple[str, str]:
    """Split ``<path> params`` into the path (brackets included) and the rest.

    The path ends at the first ``>`` outside a quoted local part.  Raises
    AddressError if the argument does not start with ``<`` or never closes.
    """
    if not argument.startswith("<"):
        raise AddressError("path must be enclosed in <>")
    if '"' not in argument:
        end = argument.find(">")
    else:
        end = _find_closing_bracket(argument)
    if end < 0:
        raise AddressError("path not terminated by >")
    return argument[: end + 1], argument[end + 1 :]


def _find_closing_bracket(text: str) -> int:
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            if ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == ">":
            return i
    return -1
