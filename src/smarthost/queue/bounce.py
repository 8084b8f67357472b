"""Delivery status notifications (bounces, delay warnings, success notices), pure.

A notice is a ``multipart/report; report-type=delivery-status`` message (RFC 6522, formerly
RFC 3462) with three parts:

1. a human-readable explanation (``text/plain``), starting with "This is the mail system at
   host ...";
2. the machine-readable report, ``message/delivery-status`` (RFC 3464 §2): per message
   ``Reporting-MTA``, ``X-Smarthost-Queue-ID``, ``X-Smarthost-Sender``, ``Original-Envelope-Id``
   (ENVID, when given), ``Arrival-Date``; per recipient ``Final-Recipient``,
   ``Original-Recipient`` (ORCPT, when given), ``Action``, ``Status``, ``Remote-MTA``,
   ``Diagnostic-Code``, ``Last-Attempt-Date`` and (delay notices) ``Will-Retry-Until``;
   ``message/global-delivery-status`` with ``utf-8`` address types when an address is not
   ASCII (RFC 6533 §3, §6.2);
3. the original: its header section as ``text/rfc822-headers`` (the default, and RET=HDRS),
   or the whole message as ``message/rfc822`` for RET=FULL (RFC 3461 §4.3) when it is at
   most ``bounce_size_limit`` octets and has no line over 998 octets (else the headers).

Rules (RFC 3461 §4.1, §6.2): no notice to the null sender (``None``; the caller reports
problems with bounces to postmaster); NOTIFY=NEVER gets nothing; with NOTIFY given, a
recipient is reported only for the events it lists; without NOTIFY, failures and delays are
reported, successes are not. The notice has the null sender, ``Auto-Submitted: auto-replied``
(RFC 3834 §5), CRLF line endings only, no line over 998 octets (RFC 5322 §2.1.1), and the
``Date`` and ``Message-ID`` the caller passes in (no clock or id source is read here).
"""

from __future__ import annotations

import datetime
import email.utils
import re
from collections.abc import Sequence
from typing import NamedTuple

from smarthost.queue.store import Envelope, Recipient

__all__ = ["Failure", "Notice", "make_bounce", "make_delay_notice", "make_success_notice", "wants_notice"]

MAX_LINE = 998  # RFC 5322 §2.1.1, without the CRLF
_FOLD_AT = 78
_KINDS = {
    "failure": ("FAILURE", "Undelivered Mail Returned to Sender"),
    "delay": ("DELAY", "Delayed Mail (still being retried)"),
    "success": ("SUCCESS", "Successful Mail Delivery Report"),
}
_ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})  # RFC 3464 §2.3.3
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")  # RFC 3463 §2
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_NEWLINES = re.compile(rb"\r\n|\r|\n")


class Failure(NamedTuple):
    """One recipient to report on (a plain tuple in this order works too)."""

    recipient: str
    status: str  # RFC 3463, e.g. "5.1.1"
    diagnostic: str  # the remote reply ("550 5.1.1 <x>: User unknown") or our own text
    remote_mta: str | None = None  # host name of the server that answered, if any
    action: str = "failed"  # RFC 3464 §2.3.3: failed, delayed, delivered, relayed, expanded
    diagnostic_type: str | None = None  # default: "smtp" with a remote_mta, else "X-Smarthost"


class Notice(NamedTuple):
    """A notice ready to queue: envelope sender (always ``""``), recipient, message bytes."""

    sender: str
    recipient: str
    message: bytes

    def envelope(self, arrival: float) -> Envelope:
        return Envelope(sender=self.sender, recipients=(Recipient(self.recipient),), protocol="local",
                        arrival=arrival)


def wants_notice(recipient: Recipient | None, kind: str) -> bool:
    """Whether the recipient's NOTIFY asks for a notice of ``kind`` (RFC 3461 §4.1)."""
    keyword = _KINDS[kind][0]
    notify = None if recipient is None else recipient.notify
    if notify is None:
        return kind != "success"
    return keyword in {n.upper() for n in notify}  # NEVER stands alone: it matches nothing


def make_bounce(
    envelope: Envelope,
    body: bytes,
    failed: Sequence[Failure | tuple],
    *,
    queue_id: str,
    reporting_mta: str,
    now: float,
    message_id: str,
    arrival: float | None = None,
    ret: str | None = None,
    postmaster: str = "postmaster",
    kind: str = "failure",
    bounce_size_limit: int = 50000,
    will_retry_until: float | None = None,
) -> Notice | None:
    """The notice for ``failed`` recipients of the message (``envelope``, ``body``), or None
    when none is due (null sender, NOTIFY). ``kind`` is "failure", "delay" or "success";
    ``ret`` overrides the envelope's RET; ``message_id`` is the notice's own id."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {', '.join(_KINDS)}")
    if not envelope.sender:
        return None  # RFC 3461 §6.2 / RFC 5321 §4.5.5: never notify the null sender
    by_address = {r.address.lower(): r for r in envelope.recipients}
    entries = [Failure(*item) for item in failed]
    entries = [f for f in entries if wants_notice(by_address.get(f.recipient.lower()), kind)]
    if not entries:
        return None
    for entry in entries:
        if not _STATUS.fullmatch(entry.status):
            raise ValueError(f"bad status code {entry.status!r}")
        if entry.action not in _ACTIONS:
            raise ValueError(f"bad action {entry.action!r}")
    arrival = envelope.arrival if arrival is None else arrival
    arrival = now if arrival is None else arrival
    full = (ret or envelope.ret or "HDRS").upper() == "FULL"
    original, original_type, description = _original(body, full, bounce_size_limit, kind)
    report, report_type = _report(envelope, entries, by_address, queue_id, reporting_mta, arrival, now,
                                  will_retry_until)
    text = _explanation(kind, entries, reporting_mta, postmaster, original_type, will_retry_until)
    boundary = _boundary(queue_id, now, reporting_mta, body)
    eight_bit = any(_has_8bit(part) for part in (text, report, original))
    head = [
        ("From", f"MAILER-DAEMON@{reporting_mta} (Mail Delivery System)"),
        ("To", envelope.sender),
        ("Subject", _KINDS[kind][1]),
        ("Auto-Submitted", "auto-replied"),
        ("Date", _date(now)),
        ("Message-ID", message_id if message_id.startswith("<") else f"<{message_id}>"),
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/report; report-type=delivery-status; boundary="{boundary}"'),
        ("Content-Transfer-Encoding", "8bit" if eight_bit else "7bit"),
    ]
    parts = [
        _part([("Content-Description", "Notification"), ("Content-Type", "text/plain; charset=utf-8"),
               ("Content-Transfer-Encoding", "8bit" if _has_8bit(text) else "7bit")], text),
        _part([("Content-Description", "Delivery report"), ("Content-Type", report_type)], report),
        _part([("Content-Description", description), ("Content-Type", original_type)]
              + ([("Content-Transfer-Encoding", "8bit")] if _has_8bit(original) else []), original),
    ]
    delimiter = b"--" + boundary.encode("ascii")
    message = _fields(head) + b"\r\nThis is a MIME-encapsulated message.\r\n\r\n"
    for part in parts:
        message += delimiter + b"\r\n" + part + b"\r\n"
    message += delimiter + b"--\r\n"
    return Notice("", envelope.sender, message)


def make_delay_notice(envelope: Envelope, body: bytes, delayed: Sequence[Failure | tuple], **kwargs) -> Notice | None:
    """A delay warning (``Action: delayed``, RFC 3464 §2.3.3); pass ``will_retry_until``."""
    entries = [Failure(*item)._replace(action="delayed") for item in delayed]
    return make_bounce(envelope, body, entries, kind="delay", **kwargs)


def make_success_notice(envelope: Envelope, body: bytes, delivered: Sequence[Failure | tuple],
                        **kwargs) -> Notice | None:
    """A success notice for NOTIFY=SUCCESS recipients (``delivered`` or ``relayed`` actions)."""
    return make_bounce(envelope, body, delivered, kind="success", **kwargs)


# -- the parts -----------------------------------------------------------------------------


def _original(body: bytes, full: bool, limit: int, kind: str) -> tuple[bytes, str, str]:
    which = "Delivered" if kind == "success" else ("Delayed" if kind == "delay" else "Undelivered")
    body = _NEWLINES.sub(b"\r\n", body)
    if full and len(body) <= limit and all(len(line) <= MAX_LINE for line in body.split(b"\r\n")):
        return body, "message/rfc822", f"{which} Message"
    end = body.find(b"\r\n\r\n")
    headers = body[: end + 2] if end >= 0 else body
    if len(headers) > limit:  # keep whole lines only
        cut = headers.rfind(b"\r\n", 0, limit)
        headers = headers[: cut + 2] if cut >= 0 else b""
    lines = headers.split(b"\r\n")
    headers = b"\r\n".join(line[:MAX_LINE] for line in lines)
    return headers, "text/rfc822-headers", f"{which} Message Headers"


def _report(envelope, entries, by_address, queue_id, reporting_mta, arrival, now, retry_until):
    addresses = [envelope.sender] + [f.recipient for f in entries]
    addresses += [r.orcpt or "" for r in envelope.recipients]
    utf8 = any(not a.isascii() for a in addresses)
    address_type = "utf-8" if utf8 else "rfc822"  # RFC 6533 §3
    message_fields = [
        ("Reporting-MTA", f"dns; {reporting_mta}"),  # RFC 3464 §2.2.2
        ("X-Smarthost-Queue-ID", queue_id),  # §2.2.1: X- extension fields
        ("X-Smarthost-Sender", f"{address_type}; {envelope.sender}"),
    ]
    if envelope.envid:
        message_fields.append(("Original-Envelope-Id", envelope.envid))  # §2.2.1
    message_fields.append(("Arrival-Date", _date(arrival)))  # §2.2.5
    groups = [_fields(message_fields)]
    for entry in entries:
        fields = [("Final-Recipient", f"{address_type}; {entry.recipient}")]  # §2.3.2
        rcpt = by_address.get(entry.recipient.lower())
        if rcpt is not None and rcpt.orcpt:
            fields.append(("Original-Recipient", _orcpt(rcpt.orcpt)))  # §2.3.1
        fields += [("Action", entry.action), ("Status", entry.status)]  # §2.3.3, §2.3.4
        if entry.remote_mta:
            fields.append(("Remote-MTA", f"dns; {entry.remote_mta}"))  # §2.3.5
        diagnostic_type = entry.diagnostic_type or ("smtp" if entry.remote_mta else "X-Smarthost")
        fields.append(("Diagnostic-Code", f"{diagnostic_type}; {entry.diagnostic}"))  # §2.3.6
        fields.append(("Last-Attempt-Date", _date(now)))  # §2.3.7
        if entry.action == "delayed" and retry_until is not None:
            fields.append(("Will-Retry-Until", _date(retry_until)))  # §2.3.8
        groups.append(_fields(fields))
    report_type = "message/global-delivery-status" if utf8 else "message/delivery-status"
    return b"\r\n".join(groups), report_type  # §2.1: groups separated by blank lines


def _orcpt(orcpt: str) -> str:
    """ORCPT as stored (``addr-type;address``, decoded) -> ``addr-type; address``."""
    addr_type, semicolon, address = orcpt.partition(";")
    return f"{addr_type.strip()}; {address.strip()}" if semicolon else f"rfc822; {orcpt.strip()}"


def _explanation(kind, entries, reporting_mta, postmaster, original_type, retry_until) -> bytes:
    attached = ("your message is attached" if original_type == "message/rfc822"
                else "the headers of your message are attached")
    lines = [f"This is the mail system at host {reporting_mta}.", ""]
    if kind == "failure":
        lines += ["Your message could not be delivered to one or more recipients.",
                  f"The reasons are below; {attached}."]
    elif kind == "delay":
        lines += ["This is a warning only: you do not need to send your message again.",
                  "It has not been delivered yet to the recipients below; the mail system",
                  "keeps trying" + (f" until {_date(retry_until)}." if retry_until is not None else ".")]
    else:
        lines += ["Your message was delivered to the recipients below, as you asked",
                  "(delivery status notification requested)."]
    lines += ["", f"For help, write to <{postmaster}> and include this report.", ""]
    for entry in entries:
        lines.append(f"<{entry.recipient}>: {entry.diagnostic}")
    text = "\r\n".join(_wrap(_clean(line)) for line in lines) + "\r\n"
    return text.encode("utf-8")


def _part(headers: list[tuple[str, str]], content: bytes) -> bytes:
    return _fields(headers) + b"\r\n" + content


# -- formatting ----------------------------------------------------------------------------


def _clean(text: str) -> str:
    """One line of text: control characters (CR, LF, NUL, ...) become a space."""
    return _CONTROL.sub(" ", text)


def _wrap(line: str) -> str:
    """A text line broken at spaces into lines of about 78 characters (never over 998 octets)."""
    return "\r\n".join(piece.lstrip(" ") for piece in _fold(line))


def _fold(text: str) -> list[str]:
    """Cut ``text`` before spaces so each piece is at most 78 octets where the words allow,
    and never more than MAX_LINE - 1 (room for the space a header continuation needs)."""
    pieces: list[str] = []
    while len(text.encode("utf-8")) > _FOLD_AT:
        cut = text.rfind(" ", 1, _FOLD_AT)
        if cut <= 0:
            cut = text.find(" ", _FOLD_AT)
        if cut <= 0 or len(text[:cut].encode("utf-8")) > MAX_LINE - 1:
            cut = _byte_cut(text, MAX_LINE - 1)
            if cut >= len(text):
                break
        pieces.append(text[:cut])
        text = text[cut:]
    pieces.append(text)
    return pieces


def _byte_cut(text: str, limit: int) -> int:
    """The largest index whose prefix is at most ``limit`` UTF-8 octets."""
    size = 0
    for index, ch in enumerate(text):
        size += len(ch.encode("utf-8"))
        if size > limit:
            return index
    return len(text)


def _fields(fields: list[tuple[str, str]]) -> bytes:
    """Header fields, folded at whitespace (RFC 5322 §2.2.3), CRLF-terminated."""
    out = []
    for name, value in fields:
        pieces = _fold(f"{name}: {_clean(value)}")
        # A continuation line starts with whitespace; a piece cut without a space gets one.
        lines = [pieces[0]] + [p if p.startswith(" ") else " " + p for p in pieces[1:]]
        out.append("\r\n".join(lines) + "\r\n")
    return "".join(out).encode("utf-8")


def _date(epoch: float) -> str:
    """RFC 5322 §3.3 date-time in UTC."""
    return email.utils.format_datetime(datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc))


def _boundary(queue_id: str, now: float, host: str, body: bytes) -> str:
    """A boundary that does not occur in the original (RFC 2046 §5.1.1: at most 70 characters)."""
    base = f"{queue_id}.{int(now)}/{host}"[:60]
    boundary, n = base, 0
    while boundary.encode("utf-8", "replace") in body:
        n += 1
        boundary = f"{base}={n}"
    return boundary


def _has_8bit(data: bytes) -> bool:
    return not data.isascii()
