"""The master process: workers, crash safety, reload, drain, start/stop/status."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from peers import SmarthostInstance, free_port, make_shared_dir, process_tree, wait_for_port
from test_server import Raw

MSG = b"Subject: load\r\n\r\n" + b"0123456789abcdef" * 250 + b"\r\n"


def test_kill_9_under_load_loses_no_acknowledged_message(smarthost):
    s = smarthost({"smtpd_worker_processes": "2"})
    port = s.ports[0]
    acked: list[tuple[str, bytes]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            body = MSG + f"client {n} message {i}\r\n".encode()
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5) as c:
                    c.ehlo("load")
                    c.mail("a@example.org")
                    c.rcpt("bob@example.test")
                    code, text = c.data(body)
            except (OSError, smtplib.SMTPException):
                return
            if code == 250:
                with lock:
                    acked.append((text.decode().rsplit(" ", 1)[-1], body))
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    for pid in process_tree(s.pid):
        os.kill(pid, signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join(10)
    s.process.wait(5)
    assert len(acked) > 20, f"the load produced only {len(acked)} messages\n{s.describe()}"
    ids = {e.id for e in s.queue_entries()}
    missing = [qid for qid, _ in acked if qid not in ids]
    assert not missing, f"{len(missing)} acknowledged messages lost: {missing[:5]}"
    for qid, body in acked[:: max(1, len(acked) // 20)]:
        assert s.read_body(qid).endswith(body)


def _workers(s, count: int) -> list[int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        workers = [p for p in process_tree(s.pid) if p != s.pid]
        if len(workers) == count:
            return workers
        time.sleep(0.05)
    raise AssertionError(f"expected {count} workers, found {workers}\n{s.describe()}")


def test_dead_worker_is_restarted(smarthost):
    s = smarthost({"smtpd_worker_processes": "2"})
    before = _workers(s, 2)
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = [p for p in process_tree(s.pid) if p != s.pid]
        if len(after) == 2 and before[0] not in after:
            break
        time.sleep(0.1)
    assert len(after) == 2 and before[0] not in after and before[1] in after
    for _ in range(4):  # both workers serve
        r = Raw(s.ports[0])
        assert r.reply()[0] == 220
        r.close()
    assert f"process smtpd pid {before[0]} exit status -9; restarting" in s.log_text()


def test_every_process_and_thread_runs_under_sched_batch(smarthost):
    s = smarthost({"smtpd_worker_processes": "2"})
    workers = _workers(s, 2)
    with smtplib.SMTP("127.0.0.1", s.ports[0]) as client:  # a worker's committer thread is running now
        client.sendmail("a@example.org", ["b@example.test"], MSG)
    tasks = {pid: [int(t) for t in os.listdir(f"/proc/{pid}/task")] for pid in [s.pid, *workers]}
    assert sum(len(t) for t in tasks.values()) > 3  # the master, two event loops, their committers
    policies = {tid: os.sched_getscheduler(tid) for tids in tasks.values() for tid in tids}
    if "cannot use the SCHED_BATCH scheduling policy" in s.log_text():  # a sandbox refused it
        assert set(policies.values()) == {os.SCHED_OTHER}, policies  # and the server runs anyway
    else:
        assert set(policies.values()) == {os.SCHED_BATCH}, policies


def test_reload_keeps_sessions_and_applies_new_config(smarthost):
    s = smarthost({"smtpd_banner": "$myhostname ESMTP before"})
    old = Raw(s.ports[0])
    assert "before" in old.reply()[1]
    old.cmd("EHLO c")
    old.cmd("MAIL FROM:<a@example.org>")
    main_cf = s.config_dir / "main.cf"
    main_cf.write_text(main_cf.read_text().replace("ESMTP before", "ESMTP after"))
    os.kill(s.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = Raw(s.ports[0])
        text = r.reply()[1]
        r.close()
        if "after" in text:
            break
        time.sleep(0.2)
    assert "after" in text
    # The session that started before the reload goes on to deliver its message.
    assert old.cmd("RCPT TO:<bob@example.test>")[0] == 250
    assert old.cmd("DATA")[0] == 354
    old.send(b"Subject: across reload\r\n\r\nhi\r\n.\r\n")
    assert old.reply()[0] == 250
    assert old.cmd("QUIT")[0] == 221


def test_bad_reload_keeps_the_running_configuration(smarthost):
    s = smarthost()
    main_cf = s.config_dir / "main.cf"
    main_cf.write_text(main_cf.read_text() + "smtpd_timeout = soon\n")
    os.kill(s.pid, signal.SIGHUP)
    time.sleep(1.0)
    r = Raw(s.ports[0])
    assert r.reply()[0] == 220
    assert "reload failed, keeping the running configuration" in s.log_text()


def test_sigterm_lets_a_session_finish_its_message(smarthost):
    s = smarthost()
    r = Raw(s.ports[0])
    r.reply()
    r.cmd("EHLO c")
    r.cmd("MAIL FROM:<a@example.org>")
    r.cmd("RCPT TO:<bob@example.test>")
    os.kill(s.pid, signal.SIGTERM)
    time.sleep(0.3)
    assert r.cmd("DATA")[0] == 354
    r.send(b"Subject: drain\r\n\r\nhi\r\n.\r\n")
    assert r.reply()[0] == 250
    assert s.process.wait(15) == 0
    assert len(s.queue_entries()) == 1


def test_sigterm_gives_a_slow_session_421_after_the_grace_and_exits(smarthost):
    s = smarthost()
    r = Raw(s.ports[0], timeout=30)
    r.reply()
    r.cmd("EHLO c")
    r.cmd("MAIL FROM:<a@example.org>")  # and then the client dawdles past the 5 s grace
    os.kill(s.pid, signal.SIGTERM)
    code, text = r.reply()
    assert (code, text) == (421, "4.3.2 mx.example.test Service shutting down, closing transmission channel")
    assert r.closed()
    assert s.process.wait(20) == 0
    assert s.queue_entries() == []


def test_reload_command_rereads_main_cf(smarthost):
    s = smarthost({"smtpd_banner": "$myhostname ESMTP before"})
    main_cf = s.config_dir / "main.cf"
    main_cf.write_text(main_cf.read_text().replace("ESMTP before", "ESMTP after"))
    reloaded = subprocess.run([sys.executable, "-m", "smarthost", "-c", str(s.config_dir), "reload"],
                              capture_output=True, text=True, timeout=60)
    assert reloaded.returncode == 0, reloaded.stderr
    assert reloaded.stdout == f"smarthost: signalled pid {s.pid}\n"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = Raw(s.ports[0])
        text = r.reply()[1]
        r.close()
        if "after" in text:
            break
        time.sleep(0.2)
    assert text == "mx.example.test ESMTP after"
    assert s.process.poll() is None  # still serving


def test_start_status_stop(smarthost):
    s = smarthost(start=False)
    s.write_config()
    base = [sys.executable, "-m", "smarthost", "-c", str(s.config_dir)]
    run = lambda *a: subprocess.run(base + list(a), capture_output=True, text=True, timeout=60)  # noqa: E731
    assert run("status").returncode == 1
    started = run("start")
    assert started.returncode == 0, started.stderr
    try:
        wait_for_port(s.ports[0])
        st = run("status")
        assert st.returncode == 0 and "is running" in st.stdout
        assert run("start").returncode == 1  # already running
    finally:
        stopped = run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert run("status").returncode == 1


def test_demo_config_delivers_to_its_maildirs_and_nowhere_else():
    from smarthost.demo import SMTP_PORT, SUBMISSION_PORT, SMTPS_PORT, ensure_demo

    shared = make_shared_dir()  # as root the demo delivers as nobody, who must reach the Maildirs
    d = shared / "demo"
    assert ensure_demo(d) is True
    assert ensure_demo(d) is False  # an existing demo is left as the admin edited it
    assert oct((d / "tls" / "key.pem").stat().st_mode & 0o777) == "0o600"
    out = subprocess.run([sys.executable, "-m", "smarthost", "-c", str(d), "postconf", "-n"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "warning" not in out.stderr, out.stderr
    assert "default_transport = error:this demo delivers to demo.test only" in out.stdout
    ports = {SMTP_PORT: free_port(), SUBMISSION_PORT: free_port(), SMTPS_PORT: free_port()}
    master = (d / "master.cf").read_text()
    for old, new_port in ports.items():
        master = master.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new_port}")
    (d / "master.cf").write_text(master)
    proc = subprocess.Popen([sys.executable, "-m", "smarthost", "-c", str(d), "run"], stderr=subprocess.PIPE)
    try:
        wait_for_port(ports[SMTP_PORT])
        with smtplib.SMTP("127.0.0.1", ports[SMTP_PORT], timeout=10) as c:
            c.starttls()
            c.sendmail("you@example.net", ["alice@demo.test"], b"Subject: demo\r\n\r\nHello.\r\n")
            c.mail("you@example.net")
            code, text = c.rcpt("x@example.com")
        assert code == 554 and b"Relay access denied" in text
        new = d / "mail" / "alice" / "new"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (new.exists() and list(new.iterdir())):
            time.sleep(0.1)
        (delivered,) = list(new.iterdir())
        content = delivered.read_bytes()
        assert content.startswith(b"Return-Path: <you@example.net>\n")
        assert b"Delivered-To: alice@demo.test\n" in content and content.endswith(b"Subject: demo\n\nHello.\n")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        shutil.rmtree(shared, ignore_errors=True)


def _served_certificate(port: int) -> bytes:
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    r = Raw(port)
    r.reply()
    r.cmd("EHLO c")
    assert r.cmd("STARTTLS")[0] == 220
    r.starttls(ctx)
    der = r.sock.getpeercert(binary_form=True)
    r.close()
    return der


def test_reload_picks_up_a_new_certificate(smarthost):
    s = smarthost(tls=True)
    before = _served_certificate(s.ports[0])
    fresh = s.ca.issue_cert("localhost", "127.0.0.1", "renewed.example.test")
    fresh.private_key_pem.write_to_path(str(s.config_dir / "key.pem"))
    fresh.cert_chain_pems[0].write_to_path(str(s.config_dir / "cert.pem"))
    os.kill(s.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = _served_certificate(s.ports[0])
        if after != before:
            break
        time.sleep(0.2)
    assert after != before
    assert b"renewed.example.test" in after


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(pid)


def test_workers_drop_to_mail_owner_and_still_queue_and_deliver():
    import pwd

    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs root")
    nobody = pwd.getpwnam("nobody")
    shared = make_shared_dir()  # mail_owner must reach the queue directory
    try:
        port = free_port()
        s = SmarthostInstance(shared / "s", {"mail_owner": "nobody", "mydestination": "example.test",
                                             "local_recipient_maps": "", "mynetworks": "127.0.0.0/8"},
                              f"127.0.0.1:{port} inet n - n - - smtpd\n")
        with s:
            workers = _workers(s, 2)
            assert {_uid(p) for p in workers} == {nobody.pw_uid}
            assert _uid(s.pid) == 0
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
                c.sendmail("a@example.org", ["bob@example.test"], b"Subject: as nobody\r\n\r\nx\r\n")
            (entry,) = s.queue_entries()
            assert s.read_body(entry.id).endswith(b"Subject: as nobody\r\n\r\nx\r\n")
            assert (s.queue_dir / "queue.db").stat().st_uid == nobody.pw_uid
            assert "no such user" not in s.log_text()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_missing_mail_owner_is_named_in_the_log(smarthost):
    if os.geteuid() != 0:
        pytest.skip("only root drops privileges")
    s = smarthost({"mail_owner": "nosuchuser-smarthost"})
    time.sleep(0.2)
    assert "warning: mail_owner = nosuchuser-smarthost: no such user; the SMTP workers run as root" in s.log_text()
