"""smarthost's auth daemon and clients against the real thing (Debian's sasl2-bin and Postfix):

- ``testsaslauthd`` against ``smarthost authd``;
- our client against Cyrus ``saslauthd -a sasldb`` (a private sasldb bound over /etc/sasldb2 in
  its own mount namespace: saslauthd ignores ``-O`` for sasldb) and ``saslauthd -a shadow``;
- ``smarthost authd -a pam`` and ``-a shadow`` with a real system user (root: ``useradd``);
- a real Postfix ``smtpd`` with ``smtpd_sasl_type = dovecot`` checking passwords through our
  daemon's Dovecot socket, driven by ``swaks --auth PLAIN``.

Peers missing → skip (fail with CI=true), as ``peers.require_peer`` decides.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from peers import make_shared_dir, require_peer, require_root, unavailable, wait_for_unix_socket  # noqa: E402

from smarthost.authd.client import AuthStatus, SaslauthdClient, saslauthd_check

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt

SMARTHOST = [sys.executable, "-m", "smarthost"]
PASSWORD = "Tr0ub4dor&3 x"


def wait_for_socket(path: Path, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    wait_for_unix_socket(path, lambda: proc.poll() is None, timeout)


class Daemon:
    """A daemon subprocess in its own session, stopped (its whole process group) on exit."""

    def __init__(self, argv: list[str], socket_path: Path) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.socket_path = socket_path
        try:
            wait_for_socket(socket_path, self.proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> str:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.stderr.read() if self.proc.stderr else ""


def check(path: Path, login: str, password: str, service: str = "smtp", realm: str = ""):
    return asyncio.run(saslauthd_check(path, login, password, service, realm, timeout=10))


def checks_on_kept_connections(path: Path, attempts: list[tuple[str, str]], realm: str = "") -> list[AuthStatus]:
    """What the SMTP workers do: one client keeping its connections, asked one login after another."""
    async def run():
        client = SaslauthdClient(path, timeout=10)
        return [(await client.check(login, password, "smtp", realm)).status for login, password in attempts]
    return asyncio.run(run())


@pytest.fixture(scope="module")
def workdir():
    path = make_shared_dir()
    yield path
    subprocess.run(["rm", "-rf", str(path)])


@pytest.fixture(scope="module")
def system_user():
    """A real system user with a yescrypt password (Debian 12's default), removed afterwards."""
    require_root("useradd needs root")
    for command in ("useradd", "chpasswd", "userdel"):
        require_peer(command)
    name = "shauth" + secrets.token_hex(3)
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", name], check=True)
    try:
        hashed = crypt.crypt(PASSWORD, "$y$j9T$" + secrets.token_hex(8) + "$")
        subprocess.run(["chpasswd", "-e"], input=f"{name}:{hashed}\n", text=True, check=True)
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture(scope="module")
def our_authd(workdir):
    """``smarthost authd`` serving a user database with alice (socket dir traversable by postfix)."""
    config = workdir / "smarthost"
    config.mkdir()
    subprocess.run([*SMARTHOST, "-c", str(config), "users", "add", "alice"], input=PASSWORD + "\n",
                   text=True, check=True, capture_output=True)
    sockdir = workdir / "authd"
    sockdir.mkdir(mode=0o755)
    sockdir.chmod(0o755)  # Postfix's smtpd runs as postfix and must reach the socket
    daemon = Daemon([*SMARTHOST, "-c", str(config), "authd", "-m", str(sockdir), "-d",
                     "--dovecot", str(sockdir / "auth-client")], sockdir / "mux")
    yield daemon
    log = daemon.stop()
    assert PASSWORD not in log


def test_testsaslauthd_against_our_authd(our_authd):
    tool = require_peer("testsaslauthd")
    run = lambda pw: subprocess.run([tool, "-f", str(our_authd.socket_path), "-u", "alice", "-p", pw, "-s", "smtp"],  # noqa: E731
                                    capture_output=True, text=True, timeout=20)
    ok, no = run(PASSWORD), run("wrong")
    assert (ok.returncode, ok.stdout.strip()) == (0, '0: OK "Success."')
    assert no.returncode != 0 and no.stdout.strip() == '0: NO "authentication failed"'


def _cyrus_saslauthd(mechanism: str, sockdir: Path, *, sasldb: Path | None = None) -> Daemon:
    saslauthd = require_peer("saslauthd")
    sockdir.mkdir(mode=0o755, exist_ok=True)
    argv = [saslauthd, "-a", mechanism, "-m", str(sockdir), "-n", "1", "-d"]
    if sasldb is not None:
        if not Path("/etc/sasldb2").exists():
            unavailable("/etc/sasldb2 missing: the private sasldb is bound over it")
        argv = [require_peer("unshare"), "-m", "--propagation", "private", "sh", "-c",
                f"mount --bind {sasldb} /etc/sasldb2 && exec {' '.join(argv)}"]
    return Daemon(argv, sockdir / "mux")


def test_our_client_against_cyrus_saslauthd_sasldb(workdir):
    require_root("a private sasldb needs a mount namespace")
    saslpasswd2 = require_peer("saslpasswd2")
    sasldb = workdir / "sasldb2"
    subprocess.run([saslpasswd2, "-p", "-c", "-f", str(sasldb), "-u", "example.test", "alice"],
                   input=PASSWORD, text=True, check=True)
    daemon = _cyrus_saslauthd("sasldb", workdir / "cyrus-sasldb", sasldb=sasldb)
    try:
        assert check(daemon.socket_path, "alice", PASSWORD, realm="example.test").status is AuthStatus.OK
        assert check(daemon.socket_path, "alice", "wrong", realm="example.test").status is AuthStatus.NO
        assert check(daemon.socket_path, "bob", PASSWORD, realm="example.test").status is AuthStatus.NO
        # Cyrus closes after each answer: a client that keeps connections opens a new one each time
        attempts = [("alice", PASSWORD), ("alice", "wrong"), ("alice", PASSWORD)] * 4
        assert checks_on_kept_connections(daemon.socket_path, attempts, realm="example.test") == [
            AuthStatus.OK, AuthStatus.NO, AuthStatus.OK] * 4
    finally:
        daemon.stop()


def test_our_client_against_cyrus_saslauthd_shadow(workdir, system_user):
    daemon = _cyrus_saslauthd("shadow", workdir / "cyrus-shadow")
    try:
        assert check(daemon.socket_path, system_user, PASSWORD).status is AuthStatus.OK
        no = check(daemon.socket_path, system_user, "wrong")
        assert no.status is AuthStatus.NO and no.reason == "Incorrect password"  # Cyrus says why; ours does not
    finally:
        daemon.stop()


@pytest.mark.parametrize("backend", ["pam", "shadow"])
def test_our_authd_with_a_real_system_user(workdir, system_user, backend):
    sockdir = workdir / f"ours-{backend}"
    daemon = Daemon([*SMARTHOST, "authd", "-a", backend, "-m", str(sockdir), "-d"], sockdir / "mux")
    try:
        assert check(daemon.socket_path, system_user, PASSWORD).status is AuthStatus.OK
        wrong = check(daemon.socket_path, system_user, "wrong")
        unknown = check(daemon.socket_path, "nosuchuser" + secrets.token_hex(3), "wrong")
        assert wrong.status is AuthStatus.NO and wrong == unknown
    finally:
        log = daemon.stop()
    assert f"auth success: user={system_user} service=smtp realm=" in log
    assert PASSWORD not in log and "wrong" not in log


def _swaks(port: int, user: str, password: str) -> subprocess.CompletedProcess[str]:
    swaks = require_peer("swaks")
    return subprocess.run(
        [swaks, "--server", f"127.0.0.1:{port}", "--from", "alice@example.test", "--to", "bob@example.org",
         "--auth", "PLAIN", "--auth-user", user, "--auth-password", password, "--quit-after", "AUTH", "--timeout", "20"],
        capture_output=True, text=True, timeout=60,
    )


def test_postfix_dovecot_sasl_with_our_authd(our_authd, start_postfix):
    postfix = start_postfix("dovecot", {
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_type": "dovecot",
        "smtpd_sasl_path": str(our_authd.socket_path.parent / "auth-client"),
        "smtpd_sasl_security_options": "noanonymous",
    })
    require_peer("swaks")
    ok = _swaks(postfix.port, "alice", PASSWORD)
    assert ok.returncode == 0, ok.stdout + postfix.log_text()[-2000:]
    assert "235 2.7.0 Authentication successful" in ok.stdout
    no = _swaks(postfix.port, "alice", "wrong")
    assert "535 5.7.8" in no.stdout and no.returncode != 0
