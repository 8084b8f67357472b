"""``smarthost mailq`` on a real queue store: Postfix's ``postqueue -p`` layout, only the
recipients still pending, deferral reasons, hold/active marks, corrupt entries reported."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path


from smarthost.queue import Envelope, QueueStore, Recipient

BODY = b"From: a@example.org\r\nSubject: queued\r\n\r\n" + b"x" * 1500 + b"\r\n"
HEADER = "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
INDENT = " " * 41


def submit(site: Path, sender: str, *rcpts: str) -> str:
    store = QueueStore(site / "queue", synchronous=False)
    try:
        return store.submit_sync(Envelope(sender, tuple(Recipient(r) for r in rcpts)), BODY)
    finally:
        store.close()


def mailq(site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smarthost", "-c", str(site / "etc"), "mailq"],
                          capture_output=True, text=True, timeout=30)


def block(out: str, queue_id: str) -> list[str]:
    """The lines of one message's block: from its id line to the blank line after it."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(queue_id))
    end = lines.index("", start)
    return lines[start:end]


def test_empty_queue(site):
    result = mailq(site)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Mail queue is empty\n"
    submit(site, "a@example.org", "b@example.net")
    with sqlite3.connect(site / "queue" / "queue.db") as conn:
        conn.execute("DELETE FROM recipients")
        conn.execute("DELETE FROM messages")
    assert mailq(site).stdout == "Mail queue is empty\n"


def test_layout_pending_recipients_reasons_marks_and_corrupt(site):
    fresh = submit(site, "alice@example.org", "bob@example.net", "carol@example.net")
    tried = submit(site, "alice@example.org", "sent@example.net", "later1@example.net",
                   "bounced@example.net", "later2@example.net", "other@example.com")
    held = submit(site, "", "dave@example.net")
    active = submit(site, "erin@example.org", "frank@example.net")
    broken = submit(site, "mallory@example.org", "gone@example.net")
    with sqlite3.connect(site / "queue" / "queue.db") as conn:  # what the queue manager records
        for idx, status, reply in (
            (0, "sent", "sent (250 2.0.0 Ok: queued as 4XyZ)"),
            (1, "deferred", "deferred (connect to mx.example.net[192.0.2.7]:25: Connection refused)"),
            (2, "bounced", "bounced (host mx.example.net[192.0.2.7] said: 550 5.1.1 no such user)"),
            (3, "deferred", "deferred (connect to mx.example.net[192.0.2.7]:25: Connection refused)"),
            (4, "deferred", "deferred (host mx.example.com[192.0.2.8] said: 451 4.7.1 try later)"),
        ):
            conn.execute("UPDATE recipients SET status = ?, reply = ? WHERE message_id = ? AND idx = ?",
                         (status, reply, tried, idx))
        conn.execute("UPDATE messages SET state = 'deferred' WHERE id = ?", (tried,))
        conn.execute("UPDATE messages SET state = 'hold' WHERE id = ?", (held,))
        conn.execute("UPDATE messages SET state = 'active' WHERE id = ?", (active,))
        conn.execute("UPDATE messages SET envelope = '{not json' WHERE id = ?", (broken,))

    result = mailq(site)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.splitlines()[0] == HEADER
    assert out.endswith(f"\n-- {(5 * len(BODY) + 1023) // 1024} Kbytes in 5 Requests.\n")

    first = block(out, fresh)
    assert first[0].split(None, 2)[:2] == [fresh, str(len(BODY))]
    assert first[0].endswith("  alice@example.org")
    assert first[1:] == [INDENT + "bob@example.net", INDENT + "carol@example.net"]

    assert block(out, tried)[1:] == [
        "(connect to mx.example.net[192.0.2.7]:25: Connection refused)",
        INDENT + "later1@example.net",
        INDENT + "later2@example.net",
        "(host mx.example.com[192.0.2.8] said: 451 4.7.1 try later)",
        INDENT + "other@example.com",
    ]
    assert "sent@example.net" not in out and "bounced@example.net" not in out

    hold_lines = block(out, held)
    assert hold_lines[0].startswith(held + "!")
    assert hold_lines[0].endswith("  MAILER-DAEMON")
    assert block(out, active)[0].startswith(active + "*")

    corrupt = block(out, broken)
    assert "corrupt" in "\n".join(corrupt[1:])
    assert corrupt[-1] == INDENT + "gone@example.net"


def test_the_documented_mailq_and_sendmail_wrappers_work(site, tmp_path):
    # The wrapper scripts that smarthost.cli.sendmail's docstring tells admins to install.
    import re

    from smarthost.cli import sendmail

    doc = sendmail.__doc__
    scripts = re.findall(r"(#!/bin/sh\n\s+exec /opt/smarthost/\.venv/bin/python -m smarthost .*)", doc)
    wrappers = {}
    for script in scripts:
        command = script.split("-m smarthost ", 1)[1].split()[0]
        text = re.sub(r"\n\s+", "\n", script).replace("/opt/smarthost/.venv/bin/python", sys.executable)
        path = tmp_path / command
        path.write_text(text + "\n")
        path.chmod(0o755)
        wrappers[command] = path
    assert set(wrappers) == {"sendmail", "mailq"}
    env = {"MAIL_CONFIG": str(site / "etc"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([str(wrappers["mailq"])], env=env, capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stdout) == (0, "Mail queue is empty\n"), result.stderr
    result = subprocess.run([str(wrappers["sendmail"]), "-bp"], env=env, capture_output=True, text=True,
                            timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 64 and "smarthost mailq" in result.stderr


def test_mail_waiting_in_the_maildrop_is_listed(site):
    # `smarthost sendmail` while the daemon is down: the message waits in the maildrop.
    etc = site / "etc"
    message = b"Subject: from cron\n\nhello\n"
    result = subprocess.run([sys.executable, "-m", "smarthost", "-c", str(etc), "sendmail", "-f", "cron@example.org",
                             "ops@example.net"], input=message, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    out = mailq(site).stdout
    lines = out.splitlines()
    assert lines[0] == HEADER
    assert lines[1].endswith("  cron@example.org")
    assert lines[2].startswith("(maildrop queue, sender UID ")
    assert lines[3] == INDENT + "ops@example.net"
    assert lines[-1].endswith("Kbytes in 1 Request.")
