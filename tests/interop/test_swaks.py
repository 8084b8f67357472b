"""swaks, the SMTP test tool admins use, against a running smarthost: plain delivery to a
local domain, STARTTLS, implicit TLS, pipelining, and a refused relay attempt."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from peers import free_port, require_peer, wait_for_text

LOCAL_DOMAIN = "example.test"
LOCAL_USER = f"root@{LOCAL_DOMAIN}"  # a user every system has, should local recipients be checked

MESSAGE = (
    "From: Sender <sender@example.org>\n"
    f"To: <{LOCAL_USER}>\n"
    "Subject: interop test\n"
    "Message-ID: <interop-1@example.org>\n"
    "\n"
    "First line.\n"
    ".A line that starts with a dot (dot-stuffed on the wire).\n"
    "..Two dots.\n"
    "\n"
    "Last line.\n"
)
# What must arrive after dot-unstuffing: the same text with CRLF line ends (RFC 5321 §4.5.2).
MESSAGE_ON_WIRE = MESSAGE.replace("\n", "\r\n").encode()

QUEUED = re.compile(r"^<[-~]  250 2\.0\.0 Ok: queued as (\S+)$", re.MULTILINE)
TRACE_HEADER = re.compile(rb"Received: [^\r\n]*(?:\r\n[ \t][^\r\n]*)*\r\n")


@pytest.fixture(scope="module")
def server(start_smarthost):
    smtp, smtps = free_port(), free_port()
    return start_smarthost(
        "swaks",
        {
            "mydestination": LOCAL_DOMAIN,
            # Loopback is not trusted: relaying from 127.0.0.1 must be refused.
            "mynetworks": "192.0.2.0/24",
            "smtpd_tls_received_header": "yes",
            "smtpd_tls_loglevel": "1",
        },
        f"127.0.0.1:{smtp} inet n - n - - smtpd\n"
        f"127.0.0.1:{smtps} inet n - n - - smtpd\n"
        "  -o smtpd_tls_wrappermode=yes\n",
        tls=True,
    )


@pytest.fixture
def message_file(tmp_path: Path) -> Path:
    path = tmp_path / "message.txt"
    # Without the final newline: swaks ends the data with CRLF itself (and would add one more).
    path.write_text(MESSAGE.removesuffix("\n"))
    return path


def swaks(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    command = [require_peer("swaks"), "--server", f"127.0.0.1:{port}", "--helo", "client.example.org",
               "--timeout", "15", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def queued_id(result: subprocess.CompletedProcess[str], server) -> str:
    match = QUEUED.search(result.stdout)
    assert result.returncode == 0 and match, (
        f"swaks exited {result.returncode}:\n{result.stdout}{result.stderr}\n{server.describe()}"
    )
    return match.group(1)


def assert_stored_as_sent(server, queue_id: str) -> bytes:
    """The queue holds exactly the message swaks sent, below smarthost's own Received header."""
    body = server.read_body(queue_id)
    assert body.endswith(MESSAGE_ON_WIRE), f"stored body differs from what swaks sent:\n{body!r}"
    trace = body[: -len(MESSAGE_ON_WIRE)]
    assert TRACE_HEADER.fullmatch(trace), f"unexpected text before the message: {trace!r}"
    return trace


def test_plain_message_to_local_domain_is_queued_byte_for_byte(server, message_file):
    result = swaks(server.ports[0], "--to", LOCAL_USER, "--from", "sender@example.org",
                   "--data", f"@{message_file}")
    queue_id = queued_id(result, server)

    entry = server.wait_for_entry(queue_id)
    assert entry.envelope.sender == "sender@example.org"
    assert [r.address for r in entry.envelope.recipients] == [LOCAL_USER]
    trace = assert_stored_as_sent(server, queue_id)
    assert b"(using TLS" not in trace
    wait_for_text(server.maillog, rf"{queue_id}: from=<sender@example\.org>, size=\d+, nrcpt=1")


def test_starttls_is_negotiated_and_recorded(server, message_file):
    result = swaks(server.ports[0], "--tls", "--to", LOCAL_USER, "--from", "sender@example.org",
                   "--data", f"@{message_file}")
    queue_id = queued_id(result, server)

    assert re.search(r"^ -> STARTTLS\n<-  220 ", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"TLS started with cipher TLSv1\.[23]", result.stdout), result.stdout
    trace = assert_stored_as_sent(server, queue_id)
    assert re.search(rb"\(using TLSv1\.[23] with cipher ", trace), trace
    wait_for_text(server.maillog, r"TLS connection established from \S+\[127\.0\.0\.1\]: TLSv1\.[23] with cipher")


def test_implicit_tls_on_wrappermode_service(server, message_file):
    result = swaks(server.ports[1], "--tlsc", "--to", LOCAL_USER, "--from", "sender@example.org",
                   "--data", f"@{message_file}")
    queue_id = queued_id(result, server)

    assert re.search(r"TLS started with cipher TLSv1\.[23]", result.stdout), result.stdout
    # The greeting arrives only inside TLS: swaks logs the handshake before the first reply.
    assert result.stdout.index("TLS started") < result.stdout.index("<~  220 ")
    trace = assert_stored_as_sent(server, queue_id)
    assert re.search(rb"\(using TLSv1\.[23] ", trace), trace


def test_pipelined_transaction_with_two_recipients(server, message_file):
    second = f"postmaster@{LOCAL_DOMAIN}"
    result = swaks(server.ports[0], "--pipeline", "--to", f"{LOCAL_USER},{second}",
                   "--from", "sender@example.org", "--data", f"@{message_file}")
    queue_id = queued_id(result, server)

    # swaks pipelines only when the server advertised PIPELINING: the whole group goes out
    # before the first reply to it comes back (RFC 2920 §3.1).
    group = re.search(r"^ -> MAIL FROM:.*\n -> RCPT TO:.*\n -> RCPT TO:.*\n -> DATA\n<-  250 ", result.stdout,
                      re.MULTILINE)
    assert group, result.stdout
    entry = server.wait_for_entry(queue_id)
    assert [r.address for r in entry.envelope.recipients] == [LOCAL_USER, second]
    assert_stored_as_sent(server, queue_id)


def test_relay_from_outside_mynetworks_is_refused(server, message_file):
    before = len(server.queue_entries())
    result = swaks(server.ports[0], "--to", "someone@foreign.example", "--from", "sender@example.org",
                   "--data", f"@{message_file}")

    assert result.returncode != 0, result.stdout
    assert re.search(r"^<\*\* (454 4\.7\.1|554 5\.7\.1) <someone@foreign\.example>: Relay access denied",
                     result.stdout, re.MULTILINE), result.stdout
    assert "queued as" not in result.stdout
    entries = server.queue_entries()
    assert len(entries) == before
    assert all(r.address != "someone@foreign.example" for e in entries for r in e.envelope.recipients)
    wait_for_text(server.maillog, r"NOQUEUE: reject: RCPT from \S+\[127\.0\.0\.1\]: (454|554) \S+ "
                                  r"<someone@foreign\.example>: Relay access denied; "
                                  r"from=<sender@example\.org> to=<someone@foreign\.example>")
