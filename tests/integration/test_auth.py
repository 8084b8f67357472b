"""SMTP AUTH through the real server: TLS first, the right codes, relaying, the log lines."""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peers import free_port, wait_for_port, wait_for_text
from test_server import Raw, client_ctx

RELAY_RULES = "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"
STRANGER = {"mynetworks": "192.0.2.0/24", "smtpd_relay_restrictions": RELAY_RULES, "smtpd_sasl_auth_enable": "yes"}


def add_user(config_dir: Path, name: str, password: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "smarthost", "-c", str(config_dir), "users", "add", name],
                          input=password + "\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def tls_session(s) -> Raw:
    """A raw client past the greeting, STARTTLS and the second EHLO."""
    r = Raw(s.ports[0])
    r.reply()
    r.cmd("EHLO c")
    assert r.cmd("STARTTLS")[0] == 220
    r.starttls(client_ctx(s))
    r.cmd("EHLO c")
    return r


def sasl_server(smarthost, smtpd_conf: str | None, main_cf: dict | None = None, *, users: bool = True, files=None,
                master_cf: str | None = None, before_start=None):
    """A running TLS server with STRANGER's rules plus ``main_cf``, ``sasl/smtpd.conf`` as given,
    alice/secret in the user database, and ``files`` ({name: text}) in the config directory;
    ``before_start(instance)`` runs just before the server starts."""
    s = smarthost({**STRANGER, **(main_cf or {})}, tls=True, start=False, master_cf=master_cf)
    s.write_config()
    if smtpd_conf is not None:
        (s.config_dir / "sasl").mkdir()
        (s.config_dir / "sasl" / "smtpd.conf").write_text(smtpd_conf)
    for name, text in (files or {}).items():
        (s.config_dir / name).write_text(text)
    if users:
        add_user(s.config_dir, "alice", "secret")
    s.write_config = lambda: None  # keep the files made above
    if before_start is not None:
        before_start(s)
    s.start()
    return s


@pytest.fixture
def auxprop_server(smarthost):
    """A server whose sasl/smtpd.conf says auxprop (the user database), with alice/secret."""
    return sasl_server(smarthost, "pwcheck_method: auxprop\nauxprop_plugin: sasldb\n"
                                  "mech_list: PLAIN LOGIN SCRAM-SHA-256 SCRAM-SHA-1\n")


def test_no_auth_before_tls_and_530_without_looking_at_credentials(auxprop_server):
    s = auxprop_server
    r = Raw(s.ports[0])
    r.reply()
    code, text = r.cmd("EHLO c")
    assert "AUTH" not in text
    code, text = r.cmd("AUTH PLAIN " + plain("alice", "secret"))
    assert code == 530 and text.startswith("5.7.0")
    time.sleep(0.2)
    assert "SASL" not in s.log_text()


def test_auth_after_starttls_lets_a_user_relay(auxprop_server):
    s = auxprop_server
    with smtplib.SMTP("127.0.0.1", s.ports[0], timeout=10) as c:
        c.ehlo("client.example")
        c.starttls(context=client_ctx(s))
        c.ehlo("client.example")
        assert c.esmtp_features["auth"].split() == ["PLAIN", "LOGIN", "SCRAM-SHA-256", "SCRAM-SHA-1"]
        c.mail("alice@example.org")
        code, text = c.rcpt("bob@foreign.example")
        assert code == 554 and b"Relay access denied" in text  # not yet authenticated
        c.rset()
        c.login("alice", "secret")  # smtplib picks PLAIN
        c.mail("alice@example.org")
        assert c.rcpt("bob@foreign.example")[0] == 250
        code, text = c.data(b"Subject: relayed\r\n\r\nhi\r\n")
    assert code == 250
    qid = text.decode().rsplit(" ", 1)[-1]
    assert f"with ESMTPSA id {qid}".encode() in s.read_body(qid)
    time.sleep(0.2)
    assert f"{qid}: client=localhost[127.0.0.1], sasl_method=PLAIN, sasl_username=alice" in s.log_text()


def test_login_mechanism_and_wrong_password(auxprop_server):
    s = auxprop_server
    r = tls_session(s)
    assert r.cmd("AUTH LOGIN") == (334, "VXNlcm5hbWU6")
    assert r.cmd(base64.b64encode(b"alice").decode()) == (334, "UGFzc3dvcmQ6")
    code, text = r.cmd(base64.b64encode(b"Wr0ngPw-7731").decode())
    assert code == 535 and text.startswith("5.7.8")
    assert r.cmd("RCPT TO:<x@foreign.example>")[0] == 503  # no MAIL: sequence error, not relay
    r.cmd("MAIL FROM:<a@example.org>")
    assert r.cmd("RCPT TO:<x@foreign.example>")[0] == 554  # a failed AUTH gives no relaying
    r.cmd("RSET")
    assert r.cmd("AUTH PLAIN " + plain("alice", "secret"))[0] == 235
    assert r.cmd("AUTH PLAIN " + plain("alice", "secret"))[0] == 503  # second AUTH
    time.sleep(0.2)
    assert "warning: localhost[127.0.0.1]: SASL LOGIN authentication failed: authentication failure" in s.log_text()
    assert "Wr0ngPw-7731" not in s.log_text() and "secret" not in s.log_text()


def test_scram_sha_256_with_our_client_mechanism(auxprop_server):
    from smarthost.sasl import ClientContext, client_mechanism

    s = auxprop_server
    r = tls_session(s)
    mech = client_mechanism("SCRAM-SHA-256", "alice", "secret", ClientContext(nonce="clientnonce123456"))
    code, text = r.cmd("AUTH SCRAM-SHA-256 " + base64.b64encode(mech.start()).decode())
    while code == 334:
        answer = mech.step(base64.b64decode(text))
        code, text = r.cmd(base64.b64encode(answer).decode())
    assert code == 235, text


def test_brute_force_is_cut_off_after_the_failure_limit(auxprop_server):
    s = auxprop_server
    r = tls_session(s)
    assert r.cmd("AUTH PLAIN " + plain("alice", "x1"))[0] == 535
    assert r.cmd("AUTH PLAIN " + plain("alice", "x2"))[0] == 535
    code, text = r.cmd("AUTH PLAIN " + plain("alice", "x3"))
    assert code == 535
    code, text = r.reply()
    assert code == 421 and text.startswith("4.7.0")
    assert r.closed()


def start_authd(tmp_path: Path, sock_dir: Path, *args: str) -> subprocess.Popen:
    """`smarthost authd -a passwd -m SOCK_DIR ARGS` with alice/secret in argon2id, once it listens."""
    from smarthost.authd.passwords import hash_password

    users = tmp_path / "passwd"
    if not users.exists():
        users.write_text(f"alice:{hash_password('secret')}\n")
        users.chmod(0o600)
    proc = subprocess.Popen([sys.executable, "-m", "smarthost", "authd", "-a", "passwd", "-O", str(users),
                             "-m", str(sock_dir), "-d", *args], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not (sock_dir / "mux").exists() or (args and not Path(args[-1]).exists()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    return proc


def stop_authd(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    return proc.stderr.read().decode()


@pytest.fixture
def authd(tmp_path):
    """`smarthost authd -a passwd` on a private socket, with alice/secret in argon2id."""
    proc = start_authd(tmp_path, tmp_path / "authd")
    yield tmp_path / "authd" / "mux"
    stop_authd(proc)


@pytest.fixture
def host_dir():
    """A short directory under /tmp standing for a host path such as /var/run/saslauthd
    (unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="sh", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _saslauthd_server(smarthost, socket_path: Path):
    # The recipe's file, exactly as the howtos write it.
    return sasl_server(smarthost, f"pwcheck_method: saslauthd\nmech_list: PLAIN LOGIN\nsaslauthd_path: {socket_path}\n",
                       users=False)


def test_recipe_smtpd_conf_with_saslauthd_protocol(smarthost, authd):
    s = _saslauthd_server(smarthost, authd)
    with smtplib.SMTP("127.0.0.1", s.ports[0], timeout=10) as c:
        c.starttls(context=client_ctx(s))
        c.ehlo("c")
        assert c.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        c.login("alice", "secret")
        c.mail("alice@example.org")
        assert c.rcpt("bob@foreign.example")[0] == 250


def test_missing_auth_daemon_is_a_temporary_failure_naming_the_path(smarthost, tmp_path):
    missing = tmp_path / "nowhere" / "mux"
    s = _saslauthd_server(smarthost, missing)
    r = tls_session(s)
    started = time.monotonic()
    code, text = r.cmd("AUTH PLAIN " + plain("alice", "secret"))
    assert code == 454 and text == "4.7.0 Temporary authentication failure"
    assert time.monotonic() - started < 12
    r.cmd("MAIL FROM:<a@example.org>")
    assert r.cmd("RCPT TO:<x@foreign.example>")[0] == 554
    time.sleep(0.2)
    assert str(missing) in s.log_text()


def test_auth_rate_limit_across_sessions_and_workers(smarthost):
    s = sasl_server(smarthost, "pwcheck_method: auxprop\nmech_list: PLAIN\n",
                    {"smtpd_client_auth_rate_limit": "3", "smtpd_client_event_limit_exceptions": "",
                     "smtpd_worker_processes": "2"})
    codes = []
    for _ in range(5):  # one AUTH per session: the per-session limit never triggers
        r = tls_session(s)
        code, text = r.cmd("AUTH PLAIN " + plain("alice", "secret"))
        codes.append(code)
        r.close()
    assert codes == [235, 235, 235, 450, 450]
    time.sleep(0.2)
    assert "warning: AUTH command rate limit exceeded: 4 from localhost[127.0.0.1]" in s.log_text()


def test_auth_parameter_is_honoured_only_after_authentication(auxprop_server):
    s = auxprop_server
    r = tls_session(s)

    def send(mail_from: str) -> str:
        assert r.cmd(mail_from)[0] == 250
        assert r.cmd("RCPT TO:<bob@example.test>")[0] == 250
        r.cmd("DATA")
        r.send(b"Subject: a\r\n\r\nx\r\n.\r\n")
        code, text = r.reply()
        assert code == 250
        return text.rsplit(" ", 1)[-1]

    forged = send("MAIL FROM:<a@example.org> AUTH=boss@example.org")
    assert r.cmd("AUTH PLAIN " + plain("alice", "secret"))[0] == 235
    honoured = send("MAIL FROM:<a@example.org> AUTH=alice@example.org")
    entries = {e.id: e for e in s.queue_entries()}
    assert entries[forged].envelope.auth == "<>"
    assert entries[honoured].envelope.auth == "alice@example.org"
    assert entries[honoured].envelope.sasl_username == "alice"


def test_sender_login_maps_refuse_a_sender_the_user_does_not_own(smarthost):
    s = sasl_server(smarthost, "pwcheck_method: auxprop\nmech_list: PLAIN\n",
                    {"smtpd_sender_restrictions": "reject_sender_login_mismatch",
                     "smtpd_sender_login_maps": "texthash:senders"},  # relative: to the config directory
                    files={"senders": "alice@example.org alice\nboss@example.org boss\n"})
    r = tls_session(s)
    r.cmd("AUTH PLAIN " + plain("alice", "secret"))
    r.cmd("MAIL FROM:<boss@example.org>")
    code, text = r.cmd("RCPT TO:<x@foreign.example>")
    assert (code, text) == (553, "5.7.1 <boss@example.org>: Sender address rejected: not owned by user alice")
    r.cmd("RSET")
    r.cmd("MAIL FROM:<alice@example.org>")
    assert r.cmd("RCPT TO:<x@foreign.example>")[0] == 250


# --- chroot: the auth socket inside queue_directory, as a chrooted Postfix smtpd finds it -----


def _chrooted_server(smarthost, host_dir: Path, tmp_path: Path, *, socket_inside: bool):
    port = free_port()
    master = f"127.0.0.1:{port} inet n - y - - smtpd\n  -o smtpd_sasl_auth_enable=yes\n"
    daemons = []

    def start_daemon(s):
        inner = Path(f"{s.queue_dir}{host_dir}")  # QUEUE + /tmp/shXXXX
        daemons.append(start_authd(tmp_path, inner if socket_inside else host_dir))

    s = sasl_server(smarthost, f"pwcheck_method: saslauthd\nmech_list: PLAIN LOGIN\nsaslauthd_path: {host_dir}/mux\n",
                    users=False, master_cf=master, before_start=start_daemon)
    return s, daemons[0], f"127.0.0.1:{port}"


def test_chrooted_service_finds_the_socket_inside_the_queue_directory(smarthost, host_dir, tmp_path):
    s, daemon, _ = _chrooted_server(smarthost, host_dir, tmp_path, socket_inside=True)
    try:
        r = tls_session(s)
        assert r.cmd("AUTH PLAIN " + plain("alice", "secret"))[0] == 235
        r.cmd("MAIL FROM:<alice@example.org>")
        assert r.cmd("RCPT TO:<bob@foreign.example>")[0] == 250
    finally:
        log = stop_authd(daemon)
    assert "auth success: user=alice service=smtp" in log
    assert "the process is not chrooted" in s.log_text()  # the start-up warning says what chroot y means here


def test_chrooted_service_does_not_use_the_socket_at_the_host_path(smarthost, host_dir, tmp_path):
    s, daemon, name = _chrooted_server(smarthost, host_dir, tmp_path, socket_inside=False)
    try:
        r = tls_session(s)
        code, text = r.cmd("AUTH PLAIN " + plain("alice", "secret"))
        assert (code, text) == (454, "4.7.0 Temporary authentication failure")
    finally:
        log = stop_authd(daemon)
    assert "auth success" not in log and "auth failure" not in log  # never asked
    time.sleep(0.2)
    inner = f"{s.queue_dir}{host_dir}/mux"
    assert (f"warning: SASL authentication problem: cannot reach saslauthd at {inner}: No such file or directory"
            f" (saslauthd_path resolved inside the chroot of service {name})") in s.log_text()


def test_relative_dovecot_socket_is_in_the_queue_directory(smarthost, tmp_path):
    # Postfix's howtos write smtpd_sasl_path = private/auth: relative to queue_directory.
    daemons = []

    def start_daemon(s):
        daemons.append(start_authd(tmp_path, tmp_path / "authd", "--dovecot", str(s.queue_dir / "private" / "auth")))

    s = sasl_server(smarthost, None, {"smtpd_sasl_type": "dovecot", "smtpd_sasl_path": "private/auth"},
                    users=False, before_start=start_daemon)
    try:
        r = tls_session(s)
        assert r.cmd("AUTH PLAIN " + plain("alice", "secret"))[0] == 235
    finally:
        log = stop_authd(daemons[0])
    assert "auth success: user=alice service=smtp" in log
    assert "cannot reach the Dovecot auth socket" not in s.log_text()


# --- smtpd_sasl_security_options before TLS, smtpd_sasl_tls_security_options after ----------------


def test_security_options_before_and_after_tls(smarthost):
    s = sasl_server(smarthost, "pwcheck_method: auxprop\nmech_list: PLAIN LOGIN SCRAM-SHA-256\n",
                    {"smtpd_tls_auth_only": "no",
                     "smtpd_sasl_security_options": "noanonymous, noplaintext",
                     "smtpd_sasl_tls_security_options": "noanonymous"})
    r = Raw(s.ports[0])
    r.reply()
    code, text = r.cmd("EHLO c")
    assert "AUTH SCRAM-SHA-256\n" in text + "\n" and "PLAIN" not in text
    code, text = r.cmd("AUTH PLAIN " + plain("alice", "secret"))
    assert (code, text) == (538, "5.7.11 Encryption required for requested authentication mechanism")
    assert r.cmd("STARTTLS")[0] == 220
    r.starttls(client_ctx(s))
    code, text = r.cmd("EHLO c")
    assert "AUTH PLAIN LOGIN SCRAM-SHA-256" in text
    assert r.cmd("AUTH PLAIN " + plain("alice", "secret"))[0] == 235
