"""``smarthost authd`` on real unix sockets: our clients, ``smarthost testauth`` and ``users``,
and the failure modes of daemons that are missing, silent or garbled."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peers import PeerError, wait_for_unix_socket  # tests/interop, on sys.path through conftest

from smarthost.authd.backends import make_backend
from smarthost.authd.client import AuthStatus, DovecotAuthClient, SaslauthdClient, saslauthd_check
from smarthost.authd import saslauthd as saslauthd_wire
from smarthost.authd.daemon import AuthDaemon
from smarthost.cli import main as cli_main
from smarthost.maillog import MailLog

SMARTHOST = [sys.executable, "-m", "smarthost"]
PASSWORD = "correct horse"


def wait_for_socket(path: Path, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    try:
        wait_for_unix_socket(path, lambda: proc.poll() is None, timeout)
    except PeerError as exc:
        raise AssertionError(f"{exc}: {proc.stderr.read().decode() if proc.poll() is not None else ''}") from None


@pytest.fixture
def authd(tmp_path):
    """``smarthost -c CFG authd -m SOCK -d -c`` serving the user database with alice in it."""
    config = tmp_path / "etc"
    config.mkdir()
    subprocess.run([*SMARTHOST, "-c", str(config), "users", "add", "alice"], input=PASSWORD + "\n",
                   text=True, check=True, capture_output=True)
    sockdir = tmp_path / "run"
    proc = subprocess.Popen([*SMARTHOST, "-c", str(config), "authd", "-m", str(sockdir), "-d", "-c"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_socket(sockdir / "mux", proc)
    deadline = time.monotonic() + 10  # the socket is bound before the daemon writes its pid file
    while not (sockdir / "authd.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    yield proc, sockdir / "mux"
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    return proc.stderr.read().decode()


def check(path, login, password, **kw):
    return asyncio.run(saslauthd_check(path, login, password, kw.pop("service", "smtp"), kw.pop("realm", ""), **kw))


def test_our_client_against_our_daemon(authd):
    proc, mux = authd
    assert check(mux, "alice", PASSWORD).status is AuthStatus.OK
    wrong, unknown = check(mux, "alice", "wrong"), check(mux, "mallory", "wrong")
    assert wrong.status is AuthStatus.NO
    assert wrong == unknown  # same answer for a wrong password and an unknown user
    assert check(mux, "alice", PASSWORD).ok  # cached this time (see the log)
    log = stop(proc)
    assert "auth success: user=alice service=smtp realm=\n" in log
    assert "auth success: user=alice service=smtp realm= (cached)" in log
    assert "auth failure: user=alice service=smtp realm=" in log
    assert "auth failure: user=mallory service=smtp realm=" in log
    assert PASSWORD not in log and "wrong" not in log


def test_testauth_command(authd):
    _, mux = authd
    ok = subprocess.run([*SMARTHOST, "testauth", "-f", str(mux), "-u", "alice", "-p", PASSWORD], capture_output=True, text=True)
    assert (ok.returncode, ok.stdout) == (0, '0: OK "Success."\n')
    no = subprocess.run([*SMARTHOST, "testauth", "-f", str(mux), "-u", "alice", "-p", "x"], capture_output=True, text=True)
    assert (no.returncode, no.stdout) == (1, '0: NO "authentication failed"\n')


def test_testauth_names_the_missing_socket(tmp_path):
    missing = tmp_path / "nowhere" / "mux"
    result = subprocess.run([*SMARTHOST, "testauth", "-f", str(missing), "-u", "a", "-p", "b"], capture_output=True, text=True)
    assert result.returncode == 2
    assert f"cannot reach saslauthd at {missing}: No such file or directory" in result.stderr


def test_the_daemon_answers_several_requests_on_one_connection(authd):
    proc, mux = authd
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(mux))
        answers = []
        for password in (PASSWORD, "wrong", PASSWORD):
            s.sendall(saslauthd_wire.encode_request("alice", password, "smtp", ""))
            answers.append(s.recv(100))
    assert answers == [b"\x00\x0bOK Success.", b"\x00\x18NO authentication failed", b"\x00\x0bOK Success."]
    log = stop(proc)
    assert log.count("auth success: user=alice service=smtp realm=") == 2
    assert "timed out" not in log


def test_garbage_gets_a_no_and_the_daemon_keeps_serving(authd):
    proc, mux = authd
    for junk in (b"\xff\xff" + b"x" * 100, b"\x00\x05al\x00ce"):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(mux))
            s.sendall(junk)
            assert s.recv(100) == b"\x00\x0eNO bad request"
    assert check(mux, "alice", PASSWORD).ok
    assert "warning: bad saslauthd request: login longer than 256 bytes" in stop(proc)


def test_sigterm_removes_socket_and_pid_file(authd):
    proc, mux = authd
    assert (mux.parent / "authd.pid").read_text().strip() == str(proc.pid)
    stop(proc)
    assert proc.returncode == 0
    assert not mux.exists() and not (mux.parent / "authd.pid").exists()


def test_a_second_daemon_refuses_the_live_socket(authd, tmp_path):
    _, mux = authd
    second = subprocess.run([*SMARTHOST, "-c", str(tmp_path / "etc"), "authd", "-m", str(mux.parent), "-d"],
                            capture_output=True, text=True, timeout=20)
    assert second.returncode == 1
    assert f"another auth daemon is listening on {mux}" in second.stderr
    assert check(mux, "alice", PASSWORD).ok


def test_socket_modes(authd):
    _, mux = authd
    assert stat.S_IMODE(mux.stat().st_mode) == 0o666
    assert stat.S_IMODE(mux.parent.stat().st_mode) == 0o710


# --- users -----------------------------------------------------------------------------------


def users(config: Path, *args: str, stdin: str = "", monkeypatch) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["-c", str(config), "users", *args])
    return code, out.getvalue(), err.getvalue()


def test_users_tool(tmp_path, monkeypatch):
    assert users(tmp_path, "add", "alice", "-u", "example.test", stdin="pw1\n", monkeypatch=monkeypatch)[0] == 0
    assert users(tmp_path, "add", "bob", stdin="pw2\n", monkeypatch=monkeypatch)[0] == 0
    code, out, _ = users(tmp_path, "list", monkeypatch=monkeypatch)
    assert [line.split(":")[0] for line in out.splitlines()] == ["bob", "alice@example.test"]
    assert "argon2id SCRAM-SHA-256 SCRAM-SHA-1" in out
    code, _, err = users(tmp_path, "add", "bob", stdin="x\n", monkeypatch=monkeypatch)
    assert code == 1 and f"user bob already exists in {tmp_path / 'sasldb'}" in err
    assert users(tmp_path, "passwd", "alice@example.test", stdin="pw3\n", monkeypatch=monkeypatch)[0] == 0
    assert users(tmp_path, "del", "bob", monkeypatch=monkeypatch)[0] == 0
    code, _, err = users(tmp_path, "del", "bob", monkeypatch=monkeypatch)
    assert code == 1 and "user bob not found" in err
    code, _, err = users(tmp_path, "add", "carol", stdin="\n", monkeypatch=monkeypatch)
    assert code == 1 and "no password given" in err
    assert stat.S_IMODE((tmp_path / "sasldb").stat().st_mode) == 0o600


def test_users_follow_sasldb_path_of_smtpd_conf(tmp_path, monkeypatch):
    (tmp_path / "sasl").mkdir()
    (tmp_path / "sasl" / "smtpd.conf").write_text(f"pwcheck_method: auxprop\nsasldb_path: {tmp_path / 'other.db'}\n")
    assert users(tmp_path, "add", "alice", stdin="pw\n", monkeypatch=monkeypatch)[0] == 0
    assert (tmp_path / "other.db").exists() and not (tmp_path / "sasldb").exists()
    (tmp_path / "sasl" / "smtpd.conf").write_text("sasldb_path: relative.db\n")
    assert users(tmp_path, "add", "alice", stdin="pw\n", monkeypatch=monkeypatch)[0] == 0
    assert (tmp_path / "relative.db").exists()


# --- clients against broken daemons -----------------------------------------------------------


async def serve(path: Path, behaviour):
    """A fake daemon at ``path``: ``behaviour(reader, writer)`` per connection."""
    return await asyncio.start_unix_server(behaviour, str(path))


async def silent(reader, writer):
    await asyncio.sleep(30)


async def garbage(reader, writer):
    await reader.read(100)
    writer.write(b"\x00\x05HELLO")
    await writer.drain()
    writer.close()


async def hang_up(reader, writer):
    await reader.read(100)
    writer.close()


@pytest.mark.parametrize("behaviour, detail", [(silent, "no answer in time"), (garbage, "garbled answer"),
                                                (hang_up, "connection closed without an answer")])
def test_saslauthd_client_tempfails_on_broken_daemons(tmp_path, behaviour, detail):
    path = tmp_path / "mux"

    async def run():
        server = await serve(path, behaviour)
        started = time.monotonic()
        result = await saslauthd_check(path, "alice", "pw", "smtp", "", timeout=0.5)
        server.close()
        return result, time.monotonic() - started

    result, elapsed = asyncio.run(run())
    assert result.status is AuthStatus.TEMPFAIL and not result.ok
    assert str(path) in result.reason and detail in result.reason
    assert elapsed < 2


class CountingSaslauthd:
    """A fake saslauthd that says OK to every request and counts its connections. ``close_after``:
    close after that many answers on a connection (1: as Cyrus does); ``drop_request``: hang up
    on that request (the 1st, 2nd...) instead of answering it; on a kept connection that is how
    a daemon closing an idle connection races a client that reuses it."""

    def __init__(self, close_after: int | None = None, drop_request: int | None = None) -> None:
        self.close_after, self.drop_request = close_after, drop_request
        self.connections = 0
        self.requests = 0

    async def __call__(self, reader, writer):
        self.connections += 1
        answered = 0
        try:
            while True:
                decoder = saslauthd_wire.RequestDecoder()
                request = None
                while request is None:
                    data = await reader.read(4096)
                    if not data:
                        return
                    request = decoder.feed(data)
                self.requests += 1
                if self.requests == self.drop_request:
                    return
                writer.write(saslauthd_wire.encode_response(True, f"Success {self.requests}."))
                await writer.drain()
                answered += 1
                if self.close_after is not None and answered >= self.close_after:
                    return
        finally:
            writer.close()


def kept_client_checks(tmp_path, daemon: CountingSaslauthd, n: int):
    path = tmp_path / "mux"

    async def run():
        server = await serve(path, daemon)
        client = SaslauthdClient(path, timeout=2)
        results = []
        for _ in range(n):
            results.append(await client.check("alice", "pw", "smtp", ""))
            await asyncio.sleep(0.01)  # a Cyrus-like daemon's end of connection arrives meanwhile
        server.close()
        return results

    return asyncio.run(run())


def test_saslauthd_client_keeps_its_connection_to_a_daemon_that_keeps_it_open(tmp_path):
    daemon = CountingSaslauthd()
    results = kept_client_checks(tmp_path, daemon, 5)
    assert [r.reason for r in results] == [f"Success {i}." for i in range(1, 6)] and all(r.ok for r in results)
    assert daemon.connections == 1


def test_saslauthd_client_opens_a_new_connection_when_the_daemon_closes_after_each_answer(tmp_path):
    daemon = CountingSaslauthd(close_after=1)
    results = kept_client_checks(tmp_path, daemon, 4)
    assert all(r.ok for r in results) and daemon.connections == 4 and daemon.requests == 4


def test_saslauthd_client_asks_again_when_a_kept_connection_is_closed_unanswered(tmp_path):
    daemon = CountingSaslauthd(drop_request=2)  # the 2nd request, on the kept connection, is dropped
    results = kept_client_checks(tmp_path, daemon, 3)
    assert [r.status for r in results] == [AuthStatus.OK] * 3
    assert [r.reason for r in results] == ["Success 1.", "Success 3.", "Success 4."]
    assert daemon.connections == 2


def test_saslauthd_client_does_not_ask_twice_on_a_new_connection(tmp_path):
    daemon = CountingSaslauthd(drop_request=1)
    # on a new connection a hang-up is an answer of its own: TEMPFAIL, not a second try
    result = kept_client_checks(tmp_path, daemon, 1)[0]
    assert result.status is AuthStatus.TEMPFAIL and "connection closed without an answer" in result.reason
    assert (daemon.connections, daemon.requests) == (1, 1)


def test_saslauthd_client_names_the_missing_socket(tmp_path):
    result = check(tmp_path / "chroot" / "var/run/saslauthd/mux", "alice", "pw")
    assert result.status is AuthStatus.TEMPFAIL
    assert result.reason == f"cannot reach saslauthd at {tmp_path}/chroot/var/run/saslauthd/mux: No such file or directory"


def test_saslauthd_client_refuses_oversized_credentials_itself(tmp_path):
    result = check(tmp_path / "mux", "a" * 300, "pw")
    assert result.status is AuthStatus.NO and result.reason == "login longer than 256 bytes"


@pytest.mark.parametrize("behaviour", [silent, garbage, hang_up])
def test_dovecot_client_tempfails_on_broken_daemons(tmp_path, behaviour):
    path = tmp_path / "auth"

    async def run():
        server = await serve(path, behaviour)
        client = DovecotAuthClient(path, timeout=0.5)
        exchange = await client.start("PLAIN", b"\0alice\0pw")
        mechanisms = await client.mechanisms()
        server.close()
        return exchange.result, mechanisms

    result, mechanisms = asyncio.run(run())
    assert result.status is AuthStatus.TEMPFAIL and str(path) in result.reason
    assert mechanisms.status is AuthStatus.TEMPFAIL


# --- the Dovecot protocol side of our daemon, in process --------------------------------------


@pytest.fixture
def passwd_file(tmp_path):
    path = tmp_path / "users"
    path.write_text("alice:{PLAIN}" + PASSWORD + "\n")
    return path


def run_with_daemon(tmp_path, passwd_file, body, **kw):
    log = tmp_path / "maillog"

    async def main():
        daemon = AuthDaemon(make_backend("passwd", option=str(passwd_file)), tmp_path / "run", maillog=MailLog(str(log)),
                            dovecot_socket=tmp_path / "run" / "auth", **kw)
        task = asyncio.create_task(daemon.serve())
        while not (tmp_path / "run" / "auth").exists():
            await asyncio.sleep(0.01)
        try:
            return await body(tmp_path / "run")
        finally:
            daemon.stop()
            await task

    return asyncio.run(main()), log.read_text()


def test_dovecot_protocol_plain_and_login(tmp_path, passwd_file):
    async def body(run):
        client = DovecotAuthClient(run / "auth")
        mechanisms = [m.name for m in await client.mechanisms()]
        async with await client.start("PLAIN", b"\0alice\0" + PASSWORD.encode()) as ok:
            pass
        async with await client.start("PLAIN", b"\0alice\0nope") as no:
            pass
        login = await client.start("LOGIN", None)
        steps = [login.result.challenge, (await login.step(b"alice")).challenge, await login.step(PASSWORD.encode())]
        await login.aclose()
        unsupported = (await client.start("CRAM-MD5", None)).result
        return mechanisms, ok.result, no.result, steps, unsupported

    (mechanisms, ok, no, steps, unsupported), log = run_with_daemon(tmp_path, passwd_file, body)
    assert mechanisms == ["PLAIN", "LOGIN"]
    assert (ok.status, ok.user) == (AuthStatus.OK, "alice")
    assert no.status is AuthStatus.NO
    assert steps[:2] == [b"Username:", b"Password:"] and steps[2].status is AuthStatus.OK
    assert unsupported.status is AuthStatus.NO
    assert log.count("auth success: user=alice service=smtp") == 2 and PASSWORD not in log


def test_a_slow_saslauthd_client_is_cut_off(tmp_path, passwd_file):
    async def body(run):
        reader, writer = await asyncio.open_unix_connection(str(run / "mux"))
        writer.write(b"\x00\x05ali")
        started = time.monotonic()
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return data, time.monotonic() - started

    (data, elapsed), log = run_with_daemon(tmp_path, passwd_file, body, request_timeout=0.3)
    assert data == b"" and elapsed < 2
    assert "warning: saslauthd client timed out" in log


def test_stale_socket_is_replaced(tmp_path, passwd_file):
    run = tmp_path / "run"
    run.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(run / "mux"))
    stale.close()  # the file stays, nobody listens: what a crash leaves

    async def body(run):
        return await saslauthd_check(run / "mux", "alice", PASSWORD, "smtp", "")

    result, _ = run_with_daemon(tmp_path, passwd_file, body)
    assert result.ok
    assert not os.path.exists(run / "mux")


# --- the default socket directory: Cyrus saslauthd's /var/run/saslauthd ------------------------


def test_the_default_socket_is_where_sasl_smtpd_conf_looks_by_default():
    # The recipe's two-line sasl/smtpd.conf has no saslauthd_path: Cyrus's default must reach us.
    from smarthost.authd.daemon import DEFAULT_SOCKET_DIR, SOCKET_NAME
    from smarthost.config.saslconf import DEFAULT_SASLAUTHD_PATH
    from smarthost.setup import DEFAULT_AUTHD_SOCKET_DIR

    assert f"{DEFAULT_SOCKET_DIR}/{SOCKET_NAME}" == DEFAULT_SASLAUTHD_PATH == "/var/run/saslauthd/mux"
    assert DEFAULT_AUTHD_SOCKET_DIR == DEFAULT_SOCKET_DIR


def in_private_saslauthd_dir(private: Path, *argv: str) -> list[str]:
    """``argv`` run in its own mount namespace where ``private`` is bound over /var/run/saslauthd,
    so the machine's own saslauthd directory is never touched (what appears there is in ``private``)."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not os.path.isdir("/var/run/saslauthd"):
        pytest.skip("needs root, unshare and /var/run/saslauthd to bind a private directory over it")
    command = " ".join(shlex.quote(a) for a in argv)
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            f"mount --bind {shlex.quote(str(private))} /var/run/saslauthd && exec {command}"]


@pytest.fixture
def private_run(tmp_path):
    path = tmp_path / "saslauthd"
    path.mkdir(mode=0o710)
    return path


def test_without_m_the_daemon_listens_on_var_run_saslauthd(tmp_path, private_run, passwd_file):
    argv = in_private_saslauthd_dir(private_run, *SMARTHOST, "-c", str(tmp_path), "authd", "-a", "passwd",
                                    "-O", str(passwd_file), "-d")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_socket(private_run / "mux", proc)  # = /var/run/saslauthd/mux inside its namespace
        assert check(private_run / "mux", "alice", PASSWORD).ok
        assert check(private_run / "mux", "alice", "wrong").status is AuthStatus.NO
        # A second daemon on the same default path finds this live one and leaves it alone.
        second = subprocess.run(in_private_saslauthd_dir(private_run, *SMARTHOST, "-c", str(tmp_path), "authd",
                                                         "-a", "passwd", "-O", str(passwd_file), "-d"),
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert "another auth daemon is listening on /var/run/saslauthd/mux (a Cyrus saslauthd?)" in second.stderr
        assert "-m DIR" in second.stderr
        assert check(private_run / "mux", "alice", PASSWORD).ok
    finally:
        proc.kill()  # like a crash: the socket file stays behind, nobody listens
        proc.wait()
    assert (private_run / "mux").exists()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_socket(private_run / "mux", proc)  # the stale socket was replaced
        assert check(private_run / "mux", "alice", PASSWORD).ok
    finally:
        assert "listening on /var/run/saslauthd/mux" in stop(proc)
