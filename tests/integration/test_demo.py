"""The README's run command: ``smarthost demo`` (what scripts/run.sh runs) serves mail on
loopback, and the message its instructions say to send lands in alice's Maildir."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from peers import free_port, peer_command, wait_for_port


def _entry_point() -> list[str]:
    script = Path(sys.executable).parent / "smarthost"  # the console script scripts/run.sh execs
    return [str(script)] if script.exists() else [sys.executable, "-m", "smarthost"]


def _maildir_messages(new: Path, count: int, timeout: float = 15.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(new.iterdir()) if new.is_dir() else []
        if len(found) >= count:
            return found
        time.sleep(0.1)
    return sorted(new.iterdir()) if new.is_dir() else []


def test_demo_serves_the_message_its_instructions_send(tmp_path: Path) -> None:
    d = tmp_path / "demo"
    ports = [free_port(), free_port(), free_port()]
    proc = subprocess.Popen([*_entry_point(), "demo", "--dir", str(d), "--ports", ",".join(map(str, ports))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        lines = []
        while not lines or lines[-1] != "Press Ctrl-C to stop.":
            line = proc.stdout.readline()
            assert line, f"demo exited early: {proc.stderr.read() if proc.poll() is not None else ''}"
            lines.append(line.rstrip("\n"))
        wait_for_port(ports[0], alive=lambda: proc.poll() is None)
        assert lines[0] == f"Wrote a demo configuration to {d}"
        assert f"127.0.0.1: {ports[0]} (smtp" in lines[1] and f"{ports[1]} (submission" in lines[1]
        python_line = next(x.strip() for x in lines if x.strip().startswith("python3 -c "))
        swaks_line = next(x.strip() for x in lines if x.strip().startswith("swaks "))
        assert f"127.0.0.1:{ports[0]} " in swaks_line
        sent = subprocess.run(["bash", "-c", python_line], capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        expected = 1
        if peer_command("swaks"):
            sent = subprocess.run(shlex.split(swaks_line), capture_output=True, text=True, timeout=60)
            assert sent.returncode == 0, sent.stdout + sent.stderr
            assert "STARTTLS" in sent.stdout
            expected = 2
        assert f"  ls {d}/mail/alice/new/" in lines
        messages = _maildir_messages(d / "mail" / "alice" / "new", expected)
        bodies = [m.read_bytes() for m in messages]
        assert len(bodies) == expected, bodies
        python_body = next(b for b in bodies if b.endswith(b"Subject: hi\n\nHello from Python.\n"))
        assert b"Delivered-To: alice@demo.test\n" in python_body
        assert b"with ESMTPS" in python_body  # the instructions' STARTTLS happened
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(20)
    assert status == 0
