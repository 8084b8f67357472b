"""Our client core talking to our server core in memory, and to the real client SASL mechanisms."""

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client_transcript import session
from server_transcript import FakeShell, default_decide
from smarthost.sasl.client import ClientContext, client_mechanism
from smarthost.smtp.client import (
    NEED_DATA,
    ClientConnection,
    Closed,
    DataReady,
    EhloDone,
    Greeting,
    Status,
    TransactionDone,
)
from smarthost.smtp.commands import MailParams
from smarthost.smtp.replies import Reply
from smarthost.smtp.server import RcptTo


def converse(client: ClientConnection, shell: FakeShell, act) -> list:
    """Shuttle bytes until both sides are quiet; ``act(event)`` is the client shell's reaction."""
    events = []
    to_client = shell.greeting
    while True:
        if to_client:
            client.receive_data(to_client)
        while (event := client.next_event()) is not NEED_DATA:
            events.append(event)
            act(event)
        to_server = client.data_to_send()
        if not to_server:
            return events
        to_client = shell.send(to_server)


def deliver(body: bytes, recipients, refuse=()):
    """One pipelined transaction to our server; returns (client events, server shell)."""

    def decide(event):
        if isinstance(event, RcptTo) and str(event.address) in refuse:
            return Reply(550, "5.1.1", "no such user")
        return default_decide(event)

    shell = FakeShell(decide=decide)
    client = ClientConnection()

    def act(event):
        if isinstance(event, Greeting):
            client.ehlo("client.example.org")
        elif isinstance(event, EhloDone):
            client.mail("alice@example.org", MailParams(size=len(body)))
            for rcpt in recipients:
                client.rcpt(rcpt)
            client.data()
            client.send_message(body)
        elif isinstance(event, TransactionDone):
            client.quit()

    return converse(client, shell, act), shell


def test_a_pipelined_transaction_with_our_server():
    body = b"Subject: hi\r\n\r\n.leading dot\r\n" + b"l" * 1500 + b"\r\n"
    recipients = ["bob@example.com", "carol@example.com", "dave@example.com"]
    events, shell = deliver(body, recipients, refuse={"carol@example.com"})
    (done,) = [e for e in events if isinstance(e, TransactionDone)]
    assert [o.status for o in done.outcomes] == [Status.SENT, Status.BOUNCED, Status.SENT]
    assert done.outcomes[0].text == "250 2.0.0 Ok: queued as TEST"
    assert isinstance(events[-1], Closed)
    # The long line arrives folded the Postfix way, everything else byte for byte.
    assert shell.messages == [body.replace(b"l" * 998, b"l" * 998 + b"\r\n ", 1)]
    assert shell.conn.counters["rcpt"] == 3


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from([b"", b".", b"..", b"a", b" .", b"\xc3\xa9t\xc3\xa9", b"From x"]), max_size=8))
def test_any_short_lines_arrive_byte_for_byte(lines):
    body = b"".join(line + b"\r\n" for line in lines)
    events, shell = deliver(body, ["bob@example.com"])
    assert shell.messages == [body]
    assert any(isinstance(e, DataReady) for e in events)


@pytest.mark.parametrize("name", ["PLAIN", "LOGIN"])
def test_real_client_mechanisms_drive_the_exchange(name):
    wire = session(f"S: 250-mx.example.com\nS: 250 AUTH {name}\n", tls_active=True)
    mech = client_mechanism(name, "relayuser", "s3cret", ClientContext())
    wire.conn.auth(mech, name)
    if name == "PLAIN":
        token = base64.b64encode(b"\0relayuser\0s3cret").decode()
        script = f"C: AUTH PLAIN {token}\nS: 235 2.7.0 ok"
    else:
        user, password = base64.b64encode(b"relayuser").decode(), base64.b64encode(b"s3cret").decode()
        script = f"C: AUTH LOGIN\nS: 334 VXNlcm5hbWU6\nC: {user}\nS: 334 UGFzc3dvcmQ6\nC: {password}\nS: 235 2.7.0 ok"
    (done,) = wire.play(script)
    assert done.ok and wire.conn.authenticated
