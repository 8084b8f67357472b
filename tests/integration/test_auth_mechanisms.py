"""CRAM-MD5 through the real server (RFC 2195), with smtplib (and swaks) as the client: offered
only when ``mech_list`` asks and the user database can serve it, and only to users given a
CRAM-MD5 secret."""

from __future__ import annotations

import smtplib
import subprocess
import sys

import pytest

from peers import require_peer, unavailable, wait_for_text
from test_auth import STRANGER, add_user, sasl_server
from test_server import client_ctx

CRAM_CONF = "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: CRAM-MD5 PLAIN\n"


def users(config_dir, *args: str, password: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "smarthost", "-c", str(config_dir), "users", *args],
                          input=password + "\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def cram_server(smarthost):
    s = smarthost({**STRANGER}, tls=True, start=False)
    s.write_config()
    (s.config_dir / "sasl").mkdir()
    (s.config_dir / "sasl" / "smtpd.conf").write_text(CRAM_CONF)
    users(s.config_dir, "add", "--cram", "carol", password="tanstaaf")
    add_user(s.config_dir, "alice", "secret")  # no CRAM-MD5 secret: PLAIN only
    s.write_config = lambda: None
    s.start()
    return s


def client(s) -> smtplib.SMTP:
    c = smtplib.SMTP("127.0.0.1", s.ports[0], timeout=10)
    c.ehlo("client.example")
    c.starttls(context=client_ctx(s))
    c.ehlo("client.example")
    return c


def test_cram_md5_for_a_user_with_a_cram_secret_relays(smarthost):
    s = cram_server(smarthost)
    with smtplib.SMTP("127.0.0.1", s.ports[0], timeout=10) as c:
        c.ehlo("client.example")
        assert "auth" not in c.esmtp_features  # never before TLS
    with client(s) as c:
        assert c.esmtp_features["auth"].split() == ["CRAM-MD5", "PLAIN"]
        c.user, c.password = "carol", "tanstaaf"
        assert c.auth("CRAM-MD5", c.auth_cram_md5)[0] == 235
        assert c.mail("carol@example.org")[0] == 250
        assert c.rcpt("bob@foreign.example")[0] == 250
        assert c.data(b"Subject: cram\r\n\r\nhello\r\n")[0] == 250
    wait_for_text(s.maillog, "sasl_method=CRAM-MD5, sasl_username=carol")
    assert "tanstaaf" not in (s.config_dir / "sasldb").read_bytes().decode("latin-1")


def test_cram_md5_wrong_password_and_user_without_cram_secret_get_the_same_535(smarthost):
    s = cram_server(smarthost)
    failures = []
    for user, password in (("carol", "wrong"), ("alice", "secret"), ("nobody", "x")):
        with client(s) as c:
            c.user, c.password = user, password
            try:
                c.auth("CRAM-MD5", c.auth_cram_md5)
            except smtplib.SMTPAuthenticationError as e:
                failures.append((e.smtp_code, e.smtp_error))
            assert c.mail("a@example.org")[0] == 250
            assert c.rcpt("bob@foreign.example")[0] == 554  # still not allowed to relay
    assert failures == [(535, b"5.7.8 Error: authentication failed: authentication failure")] * 3
    with client(s) as c:  # alice's password still works where it can: PLAIN
        c.user, c.password = "alice", "secret"
        assert c.auth("PLAIN", c.auth_plain)[0] == 235
    wait_for_text(s.maillog, "sasl_method=PLAIN|disconnect from .*auth=1")
    assert s.log_text().count("SASL CRAM-MD5 authentication failed: authentication failure") == 3


def test_passwd_without_cram_takes_the_cram_secret_away(smarthost):
    s = cram_server(smarthost)
    users(s.config_dir, "passwd", "carol", password="tanstaaf")
    with client(s) as c:
        c.user, c.password = "carol", "tanstaaf"
        try:
            code = c.auth("CRAM-MD5", c.auth_cram_md5)[0]
        except smtplib.SMTPAuthenticationError as e:
            code = e.smtp_code
        assert code == 535


@pytest.mark.interop
def test_swaks_cram_md5(smarthost):
    swaks = require_peer("swaks")
    if subprocess.run(["perl", "-MDigest::HMAC_MD5", "-e", "1"], capture_output=True).returncode:
        unavailable("swaks -a CRAM-MD5 needs Digest::HMAC_MD5: install with scripts/install-peers.sh")
    s = cram_server(smarthost)

    def run(password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [swaks, "--server", f"127.0.0.1:{s.ports[0]}", "--tls", "--auth", "CRAM-MD5", "--auth-user", "carol",
             "--auth-password", password, "--from", "carol@example.org", "--to", "bob@foreign.example",
             "--timeout", "20"], capture_output=True, text=True, timeout=60)

    ok = run("tanstaaf")
    assert "235 2.7.0" in ok.stdout and "250 2.0.0 Ok: queued as" in ok.stdout, ok.stdout + s.describe()
    bad = run("wrong")
    assert "535 5.7.8" in bad.stdout and bad.returncode != 0, bad.stdout
