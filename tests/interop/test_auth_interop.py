"""SMTP AUTH in smarthost's server with real clients and real auth daemons.

- swaks: AUTH PLAIN and LOGIN over STARTTLS and over implicit TLS, then relaying;
- msmtp: SCRAM-SHA-256 (GNU SASL) against the user database;
- the recipe's `pwcheck_method: saslauthd` against a real Cyrus saslauthd (sasldb);
- `smtpd_sasl_type = dovecot` against `smarthost authd --dovecot`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from peers import SmarthostInstance, free_port, make_shared_dir, require_peer, require_root
from test_saslauthd_interop import PASSWORD, SMARTHOST, Daemon, _cyrus_saslauthd

RELAY = {
    "mynetworks": "192.0.2.0/24",  # loopback is a stranger here: only AUTH lets it relay
    "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
    "smtpd_sasl_auth_enable": "yes",
    "mydestination": "example.test",
}


@pytest.fixture(scope="module")
def workdir():
    path = make_shared_dir()
    yield path
    subprocess.run(["rm", "-rf", str(path)])


def start(workdir: Path, name: str, smtpd_conf: str | None, extra: dict[str, str] | None = None,
          users: bool = True) -> SmarthostInstance:
    smtp, smtps = free_port(), free_port()
    master = (f"127.0.0.1:{smtp} inet n - n - - smtpd\n"
              f"127.0.0.1:{smtps} inet n - n - - smtpd\n  -o smtpd_tls_wrappermode=yes\n")
    s = SmarthostInstance(workdir / name, {**RELAY, **(extra or {})}, master, tls=True)
    s.write_config()
    if smtpd_conf is not None:
        (s.config_dir / "sasl").mkdir()
        (s.config_dir / "sasl" / "smtpd.conf").write_text(smtpd_conf)
    if users:
        subprocess.run([*SMARTHOST, "-c", str(s.config_dir), "users", "add", "alice"], input=PASSWORD + "\n",
                       text=True, check=True, capture_output=True)
    s.start()
    return s


def swaks(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_peer("swaks"), "--server", f"127.0.0.1:{port}", "--from", "alice@example.org",
         "--to", "bob@foreign.example", "--auth-user", "alice", "--timeout", "20", *args],
        capture_output=True, text=True, timeout=60,
    )


@pytest.fixture(scope="module")
def userdb_server(workdir):
    s = start(workdir, "userdb", "pwcheck_method: auxprop\nmech_list: PLAIN LOGIN SCRAM-SHA-256\n")
    yield s
    s.stop()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("tls", ["--tls", "--tlsc"])
def test_swaks_authenticates_and_relays(userdb_server, mechanism, tls):
    s = userdb_server
    port = s.ports[0] if tls == "--tls" else s.ports[1]
    ok = swaks(port, tls, "--auth", mechanism, "--auth-password", PASSWORD)
    assert ok.returncode == 0, ok.stdout + s.describe()
    assert "235 2.7.0 Authentication successful" in ok.stdout
    assert "250 2.0.0 Ok: queued as" in ok.stdout
    bad = swaks(port, tls, "--auth", mechanism, "--auth-password", "not-the-password")
    assert "535 5.7.8" in bad.stdout and bad.returncode != 0


def test_swaks_without_tls_is_refused_before_credentials(userdb_server):
    s = userdb_server
    out = swaks(s.ports[0], "--auth", "PLAIN", "--auth-password", PASSWORD)
    assert out.returncode != 0
    assert "235" not in out.stdout  # AUTH is not offered in plaintext: swaks gives up, nothing checked


def test_msmtp_scram_sha_256(userdb_server, workdir):
    msmtp = require_peer("msmtp")
    s = userdb_server
    rc = workdir / "msmtprc"
    rc.write_text(
        "defaults\n"
        f"host 127.0.0.1\nport {s.ports[0]}\ntls on\ntls_starttls on\ntls_trust_file {s.config_dir / 'ca.pem'}\n"
        "tls_certcheck on\nauth scram-sha-256\nuser alice\n"
        f"password {PASSWORD}\nfrom alice@example.org\n"
        "account default\n"
    )
    rc.chmod(0o600)
    message = b"Subject: scram\r\n\r\nsent by msmtp\r\n"
    before = {e.id for e in s.queue_entries()}
    out = subprocess.run([msmtp, "-C", str(rc), "bob@foreign.example"], input=message,
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode() + s.describe()
    new = [e for e in s.queue_entries() if e.id not in before]
    assert len(new) == 1
    assert s.read_body(new[0].id).endswith(message)
    assert f"{new[0].id}: client=localhost[127.0.0.1], sasl_method=SCRAM-SHA-256, sasl_username=alice" in s.log_text()


def test_recipe_smtpd_conf_against_a_real_cyrus_saslauthd(workdir):
    require_root("a private sasldb needs a mount namespace")
    saslpasswd2 = require_peer("saslpasswd2")
    sasldb = workdir / "sasldb2"
    subprocess.run([saslpasswd2, "-p", "-c", "-f", str(sasldb), "alice"], input=PASSWORD, text=True, check=True)
    daemon = _cyrus_saslauthd("sasldb", workdir / "cyrus", sasldb=sasldb)
    try:
        s = start(workdir, "cyrus", "pwcheck_method: saslauthd\nmech_list: PLAIN LOGIN\n"
                                    f"saslauthd_path: {daemon.socket_path}\n", users=False)
        try:
            ok = swaks(s.ports[0], "--tls", "--auth", "LOGIN", "--auth-password", PASSWORD)
            assert "235 2.7.0" in ok.stdout and ok.returncode == 0, ok.stdout + s.describe()
            bad = swaks(s.ports[0], "--tls", "--auth", "PLAIN", "--auth-password", "nope")
            assert "535 5.7.8" in bad.stdout
        finally:
            s.stop()
    finally:
        daemon.stop()


def test_dovecot_protocol_against_our_authd(workdir):
    config = workdir / "authd-config"
    config.mkdir()
    subprocess.run([*SMARTHOST, "-c", str(config), "users", "add", "alice"], input=PASSWORD + "\n",
                   text=True, check=True, capture_output=True)
    sockdir = workdir / "authd-sock"
    daemon = Daemon([*SMARTHOST, "-c", str(config), "authd", "-m", str(sockdir), "-d",
                     "--dovecot", str(sockdir / "auth-client")], sockdir / "mux")
    try:
        s = start(workdir, "dovecot", None, {"smtpd_sasl_type": "dovecot",
                                             "smtpd_sasl_path": str(sockdir / "auth-client")}, users=False)
        try:
            ok = swaks(s.ports[1], "--tlsc", "--auth", "PLAIN", "--auth-password", PASSWORD)
            assert "235 2.7.0" in ok.stdout and ok.returncode == 0, ok.stdout + s.describe()
            bad = swaks(s.ports[1], "--tlsc", "--auth", "LOGIN", "--auth-password", "nope")
            assert "535 5.7.8" in bad.stdout
        finally:
            s.stop()
    finally:
        daemon.stop()
