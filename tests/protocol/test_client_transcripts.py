"""Byte transcripts against the pure SMTP client: what it writes, and what it makes of the replies."""

import base64

import pytest

from client_transcript import EHLO_REPLY, GREETING, FakePlain, connect, session
from smarthost.smtp.client import (
    AuthDone,
    ClientSettings,
    Closed,
    CommandFailed,
    DataReady,
    DataRefused,
    EhloDone,
    Greeting,
    MessageResult,
    Outcome,
    RecipientResult,
    Refused,
    ResetDone,
    SenderResult,
    State,
    Status,
    TLSReady,
    TransactionDone,
)
from smarthost.smtp.commands import MailParams, RcptParams
from smarthost.smtp.replies import Reply

NO_PIPELINING = """
S: 250-mx.example.com
S: 250-SIZE 1000000
S: 250 8BITMIME
"""


# One sender, one recipient, DATA, both accepted: the start of many transcripts below.
HEAD = "C: MAIL FROM:<a@example.org>\nC: RCPT TO:<b@example.com>\nC: DATA\nS: 250 Ok\nS: 250 Ok\n"


def start(wire):
    wire.conn.mail("a@example.org")
    wire.conn.rcpt("b@example.com")
    wire.conn.data()


def outcomes(wire):
    (done,) = wire.of_type(TransactionDone)
    return [(o.status, o.text) for o in done.outcomes]


def test_greeting_and_ehlo():
    wire = connect()
    events = wire.play(GREETING)
    assert events == [Greeting(Reply(220, None, "mx.example.com ESMTP"))]
    wire.conn.ehlo("client.example.org")
    (done,) = wire.play("C: EHLO client.example.org\n" + EHLO_REPLY)
    assert isinstance(done, EhloDone) and done.esmtp
    assert done.capabilities["SIZE"] == "1000000"
    assert done.capabilities["AUTH"] == "PLAIN LOGIN"
    assert done.capabilities["PIPELINING"] == ""
    assert wire.conn.pipelining and wire.conn.max_size == 1000000
    assert wire.conn.state is State.READY


def test_pipelined_transaction_goes_out_in_one_write_and_replies_map_back_in_order():
    wire = session()
    conn = wire.conn
    conn.mail("alice@example.org", MailParams(size=12))
    assert conn.rcpt("bob@example.com") == 0
    assert conn.rcpt("carol@example.com") == 1
    assert conn.rcpt("dave@example.com") == 2
    conn.data()
    conn.send_message(b"Subject: hi\r\n\r\n.dot\r\n")
    wire.play(
        """
        C: MAIL FROM:<alice@example.org> SIZE=12
        C: RCPT TO:<bob@example.com>
        C: RCPT TO:<carol@example.com>
        C: RCPT TO:<dave@example.com>
        C: DATA
        S: 250 2.1.0 Ok
        S: 250 2.1.5 Ok
        S: 550 5.1.1 <carol@example.com>: Recipient address rejected
        S: 450 4.2.0 <dave@example.com>: greylisted
        S: 354 End data with <CR><LF>.<CR><LF>
        C: Subject: hi
        C:
        C: ..dot
        C: .
        S: 250 2.0.0 Ok: queued as 4XyZ
        """
    )
    kinds = [type(e) for e in wire.events]
    rcpt = [RecipientResult] * 3
    assert kinds == [SenderResult, *rcpt, DataReady, MessageResult, TransactionDone]
    assert [e.index for e in wire.of_type(RecipientResult)] == [0, 1, 2]
    assert outcomes(wire) == [
        (Status.SENT, "250 2.0.0 Ok: queued as 4XyZ"),
        (Status.BOUNCED, "550 5.1.1 <carol@example.com>: Recipient address rejected"),
        (Status.DEFERRED, "450 4.2.0 <dave@example.com>: greylisted"),
    ]
    assert conn.state is State.READY


def test_without_pipelining_one_command_per_reply():
    wire = session(NO_PIPELINING)
    conn = wire.conn
    conn.mail("alice@example.org")
    conn.rcpt("bob@example.com")
    conn.rcpt("carol@example.com")
    conn.data()
    conn.send_message(b"hello\r\n")
    wire.play(
        """
        C: MAIL FROM:<alice@example.org>
        S: 250 2.1.0 Ok
        C: RCPT TO:<bob@example.com>
        S: 250 2.1.5 Ok
        C: RCPT TO:<carol@example.com>
        S: 250 2.1.5 Ok
        C: DATA
        S: 354 go ahead
        C: hello
        C: .
        S: 250 Ok
        """
    )
    assert [o.status for o in wire.of_type(TransactionDone)[0].outcomes] == [Status.SENT, Status.SENT]


def test_without_pipelining_a_refused_sender_stops_the_transaction_before_rcpt():
    wire = session(NO_PIPELINING)
    conn = wire.conn
    conn.mail("alice@example.org")
    conn.rcpt("bob@example.com")
    conn.data()
    conn.send_message(b"hello\r\n")
    wire.play(
        """
        C: MAIL FROM:<alice@example.org>
        S: 553 5.7.1 Sender address rejected
        """
    )
    assert outcomes(wire) == [(Status.BOUNCED, "553 5.7.1 Sender address rejected")]
    # The next transaction starts with RSET: the server may hold state from this one.
    conn.mail("alice@example.org")
    wire.play("C: RSET\nS: 250 Ok\nC: MAIL FROM:<alice@example.org>")


def test_without_pipelining_no_data_when_every_recipient_is_refused():
    wire = session(NO_PIPELINING)
    conn = wire.conn
    conn.mail("alice@example.org")
    conn.rcpt("bob@example.com")
    conn.data()
    wire.play(
        """
        C: MAIL FROM:<alice@example.org>
        S: 250 Ok
        C: RCPT TO:<bob@example.com>
        S: 450 4.1.1 try later
        """
    )
    assert outcomes(wire) == [(Status.DEFERRED, "450 4.1.1 try later")]
    assert conn.state is State.READY


def test_pipelined_refused_sender_maps_every_reply_and_bounces_with_the_mail_reply():
    wire = session()
    conn = wire.conn
    conn.mail("alice@example.org")
    conn.rcpt("bob@example.com")
    conn.data()
    conn.send_message(b"x\r\n")
    wire.play(
        """
        C: MAIL FROM:<alice@example.org>
        C: RCPT TO:<bob@example.com>
        C: DATA
        S: 550 5.1.8 Sender domain does not exist
        S: 503 5.5.1 Error: need MAIL command
        S: 503 5.5.1 Error: need RCPT command
        """
    )
    assert isinstance(wire.events[-2], DataRefused)
    assert outcomes(wire) == [(Status.BOUNCED, "550 5.1.8 Sender domain does not exist")]


def test_pipelined_data_accepted_after_every_recipient_failed_sends_an_empty_message():
    # RFC 2920 §3.1: the client must not assume DATA fails; it sends a lone ".".
    wire = session()
    conn = wire.conn
    conn.mail("alice@example.org")
    conn.rcpt("bob@example.com")
    conn.data()
    conn.send_message(b"secret content\r\n")
    wire.play(
        """
        C: MAIL FROM:<alice@example.org>
        C: RCPT TO:<bob@example.com>
        C: DATA
        S: 250 Ok
        S: 550 5.1.1 no such user
        S: 354 go
        C: .
        S: 250 Ok: queued as EMPTY
        """
    )
    assert not wire.of_type(MessageResult) and not wire.of_type(DataReady)
    assert outcomes(wire) == [(Status.BOUNCED, "550 5.1.1 no such user")]


def test_data_refused_defers_or_bounces_the_accepted_recipients():
    wire = session()
    start(wire)
    wire.play(HEAD + "S: 451 4.3.0 try later")
    assert outcomes(wire) == [(Status.DEFERRED, "451 4.3.0 try later")]


def test_message_sent_after_data_ready():
    wire = session()
    start(wire)
    events = wire.play(HEAD + "S: 354 go")
    assert isinstance(events[-1], DataReady)
    wire.conn.send_message(b"body")
    wire.play("C: body\nC: .\nS: 554 5.7.1 spam")
    assert outcomes(wire) == [(Status.BOUNCED, "554 5.7.1 spam")]


def test_rejected_message_needs_no_reset_but_a_refused_data_does():
    wire = session()
    start(wire)
    wire.conn.send_message(b"x")
    wire.play(HEAD + "S: 354 go\nC: x\nC: .\nS: 554 5.7.1 no")
    # After a message reply the server has reset: the next MAIL goes out without RSET.
    start(wire)
    wire.play(HEAD + "S: 503 5.5.1 no")
    wire.conn.mail("a@example.org")
    wire.play("C: RSET\nC: MAIL FROM:<a@example.org>\nS: 250 Ok\nS: 250 Ok")


def test_ehlo_refused_with_5xx_falls_back_to_helo_without_extensions():
    wire = connect()
    wire.play(GREETING)
    wire.conn.ehlo("client.example.org")
    events = wire.play(
        """
        C: EHLO client.example.org
        S: 502 5.5.2 Error: command not recognized
        C: HELO client.example.org
        S: 250 mx.example.com
        """
    )
    assert events == [EhloDone(Reply(250, None, "mx.example.com"), {}, False)]
    conn = wire.conn
    with pytest.raises(Refused) as info:  # no SMTPUTF8 without ESMTP
        conn.mail("ålice@example.org")
    assert info.value.outcome.enhanced == "5.6.7"
    conn.mail("a@example.org", MailParams(size=10, body="8BITMIME"))
    conn.rcpt("b@example.com", RcptParams(notify=("FAILURE",)))
    wire.play("C: MAIL FROM:<a@example.org>\nS: 250 ok\nC: RCPT TO:<b@example.com>")  # no parameters at all


def test_ehlo_4xx_is_a_failure_not_a_fallback():
    wire = connect()
    wire.play(GREETING)
    wire.conn.ehlo("client.example.org")
    events = wire.play("C: EHLO client.example.org\nS: 421 4.3.2 shutting down")
    reply = Reply(421, "4.3.2", "shutting down")
    assert events == [CommandFailed("EHLO", reply), Closed(reply)]


def test_a_refused_greeting_allows_only_quit():
    wire = connect()
    events = wire.play("S: 554 5.7.1 go away")
    assert not events[0].ok
    with pytest.raises(RuntimeError):
        wire.conn.ehlo("client.example.org")
    wire.conn.quit()
    assert wire.play("C: QUIT\nS: 221 Bye")[-1] == Closed(Reply(221, None, "Bye"))


def test_size_limit_of_the_server_refuses_before_sending():
    wire = session()
    with pytest.raises(Refused) as info:
        wire.conn.mail("a@example.org", MailParams(size=1000001))
    outcome = info.value.outcome
    assert outcome.status is Status.BOUNCED and outcome.enhanced == "5.3.4"
    assert "1000001" in outcome.text and "1000000" in outcome.text
    assert wire.conn.data_to_send() == b""
    assert wire.conn.state is State.READY


def test_esmtp_parameters_only_when_offered():
    params = MailParams(size=5, body="8BITMIME", smtputf8=True, ret="HDRS", envid="id+1=x")
    rcpt = RcptParams(notify=("SUCCESS", "FAILURE"), orcpt="rfc822;bøb@example.com")
    wire = session()
    wire.conn.mail("alice@example.org", params)
    wire.conn.rcpt("bøb@example.com", rcpt)
    wire.play(
        """
        C: MAIL FROM:<alice@example.org> SIZE=5 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+2B1+3Dx
        C: RCPT TO:<bøb@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+C3+B8b@example.com
        """
    )
    plain = session("S: 250-mx.example.com\nS: 250 PIPELINING\n")
    plain.conn.mail("alice@example.org", MailParams(size=5, body="8BITMIME", ret="HDRS", envid="x"))
    plain.conn.rcpt("bob@example.com", rcpt)
    plain.play("C: MAIL FROM:<alice@example.org>\nC: RCPT TO:<bob@example.com>")


def test_smtputf8_message_to_a_server_without_smtputf8_bounces_5_6_7():
    wire = session("S: 250-mx.example.com\nS: 250 PIPELINING\n")
    with pytest.raises(Refused) as info:
        wire.conn.mail("alice@example.org", MailParams(smtputf8=True))
    assert (info.value.outcome.status, info.value.outcome.enhanced) == (Status.BOUNCED, "5.6.7")
    wire.conn.mail("alice@example.org")
    with pytest.raises(Refused) as info:
        wire.conn.rcpt("bøb@example.com")
    assert info.value.outcome.enhanced == "5.6.7"


@pytest.mark.parametrize(
    "address",
    [
        "bob@example.com\r\nRCPT TO:<evil@example.net>",
        "bob@exa\nmple.com",
        "bob\x00@example.com",
        "bob@example.com> NOTIFY=NEVER",
        "no-domain",
        "",
    ],
)
def test_addresses_that_could_inject_never_reach_the_wire(address):
    wire = session()
    wire.conn.mail("alice@example.org")
    with pytest.raises(Refused) as info:
        wire.conn.rcpt(address)
    assert info.value.outcome.status is Status.BOUNCED
    assert info.value.outcome.enhanced == "5.1.3"
    assert wire.conn.data_to_send() == b"MAIL FROM:<alice@example.org>\r\n"


def test_bad_sender_is_refused_with_5_1_7_and_the_null_sender_is_fine():
    wire = session()
    with pytest.raises(Refused) as info:
        wire.conn.mail("alice@example.org\r\nDATA")
    assert info.value.outcome.enhanced == "5.1.7"
    wire.conn.mail("")
    wire.conn.rcpt("postmaster")
    wire.play("C: MAIL FROM:<>\nC: RCPT TO:<postmaster>")


def test_a_transaction_without_recipients_ends_at_data():
    wire = session()
    wire.conn.mail("a@example.org")
    with pytest.raises(Refused):
        wire.conn.rcpt("bad address@example.com")
    wire.conn.data()
    wire.play("C: MAIL FROM:<a@example.org>\nS: 250 ok")
    assert wire.of_type(TransactionDone) == [TransactionDone(())]
    assert wire.conn.state is State.READY


# STARTTLS ----------------------------------------------------------------------------


def test_starttls_then_fresh_ehlo_and_capabilities_forgotten():
    wire = session()
    conn = wire.conn
    conn.starttls()
    events = wire.play("C: STARTTLS\nS: 220 2.0.0 Ready to start TLS")
    assert events == [TLSReady()]
    assert conn.state is State.TLS_HANDSHAKE and conn.capabilities == {}
    conn.tls_established()
    assert conn.tls_active and conn.state is State.AWAIT_EHLO
    with pytest.raises(RuntimeError):
        conn.mail("a@example.org")
    conn.ehlo("client.example.org")
    wire.play("C: EHLO client.example.org\nS: 250-mx.example.com\nS: 250 AUTH PLAIN")
    assert conn.capabilities == {"AUTH": "PLAIN"}


def test_starttls_refused_with_454_reports_and_stays_in_plaintext():
    wire = session()
    wire.conn.starttls()
    events = wire.play("C: STARTTLS\nS: 454 4.7.0 TLS not available due to local problem")
    assert events == [CommandFailed("STARTTLS", Reply(454, "4.7.0", "TLS not available due to local problem"))]
    assert not wire.conn.tls_active
    with pytest.raises(Refused):  # and no credentials over the plaintext connection
        wire.conn.auth(FakePlain("u", "p"), "PLAIN")


def test_starttls_not_offered_is_refused_locally():
    wire = session(NO_PIPELINING)
    with pytest.raises(Refused) as info:
        wire.conn.starttls()
    assert info.value.outcome.status is Status.DEFERRED
    assert wire.conn.data_to_send() == b""


# AUTH ----------------------------------------------------------------------------------


def test_auth_refused_on_plaintext_without_sending_anything():
    wire = session()
    with pytest.raises(Refused) as info:
        wire.conn.auth(FakePlain("user", "hunter2"), "PLAIN")
    assert info.value.outcome.status is Status.DEFERRED
    assert "TLS" in info.value.outcome.text
    assert wire.conn.data_to_send() == b""


def test_auth_plain_with_initial_response_over_tls():
    wire = session(tls_active=True)
    wire.conn.auth(FakePlain("user", "hunter2"), "plain")
    token = base64.b64encode(b"\0user\0hunter2").decode()
    events = wire.play(f"C: AUTH PLAIN {token}\nS: 235 2.7.0 Authentication successful")
    assert events == [AuthDone(Reply(235, "2.7.0", "Authentication successful"))]
    assert events[0].ok and wire.conn.authenticated


def test_auth_allowed_on_plaintext_only_when_the_settings_say_so():
    wire = session(settings=ClientSettings(allow_plaintext_auth=True))
    wire.conn.auth(FakePlain("user", "pw"), "PLAIN")
    assert wire.conn.data_to_send().startswith(b"AUTH PLAIN ")


def test_auth_challenge_and_response():
    mech = FakePlain("user", "pw", initial=False)
    wire = session(tls_active=True)
    wire.conn.auth(mech, "PLAIN")
    token = base64.b64encode(b"\0user\0pw").decode()
    events = wire.play(f"C: AUTH PLAIN\nS: 334 \nC: {token}\nS: 235 2.7.0 ok")
    assert mech.challenges == [b""]
    assert events[0].ok


def test_auth_535_is_reported_not_ok():
    wire = session(tls_active=True)
    wire.conn.auth(FakePlain("user", "wrong"), "PLAIN")
    wire.conn.data_to_send()
    (done,) = wire.feed(b"535 5.7.8 Error: authentication failed\r\n")
    assert not done.ok and done.reply.code == 535
    assert not wire.conn.authenticated


def test_auth_bad_base64_challenge_cancels_with_star():
    wire = session(tls_active=True)
    wire.conn.auth(FakePlain("u", "p", initial=False), "PLAIN")
    events = wire.play("C: AUTH PLAIN\nS: 334 not*base64!\nC: *\nS: 501 5.7.0 cancelled")
    assert not events[0].ok and "base64" in events[0].error


def test_auth_endless_challenges_are_cut_off():
    settings = ClientSettings(max_auth_rounds=2)
    wire = session(settings=settings, tls_active=True)
    wire.conn.auth(FakePlain("u", "p", initial=False), "PLAIN")
    token = base64.b64encode(b"\0u\0p").decode()
    events = wire.play(f"C: AUTH PLAIN\nS: 334 \nC: {token}\nS: 334 \nC: {token}\nS: 334 \nC: *\nS: 501 no")
    assert not events[0].ok


def test_auth_with_a_mechanism_the_server_does_not_offer():
    wire = session(tls_active=True)
    with pytest.raises(Refused):
        wire.conn.auth(FakePlain("u", "p"), "CRAM-MD5")


def test_a_server_that_fails_to_prove_itself_fails_the_authentication():
    class Unproven(FakePlain):
        def finish(self):
            raise ValueError("bad server signature")

    wire = session(tls_active=True)
    wire.conn.auth(Unproven("u", "p"), "PLAIN")
    wire.conn.data_to_send()
    (done,) = wire.feed(b"235 2.7.0 ok\r\n")
    assert not done.ok and "signature" in done.error
    assert not wire.conn.authenticated


def test_credentials_are_not_in_the_repr():
    wire = session(tls_active=True)
    wire.conn.auth(FakePlain("user", "hunter2"), "PLAIN")
    assert "hunter2" not in repr(wire.conn) and "aHVudGVy" not in repr(wire.conn)


# Ending ----------------------------------------------------------------------------------


def test_rset_and_quit():
    wire = session()
    wire.conn.rset()
    assert wire.play("C: RSET\nS: 250 2.0.0 Ok") == [ResetDone(Reply(250, "2.0.0", "Ok"))]
    wire.conn.quit()
    assert wire.play("C: QUIT\nS: 221 2.0.0 Bye")[-1] == Closed(Reply(221, "2.0.0", "Bye"))
    assert wire.conn.state is State.CLOSED


def test_quit_waits_until_the_message_is_given():
    wire = session()
    start(wire)
    with pytest.raises(RuntimeError):
        wire.conn.quit()


def test_quit_pipelined_after_the_message():
    wire = session()
    c = wire.conn
    c.mail("a@example.org")
    c.rcpt("b@example.com")
    c.data()
    c.send_message(b"x\r\n")
    c.quit()
    wire.play(
        """
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.com>
        C: DATA
        S: 250 ok
        S: 250 ok
        S: 354 go
        C: x
        C: .
        S: 250 queued
        C: QUIT
        S: 221 bye
        """
    )
    assert [type(e) for e in wire.events][-3:] == [MessageResult, TransactionDone, Closed]


def test_abort_defers_the_open_transaction():
    wire = session()
    start(wire)
    wire.conn.abort("timeout after DATA")
    wire.drain()
    assert outcomes(wire) == [(Status.DEFERRED, "timeout after DATA")]
    assert isinstance(wire.events[-1], Closed)


def test_outcome_string_is_the_log_format():
    outcome = Outcome.from_reply(Reply(250, "2.0.0", "Ok: queued as 4XyZ"))
    assert str(outcome) == "sent (250 2.0.0 Ok: queued as 4XyZ)"
    assert Outcome.from_reply(Reply(550, None, ("no", "such user"))).enhanced == "5.0.0"
    assert Outcome.from_reply(Reply(354, None, "odd")).status is Status.DEFERRED
