"""The real server over loopback: what a client and an admin see (replies, queue, log)."""

from __future__ import annotations

import smtplib
import socket
import ssl
import time

import pytest

from peers import free_port, wait_for_text


class Raw:
    """A byte-level SMTP client, for what smtplib will not do (pipelining abuse, injection)."""

    def __init__(self, port: int, *, timeout: float = 10.0, wrap: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if wrap is not None:
            self.sock = wrap.wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = self.line()
            lines.append(line[4:].decode())
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    def cmd(self, text: str) -> tuple[int, str]:
        self.send(text.encode() + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True

    def starttls(self, ctx: ssl.SSLContext) -> None:
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""

    def close(self) -> None:
        self.sock.close()


def client_ctx(instance) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(instance.config_dir / "ca.pem"))
    return ctx


def send_one(port: int, sender: str, rcpts: list[str], msg: bytes) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo("client.example")
        s.mail(sender)
        for r in rcpts:
            code, text = s.rcpt(r)
            assert code == 250, (r, code, text)
        code, text = s.data(msg)
        assert code == 250, text
        return text.decode().rsplit(" ", 1)[-1]


MSG = b"From: a@example.org\r\nSubject: test\r\n\r\nline one\r\n..dotted\r\nlast\r\n"


def test_message_is_queued_byte_for_byte_with_received_header(smarthost):
    s = smarthost()
    with smtplib.SMTP("127.0.0.1", s.ports[0], timeout=10) as c:
        code, banner = c.ehlo("client.example")
        assert code == 250
        assert b"PIPELINING" in banner and b"ENHANCEDSTATUSCODES" in banner and b"8BITMIME" in banner
        assert b"SIZE 10240000" in banner
        c.mail("a@example.org")
        c.rcpt("bob@example.test")
        code, text = c.data(MSG)
    assert code == 250 and text.startswith(b"2.0.0 Ok: queued as "), text
    qid = text.decode().rsplit(" ", 1)[-1]
    entry = s.wait_for_entry(qid)
    assert entry.envelope.sender == "a@example.org"
    assert [r.address for r in entry.envelope.recipients] == ["bob@example.test"]
    body = s.read_body(qid)
    header, rest = body.split(b"\r\n", 1)[0], body
    assert header.startswith(b"Received: from client.example (localhost [127.0.0.1])")
    assert f"with ESMTP id {qid}".encode() in body
    assert b"for <bob@example.test>;" in body
    assert rest.endswith(MSG), body
    log = s.log_text()
    assert f"{qid}: client=localhost[127.0.0.1]" in log
    assert f"{qid}: from=<a@example.org>, size={len(body)}, nrcpt=1 (queued)" in log


def test_relay_denied_for_strangers_and_logged(smarthost):
    s = smarthost({"mynetworks": "192.0.2.0/24",
                   "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"})
    r = Raw(s.ports[0])
    assert r.reply()[0] == 220
    assert r.cmd("EHLO client.example")[0] == 250
    assert r.cmd("MAIL FROM:<a@example.org>")[0] == 250
    tricks = ["bob@foreign.example", "user%foreign.example@example.test", '"user@foreign.example"@example.test',
              "@example.test:user@foreign.example", "foreign.example!user@example.test", "user@[192.0.2.99]"]
    for rcpt in tricks:
        code, text = r.cmd(f"RCPT TO:<{rcpt}>")
        assert code == 554 and "Relay access denied" in text, (rcpt, code, text)
    assert r.cmd("RCPT TO:<bob@example.test>")[0] == 250
    assert r.cmd("QUIT")[0] == 221
    time.sleep(0.3)
    log = s.log_text()
    assert ("NOQUEUE: reject: RCPT from localhost[127.0.0.1]: 554 5.7.1 <bob@foreign.example>: Relay access denied;"
            " from=<a@example.org> to=<bob@foreign.example> proto=ESMTP helo=<client.example>") in log, s.describe()


def test_postfix_default_relay_rule_defers(smarthost):
    s = smarthost({"mynetworks": "192.0.2.0/24"})
    r = Raw(s.ports[0])
    r.reply()
    r.cmd("EHLO c")
    r.cmd("MAIL FROM:<>")
    code, text = r.cmd("RCPT TO:<x@foreign.example>")
    assert code == 454 and "4.7.1" in text and "Relay access denied" in text


def test_starttls_then_received_header_and_log_name_tls(smarthost):
    s = smarthost({"smtpd_tls_received_header": "yes"}, tls=True)
    with smtplib.SMTP("127.0.0.1", s.ports[0], timeout=10) as c:
        c.ehlo("client.example")
        assert c.has_extn("starttls")
        c.starttls(context=client_ctx(s))
        c.ehlo("client.example")
        assert not c.has_extn("starttls")
        c.mail("a@example.org")
        c.rcpt("bob@example.test")
        code, text = c.data(MSG)
    qid = text.decode().rsplit(" ", 1)[-1]
    body = s.read_body(qid)
    assert b"(using TLSv1.3 with cipher" in body
    assert f"with ESMTPS id {qid}".encode() in body
    assert "Anonymous TLS connection established from localhost[127.0.0.1]: TLSv1.3 with cipher" in s.log_text()


def test_starttls_injection_is_refused_by_default(smarthost):
    s = smarthost(tls=True)
    r = Raw(s.ports[0])
    r.reply()
    r.cmd("EHLO c")
    r.send(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@example.test>\r\n")
    code, text = r.reply()
    assert code == 554 and text == "5.5.0 Error: SMTP protocol synchronization"
    assert r.closed()


def test_starttls_injection_is_never_executed_without_pipelining_guard(smarthost):
    s = smarthost({"smtpd_forbid_unauth_pipelining": "no"}, tls=True)
    r = Raw(s.ports[0])
    r.reply()
    r.cmd("EHLO c")
    r.send(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@example.test>\r\n")
    code, _ = r.reply()
    assert code == 220
    r.starttls(client_ctx(s))
    # The smuggled commands are gone: the first reply inside TLS answers our NOOP.
    code, text = r.cmd("NOOP")
    assert code == 250 and "2.0.0" in text
    # ...and the session was reset: no transaction in progress.
    code, _ = r.cmd("RCPT TO:<bob@example.test>")
    assert code == 503
    r.cmd("QUIT")
    assert s.queue_entries() == []
    time.sleep(0.3)
    assert "pipelined after STARTTLS" in s.log_text(), s.describe()


def test_encrypt_level_requires_starttls(smarthost):
    s = smarthost({"smtpd_tls_security_level": "encrypt"}, tls=True)
    r = Raw(s.ports[0])
    r.reply()
    r.cmd("EHLO c")
    code, text = r.cmd("MAIL FROM:<a@example.org>")
    assert code == 530 and text == "5.7.0 Must issue a STARTTLS command first"


def test_implicit_tls_service(smarthost):
    port = free_port()
    s = smarthost(master_cf=f"127.0.0.1:{port} inet n - n - - smtpd\n  -o smtpd_tls_wrappermode=yes\n", tls=True)
    ctx = client_ctx(s)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    r = Raw(port, wrap=ctx)
    assert r.reply()[0] == 220
    code, text = r.cmd("EHLO c")
    assert code == 250 and "STARTTLS" not in text
    assert r.sock.version() == "TLSv1.2"
    old = client_ctx(s)
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        Raw(port, wrap=old)


def test_oversized_message_552_and_session_in_sync(smarthost):
    s = smarthost({"message_size_limit": "10000"})
    r = Raw(s.ports[0])
    r.reply()
    r.cmd("EHLO c")
    assert r.cmd("MAIL FROM:<a@example.org> SIZE=20000")[0] == 552
    r.cmd("MAIL FROM:<a@example.org>")
    r.cmd("RCPT TO:<bob@example.test>")
    assert r.cmd("DATA")[0] == 354
    r.send(b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 50 + b".\r\n")
    code, text = r.reply()
    assert code == 552 and text.startswith("5.3.4")
    assert r.cmd("MAIL FROM:<a@example.org>")[0] == 250
    r.cmd("RCPT TO:<bob@example.test>")
    r.cmd("DATA")
    r.send(b"small\r\n.\r\n")
    assert r.reply()[0] == 250
    assert len(s.queue_entries()) == 1


def test_pipelining_after_data_is_a_protocol_violation(smarthost):
    s = smarthost()
    r = Raw(s.ports[0])
    r.reply()
    r.cmd("EHLO c")
    r.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
    assert r.reply()[0] == 250
    assert r.reply()[0] == 250
    code, text = r.reply()
    assert code == 554 and text == "5.5.0 Error: SMTP protocol synchronization"
    assert r.closed()
    assert s.queue_entries() == []
    time.sleep(0.3)
    assert "improper command pipelining after DATA from localhost[127.0.0.1]" in s.log_text()


def test_smuggling_sequences_make_one_message(smarthost):
    s = smarthost()
    for seq in (b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n\x00.\r\n"):
        r = Raw(s.ports[0])
        r.reply()
        r.cmd("EHLO c")
        r.cmd("MAIL FROM:<a@example.org>")
        r.cmd("RCPT TO:<bob@example.test>")
        assert r.cmd("DATA")[0] == 354
        r.send(b"Subject: s\r\n\r\nbefore" + seq + b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<x@example.test>\r\n"
               b"DATA\r\nsmuggled\r\n.\r\n")
        code, text = r.reply()
        assert code == 250, (seq, text)
        assert r.cmd("QUIT")[0] == 221
        r.close()
    entries = s.queue_entries()
    assert len(entries) == 4
    assert all(e.envelope.sender == "a@example.org" for e in entries)
    for e in entries:
        body = s.read_body(e.id)
        assert b"\r\nMAIL FROM:<evil@example.org>\r\n" in body  # content, not a command
        assert b"\n" not in body.replace(b"\r\n", b"") and b"\r" not in body.replace(b"\r\n", b"")


def test_idle_client_times_out(smarthost):
    s = smarthost({"smtpd_timeout": "2s"})
    r = Raw(s.ports[0])
    r.reply()
    r.cmd("EHLO c")
    code, text = r.reply()
    assert code == 421 and text == "4.4.2 mx.example.test Error: timeout exceeded"
    assert r.closed()
    time.sleep(0.3)
    assert "timeout after EHLO from localhost[127.0.0.1]" in s.log_text()


def test_timeout_in_the_middle_of_data_queues_nothing(smarthost):
    s = smarthost({"smtpd_timeout": "1s"})
    r = Raw(s.ports[0])
    r.reply()
    r.cmd("EHLO c")
    r.cmd("MAIL FROM:<a@example.org>")
    r.cmd("RCPT TO:<bob@example.test>")
    assert r.cmd("DATA")[0] == 354
    r.send(b"Subject: half\r\n\r\nthe first half of a message, and then nothing")
    code, text = r.reply()
    assert code == 421 and text == "4.4.2 mx.example.test Error: timeout exceeded"
    assert r.closed()
    wait_for_text(s.maillog, r"timeout after DATA.* from localhost\[127\.0\.0\.1\]")
    assert s.queue_entries() == []


def test_error_flood_hits_the_hard_limit(smarthost):
    s = smarthost({"smtpd_hard_error_limit": "5", "smtpd_error_sleep_time": "0"})
    r = Raw(s.ports[0])
    r.reply()
    r.cmd("EHLO c")
    r.send(b"BOGUS\r\n" * 10)
    codes = [r.reply()[0] for _ in range(6)]
    assert codes == [500, 500, 500, 500, 500, 421]
    assert r.closed()


def test_connection_count_limit_counts_across_workers(smarthost):
    s = smarthost({"smtpd_client_connection_count_limit": "3", "smtpd_client_event_limit_exceptions": "",
                   "smtpd_worker_processes": "2"})
    wait_for_text(s.maillog, "disconnect from")  # the start-up probe's connection is over
    held = []
    for _ in range(3):
        r = Raw(s.ports[0])
        assert r.reply()[0] == 220
        held.append(r)
    for _ in range(4):  # whichever worker takes it, the client already has 3
        extra = Raw(s.ports[0])
        code, text = extra.reply()
        assert code == 421 and "too many connections from 127.0.0.1" in text
        extra.close()
    held[0].cmd("QUIT")
    time.sleep(0.3)
    d = Raw(s.ports[0])
    assert d.reply()[0] == 220
    time.sleep(0.2)
    assert "warning: Connection concurrency limit exceeded: 4 from localhost[127.0.0.1]" in s.log_text()


def test_bad_config_stops_the_start_naming_file_and_line(smarthost):
    s = smarthost({"message_size_limit": "ten"}, start=False)
    s.write_config()
    import subprocess

    proc = subprocess.run(s.command, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert f"{s.config_dir}/main.cf:" in proc.stderr and "message_size_limit" in proc.stderr, proc.stderr


def _send_bare_lf_message(port: int) -> tuple[int, str]:
    r = Raw(port)
    r.reply()
    r.cmd("EHLO c")
    r.cmd("MAIL FROM:<a@example.org>")
    r.cmd("RCPT TO:<bob@example.test>")
    r.cmd("DATA")
    r.send(b"Subject: lf\r\n\r\nbare\nline\r\n.\r\n")
    return r.reply()


def test_bare_newline_reject_and_its_exclusions(smarthost):
    strict = smarthost({"smtpd_forbid_bare_newline": "reject", "smtpd_forbid_bare_newline_exclusions": "192.0.2.0/24"})
    assert _send_bare_lf_message(strict.ports[0]) == (550, "5.5.2 Error: bare <LF> received")
    assert strict.queue_entries() == []
    # Postfix's default exclusions are $mynetworks: a loopback client there gets normalize.
    relaxed = smarthost({"smtpd_forbid_bare_newline": "reject"})
    code, text = _send_bare_lf_message(relaxed.ports[0])
    assert code == 250, text
    body = relaxed.read_body(text.rsplit(" ", 1)[-1])
    assert body.endswith(b"Subject: lf\r\n\r\nbare\r\nline\r\n")


def test_bare_newline_no_still_normalizes(smarthost):
    # Our safer default: "no" does not switch the protection off (README, Safer defaults).
    s = smarthost({"smtpd_forbid_bare_newline": "no", "smtpd_forbid_bare_newline_exclusions": ""})
    code, text = _send_bare_lf_message(s.ports[0])
    assert code == 250, text
    body = s.read_body(text.rsplit(" ", 1)[-1])
    assert body.endswith(b"Subject: lf\r\n\r\nbare\r\nline\r\n")


def test_without_maillog_file_the_log_goes_to_stderr(smarthost):
    s = smarthost({"maillog_file": ""})
    send_one(s.ports[0], "a@example.org", ["bob@example.test"], MSG)
    wait_for_text(s.stderr_path, r"smarthost/smtpd\[\d+\]: connect from localhost\[127\.0\.0\.1\]", what="stderr")
    wait_for_text(s.stderr_path, r"smarthost/smtpd\[\d+\]: \w+: client=localhost\[127\.0\.0\.1\]", what="stderr")
    assert not s.maillog.exists()


def test_unknown_local_recipient_is_refused_at_rcpt(smarthost, tmp_path):
    aliases = tmp_path / "aliases"
    aliases.write_text("postmaster: root\nsales: root\n")
    s = smarthost({"local_recipient_maps": "proxy:unix:passwd.byname $alias_maps",
                   "alias_maps": f"texthash:{aliases}"})
    r = Raw(s.ports[0])
    r.reply()
    r.cmd("EHLO c")
    r.cmd("MAIL FROM:<a@example.org>")
    code, text = r.cmd("RCPT TO:<nosuchuser@example.test>")
    assert (code, text) == (550, "5.1.1 <nosuchuser@example.test>: Recipient address rejected: User unknown in local recipient table")
    assert r.cmd("RCPT TO:<root@example.test>")[0] == 250  # a system user
    assert r.cmd("RCPT TO:<sales@example.test>")[0] == 250  # an alias
    assert r.cmd("RCPT TO:<Postmaster@example.test>")[0] == 250  # always (RFC 5321 §4.5.1)
    assert r.cmd("RCPT TO:<x@foreign.example>")[0] == 250  # not local: relay rules decide (mynetworks)
    time.sleep(0.2)
    assert "NOQUEUE: reject: RCPT from localhost[127.0.0.1]: 550 5.1.1 <nosuchuser@example.test>" in s.log_text()
