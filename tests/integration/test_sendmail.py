"""``smarthost sendmail`` as programs run it: a subprocess reading stdin, writing the maildrop;
then the pickup puts exactly those bytes into a real queue store."""

from __future__ import annotations

import email
import email.policy
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from smarthost.queue import QueueStore
from smarthost.queue.maildrop import read


@pytest.fixture
def site(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "main.cf").write_text(
        "myhostname = mx.example.test\n"
        "myorigin = example.test\n"
        f"queue_directory = {tmp_path / 'queue'}\n"
        f"data_directory = {tmp_path / 'data'}\n"
        "message_size_limit = 20000\n"
    )
    (tmp_path / "queue").mkdir()
    return tmp_path


def sendmail(site: Path, *args: str, stdin: bytes) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MAIL_CONFIG"}
    return subprocess.run([sys.executable, "-m", "smarthost", "-c", str(site / "etc"), "sendmail", *args],
                          input=stdin, capture_output=True, timeout=30, env=env)


def dropped(site: Path):
    drop = site / "queue" / "maildrop"
    names = sorted(os.listdir(drop))
    return [read(drop / name) for name in names]


def me() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def test_t_takes_recipients_from_headers_and_removes_bcc(site):
    message = (b"To: Bob <bob@example.com>, carol@example.net\nCc: dave\n"
               b"Bcc: secret@example.org,\n  other@example.org\nSubject: report\n\nline 1\n.\nnot read\n")
    result = sendmail(site, "-t", "-f", "alice@example.test", stdin=message)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    [(envelope, body, uid)] = dropped(site)
    assert envelope.sender == "alice@example.test"
    assert [r.address for r in envelope.recipients] == [
        "bob@example.com", "carol@example.net", "dave@example.test", "secret@example.org", "other@example.org"]
    assert uid == os.getuid()
    head, _, rest = body.partition(b"\r\n\r\n")
    assert rest == b"line 1\r\n"  # "." ended the input; LF became CRLF
    assert b"\n" not in body.replace(b"\r\n", b"")
    assert b"Bcc" not in head and b"secret@" not in head
    msg = email.message_from_bytes(body, policy=email.policy.default)
    assert msg["Subject"] == "report"
    assert msg["From"].addresses[0].addr_spec == "alice@example.test"
    assert msg["Date"] is not None
    assert msg["Message-ID"].endswith("@mx.example.test>")


def test_i_keeps_dot_lines_and_existing_headers_are_kept(site):
    message = b"From: Me <me@x.test>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <m@x.test>\r\n\r\na\r\n.\r\nb\r\n"
    result = sendmail(site, "-oi", "-odb", "-v", "rcpt@example.com", stdin=message)
    assert result.returncode == 0, result.stderr
    [(envelope, body, _)] = dropped(site)
    assert body == message  # nothing added, nothing changed
    assert envelope.sender == f"{me()}@example.test"
    assert [r.address for r in envelope.recipients] == ["rcpt@example.com"]


def test_f_F_and_dsn_options(site):
    result = sendmail(site, "-ti", "-F", "Zoë Q. Public", "-fzoe", "-N", "failure,delay", "-R", "full",
                      "-V", "env-1", "extra@example.com", stdin=b"To: a@example.com\nSubject: s\n\nbody")
    assert result.returncode == 0, result.stderr
    [(envelope, body, _)] = dropped(site)
    assert envelope.sender == "zoe@example.test"
    assert [(r.address, r.notify) for r in envelope.recipients] == [
        ("extra@example.com", ("DELAY", "FAILURE")), ("a@example.com", ("DELAY", "FAILURE"))]
    assert (envelope.envid, envelope.ret) == ("env-1", "FULL")
    msg = email.message_from_bytes(body, policy=email.policy.default)
    assert msg["From"].addresses[0].display_name == "Zoë Q. Public"
    assert body.endswith(b"\r\n\r\nbody\r\n")


def test_message_without_header_section_gets_one(site):
    result = sendmail(site, "a@example.com", stdin=b"just text\nmore\n")
    assert result.returncode == 0, result.stderr
    [(_, body, _)] = dropped(site)
    head, sep, rest = body.partition(b"\r\n\r\n")
    assert rest == b"just text\r\nmore\r\n"
    assert head.startswith(b"From: ") and b"\r\nDate: " in head


def test_null_sender_and_8bit_body(site):
    result = sendmail(site, "-f", "<>", "a@example.com", stdin="Subject: x\n\ncafé\n".encode())
    assert result.returncode == 0, result.stderr
    [(envelope, _, _)] = dropped(site)
    assert envelope.sender == ""
    assert envelope.body_type == "8BITMIME"


@pytest.mark.parametrize("args, stdin, code, text", [
    ((), b"Subject: x\n\nhi\n", 64, b"no recipients"),
    (("-t",), b"Subject: x\n\nhi\n", 64, b"no recipient addresses found in the message headers"),
    (("-bd",), b"", 64, b"use smarthost run"),
    (("-N", "sometimes", "a@b.test"), b"", 64, b"-N"),
    (("bad address@b.test",), b"x\n", 65, b"bad address syntax"),
    (("a@b.test",), b"x" * 30000, 65, b"message too large"),
])
def test_errors_exit_with_sysexits_codes(site, args, stdin, code, text):
    result = sendmail(site, *args, stdin=stdin)
    assert result.returncode == code
    assert text in result.stderr
    assert not (site / "queue" / "maildrop").exists() or dropped(site) == []


def test_unwritable_maildrop_is_a_temporary_failure(site):
    (site / "queue").rmdir()
    (site / "queue").write_text("not a directory")
    result = sendmail(site, "a@example.com", stdin=b"x\n")
    assert result.returncode == 75
    assert b"cannot write to the maildrop" in result.stderr


def test_bs_speaks_smtp_on_stdin_and_stdout(site):
    transcript = (b"EHLO client.test\r\nMAIL FROM:<s@example.org> RET=HDRS ENVID=e1\r\n"
                  b"RCPT TO:<r@example.com> NOTIFY=NEVER\r\nRCPT TO:<postmaster>\r\nDATA\r\n"
                  b"Subject: via -bs\r\n\r\n..dot-stuffed\r\n.\r\nQUIT\r\n")
    result = sendmail(site, "-bs", stdin=transcript)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split(b"\r\n")
    assert lines[0] == b"220 mx.example.test ESMTP smarthost (sendmail -bs)"
    assert b"250 2.1.0 Ok" in lines and b"354 End data with <CR><LF>.<CR><LF>" in lines
    [queued] = [line for line in lines if line.startswith(b"250 2.0.0 Ok: queued as ")]
    assert lines[-2:] == [b"221 2.0.0 Bye", b""]
    [(envelope, body, _)] = dropped(site)
    assert queued.endswith(sorted(os.listdir(site / "queue" / "maildrop"))[0].encode())
    assert envelope.sender == "s@example.org"
    assert [(r.address, r.notify) for r in envelope.recipients] == [
        ("r@example.com", ("NEVER",)), ("postmaster@example.test", None)]
    assert (envelope.envid, envelope.ret) == ("e1", "HDRS")
    assert body.endswith(b"\r\n\r\n.dot-stuffed\r\n")
    assert body.startswith(b"Subject: via -bs\r\nFrom: ")


def test_pickup_after_sendmail_queues_the_same_bytes(site):
    result = sendmail(site, "-t", stdin=b"To: a@example.com\nSubject: s\n\nbody\n")
    assert result.returncode == 0, result.stderr
    [(_, written, _)] = dropped(site)
    from smarthost.queue.maildrop import pickup

    store = QueueStore(site / "queue", synchronous=False)
    try:
        [queue_id] = pickup(store)
        assert store.read_body(queue_id) == written
        assert [r.address for r in store.get(queue_id).envelope.recipients] == ["a@example.com"]
    finally:
        store.close()
    assert os.listdir(site / "queue" / "maildrop") == []
