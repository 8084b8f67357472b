"""AUTH parameters through the real running server, each seen where a user would notice it: what
reaches the auth daemon (a scripted saslauthd socket in this process records the fields), the
log line, the Received header, the EHLO line, the reply codes."""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from smarthost.authd import saslauthd
from smarthost.inbound.auth import AUTH_TIMEOUT
from test_auth import plain, sasl_server, start_authd, stop_authd, tls_session
from test_server import Raw

RECIPE = "pwcheck_method: saslauthd\nmech_list: PLAIN LOGIN\nsaslauthd_path: {path}\n"


class ScriptedSaslauthd:
    """A saslauthd socket answering as told: ``ok`` (OK for password ``secret``, else NO),
    ``slow`` (reads the request, never answers) or ``garbled`` (answers bytes that are no
    saslauthd reply). ``requests`` records (login, service, realm) of every request."""

    def __init__(self, path: Path, behaviour: str = "ok") -> None:
        self.path = path
        self.behaviour = behaviour
        self.requests: list[tuple[str, str, str]] = []
        self._held: list[socket.socket] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(16)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            decoder = saslauthd.RequestDecoder()
            request = None
            try:
                while request is None:
                    data = conn.recv(4096)
                    if not data:
                        break
                    request = decoder.feed(data)
            except (OSError, saslauthd.ProtocolError):
                request = None
            if request is None:
                conn.close()
                continue
            self.requests.append((request.login, request.service, request.realm))
            if self.behaviour == "slow":
                self._held.append(conn)  # never answered, closed at the end of the test
                continue
            if self.behaviour == "garbled":
                conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")  # a length prefix of 0x4854, then too little
            else:
                conn.sendall(saslauthd.encode_response(request.password == "secret", "Success."))
            conn.close()

    def close(self) -> None:
        self._sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def scripted(tmp_path):
    """``scripted(behaviour)`` → a ScriptedSaslauthd on a short path under /tmp."""
    directory = Path(tempfile.mkdtemp(prefix="sa", dir="/tmp"))
    daemons: list[ScriptedSaslauthd] = []

    def start(behaviour: str = "ok") -> ScriptedSaslauthd:
        daemon = ScriptedSaslauthd(directory / f"mux{len(daemons)}", behaviour)
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.close()
    shutil.rmtree(directory, ignore_errors=True)


def recipe_server(smarthost, daemon: ScriptedSaslauthd, main_cf: dict | None = None):
    return sasl_server(smarthost, RECIPE.format(path=daemon.path), main_cf, users=False)


def test_local_domain_reaches_the_daemon_and_the_log(smarthost, scripted):
    daemon = scripted()
    s = recipe_server(smarthost, daemon, {"smtpd_sasl_local_domain": "example.test"})
    r = tls_session(s)
    assert r.cmd("AUTH PLAIN " + plain("alice", "secret"))[0] == 235
    r.cmd("MAIL FROM:<alice@example.test>")
    r.cmd("RCPT TO:<bob@foreign.example>")
    r.cmd("DATA")
    r.send(b"Subject: realm\r\n\r\nx\r\n.\r\n")
    code, text = r.reply()
    assert code == 250
    queue_id = text.rsplit(" ", 1)[-1]
    assert daemon.requests == [("alice", "smtp", "example.test")]
    time.sleep(0.2)
    assert f"{queue_id}: client=localhost[127.0.0.1], sasl_method=PLAIN, sasl_username=alice@example.test" \
        in s.log_text()


def test_sasl_service_reaches_the_daemon(smarthost, scripted):
    daemon = scripted()
    s = recipe_server(smarthost, daemon, {"smtpd_sasl_service": "submission"})
    r = tls_session(s)
    assert r.cmd("AUTH LOGIN " + base64.b64encode(b"alice").decode())[0] == 334
    assert r.cmd(base64.b64encode(b"secret").decode())[0] == 235
    assert daemon.requests == [("alice", "submission", "")]


def test_service_reaches_pam_through_our_authd(smarthost, tmp_path):
    # The service decides which /etc/pam.d file our authd (-a pam) would use; a passwd backend
    # logs it: the value configured in main.cf is the one the daemon sees.
    proc = start_authd(tmp_path, tmp_path / "authd")
    try:
        s = sasl_server(smarthost, RECIPE.format(path=tmp_path / "authd" / "mux"), {"smtpd_sasl_service": "smtps"},
                        users=False)
        r = tls_session(s)
        assert r.cmd("AUTH PLAIN " + plain("alice", "secret"))[0] == 235
    finally:
        log = stop_authd(proc)
    assert "auth success: user=alice service=smtps realm=" in log


def test_authenticated_header(smarthost, tmp_path):
    s = sasl_server(smarthost, "pwcheck_method: auxprop\nmech_list: PLAIN\n",
                    {"smtpd_sasl_authenticated_header": "yes"})
    r = tls_session(s)
    assert r.cmd("AUTH PLAIN " + plain("alice", "secret"))[0] == 235
    r.cmd("MAIL FROM:<alice@example.org>")
    r.cmd("RCPT TO:<bob@example.test>")
    r.cmd("DATA")
    r.send(b"Subject: header\r\n\r\nx\r\n.\r\n")
    code, text = r.reply()
    assert code == 250
    body = s.read_body(text.rsplit(" ", 1)[-1])
    received = body.split(b"\r\nSubject:", 1)[0].decode()
    assert received.startswith("Received: from ")
    assert "(Authenticated sender: alice)" in received


def test_without_authenticated_header_the_user_is_not_in_the_message(smarthost):
    s = sasl_server(smarthost, "pwcheck_method: auxprop\nmech_list: PLAIN\n")
    r = tls_session(s)
    r.cmd("AUTH PLAIN " + plain("alice", "secret"))
    r.cmd("MAIL FROM:<alice@example.org>")
    r.cmd("RCPT TO:<bob@example.test>")
    r.cmd("DATA")
    r.send(b"Subject: header\r\n\r\nx\r\n.\r\n")
    _, text = r.reply()
    assert b"Authenticated sender" not in s.read_body(text.rsplit(" ", 1)[-1])


def test_noactive_leaves_only_scram(smarthost):
    s = sasl_server(smarthost, "pwcheck_method: auxprop\nmech_list: PLAIN LOGIN SCRAM-SHA-256 SCRAM-SHA-1\n",
                    {"smtpd_sasl_security_options": "noanonymous, noactive"})
    r = tls_session(s)
    code, text = r.cmd("EHLO c")
    assert "AUTH SCRAM-SHA-256 SCRAM-SHA-1" in text.splitlines()
    assert r.cmd("AUTH PLAIN " + plain("alice", "secret"))[0] == 504


def test_nodictionary_leaves_nothing_and_the_server_does_not_start(smarthost):
    # No password mechanism resists a passive dictionary attack: nothing to offer, a clear start error.
    s = smarthost({"smtpd_sasl_auth_enable": "yes", "smtpd_sasl_security_options": "noanonymous, nodictionary"},
                  tls=True, start=False)
    s.write_config()
    (s.config_dir / "sasl").mkdir()
    (s.config_dir / "sasl" / "smtpd.conf").write_text("pwcheck_method: auxprop\nmech_list: PLAIN LOGIN SCRAM-SHA-256\n")
    out = subprocess.run([sys.executable, "-m", "smarthost", "-c", str(s.config_dir), "run"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "no SASL mechanism is left to offer" in out.stderr + s.log_text()


def test_failure_limit_from_main_cf(smarthost):
    s = sasl_server(smarthost, "pwcheck_method: auxprop\nmech_list: PLAIN\n", {"smtpd_sasl_auth_failure_limit": "2"})
    r = tls_session(s)
    assert r.cmd("AUTH PLAIN " + plain("alice", "x1"))[0] == 535
    assert r.cmd("AUTH PLAIN " + plain("alice", "x2"))[0] == 535
    code, text = r.reply()
    assert code == 421 and text.startswith("4.7.0")
    assert r.closed()


@pytest.mark.parametrize("behaviour", ["slow", "garbled"])
def test_a_broken_daemon_is_a_temporary_failure(smarthost, scripted, behaviour):
    daemon = scripted(behaviour)
    s = recipe_server(smarthost, daemon)
    r = tls_session(s)
    r.sock.settimeout(AUTH_TIMEOUT + 10)  # longer than the server's own wait, which must end it
    code, text = r.cmd("AUTH PLAIN " + plain("alice", "secret"))
    assert (code, text) == (454, "4.7.0 Temporary authentication failure")
    r.cmd("MAIL FROM:<alice@example.org>")
    assert r.cmd("RCPT TO:<bob@foreign.example>")[0] == 554  # not authenticated
    assert daemon.requests == [("alice", "smtp", "")]
    time.sleep(0.2)
    detail = "no answer in time" if behaviour == "slow" else "garbled answer"
    assert "warning: SASL authentication problem: " in s.log_text() and detail in s.log_text()
    assert str(daemon.path) in s.log_text()


def test_broken_sasl_auth_clients_get_the_old_line_too(smarthost, scripted):
    s = recipe_server(smarthost, scripted(), {"broken_sasl_auth_clients": "yes"})
    r = tls_session(s)
    _, text = r.cmd("EHLO c")
    lines = text.splitlines()
    assert "AUTH PLAIN LOGIN" in lines and "AUTH=PLAIN LOGIN" in lines


def test_noplaintext_without_tls_warns_that_auth_is_never_offered(smarthost):
    s = smarthost({"smtpd_sasl_auth_enable": "yes", "smtpd_tls_auth_only": "no",
                   "smtpd_sasl_security_options": "noanonymous, noplaintext",
                   "smtpd_sasl_tls_security_options": "noanonymous"}, start=False)
    s.write_config()
    (s.config_dir / "sasl").mkdir()
    (s.config_dir / "sasl" / "smtpd.conf").write_text("pwcheck_method: auxprop\nmech_list: PLAIN LOGIN\n")
    s.write_config = lambda: None
    s.start()
    r = Raw(s.ports[0])
    r.reply()
    assert "AUTH" not in r.cmd("EHLO c")[1]
    assert r.cmd("AUTH PLAIN " + plain("alice", "secret"))[0] == 538
    assert "but AUTH is never offered: smtpd_sasl_security_options leave no mechanism before TLS" in s.log_text()
