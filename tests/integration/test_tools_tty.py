"""The operator tools as an admin runs them in a terminal: ``smarthost setup server|client``
asks for every answer not given as a flag (defaults in brackets, Enter takes them), and
``smarthost probe --user`` asks for the password without echoing it. Each runs the installed
``smarthost`` command in a pseudo-terminal (``pty.fork``), answers the prompts as typed, and
checks the files written and the transcript."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "interop"))

from peers import SmarthostInstance, free_port  # noqa: E402

from smarthost import certs  # noqa: E402
from smarthost.authd.userdb import UserDB  # noqa: E402
from smarthost.config import load  # noqa: E402

SMARTHOST = str(Path(sys.executable).parent / "smarthost")
OWNER = ["--mail-owner", "nobody"] if os.geteuid() == 0 else []
WAIT = 60.0  # upper bound for one prompt to appear (a bound on a hang, not a measured time)


class Terminal:
    """A command on the slave side of a pseudo-terminal (its controlling terminal, so getpass
    reads /dev/tty with echo off); ``expect`` reads what it printed, ``type`` is the keyboard."""

    def __init__(self, *argv: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes the command
            try:
                os.execv(argv[0], list(argv))
            finally:
                os._exit(127)
        self.transcript = ""
        self._seen = 0  # how much of the transcript earlier expects consumed
        self.status: int | None = None

    def _read(self) -> bool:
        ready, _, _ = select.select([self.fd], [], [], WAIT)
        if not ready:
            raise AssertionError(f"nothing more from {self.pid}; so far:\n{self.transcript}")
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            data = b""
        self.transcript += data.decode(errors="replace").replace("\r\n", "\n")
        return bool(data)

    def expect(self, text: str) -> None:
        """Read until ``text`` appears after what earlier expects consumed."""
        while text not in self.transcript[self._seen:]:
            if not self._read():
                raise AssertionError(f"{text!r} never came; transcript:\n{self.transcript}")
        self._seen = self.transcript.index(text, self._seen) + len(text)

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")

    def wait(self) -> int:
        """Read to the end; the exit status."""
        while self._read():
            pass
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def kill(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


@pytest.fixture
def terminal():
    started: list[Terminal] = []

    def start(*argv: str) -> Terminal:
        started.append(Terminal(*argv))
        return started[-1]

    yield start
    for t in started:
        t.kill()


def test_setup_server_asks_for_every_answer(tmp_path, terminal):
    ca_cert, ca_key = tmp_path / "ca.pem", tmp_path / "ca.key"
    certs.ca_init("Example Mail CA", ca_cert, ca_key)
    d = tmp_path / "server"
    ports = [str(free_port()) for _ in range(3)]
    t = terminal(SMARTHOST, "-c", str(d), "setup", "server", "--local-state", "--listen", "127.0.0.1",
                 "--smtp-port", ports[0], "--submission-port", ports[1], "--smtps-port", ports[2], *OWNER)
    t.expect("Host name of this server (e.g. mail.example.com): ")
    t.type("mail.example.com")
    t.expect("Mail domains delivered here (separated by spaces; the first is $mydomain) [example.com]: ")
    t.type("example.com example.org")
    t.expect("besides loopback (CIDR, separated by spaces) [none]: ")
    t.type("192.168.1.0/24")
    t.expect("Users who may log in (names, separated by spaces) [none]: ")
    t.type("alice")
    t.expect("or (e)xisting files [s]: ")
    t.type("c")
    t.expect("CA certificate file: ")
    t.type(str(tmp_path / "nonexistent.pem"))
    t.expect("no such file")
    t.expect("CA certificate file: ")
    t.type(str(ca_cert))
    t.expect("CA private key file: ")
    t.type(str(ca_key))
    t.expect("Other names or addresses for the certificate (separated by spaces) [none]: ")
    t.type("127.0.0.1 smtp.example.com")
    t.expect("Password for alice: ")
    t.type("tty secret one")
    t.expect("Again: ")
    t.type("tty secret one")
    assert t.wait() == 0, t.transcript
    assert "Next steps:" in t.transcript and "tty secret one" not in t.transcript

    params = load(d).params
    assert params["mydomain"] == "example.com"
    assert params["virtual_mailbox_domains"] == ["example.com", "example.org"]
    assert params["mynetworks"] == ["127.0.0.0/8", "[::1]/128", "192.168.1.0/24"]
    chain = certs.load_certificates(d / "tls" / "cert.pem")
    for name in ("mail.example.com", "smtp.example.com", "127.0.0.1"):
        certs.verify(chain, certs.load_certificates(ca_cert), name)
    db = UserDB(d / "sasldb")
    try:
        assert db.check_password("alice", "", "tty secret one")
    finally:
        db.close()


def test_setup_server_enter_takes_the_defaults(tmp_path, terminal):
    d = tmp_path / "server"
    t = terminal(SMARTHOST, "-c", str(d), "setup", "server", "--hostname", "mail.example.net", "--local-state",
                 "--port-offset", "30000", *OWNER)
    for prompt in ("[example.net]: ", "[none]: ", "[none]: ", "[s]: ", "[none]: "):
        t.expect(prompt)
        t.type("")
    assert t.wait() == 0, t.transcript
    params = load(d).params
    assert params["virtual_mailbox_domains"] == ["example.net"]
    assert params["mynetworks"] == ["127.0.0.0/8", "[::1]/128"]
    cert = certs.load_certificates(d / "tls" / "cert.pem")
    certs.verify(cert, cert, "mail.example.net")  # self-signed for the host name


def test_setup_client_asks_for_the_ca_to_trust(tmp_path, terminal):
    ca_cert, ca_key = tmp_path / "ca.pem", tmp_path / "ca.key"
    certs.ca_init("Example Mail CA", ca_cert, ca_key)
    d = tmp_path / "client"
    t = terminal(SMARTHOST, "-c", str(d), "setup", "client", "--hostname", "sat.example.com", "--local-state")
    t.expect("The smarthost (host or host:port): ")
    t.type("mail.example.com:465")
    t.expect("Your login at the smarthost: ")
    t.type("alice")
    t.expect("TLS is required but not verified [none]: ")
    t.type(str(ca_cert))
    t.expect("Password for alice at mail.example.com: ")
    t.type("relay pw")
    t.expect("Again: ")
    t.type("relay pw")
    assert t.wait() == 0, t.transcript
    assert "relay pw" not in t.transcript
    text = (d / "main.cf").read_text()
    assert "relayhost = [mail.example.com]:465" in text and "smtp_tls_wrappermode = yes" in text
    assert "smtp_tls_security_level = verify" in text
    assert (d / "tls" / "relay-ca.pem").read_bytes() == ca_cert.read_bytes()
    assert (d / "sasl_passwd").stat().st_mode & 0o777 == 0o600


@pytest.fixture
def server(tmp_path):
    port = free_port()
    instance = SmarthostInstance(tmp_path / "srv", {"smtpd_sasl_auth_enable": "yes"},
                                 f"127.0.0.1:{port} inet n - n - - smtpd\n", tls=True)
    instance.config_dir.mkdir(parents=True)
    db = UserDB(instance.config_dir / "sasldb")
    db.add("alice", "typed at the prompt")
    db.close()
    instance.start()
    yield instance
    instance.stop()


def test_probe_asks_for_the_password_without_echo(server, terminal):
    ca = str(server.config_dir / "ca.pem")
    t = terminal(SMARTHOST, "probe", f"127.0.0.1:{server.ports[0]}", "--ca", ca, "--user", "alice", "--timeout", "20")
    t.expect("Password for alice: ")
    t.type("typed at the prompt")
    assert t.wait() == 0, t.transcript
    assert re.search(r"AUTH as alice: +OK with SCRAM-SHA-256 \(235", t.transcript), t.transcript
    assert "typed at the prompt" not in t.transcript
    assert t.transcript.rstrip().endswith("Result: OK")


def test_probe_with_a_wrong_password_typed(server, terminal):
    ca = str(server.config_dir / "ca.pem")
    t = terminal(SMARTHOST, "probe", f"127.0.0.1:{server.ports[0]}", "--ca", ca, "--user", "alice", "--timeout", "20")
    t.expect("Password for alice: ")
    t.type("not it")
    assert t.wait() == 1
    assert "AUTH as alice:" in t.transcript and "FAILED" in t.transcript and "not it" not in t.transcript
