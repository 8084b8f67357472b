"""The operator's mail log (issue 2): a line for the connection, for every reject with client,
sender and reason, the disconnect summary with command counts, and never a message body."""

from __future__ import annotations

import re

import pytest

from peers import free_port, wait_for_text
from test_server import Raw, send_one

MARKER = "body-marker-7f3a9c"  # must never reach the log
LIMITS = {
    "mynetworks": "192.0.2.0/24",  # loopback is not exempt from smtpd_forbid_bare_newline
    "message_size_limit": "20000",
    "smtpd_recipient_limit": "2",
    "smtpd_forbid_bare_newline": "reject",
}


@pytest.fixture
def server(smarthost):
    plain, encrypt = free_port(), free_port()
    s = smarthost(LIMITS, tls=True, master_cf=(
        f"127.0.0.1:{plain} inet n - n - - smtpd\n"
        f"127.0.0.1:{encrypt} inet n - n - - smtpd\n  -o smtpd_tls_security_level=encrypt\n"
    ))
    return s


def logged(s, line: str) -> None:
    """Wait for ``line`` (literally) in the mail log."""
    wait_for_text(s.maillog, re.escape(line), timeout=10)


def session(port: int) -> Raw:
    r = Raw(port)
    assert r.reply()[0] == 220
    assert r.cmd("EHLO client.example")[0] == 250
    return r


def test_connect_delivery_and_disconnect_summary_without_the_body(server):
    s = server
    send_one(s.ports[0], "a@example.org", ["bob@example.test"],
             f"Subject: hello\r\n\r\n{MARKER}\r\n".encode())
    logged(s, "disconnect from localhost[127.0.0.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5")
    log = s.log_text()
    assert "connect from localhost[127.0.0.1]" in log
    assert re.search(r": from=<a@example\.org>, size=\d+, nrcpt=1 \(queued\)", log), s.describe()
    assert MARKER not in log


def test_size_rejects_are_logged_with_client_sender_and_reason(server):
    s = server
    r = session(s.ports[0])
    assert r.cmd("MAIL FROM:<a@example.org> SIZE=999999")[0] == 552
    logged(s, "NOQUEUE: reject: MAIL from localhost[127.0.0.1]: 552 5.3.4 Message size exceeds fixed limit;"
              " proto=ESMTP helo=<client.example>")
    assert r.cmd("MAIL FROM:<a@example.org>")[0] == 250
    assert r.cmd("RCPT TO:<bob@example.test>")[0] == 250
    assert r.cmd("DATA")[0] == 354
    r.send(f"Subject: big\r\n\r\n{MARKER}\r\n".encode() + b"x" * 998 + b"\r\n" + (b"y" * 998 + b"\r\n") * 30)
    assert r.cmd(".")[0] == 552
    assert r.cmd("QUIT")[0] == 221
    assert r.closed()
    logged(s, "NOQUEUE: reject: END-OF-MESSAGE from localhost[127.0.0.1]: 552 5.3.4 Error: message file too big;"
              " from=<a@example.org> to=<bob@example.test> proto=ESMTP helo=<client.example>")
    logged(s, "disconnect from localhost[127.0.0.1] ehlo=1 mail=1/2 rcpt=1 data=0/1 quit=1 commands=4/6")
    assert MARKER not in s.log_text()


def test_bare_lf_reject_is_logged(server):
    s = server
    r = session(s.ports[0])
    r.send(b"MAIL FROM:<a@example.org>\n")
    code, text = r.reply()
    assert (code, text) == (550, "5.5.2 Error: bare <LF> received")
    logged(s, "NOQUEUE: reject: MAIL from localhost[127.0.0.1]: 550 5.5.2 Error: bare <LF> received;"
              " proto=ESMTP helo=<client.example>")


def test_recipient_limit_is_logged_with_the_sender(server):
    s = server
    r = session(s.ports[0])
    assert r.cmd("MAIL FROM:<a@example.org>")[0] == 250
    assert r.cmd("RCPT TO:<one@example.test>")[0] == 250
    assert r.cmd("RCPT TO:<two@example.test>")[0] == 250
    assert r.cmd("RCPT TO:<three@example.test>")[0] == 452
    logged(s, "NOQUEUE: reject: RCPT from localhost[127.0.0.1]: 452 4.5.3 Error: too many recipients;"
              " from=<a@example.org> proto=ESMTP helo=<client.example>")


def test_mail_before_starttls_under_encrypt_is_logged(server):
    s = server
    r = session(s.ports[1])
    assert r.cmd("MAIL FROM:<a@example.org>")[0] == 530
    logged(s, "NOQUEUE: reject: MAIL from localhost[127.0.0.1]: 530 5.7.0 Must issue a STARTTLS command first;"
              " proto=ESMTP helo=<client.example>")


def test_syntax_errors_are_counted_in_the_disconnect_line_not_logged_one_by_one(server):
    s = server
    r = session(s.ports[0])
    assert r.cmd("MAIL FROM:<a@example.org")[0] == 501
    assert r.cmd("QUIT")[0] == 221
    logged(s, "disconnect from localhost[127.0.0.1] ehlo=1 mail=0/1 quit=1 commands=2/3")
    assert "NOQUEUE: reject: MAIL" not in s.log_text()


# smtpd_error_sleep_time (issue 2) ---------------------------------------------------------------


def test_past_the_soft_error_limit_replies_wait_but_other_sessions_do_not(smarthost):
    import select

    s = smarthost({"mynetworks": "192.0.2.0/24", "smtpd_soft_error_limit": "2", "smtpd_error_sleep_time": "5s",
                   "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination"})
    a = session(s.ports[0])
    assert a.cmd("MAIL FROM:<a@example.org>")[0] == 250
    for n in (1, 2):  # policy rejects (not the core's errors): they count too
        assert a.cmd(f"RCPT TO:<r{n}@foreign.example>")[0] == 554
    a.send(b"RCPT TO:<r3@foreign.example>\r\n")
    # Meanwhile another client is served from start to end ...
    b = session(s.ports[0])
    assert b.cmd("MAIL FROM:<b@example.org>")[0] == 250
    assert b.cmd("RCPT TO:<bob@example.test>")[0] == 250
    assert b.cmd("QUIT")[0] == 221
    # ... while the third refused RCPT's reply is still held back.
    assert select.select([a.sock], [], [], 0)[0] == [], "the reply past the soft error limit was not delayed"
    a.sock.settimeout(30)
    assert a.reply()[0] == 554  # delayed, not lost
    logged(s, "NOQUEUE: reject: RCPT from localhost[127.0.0.1]: 554 5.7.1 <r3@foreign.example>: Relay access denied")


def test_a_failed_tls_handshake_is_logged_once(server):
    s = server
    r = session(s.ports[0])
    assert r.cmd("STARTTLS")[0] == 220
    r.send(b"this is not a TLS ClientHello\r\n" * 4)
    try:
        r.sock.recv(4096)  # the server gives up on the handshake and closes
    except OSError:
        pass
    r.sock.close()
    logged(s, "disconnect from localhost[127.0.0.1] ehlo=1 starttls=1 commands=2")
    log = s.log_text()
    assert "warning: TLS handshake failed for localhost[127.0.0.1]" in log, s.describe()
    assert log.count("lost connection after STARTTLS from localhost[127.0.0.1]") == 1, s.describe()
