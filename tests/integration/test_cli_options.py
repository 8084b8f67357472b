"""The command line as Postfix users type it: ``-c DIR`` before or after the command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from peers import free_port, wait_for_port

from smarthost.cli import build_parser


def smarthost(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smarthost", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def config_dir(path: Path, hostname: str) -> Path:
    path.mkdir()
    (path / "main.cf").write_text(f"myhostname = {hostname}\nmessage_size_limit = 20480000\n")
    (path / "master.cf").write_text(f"127.0.0.1:{free_port()} inet n - n - - smtpd\n")
    return path


def test_c_after_the_command_names_the_config_directory(tmp_path: Path) -> None:
    d = config_dir(tmp_path / "etc", "after.example.test")
    for argv in (["-c", str(d), "postconf", "-n"], ["postconf", "-c", str(d), "-n"], ["postconf", "-n", "-c", str(d)]):
        out = smarthost(*argv)
        assert out.returncode == 0, (argv, out.stderr)
        assert out.stdout.splitlines() == ["message_size_limit = 20480000", "myhostname = after.example.test"]


def test_c_after_the_command_wins_over_the_one_before_and_mail_config(tmp_path: Path) -> None:
    before = config_dir(tmp_path / "before", "before.example.test")
    after = config_dir(tmp_path / "after", "after.example.test")
    out = smarthost("-c", str(before), "postconf", "-h", "-c", str(after), "myhostname")
    assert (out.returncode, out.stdout) == (0, "after.example.test\n"), out.stderr
    out = smarthost("postconf", "-h", "myhostname", env={"MAIL_CONFIG": str(before)})
    assert (out.returncode, out.stdout) == (0, "before.example.test\n"), out.stderr
    out = smarthost("postconf", "-c", str(after), "-h", "myhostname", env={"MAIL_CONFIG": str(before)})
    assert (out.returncode, out.stdout) == (0, "after.example.test\n"), out.stderr


def test_c_after_other_commands(tmp_path: Path) -> None:
    d = config_dir(tmp_path / "etc", "x.example.test")
    (d / "main.cf").write_text(f"queue_directory = {tmp_path}/queue\ndata_directory = {tmp_path}/data\n")
    status = smarthost("status", "-c", str(d))
    assert (status.returncode, status.stdout) == (1, "smarthost: the mail system is not running\n"), status.stderr
    mailq = smarthost("mailq", "-c", str(d))
    assert mailq.returncode == 0 and "Mail queue is empty" in mailq.stdout, mailq.stderr
    edit = smarthost("postconf", "-e", "-c", str(d), "smtpd_banner = $myhostname ESMTP edited")
    assert edit.returncode == 0, edit.stderr
    assert "smtpd_banner = $myhostname ESMTP edited\n" in (d / "main.cf").read_text()


def test_commands_with_their_own_c_keep_it() -> None:
    # authd -c is saslauthd's "cache"; -c before the command still names the directory.
    args = build_parser().parse_args(["-c", "/srv/conf", "authd", "-c"])
    assert args.cache is True and args.config_dir == "/srv/conf"


def test_demo_uses_c_as_its_directory(tmp_path: Path) -> None:
    d = tmp_path / "mydemo"
    ports = [free_port(), free_port(), free_port()]
    proc = subprocess.Popen([sys.executable, "-m", "smarthost", "demo", "-c", str(d),
                             "--ports", ",".join(map(str, ports))],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path)
    try:
        first = proc.stdout.readline()
        wait_for_port(ports[0], alive=lambda: proc.poll() is None)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert first == f"Wrote a demo configuration to {d}\n"
    assert (d / "main.cf").exists() and f"127.0.0.1:{ports[1]}" in (d / "master.cf").read_text()
    assert not (tmp_path / "demo").exists()
