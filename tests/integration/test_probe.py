"""``smarthost probe`` against a real smarthost on loopback: the facts it reports, the exit status,
verification with and without the right CA and name, implicit TLS, the relay test (refused by a
sane server, accepted by a ``permit`` one, and never reaching DATA), a test login and a test message."""

from __future__ import annotations

import io
import json
import socket
import sys
from pathlib import Path

import pytest
import trustme
from cryptography import x509

sys.path.insert(0, str(Path(__file__).parents[1] / "interop"))

from peers import SmarthostInstance, free_port  # noqa: E402

from smarthost import certs  # noqa: E402
from smarthost.authd.userdb import UserDB  # noqa: E402
from smarthost.cli import main  # noqa: E402
from smarthost.probe import IMPLICIT, STARTTLS, ProbeOptions, parse_target  # noqa: E402

PASSWORD = "correct horse battery"


def _start(directory: Path, main_cf: dict[str, str], smtp: int, smtps: int) -> SmarthostInstance:
    instance = SmarthostInstance(
        directory, {"mydestination": "$myhostname, example.test", "smtpd_tls_loglevel": "1", **main_cf},
        f"127.0.0.1:{smtp} inet n - n - - smtpd\n"
        f"127.0.0.1:{smtps} inet n - n - - smtpd\n"
        "  -o smtpd_tls_wrappermode=yes\n",
        tls=True,
    )
    instance.config_dir.mkdir(parents=True)
    db = UserDB(instance.config_dir / "sasldb")  # the default user database (no sasl/smtpd.conf)
    db.add("alice", PASSWORD)
    db.close()
    instance.start()
    return instance


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Loopback is not in mynetworks: strangers' relaying must be refused; AUTH after TLS."""
    instance = _start(tmp_path_factory.mktemp("probe"), {"mynetworks": "192.0.2.0/24",
                                                          "smtpd_sasl_auth_enable": "yes"}, free_port(), free_port())
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def open_relay(tmp_path_factory):
    """Relaying for the probe's own network: smarthost refuses to start with a plain
    ``smtpd_relay_restrictions = permit``, so the open relay here is a too-wide mynetworks."""
    instance = _start(tmp_path_factory.mktemp("relay"), {"mynetworks": "127.0.0.0/8"}, free_port(), free_port())
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def plaintext_auth(tmp_path_factory):
    """The classic mistake: smtpd_tls_auth_only = no. Port 0 offers STARTTLS, port 1 no TLS at all."""
    directory = tmp_path_factory.mktemp("plainauth")
    ports = free_port(), free_port()
    instance = SmarthostInstance(
        directory, {"mynetworks": "192.0.2.0/24", "smtpd_sasl_auth_enable": "yes", "smtpd_tls_auth_only": "no"},
        f"127.0.0.1:{ports[0]} inet n - n - - smtpd\n"
        f"127.0.0.1:{ports[1]} inet n - n - - smtpd\n"
        "  -o smtpd_tls_security_level=none\n",
        tls=True,
    )
    instance.config_dir.mkdir(parents=True)
    db = UserDB(instance.config_dir / "sasldb")
    db.add("alice", PASSWORD)
    db.close()
    instance.start()
    yield instance
    instance.stop()


def probe(capsys, monkeypatch, *args: str, stdin: str = "", timeout: float = 10) -> tuple[int, dict]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    status = main(["probe", *args, "--json", "--timeout", str(timeout)])
    report = json.loads(capsys.readouterr().out)
    assert report["exit_status"] == status
    return status, report


def ca(server: SmarthostInstance) -> str:
    return str(server.config_dir / "ca.pem")


def test_starttls_facts_and_a_verified_certificate(server, capsys, monkeypatch):
    status, r = probe(capsys, monkeypatch, f"127.0.0.1:{server.ports[0]}", "--ca", ca(server))
    assert status == 0, (r, server.describe())
    assert r["banner"] == "220 mx.example.test ESMTP smarthost"
    assert "STARTTLS" in r["capabilities_before_tls"]
    assert r["auth_before_tls"] == []  # AUTH only after TLS (smtpd_tls_auth_only)
    assert "STARTTLS" not in r["capabilities_after_tls"]
    assert "PLAIN" in r["auth_after_tls"]
    tls = r["tls"]
    assert tls["mode"] == STARTTLS and tls["protocol"] in ("TLSv1.2", "TLSv1.3") and tls["cipher"]
    assert tls["verified"] is True and tls["verify_name"] == "127.0.0.1"
    leaf = certs.load_certificates(server.config_dir / "cert.pem")[0]
    assert tls["chain"][0]["fingerprint"] == certs.fingerprint(leaf)
    assert {"DNS:localhost", "IP:127.0.0.1", "DNS:mx.example.test"} <= set(tls["chain"][0]["names"])
    assert r["problems"] == []


def test_a_certificate_from_an_unknown_ca_is_reported_with_all_the_other_facts(server, capsys, monkeypatch):
    status, r = probe(capsys, monkeypatch, f"127.0.0.1:{server.ports[0]}")  # system trust store
    assert status == 1
    assert r["tls"]["verified"] is False
    assert "unable to get local issuer certificate" in r["tls"]["verify_error"]
    assert r["tls"]["chain"][0]["names"] and "PLAIN" in r["auth_after_tls"]  # probed on, unverified
    assert any("does not verify" in p for p in r["problems"])


def test_a_name_not_in_the_certificate_fails_verification(server, capsys, monkeypatch):
    status, r = probe(capsys, monkeypatch, f"127.0.0.1:{server.ports[0]}", "--ca", ca(server),
                      "--name", "other.example.org")
    assert status == 1
    assert "other.example.org" in r["tls"]["verify_error"] and r["tls"]["verify_name"] == "other.example.org"


def test_implicit_tls(server, capsys, monkeypatch):
    status, r = probe(capsys, monkeypatch, f"127.0.0.1:{server.ports[1]}", "--implicit", "--ca", ca(server),
                      "--name", "localhost")
    assert status == 0, r
    assert r["tls"]["mode"] == IMPLICIT and r["tls"]["verified"] is True
    assert r["capabilities_before_tls"] is None and "PLAIN" in r["auth_after_tls"]


def test_starttls_on_an_implicit_tls_port_says_what_to_try(server, capsys, monkeypatch):
    status, r = probe(capsys, monkeypatch, f"127.0.0.1:{server.ports[1]}", timeout=0.5)
    assert status == 2 and r["connected"] is False
    assert "no reply from the server within 0.5s" in r["error"] and "try --implicit" in r["error"]


def test_port_465_means_implicit_tls_unless_told_otherwise():
    assert ProbeOptions("h", 465).mode == IMPLICIT
    assert ProbeOptions("h", 587).mode == STARTTLS
    assert ProbeOptions("h", 465, tls_mode=STARTTLS).mode == STARTTLS


@pytest.mark.parametrize("target, expected", [
    ("mail.example.com", ("mail.example.com", 25)), ("127.0.0.1:2525", ("127.0.0.1", 2525)),
    ("[::1]:587", ("::1", 587)), ("::1", ("::1", 25)), ("[mail.example.com]", ("mail.example.com", 25)),
])
def test_targets(target, expected):
    assert parse_target(target) == expected


@pytest.mark.parametrize("target", ["host:0", "host:99999", "host:smtp", "[::1", ":25"])
def test_bad_targets(target):
    with pytest.raises(ValueError):
        parse_target(target)


def test_nothing_listening_is_exit_status_2(capsys, monkeypatch):
    status, r = probe(capsys, monkeypatch, f"127.0.0.1:{free_port()}")
    assert status == 2 and r["connected"] is False
    assert "refused" in r["error"].lower()


def test_a_server_that_never_greets_times_out(capsys, monkeypatch):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        status = main(["probe", f"127.0.0.1:{port}", "--json", "--timeout", "0.5"])
    r = json.loads(capsys.readouterr().out)
    assert status == 2 and "within 0.5s" in r["error"]


def test_relay_test_against_a_closed_relay(server, capsys, monkeypatch):
    status, r = probe(capsys, monkeypatch, f"127.0.0.1:{server.ports[0]}", "--ca", ca(server), "--relay-test")
    assert status == 0, r
    tricks = r["relay_test"]
    assert len(tricks) == 7 and not any(t["accepted"] for t in tricks)
    recipients = {t["recipient"] for t in tricks}
    assert {"relaytest%example.net@mx.example.test", '"relaytest@example.net"@mx.example.test',
            "@mx.example.test:relaytest@example.net", "example.net!relaytest@mx.example.test",
            "relaytest@[192.0.2.1]"} <= recipients
    assert all(t["reply"][0] in "45" for t in tricks), tricks


def test_relay_test_finds_an_open_relay_and_never_sends_data(open_relay, capsys, monkeypatch):
    status, r = probe(capsys, monkeypatch, f"127.0.0.1:{open_relay.ports[0]}", "--ca", ca(open_relay),
                      "--relay-test")
    assert status == 1
    accepted = [t for t in r["relay_test"] if t["accepted"]]
    assert any(t["trick"] == "foreign sender, foreign recipient" for t in accepted), r["relay_test"]
    assert all(t["reply"].startswith("250") for t in accepted)
    assert any(p.startswith("open relay") for p in r["problems"])
    assert any("mynetworks" in w for w in r["warnings"])
    assert open_relay.queued_count() == 0  # RCPT only: nothing was ever queued
    assert "data=" not in open_relay.log_text()


def test_authentication_with_the_password_from_stdin(server, capsys, monkeypatch):
    status, r = probe(capsys, monkeypatch, f"127.0.0.1:{server.ports[0]}", "--ca", ca(server), "--user", "alice",
                      stdin=PASSWORD + "\n")
    assert status == 0, r
    assert r["auth"]["ok"] is True and r["auth"]["mechanism"] == "SCRAM-SHA-256"
    assert r["auth"]["reply"].startswith("235")
    assert PASSWORD not in json.dumps(r)


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "SCRAM-SHA-1"])
def test_authentication_failure_is_a_problem(server, capsys, monkeypatch, mech):
    status, r = probe(capsys, monkeypatch, f"127.0.0.1:{server.ports[0]}", "--ca", ca(server), "--user", "alice",
                      "--mech", mech, stdin="wrong\n")
    assert status == 1
    assert r["auth"]["ok"] is False and r["auth"]["reply"].startswith("535")


def test_credentials_are_never_sent_without_tls(server, capsys, monkeypatch):
    status, r = probe(capsys, monkeypatch, f"127.0.0.1:{server.ports[0]}", "--no-tls", "--user", "alice",
                      stdin=PASSWORD + "\n")
    assert status == 1
    assert r["tls"] is None and not r["auth"]["ok"] and not r["auth"]["reply"]
    assert "AUTH" not in server.log_text().split("probe.invalid")[-1]


def test_credentials_are_not_sent_to_an_unverified_server(server, capsys, monkeypatch):
    status, r = probe(capsys, monkeypatch, f"127.0.0.1:{server.ports[0]}", "--user", "alice", stdin=PASSWORD + "\n")
    assert status == 1
    assert "did not verify" in r["auth"]["error"] and not r["auth"]["reply"]
    status, r = probe(capsys, monkeypatch, f"127.0.0.1:{server.ports[0]}", "--user", "alice", "--auth-unverified",
                      stdin=PASSWORD + "\n")
    assert r["auth"]["ok"] is True and status == 1  # still a problem: the certificate


def test_test_message(server, capsys, monkeypatch):
    before = server.queued_count()
    status, r = probe(capsys, monkeypatch, f"127.0.0.1:{server.ports[0]}", "--ca", ca(server),
                      "--from", "someone@example.org", "--to", "root@example.test",
                      "--body", "Subject: probe\n\nhello from the probe\n")
    assert status == 0, r
    assert r["message"]["ok"] is True and r["message"]["accepted"] == ["root@example.test"]
    assert any("queued as" in line for line in r["message"]["replies"])
    assert server.queued_count() == before + 1
    queue_id = r["message"]["replies"][-1].rsplit(" ", 1)[1]
    assert server.read_body(queue_id).endswith(b"Subject: probe\r\n\r\nhello from the probe\r\n")


def test_human_output(server, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    status = main(["probe", f"127.0.0.1:{server.ports[0]}", "--ca", ca(server), "--timeout", "10"])
    out = capsys.readouterr().out
    assert status == 0
    assert "Banner:              220 mx.example.test ESMTP smarthost" in out
    assert "verification:      OK (name 127.0.0.1" in out
    assert out.rstrip().endswith("Result: OK")


@pytest.mark.parametrize("port, mode", [(0, []), (0, ["--no-tls"]), (1, [])], ids=["starttls", "no-tls", "no-starttls"])
def test_auth_offered_before_tls_is_a_problem_however_the_session_goes_on(plaintext_auth, capsys, monkeypatch,
                                                                          port, mode):
    status, r = probe(capsys, monkeypatch, f"127.0.0.1:{plaintext_auth.ports[port]}", "--ca", ca(plaintext_auth),
                      *mode)
    assert status == 1, r
    assert "PLAIN" in r["auth_before_tls"]
    problem = [p for p in r["problems"] if p.startswith("AUTH is offered before TLS")]
    assert len(problem) == 1 and "smtpd_tls_auth_only = yes" in problem[0]
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["probe", f"127.0.0.1:{plaintext_auth.ports[port]}", "--ca", ca(plaintext_auth), *mode]) == 1
    out = capsys.readouterr().out
    assert "  - AUTH is offered before TLS (" in out and "Result: " in out and "Result: OK" not in out


def test_the_whole_chain_the_server_sends_is_reported(tmp_path, capsys, monkeypatch):
    # A certificate signed by an intermediate CA: the server sends leaf + intermediate.
    root = trustme.CA()
    intermediate = root.create_child_ca()
    leaf = intermediate.issue_cert("127.0.0.1", "mx.example.test")
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "cert.pem").write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(tls / "key.pem"))
    (tls / "key.pem").chmod(0o600)
    root.cert_pem.write_to_path(str(tls / "root.pem"))
    port = free_port()
    instance = SmarthostInstance(tmp_path, {"smtpd_tls_cert_file": str(tls / "cert.pem"),
                                            "smtpd_tls_key_file": str(tls / "key.pem")},
                                 f"127.0.0.1:{port} inet n - n - - smtpd\n")
    instance.config_dir.mkdir(parents=True)
    instance.start()
    try:
        status, r = probe(capsys, monkeypatch, f"127.0.0.1:{port}", "--ca", str(tls / "root.pem"))
    finally:
        instance.stop()
    assert status == 0, r
    sent = [x509.load_pem_x509_certificate(blob.bytes()) for blob in leaf.cert_chain_pems]
    assert len(sent) == 2
    assert [c["fingerprint"] for c in r["tls"]["chain"]] == [certs.fingerprint(c) for c in sent]
    assert r["tls"]["chain"][0]["issuer"] == r["tls"]["chain"][1]["subject"] == sent[1].subject.rfc4514_string()
    assert r["tls"]["verified"] is True


def test_password_on_the_command_line_works_with_a_warning(server, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("not read\n"))
    status = main(["probe", f"127.0.0.1:{server.ports[0]}", "--ca", ca(server), "--user", "alice",
                   "--password", PASSWORD, "--json", "--timeout", "10"])
    out, err = capsys.readouterr()
    assert status == 0, out
    assert json.loads(out)["auth"]["ok"] is True
    assert "a password on the command line is visible to other users" in err
    assert PASSWORD not in out + err
