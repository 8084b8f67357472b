"""``smarthost setup server|client``: the directories it writes load, serve and authenticate as
promised; secrets are 0600 and compiled; nothing is overwritten without --force; and a satellite
set up this way relays a message through a smarthost set up this way into the user's Maildir."""

from __future__ import annotations

import io
import os
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "interop"))

from peers import free_port, make_shared_dir, wait_for_port  # noqa: E402

from smarthost import certs  # noqa: E402
from smarthost.cli import main  # noqa: E402
from smarthost.config import load  # noqa: E402

HOST = "mail.example.com"
ALICE, BOB = "alice-secret", "bob secret"
OWNER = ["--mail-owner", "nobody"] if os.geteuid() == 0 else []


def run(monkeypatch, capsys, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def setup_server(monkeypatch, capsys, directory: Path, *extra: str, stdin: str = f"{ALICE}\n{BOB}\n"):
    ports = [free_port(), free_port(), free_port()]
    status, out, err = run(
        monkeypatch, capsys, "-c", str(directory), "setup", "server", "--hostname", HOST, "--domain", "example.com",
        "--user", "alice", "--user", "bob@example.com", "--san", "127.0.0.1", "--listen", "127.0.0.1",
        "--smtp-port", str(ports[0]), "--submission-port", str(ports[1]), "--smtps-port", str(ports[2]),
        "--local-state", *OWNER, *extra, stdin=stdin)
    return status, out, err, ports


class Running:
    """``smarthost -c DIR run`` as a subprocess, stopped with SIGTERM."""

    def __init__(self, directory: Path, ports: list[int]) -> None:
        self.log = directory / "stderr.log"
        with open(self.log, "wb") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "smarthost", "-c", str(directory), "run"],
                                            stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT)
        try:
            for port in ports:
                wait_for_port(port, alive=lambda: self.process.poll() is None)
        except Exception:
            self.stop()
            raise AssertionError(self.log.read_text()) from None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def running():
    started: list[Running] = []

    def start(directory: Path, ports: list[int]) -> Running:
        started.append(Running(directory, ports))
        return started[-1]

    yield start
    for r in started:
        r.stop()


def client_context(directory: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(directory / "tls" / "cert.pem"))


def test_server_setup_loads_serves_tls_and_authenticates_its_users(tmp_path, monkeypatch, capsys, running):
    d = tmp_path / "server"
    status, out, err, ports = setup_server(monkeypatch, capsys, d)
    assert status == 0, err
    assert "Next steps:" in out and f"smarthost -c {d} start" in out and "swaks --server" in out
    status, out, _ = run(monkeypatch, capsys, "-c", str(d), "postconf", "-n")
    assert status == 0
    assert f"myhostname = {HOST}" in out and "smtpd_tls_auth_only = yes" in out
    cfg = load(d)
    assert {s.port for s in cfg.services if s.type == "inet"} == set(ports)
    assert (d / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (d / "sasldb").stat().st_mode & 0o077 == 0
    assert "pwcheck_method: auxprop" in (d / "sasl" / "smtpd.conf").read_text()

    running(d, ports)
    with smtplib.SMTP("127.0.0.1", ports[1], timeout=10) as s:  # submission
        s.ehlo("client.example.org")
        assert not s.has_extn("auth")  # AUTH only after TLS
        assert s.mail("alice@example.com")[0] == 530  # encrypt: STARTTLS first
        s.starttls(context=client_context(d))
        s.ehlo("client.example.org")
        assert s.login("alice", ALICE)[0] == 235
    with smtplib.SMTP_SSL("127.0.0.1", ports[2], timeout=10, context=client_context(d)) as s:  # smtps
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("bob@example.com", "wrong")
        assert s.login("bob@example.com", BOB)[0] == 235
    with smtplib.SMTP("127.0.0.1", ports[1], timeout=10) as s:  # submission without a login: no relaying
        s.starttls(context=client_context(d))
        s.ehlo("client.example.org")
        s.mail("alice@example.com")
        assert s.rcpt("somebody@example.net")[0] == 554
    with smtplib.SMTP("127.0.0.1", ports[0], timeout=10) as s:  # MX: STARTTLS, no AUTH, mail for our users
        s.starttls(context=client_context(d))
        s.ehlo("client.example.org")
        assert not s.has_extn("auth")
        s.mail("someone@example.org")
        assert s.rcpt("alice@example.com")[0] == 250


def test_server_certificate_from_a_ca(tmp_path, monkeypatch, capsys):
    ca_cert, ca_key = tmp_path / "ca.pem", tmp_path / "ca.key"
    certs.ca_init("Example Mail CA", ca_cert, ca_key)
    d = tmp_path / "server"
    status, _, err, _ = setup_server(monkeypatch, capsys, d, "--ca-cert", str(ca_cert), "--ca-key", str(ca_key))
    assert status == 0, err
    chain = certs.load_certificates(d / "tls" / "cert.pem")
    anchors = certs.load_certificates(ca_cert)
    certs.verify(chain, anchors, HOST)
    certs.verify(chain, anchors, "127.0.0.1")
    assert (d / "tls" / "ca.pem").read_bytes() == ca_cert.read_bytes()


def test_server_with_existing_certificate_files(tmp_path, monkeypatch, capsys):
    cert, key, other = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "other.pem"
    certs.selfsigned(HOST, [], cert, key)
    certs.selfsigned(HOST, [], tmp_path / "c2.pem", other)
    d = tmp_path / "server"
    status, _, err, _ = setup_server(monkeypatch, capsys, d, "--cert", str(cert), "--key", str(other))
    assert status == 1 and "is not the key of" in err and not (d / "main.cf").exists()
    status, _, err, _ = setup_server(monkeypatch, capsys, d, "--cert", str(cert), "--key", str(key))
    assert status == 0, err
    assert f"smtpd_tls_cert_file = {cert}" in (d / "main.cf").read_text()


def test_server_with_saslauthd_works_once_the_auth_daemon_of_the_next_steps_runs(tmp_path, monkeypatch, capsys,
                                                                                 running):
    d = tmp_path / "server"
    status, out, err, ports = setup_server(monkeypatch, capsys, d, "--saslauthd")
    conf = (d / "sasl" / "smtpd.conf").read_text()
    assert "pwcheck_method: saslauthd" in conf and "mech_list: PLAIN LOGIN\n" in conf
    assert f"saslauthd_path: {d}/run/mux" in conf
    # The check run by setup finds the one thing still missing, and the next steps say how to fix it.
    assert status == 1 and f"{d}/run/mux does not exist" in out
    step = f"smarthost -c {d} authd -m {d}/run"
    assert step in out
    authd = subprocess.Popen([sys.executable, "-m", "smarthost", *step.split()[1:], "-d"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (d / "run" / "mux").exists():
            assert time.monotonic() < deadline and authd.poll() is None
            time.sleep(0.05)
        assert run(monkeypatch, capsys, "-c", str(d), "check")[0] == 0
        running(d, ports)
        with smtplib.SMTP("127.0.0.1", ports[1], timeout=10) as s:
            s.starttls(context=client_context(d))
            s.ehlo("client.example.org")
            assert s.login("alice", ALICE)[0] == 235
    finally:
        authd.terminate()
        authd.wait(10)


def test_setup_refuses_to_overwrite_without_force(tmp_path, monkeypatch, capsys, running):
    d = tmp_path / "server"
    assert setup_server(monkeypatch, capsys, d)[0] == 0
    main_cf = (d / "main.cf").read_text()
    status, _, err, _ = setup_server(monkeypatch, capsys, d)
    assert status == 1 and f"{d}/main.cf exists; use --force" in err
    assert (d / "main.cf").read_text() == main_cf
    status, _, err, ports = setup_server(monkeypatch, capsys, d, "--force", stdin="new-alice\nnew-bob\n")
    assert status == 0, err
    running(d, ports)
    with smtplib.SMTP_SSL("127.0.0.1", ports[2], timeout=10, context=client_context(d)) as s:
        assert s.login("alice", "new-alice")[0] == 235  # the password was replaced


def test_server_needs_a_password_per_user(tmp_path, monkeypatch, capsys):
    d = tmp_path / "server"
    status, _, err, _ = setup_server(monkeypatch, capsys, d, stdin=f"{ALICE}\n")
    assert status == 1 and "no password for bob@example.com" in err
    assert not (d / "main.cf").exists()


def setup_client(monkeypatch, capsys, d: Path, *extra: str, relayhost: str = f"{HOST}:587", stdin: str = "s3cret pw\n"):
    return run(monkeypatch, capsys, "-c", str(d), "setup", "client", "--hostname", "sat.example.com",
               "--relayhost", relayhost, "--relay-user", "alice", "--local-state", *extra, stdin=stdin)


def test_client_setup_writes_compiled_0600_credentials(tmp_path, monkeypatch, capsys):
    d = tmp_path / "client"
    status, out, err = setup_client(monkeypatch, capsys, d)
    assert status == 0, err
    passwd = d / "sasl_passwd"
    assert passwd.stat().st_mode & 0o777 == 0o600
    assert (d / "sasl_passwd.lmdb").stat().st_mode & 0o777 == 0o600
    assert f"[{HOST}]:587 alice:s3cret pw" in passwd.read_text()
    status, out, _ = run(monkeypatch, capsys, "-c", str(d), "postmap", "-q", f"[{HOST}]:587", f"hash:{passwd}")
    assert status == 0 and out == "alice:s3cret pw\n"
    status, out, _ = run(monkeypatch, capsys, "-c", str(d), "postconf", "-n")
    assert status == 0
    for line in (f"relayhost = [{HOST}]:587", "smtp_sasl_auth_enable = yes", f"smtp_sasl_password_maps = hash:{passwd}",
                 "smtp_tls_security_level = encrypt", "smtp_sasl_security_options = noanonymous",
                 "smtp_sasl_tls_security_options = noanonymous", "inet_interfaces = loopback-only"):
        assert line in out
    assert "s3cret" not in out
    services = [s for s in load(d).services if s.type == "inet"]
    assert [s.port for s in services] == [25]


def test_client_with_a_ca_verifies_and_port_465_uses_wrapper_mode(tmp_path, monkeypatch, capsys):
    ca_cert, ca_key = tmp_path / "ca.pem", tmp_path / "ca.key"
    certs.ca_init("Example Mail CA", ca_cert, ca_key)
    d = tmp_path / "client"
    status, _, err = setup_client(monkeypatch, capsys, d, "--ca", str(ca_cert), relayhost=f"[{HOST}]:465")
    assert status == 0, err
    text = (d / "main.cf").read_text()
    assert "smtp_tls_security_level = verify" in text and f"smtp_tls_CAfile = {d}/tls/relay-ca.pem" in text
    assert f"relayhost = [{HOST}]:465" in text and "smtp_tls_wrappermode = yes" in text


def test_client_refuses_to_overwrite_and_needs_a_password(tmp_path, monkeypatch, capsys):
    d = tmp_path / "client"
    status, _, err = setup_client(monkeypatch, capsys, d, stdin="")
    assert status == 1 and "no password" in err and not (d / "main.cf").exists()
    assert setup_client(monkeypatch, capsys, d)[0] == 0
    status, _, err = setup_client(monkeypatch, capsys, d, stdin="other\n")
    assert status == 1 and "use --force" in err
    assert "alice:s3cret pw" in (d / "sasl_passwd").read_text()
    assert setup_client(monkeypatch, capsys, d, "--force", stdin="other\n")[0] == 0
    status, out, _ = run(monkeypatch, capsys, "-c", str(d), "postmap", "-q", f"[{HOST}]:587", f"hash:{d}/sasl_passwd")
    assert out == "alice:other\n"


@pytest.fixture
def shared_dir():
    """A directory the mailbox owner (nobody, when root) can traverse; pytest's tmp_path is 0700."""
    path = make_shared_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_satellite_relays_through_the_smarthost_into_a_maildir(shared_dir, monkeypatch, capsys, running):
    """Both roles as `setup` wrote them, nothing else: client → server (STARTTLS, verified, AUTH) → Maildir."""
    tmp_path = shared_dir
    server = tmp_path / "server"
    status, _, err, ports = setup_server(monkeypatch, capsys, server)
    assert status == 0, err
    client = tmp_path / "client"
    smtp = free_port()
    status, _, err = setup_client(monkeypatch, capsys, client, "--ca", str(server / "tls" / "cert.pem"),
                                  "--smtp-port", str(smtp), relayhost=f"127.0.0.1:{ports[1]}", stdin=f"{ALICE}\n")
    assert status == 0, err
    running(server, ports)
    running(client, [smtp])
    with smtplib.SMTP("127.0.0.1", smtp, timeout=10) as s:
        s.sendmail("root@sat.example.com", ["bob@example.com"], b"Subject: e2e\r\n\r\nthrough the smarthost\r\n")
    maildir = server / "mail" / "example.com" / "bob" / "new"
    deadline = time.monotonic() + 15
    while not (maildir.is_dir() and any(maildir.iterdir())):
        assert time.monotonic() < deadline, (client / "maillog").read_text(errors="replace")
        time.sleep(0.1)
    (message,) = maildir.iterdir()
    assert message.read_bytes().endswith(b"Subject: e2e\n\nthrough the smarthost\n")


def test_an_existing_key_is_never_replaced_without_force(tmp_path, monkeypatch, capsys):
    d = tmp_path / "server"
    (d / "tls").mkdir(parents=True)
    certs.selfsigned(HOST, ["127.0.0.1"], d / "tls" / "cert.pem", d / "tls" / "key.pem")
    key = (d / "tls" / "key.pem").read_bytes()
    status, _, err, _ = setup_server(monkeypatch, capsys, d)
    assert status == 1 and f"{d}/tls/cert.pem exists; use --force" in err
    assert (d / "tls" / "key.pem").read_bytes() == key and not (d / "main.cf").exists()


def test_rerunning_with_force_keeps_a_certificate_that_still_fits(tmp_path, monkeypatch, capsys):
    d = tmp_path / "server"
    assert setup_server(monkeypatch, capsys, d)[0] == 0
    cert, key = (d / "tls" / "cert.pem").read_bytes(), (d / "tls" / "key.pem").read_bytes()
    status, out, err, _ = setup_server(monkeypatch, capsys, d, "--force")
    assert status == 0, err
    assert f"Kept the existing certificate {d}/tls/cert.pem" in out
    assert (d / "tls" / "cert.pem").read_bytes() == cert and (d / "tls" / "key.pem").read_bytes() == key
    # Asked for: a new pair, and a reminder that pinned copies are now stale.
    status, out, err, _ = setup_server(monkeypatch, capsys, d, "--force", "--new-cert")
    assert status == 0, err
    assert "Replaced the certificate" in out and "must get" in out
    assert (d / "tls" / "key.pem").read_bytes() != key
    assert (d / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("why", ["other name", "expiring", "other CA"])
def test_rerunning_with_force_replaces_a_certificate_that_does_not_fit_loudly(tmp_path, monkeypatch, capsys, why):
    d = tmp_path / "server"
    extra: list[str] = []
    if why == "other CA":
        ca_cert, ca_key = tmp_path / "ca.pem", tmp_path / "ca.key"
        certs.ca_init("Example Mail CA", ca_cert, ca_key)
        extra = ["--ca-cert", str(ca_cert), "--ca-key", str(ca_key)]
    assert setup_server(monkeypatch, capsys, d)[0] == 0
    if why == "expiring":
        certs.selfsigned(HOST, ["127.0.0.1"], d / "tls" / "cert.pem", d / "tls" / "key.pem", days=10, force=True)
    elif why == "other name":
        extra = ["--san", "smtp.example.com"]
    key = (d / "tls" / "key.pem").read_bytes()
    status, out, err, _ = setup_server(monkeypatch, capsys, d, "--force", *extra)
    assert status == 0, err
    assert "WARNING: the existing certificate" in err and "made a NEW key and certificate" in err
    reason = {"other name": "smtp.example.com is not a name", "expiring": "expires in", "other CA": "issued it"}[why]
    assert reason in err
    assert (d / "tls" / "key.pem").read_bytes() != key
    chain = certs.load_certificates(d / "tls" / "cert.pem")
    certs.verify(chain, certs.load_certificates(ca_cert if why == "other CA" else d / "tls" / "cert.pem"), HOST)


def test_networks_given_reach_mynetworks(tmp_path, monkeypatch, capsys):
    d = tmp_path / "server"
    status, _, err, _ = setup_server(monkeypatch, capsys, d, "--network", "192.0.2.0/24", "--network", "[fd00::]/64")
    assert status == 0, err
    status, out, _ = run(monkeypatch, capsys, "-c", str(d), "postconf", "mynetworks")
    assert out == "mynetworks = 127.0.0.0/8, [::1]/128, 192.0.2.0/24, [fd00::]/64\n"
    assert load(d).params["mynetworks"] == ["127.0.0.0/8", "[::1]/128", "192.0.2.0/24", "[fd00::]/64"]
    c = tmp_path / "client"
    status, _, err = setup_client(monkeypatch, capsys, c, "--network", "10.1.2.0/24")
    assert status == 0, err
    assert load(c).params["mynetworks"] == ["127.0.0.0/8", "[::1]/128", "10.1.2.0/24"]


def test_client_setup_prints_its_next_steps(tmp_path, monkeypatch, capsys):
    d = tmp_path / "client"
    status, out, err = setup_client(monkeypatch, capsys, d, "--smtp-port", "10025")
    assert status == 0, err
    steps = out[out.index("Next steps:"):].splitlines()[1:]
    assert steps[0] == f"  1. Start smarthost: smarthost -c {d} start   (in the foreground: smarthost -c {d} run)"
    assert steps[1] == f"  2. Check the smarthost and your login: smarthost probe {HOST}:587 --user alice"
    assert steps[2].startswith("  3. Send a test message: swaks --server 127.0.0.1:10025 --from root@sat.example.com")
    assert f"smarthost postmap hash:{d}/sasl_passwd" in steps[4]
    assert "s3cret" not in out + err
