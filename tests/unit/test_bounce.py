"""Delivery status notifications, parsed back with Python's email package field by field."""

from __future__ import annotations

import email
import email.policy
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smarthost.queue.bounce import Failure, make_bounce, make_delay_notice, make_success_notice, wants_notice
from smarthost.queue.store import Envelope, Recipient

ORIGINAL = (b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: Lunch?\r\n"
            b"Message-ID: <orig@example.org>\r\n\r\nSee you at noon.\r\n")
ENVELOPE = Envelope(
    sender="alice@example.org",
    recipients=(
        Recipient("bob@example.com", orcpt="rfc822;Bob@Example.com"),
        Recipient("carol@example.net", notify=("NEVER",)),
        Recipient("dave@example.net", notify=("SUCCESS", "DELAY")),
        Recipient("erin@example.net", notify=("FAILURE",)),
    ),
    envid="ENV-42",
    arrival=1700000000.0,
)
COMMON = dict(queue_id="0XXmLkTEa03Dl00", reporting_mta="mail.example.org", now=1700000600.0,
              message_id="0XXmLkTEb03Dl00@mail.example.org")
BOB = Failure("bob@example.com", "5.1.1", "550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown",
              "mx.example.com")


def parse(message: bytes):
    return email.message_from_bytes(message, policy=email.policy.default)


def check_wire_form(message: bytes) -> None:
    assert b"\r\n" in message
    assert message.count(b"\n") == message.count(b"\r\n"), "bare LF"
    assert message.count(b"\r") == message.count(b"\r\n"), "bare CR"
    for line in message.split(b"\r\n"):
        assert len(line) <= 998


def test_failure_report_field_by_field():
    notice = make_bounce(ENVELOPE, ORIGINAL, [BOB], **COMMON)
    assert notice.sender == "" and notice.recipient == "alice@example.org"
    check_wire_form(notice.message)
    msg = parse(notice.message)
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@mail.example.org"
    assert b"\r\nFrom: MAILER-DAEMON@mail.example.org (Mail Delivery System)\r\n" in b"\r\n" + notice.message
    assert msg["To"] == "alice@example.org"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Date"] == "Tue, 14 Nov 2023 22:23:20 +0000"
    assert msg["Message-ID"] == "<0XXmLkTEb03Dl00@mail.example.org>"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    text, report, original = msg.get_payload()

    assert text.get_content_type() == "text/plain"
    body = text.get_content().replace("\r\n", "\n")
    assert body.startswith("This is the mail system at host mail.example.org.\n")
    assert "<bob@example.com>: 550 5.1.1 <bob@example.com>: Recipient address rejected:" in body
    assert "<postmaster>" in body

    assert report.get_content_type() == "message/delivery-status"
    per_message, per_recipient = report.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mail.example.org"
    assert per_message["X-Smarthost-Queue-ID"] == "0XXmLkTEa03Dl00"
    assert per_message["X-Smarthost-Sender"] == "rfc822; alice@example.org"
    assert per_message["Original-Envelope-Id"] == "ENV-42"
    assert per_message["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert per_recipient["Final-Recipient"] == "rfc822; bob@example.com"
    assert per_recipient["Original-Recipient"] == "rfc822; Bob@Example.com"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Remote-MTA"] == "dns; mx.example.com"
    assert per_recipient["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown")
    assert per_recipient["Last-Attempt-Date"] == "Tue, 14 Nov 2023 22:23:20 +0000"

    assert original.get_content_type() == "text/rfc822-headers"
    assert original.get_payload(decode=True) == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"


def test_ret_full_returns_the_whole_message_and_big_ones_only_their_headers():
    notice = make_bounce(ENVELOPE, ORIGINAL, [BOB], ret="FULL", **COMMON)
    original = parse(notice.message).get_payload()[2]
    assert original.get_content_type() == "message/rfc822"
    returned = original.get_payload()[0]
    assert returned["Subject"] == "Lunch?"
    assert returned.get_payload() == "See you at noon.\r\n"
    assert notice.message.endswith(ORIGINAL + b"\r\n--0XXmLkTEa03Dl00.1700000600/mail.example.org--\r\n")

    big = ORIGINAL + b"x" * 100 + b"\r\n"
    notice = make_bounce(ENVELOPE, big, [BOB], ret="FULL", bounce_size_limit=len(big) - 1, **COMMON)
    assert parse(notice.message).get_payload()[2].get_content_type() == "text/rfc822-headers"


def test_envelope_ret_full_is_honoured():
    envelope = Envelope("alice@example.org", ENVELOPE.recipients, ret="FULL", arrival=1.0)
    notice = make_bounce(envelope, ORIGINAL, [BOB], **COMMON)
    assert parse(notice.message).get_payload()[2].get_content_type() == "message/rfc822"


def test_no_notice_to_the_null_sender():
    envelope = Envelope("", ENVELOPE.recipients)
    assert make_bounce(envelope, ORIGINAL, [BOB], **COMMON) is None


def test_notify_decides_who_is_reported():
    failures = [Failure(r, "5.0.0", "550 no", None) for r in
                ("bob@example.com", "carol@example.net", "dave@example.net", "erin@example.net")]
    notice = make_bounce(ENVELOPE, ORIGINAL, failures, **COMMON)
    finals = [g["Final-Recipient"] for g in parse(notice.message).get_payload()[1].get_payload()[1:]]
    assert finals == ["rfc822; bob@example.com", "rfc822; erin@example.net"]  # NEVER and SUCCESS,DELAY left out
    only_never = [Failure("carol@example.net", "5.0.0", "550 no")]
    assert make_bounce(ENVELOPE, ORIGINAL, only_never, **COMMON) is None
    assert wants_notice(Recipient("x"), "failure") and wants_notice(Recipient("x"), "delay")
    assert not wants_notice(Recipient("x"), "success")
    assert not wants_notice(Recipient("x", notify=("NEVER",)), "failure")


def test_own_diagnostics_use_the_x_smarthost_type():
    notice = make_bounce(ENVELOPE, ORIGINAL, [("bob@example.com", "5.1.1", 'unknown user: "bob"')], **COMMON)
    group = parse(notice.message).get_payload()[1].get_payload()[1]
    assert group["Diagnostic-Code"] == 'X-Smarthost; unknown user: "bob"'
    assert group["Remote-MTA"] is None


def test_delay_notice():
    notice = make_delay_notice(ENVELOPE, ORIGINAL, [Failure("dave@example.net", "4.4.1", "connection timed out",
                                                            "mx.example.net")],
                               will_retry_until=1700432000.0, **COMMON)
    msg = parse(notice.message)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    group = msg.get_payload()[1].get_payload()[1]
    assert group["Action"] == "delayed"
    assert group["Status"] == "4.4.1"
    assert group["Will-Retry-Until"] == "Sun, 19 Nov 2023 22:13:20 +0000"
    assert "you do not need to send your message again" in msg.get_payload()[0].get_content()
    # erin asked for FAILURE only: no delay notice
    assert make_delay_notice(ENVELOPE, ORIGINAL, [Failure("erin@example.net", "4.4.1", "x")], **COMMON) is None


def test_success_notice_only_when_asked():
    done = [Failure("dave@example.net", "2.0.0", "250 2.0.0 Ok: queued as X", "mx.example.net", "relayed"),
            Failure("bob@example.com", "2.0.0", "250 ok", "mx.example.com", "delivered")]
    msg = parse(make_success_notice(ENVELOPE, ORIGINAL, done, **COMMON).message)
    assert msg["Subject"] == "Successful Mail Delivery Report"
    groups = msg.get_payload()[1].get_payload()[1:]
    assert [(g["Final-Recipient"], g["Action"]) for g in groups] == [("rfc822; dave@example.net", "relayed")]


def test_utf8_addresses_make_a_global_delivery_status():
    envelope = Envelope("jörg@example.org", (Recipient("zoë@example.com"),), smtputf8=True, arrival=1.0)
    notice = make_bounce(envelope, ORIGINAL, [Failure("zoë@example.com", "5.1.1", "550 unknown")], **COMMON)
    check_wire_form(notice.message)
    assert b"Content-Type: message/global-delivery-status" in notice.message
    assert "Final-Recipient: utf-8; zoë@example.com".encode() in notice.message


def test_boundary_never_occurs_in_the_original():
    body = ORIGINAL + b"--0XXmLkTEa03Dl00.1700000600/mail.example.org\r\n"
    notice = make_bounce(ENVELOPE, body, [BOB], ret="FULL", **COMMON)
    boundary = parse(notice.message).get_boundary()
    assert boundary == "0XXmLkTEa03Dl00.1700000600/mail.example.org=1"
    assert len(parse(notice.message).get_payload()) == 3


def test_bad_status_or_action_is_a_programming_error():
    with pytest.raises(ValueError):
        make_bounce(ENVELOPE, ORIGINAL, [("bob@example.com", "550", "x")], **COMMON)
    with pytest.raises(ValueError):
        make_bounce(ENVELOPE, ORIGINAL, [("bob@example.com", "5.0.0", "x", None, "lost")], **COMMON)


@settings(max_examples=60, deadline=None)
@given(diagnostic=st.text(min_size=0, max_size=3000), body=st.binary(max_size=3000), full=st.booleans())
def test_any_diagnostic_and_body_give_a_well_formed_message(diagnostic, body, full):
    notice = make_bounce(ENVELOPE, body, [Failure("bob@example.com", "5.0.0", diagnostic, "mx.example.com")],
                         ret="FULL" if full else "HDRS", **COMMON)
    check_wire_form(notice.message)
    msg = parse(notice.message)
    assert len(msg.get_payload()) == 3
    assert msg.get_payload()[1].get_payload()[1]["Status"] == "5.0.0"
    # Unfolded (RFC 5322 §2.2.3: remove the CRLFs), the field holds the text with control
    # characters as spaces, unless a run without spaces was too long for one line.
    start = notice.message.index(b"\r\nDiagnostic-Code: ") + 2
    end = notice.message.index(b"\r\nLast-Attempt-Date: ")
    field = notice.message[start:end].replace(b"\r\n", b"").decode("utf-8")
    cleaned = re.sub(r"[\x00-\x1f\x7f]+", " ", diagnostic)
    if max((len(word.encode()) for word in cleaned.split(" ")), default=0) < 900:
        assert field == f"Diagnostic-Code: smtp; {cleaned}"
