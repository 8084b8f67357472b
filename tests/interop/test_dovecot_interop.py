"""A real Dovecot as smarthost's auth server: ``smtpd_sasl_type = dovecot`` with
``smtpd_sasl_path`` naming the ``auth-client`` listener of a private Dovecot (its own
base_dir, a ``passwd-file`` passdb, no IMAP/POP3: ``protocols =`` empty), driven by swaks
with AUTH PLAIN and LOGIN over STARTTLS; and ``doveadm pw -s CRAM-MD5`` agreeing with the
CRAM-MD5 secret our user database stores."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from peers import make_shared_dir, require_peer, require_root, wait_for_text
from test_auth_interop import start, swaks
from test_saslauthd_interop import PASSWORD, Daemon

DOVECOT_CONF = """\
protocols =
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
ssl = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=SHA512-CRYPT {dir}/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  unix_listener auth-client {{
    path = {dir}/auth-client
    mode = 0666
  }}
}}
"""


@pytest.fixture(scope="module")
def workdir():
    path = make_shared_dir()
    yield path
    subprocess.run(["rm", "-rf", str(path)])


@pytest.fixture(scope="module")
def dovecot(workdir: Path):
    """A private Dovecot auth server knowing alice (PASSWORD); yields its auth-client socket."""
    require_root("Dovecot's master runs as root")
    binary = require_peer("dovecot")
    doveadm = require_peer("doveadm")
    home = workdir / "dovecot"
    home.mkdir()
    hashed = subprocess.run([doveadm, "pw", "-s", "SHA512-CRYPT", "-p", PASSWORD],
                            capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    (home / "users").write_text(f"alice:{hashed}\n")
    (home / "dovecot.conf").write_text(DOVECOT_CONF.format(dir=home))
    socket = home / "auth-client"
    daemon = Daemon([binary, "-F", "-c", str(home / "dovecot.conf")], socket)
    try:
        yield socket
    finally:
        errors = daemon.stop()
        assert "Fatal" not in errors, errors


def test_smarthost_authenticates_against_a_real_dovecot(workdir, dovecot):
    s = start(workdir, "smarthost", None, {"smtpd_sasl_type": "dovecot", "smtpd_sasl_path": str(dovecot)},
              users=False)
    try:
        for mechanism in ("PLAIN", "LOGIN"):
            ok = swaks(s.ports[0], "--tls", "--auth", mechanism, "--auth-password", PASSWORD)
            assert "235 2.7.0" in ok.stdout and ok.returncode == 0, ok.stdout + s.describe()
            assert "250 2.0.0 Ok: queued as" in ok.stdout  # relayed: permit_sasl_authenticated
            wait_for_text(s.maillog, f"sasl_method={mechanism}, sasl_username=alice")
            bad = swaks(s.ports[0], "--tls", "--auth", mechanism, "--auth-password", "wrong")
            assert "535 5.7.8" in bad.stdout and bad.returncode != 0, bad.stdout + s.describe()
            wait_for_text(s.maillog, f"SASL {mechanism} authentication failed")
        assert s.queued_count() == 2
    finally:
        s.stop()
    log = (workdir / "dovecot" / "dovecot.log").read_text(errors="replace")
    assert PASSWORD not in log and PASSWORD not in s.log_text()


def test_our_cram_md5_secret_is_dovecots_cram_md5_scheme():
    """The user database's CRAM-MD5 secret is the same HMAC-MD5 state pair Dovecot stores."""
    from smarthost.sasl import CramSecret

    doveadm = require_peer("doveadm")
    for password in ("tanstaaftanstaaf", "pässwörd with spaces", "x" * 80):
        out = subprocess.run([doveadm, "pw", "-s", "CRAM-MD5", "-p", password],
                             capture_output=True, text=True, check=True, timeout=30).stdout.strip()
        ours = CramSecret.from_password(password)
        assert out == "{CRAM-MD5}" + (ours.outer + ours.inner).hex()
