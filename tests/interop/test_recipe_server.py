"""The recipe's server side, files unchanged, end to end with real peers:

- ``main.cf`` as the howtos write it (``smtpd_sasl_auth_enable = yes``,
  ``smtpd_sasl_application_name = smtpd``, ``smtpd_sasl_security_options = noanonymous``,
  the three-entry ``smtpd_recipient_restrictions``, a certificate);
- ``sasl/smtpd.conf`` with exactly ``pwcheck_method: saslauthd`` and ``mech_list: PLAIN LOGIN``,
  so the socket is Cyrus's default ``/var/run/saslauthd/mux``;
- ``smarthost authd -a pam`` on its default socket, checking a real system user through PAM;
- swaks: AUTH PLAIN and LOGIN over STARTTLS relaying to a foreign domain, a stranger refused,
  AUTH not offered before STARTTLS.

The machine's own ``/var/run/saslauthd`` is never touched: the daemon runs in a mount namespace
of its own (``unshare -m``) where a private directory is bound over it, and the server joins that
namespace (``nsenter -m``), as /work/shared/REAL-PEERS.md does for Cyrus saslauthd.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys

import pytest

from peers import SmarthostInstance, free_port, make_shared_dir, require_peer, require_root
from test_saslauthd_interop import PASSWORD, SMARTHOST, system_user, wait_for_socket  # noqa: F401 - a fixture

SASL_DIR = "/var/run/saslauthd"
RECIPE_MAIN_CF = {
    "smtpd_sasl_auth_enable": "yes",
    "smtpd_sasl_application_name": "smtpd",
    "smtpd_sasl_security_options": "noanonymous",
    "smtpd_recipient_restrictions": "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
    # Not the recipe's: loopback must be a stranger here, or it would relay without AUTH.
    "mynetworks": "192.0.2.0/24",
    "mydestination": "example.test",
}
RECIPE_SMTPD_CONF = "pwcheck_method: saslauthd\nmech_list: PLAIN LOGIN\n"


class NamespacedSmarthost(SmarthostInstance):
    """``smarthost run`` inside the mount namespace of process ``ns_pid``."""

    def __init__(self, *args, ns_pid: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ns_pid = ns_pid

    @property
    def command(self) -> list[str]:
        return [require_peer("nsenter"), "-t", str(self.ns_pid), "-m", "--", *super().command]


@pytest.fixture(scope="module")
def workdir():
    path = make_shared_dir()
    yield path
    subprocess.run(["rm", "-rf", str(path)])


@pytest.fixture(scope="module")
def authd(workdir):
    """``smarthost authd -a pam`` with no ``-m``: it listens on /var/run/saslauthd/mux of its namespace."""
    require_root("a private /var/run/saslauthd needs a mount namespace")
    unshare = require_peer("unshare")
    if not os.path.isdir(SASL_DIR):
        pytest.skip(f"{SASL_DIR} missing: nothing to bind a private directory over (install sasl2-bin)")
    private = workdir / "saslauthd"
    private.mkdir(mode=0o710)
    log = workdir / "authd.log"
    daemon = " ".join(shlex.quote(a) for a in [*SMARTHOST, "-c", str(workdir / "etc"), "authd", "-a", "pam", "-d"])
    with open(log, "wb") as out:
        proc = subprocess.Popen([unshare, "-m", "--propagation", "private", "sh", "-c",
                                 f"mount --bind {private} {SASL_DIR} && exec {daemon}"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    try:
        wait_for_socket(private / "mux", proc)  # what the daemon sees as /var/run/saslauthd/mux
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    yield proc, log, private
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def recipe_server(workdir, authd):
    proc, _, _ = authd
    port = free_port()
    s = NamespacedSmarthost(workdir / "server", RECIPE_MAIN_CF, f"127.0.0.1:{port} inet n - n - - smtpd\n",
                            tls=True, ns_pid=proc.pid)
    s.write_config()
    (s.config_dir / "sasl").mkdir()
    (s.config_dir / "sasl" / "smtpd.conf").write_text(RECIPE_SMTPD_CONF)
    s.write_config = lambda: None  # keep sasl/smtpd.conf
    s.start()
    yield s
    s.stop()


def swaks(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_peer("swaks"), "--server", f"127.0.0.1:{port}", "--from", "someone@example.org",
         "--to", "bob@foreign.example", "--timeout", "20", *args],
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_recipe_user_authenticates_over_starttls_and_relays(recipe_server, authd, system_user, mechanism):
    s = recipe_server
    ok = swaks(s.ports[0], "--tls", "--auth", mechanism, "--auth-user", system_user, "--auth-password", PASSWORD)
    assert ok.returncode == 0, ok.stdout + s.describe()
    assert "235 2.7.0 Authentication successful" in ok.stdout
    assert "250 2.0.0 Ok: queued as" in ok.stdout
    queue_id = ok.stdout.split("250 2.0.0 Ok: queued as ", 1)[1].split()[0]
    envelope = s.wait_for_entry(queue_id).envelope
    assert [r.address for r in envelope.recipients] == ["bob@foreign.example"]
    assert envelope.sasl_username == system_user
    log = s.log_text()
    assert f"{queue_id}: client=localhost[127.0.0.1], sasl_method={mechanism}, sasl_username={system_user}" in log
    assert PASSWORD not in log
    _, authd_log, _ = authd
    assert f"listening on {SASL_DIR}/mux" in authd_log.read_text()  # its default, seen here as private/mux
    assert f"auth success: user={system_user} service=smtp realm=" in authd_log.read_text()


def test_recipe_wrong_password_is_refused(recipe_server, system_user):
    bad = swaks(recipe_server.ports[0], "--tls", "--auth", "PLAIN", "--auth-user", system_user,
                "--auth-password", "not-" + PASSWORD)
    assert bad.returncode != 0 and "535 5.7.8" in bad.stdout


def test_recipe_refuses_unauthenticated_relaying(recipe_server):
    out = swaks(recipe_server.ports[0], "--tls")
    assert out.returncode != 0
    assert "Relay access denied" in out.stdout and "queued as" not in out.stdout


def server_lines(out: subprocess.CompletedProcess[str]) -> list[str]:
    """What the server said, as swaks shows it (``<-  250-AUTH PLAIN LOGIN``; ``<~`` under TLS)."""
    return [line[2:].strip() for line in out.stdout.splitlines() if line[:2] in ("<-", "<~")]


def test_recipe_offers_auth_only_after_starttls(recipe_server):
    plain = server_lines(swaks(recipe_server.ports[0], "--quit-after", "EHLO"))
    assert "250-STARTTLS" in plain
    assert not any("AUTH" in line for line in plain), plain
    tls = server_lines(swaks(recipe_server.ports[0], "--tls", "--quit-after", "AUTH"))
    assert "250-AUTH PLAIN LOGIN" in tls, tls
