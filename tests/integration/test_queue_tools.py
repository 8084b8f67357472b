"""``smarthost queue ...`` on a real queue store: what each command prints, its exit status,
and the state it leaves behind."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path


from smarthost.queue import Envelope, QueueStore, Recipient

BODY = b"From: a@example.org\r\nSubject: queued\r\n\r\nbody \xff\r\n"


def submit(site: Path, n: int) -> list[str]:
    store = QueueStore(site / "queue", synchronous=False)
    try:
        return [store.submit_sync(Envelope(f"s{i}@example.org", (Recipient(f"r{i}@example.com"),
                                                                  Recipient("x@example.net", "rfc822;X@example.net"))),
                                  BODY) for i in range(n)]
    finally:
        store.close()


def states(site: Path) -> dict[str, str]:
    store = QueueStore(site / "queue", synchronous=False)
    try:
        return {e.id: str(e.state) for e in store.list(None)}
    finally:
        store.close()


def queue(site: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smarthost", "-c", str(site / "etc"), "queue", *args],
                          input=stdin, capture_output=True, timeout=30)


def db(site: Path) -> sqlite3.Connection:
    return sqlite3.connect(site / "queue" / "queue.db")


def test_hold_release_and_requeue(site):
    a, b, c = submit(site, 3)
    result = queue(site, "hold", a, b)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        f"smarthost: {a}: placed on hold", f"smarthost: {b}: placed on hold", "smarthost: Placed on hold: 2 messages"]
    assert states(site) == {a: "hold", b: "hold", c: "incoming"}

    before = time.time()
    result = queue(site, "release", "ALL")
    assert result.stdout.decode().splitlines()[-1] == "smarthost: Released from hold: 2 messages"
    assert states(site) == {a: "deferred", b: "deferred", c: "incoming"}
    with db(site) as conn:
        due = conn.execute("SELECT next_attempt FROM messages WHERE id = ?", (a,)).fetchone()[0]
    assert before - 1 <= due <= time.time()

    result = queue(site, "release", c)
    assert result.returncode == 1
    assert f"{c}: not on hold".encode() in result.stderr

    with db(site) as conn:  # what the queue manager records after an attempt
        conn.execute("UPDATE recipients SET status = 'deferred', reply = '451 later' WHERE message_id = ? AND idx = 0", (a,))
        conn.execute("UPDATE recipients SET status = 'sent', reply = '250 ok' WHERE message_id = ? AND idx = 1", (a,))
    result = queue(site, "requeue", "-", stdin=f"{a}\n".encode())
    assert result.stdout.decode().splitlines() == [f"smarthost: {a}: requeued", "smarthost: Requeued: 1 message"]
    assert states(site)[a] == "incoming"
    with db(site) as conn:
        rows = conn.execute("SELECT status, reply FROM recipients WHERE message_id = ? ORDER BY idx", (a,)).fetchall()
    assert rows == [(None, None), ("sent", "250 ok")]  # only the deferred recipient is retried


def test_delete_by_id_all_and_unknown(site):
    a, b, c = submit(site, 3)
    result = queue(site, "delete", b)
    assert result.returncode == 0
    assert result.stdout.decode().splitlines() == [f"smarthost: {b}: removed", "smarthost: Deleted: 1 message"]
    assert set(states(site)) == {a, c}

    result = queue(site, "delete", b, "not-an-id")
    assert result.returncode == 1
    assert f"smarthost: {b}: no such message in the queue".encode() in result.stderr
    assert b"invalid mail queue id: not-an-id" in result.stderr
    assert result.stdout.decode().splitlines() == ["smarthost: Deleted: 0 messages"]

    with db(site) as conn:
        conn.execute("UPDATE messages SET state = 'corrupt' WHERE id = ?", (a,))
    result = queue(site, "hold", a)
    assert result.returncode == 1 and b"corrupt" in result.stderr
    result = queue(site, "delete", "ALL")
    assert result.returncode == 0
    assert result.stdout.decode().splitlines()[-1] == "smarthost: Deleted: 2 messages"
    assert states(site) == {}


def test_commands_on_a_queue_that_does_not_exist_yet(site):
    result = queue(site, "delete", "ALL")
    assert (result.returncode, result.stdout) == (0, b"smarthost: Deleted: 0 messages\n")
    assert not (site / "queue" / "queue.db").exists()


def test_show_prints_the_envelope_and_the_stored_bytes(site):
    [a] = submit(site, 1)
    with db(site) as conn:
        conn.execute("UPDATE recipients SET status = 'deferred', reply = '451 4.3.0 try later' WHERE idx = 0")
    result = queue(site, "show", a)
    assert result.returncode == 0, result.stderr
    head, _, rest = result.stdout.partition(f"*** MESSAGE CONTENTS {a} ***\n".encode())
    lines = head.decode().splitlines()
    assert lines[0] == f"*** ENVELOPE RECORDS {a} ***"
    assert "state: incoming" in lines and f"message_size: {len(BODY)}" in lines
    assert "sender: s0@example.org" in lines
    assert "recipient: r0@example.com (deferred: 451 4.3.0 try later)" in lines
    assert "recipient: x@example.net orcpt=rfc822;X@example.net" in lines
    assert rest == BODY + f"*** END OF MESSAGE {a} ***\n".encode()

    result = queue(site, "show", "8DsiTFtZi04Ac00")
    assert result.returncode == 1
    assert b"no such message" in result.stderr


def test_flush_makes_deferred_mail_due_and_signals_the_master(site, tmp_path):
    a, b = submit(site, 2)
    later = time.time() + 3600
    with db(site) as conn:
        conn.execute("UPDATE messages SET state = 'deferred', next_attempt = ?", (later,))
    flag = tmp_path / "got-usr2"
    master = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys, time, pathlib\n"
        f"signal.signal(signal.SIGUSR2, lambda *a: pathlib.Path({str(flag)!r}).write_text('yes'))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n")], stdout=subprocess.PIPE)
    try:
        assert master.stdout.readline() == b"ready\n"
        (site / "data" / "smarthost.pid").write_text(f"{master.pid}\n")
        result = queue(site, "flush")
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"" and result.stderr == b""
        for _ in range(200):
            if flag.exists():
                break
            time.sleep(0.01)
        assert flag.read_text() == "yes"
    finally:
        master.kill()
        master.wait()
    with db(site) as conn:
        due = [row[0] for row in conn.execute("SELECT next_attempt FROM messages")]
    assert all(d <= time.time() for d in due)


def test_flush_without_a_running_master_says_so(site):
    submit(site, 1)
    with db(site) as conn:
        conn.execute("UPDATE messages SET state = 'deferred', next_attempt = ?", (time.time() + 3600,))
    result = queue(site, "flush")
    assert result.returncode == 0
    assert result.stderr.decode().strip() == (
        "smarthost: warning: the mail system is not running; 1 deferred message will be tried when it starts")
