"""A satellite authenticating with a client certificate made by `smarthost cert sign --client`:
`permit_tls_clientcerts` with `relay_clientcerts` on the server, `smtp_tls_cert_file` on the client."""

from __future__ import annotations

import smtplib
import ssl
import subprocess
import sys
import time
from pathlib import Path

from peers import SmarthostInstance, free_port, wait_for_text
from test_server import Raw


def cert(*args: str, cwd: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "smarthost", "cert", *args], cwd=cwd,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_client_certificate_lets_a_satellite_relay(tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    cert("ca", "init", "--cn", "Relay CA", "--cert", "ca.pem", "--key", "ca.key", cwd=pki)
    cert("request", "--cn", "localhost", "--san", "127.0.0.1", "--key", "server.key", "--csr", "server.csr", cwd=pki)
    cert("sign", "--ca-cert", "ca.pem", "--ca-key", "ca.key", "--csr", "server.csr", "--out", "server.pem", cwd=pki)
    cert("request", "--cn", "satellite.example.test", "--key", "sat.key", "--csr", "sat.csr", cwd=pki)
    signed = cert("sign", "--ca-cert", "ca.pem", "--ca-key", "ca.key", "--csr", "sat.csr", "--out", "sat.pem",
                  "--client", cwd=pki)
    entry = signed.strip().splitlines()[-1].strip()  # "FP satellite.example.test", ready for the table
    (pki / "relay_clientcerts").write_text(entry + "\n")

    server_port = free_port()
    server = SmarthostInstance(tmp_path / "server", {
        "mynetworks": "192.0.2.0/24",  # loopback is a stranger: only the certificate lets it relay
        "smtpd_tls_cert_file": str(pki / "server.pem"), "smtpd_tls_key_file": str(pki / "server.key"),
        "smtpd_tls_security_level": "may", "smtpd_tls_ask_ccert": "yes", "smtpd_tls_CAfile": str(pki / "ca.pem"),
        "smtpd_tls_loglevel": "1",
        "relay_clientcerts": f"texthash:{pki / 'relay_clientcerts'}",
        "smtpd_relay_restrictions": "permit_mynetworks, permit_tls_clientcerts, reject_unauth_destination",
    }, f"127.0.0.1:{server_port} inet n - n - - smtpd\n")  # no qmgr: what arrives stays queued
    sat_port = free_port()
    satellite = SmarthostInstance(tmp_path / "satellite", {
        "mynetworks": "127.0.0.0/8", "mydestination": "",
        "relayhost": f"[127.0.0.1]:{server_port}",
        "smtp_tls_security_level": "verify", "smtp_tls_CAfile": str(pki / "ca.pem"),
        "smtp_tls_cert_file": str(pki / "sat.pem"), "smtp_tls_key_file": str(pki / "sat.key"),
    }, f"127.0.0.1:{sat_port} inet n - n - - smtpd\nqmgr unix n - n 300 1 qmgr\n")
    with server, satellite:
        # Without the certificate, the server refuses to relay.
        r = Raw(server_port)
        r.reply()
        r.cmd("EHLO c")
        r.cmd("STARTTLS")
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        r.starttls(ctx)
        r.cmd("EHLO c")
        r.cmd("MAIL FROM:<a@example.org>")
        code, text = r.cmd("RCPT TO:<bob@foreign.example>")
        assert code == 554 and "Relay access denied" in text
        r.close()
        # Through the satellite, which presents its certificate, the message is relayed.
        message = b"Subject: by certificate\r\n\r\nrelayed with a client certificate\r\n"
        with smtplib.SMTP("127.0.0.1", sat_port, timeout=10) as c:
            c.sendmail("app@satellite.example.test", ["bob@foreign.example"], message)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not server.queue_entries():
            time.sleep(0.1)
        (entry_,) = server.queue_entries()
        assert [r.address for r in entry_.envelope.recipients] == ["bob@foreign.example"]
        assert server.read_body(entry_.id).endswith(message)
        fingerprint = entry.split()[0]
        assert (f"client certificate verified: CN=satellite.example.test, fingerprint={fingerprint}"
                in server.log_text()), server.describe()
        assert "status=sent (250 2.0.0 Ok: queued as" in satellite.log_text(), satellite.describe()


# AUTH EXTERNAL: the identity is the name relay_clientcerts gives the verified certificate ----------


def _fingerprint(pem: bytes) -> str:
    import hashlib

    der = ssl.PEM_cert_to_DER_cert(pem.decode())
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def external_server(smarthost):
    """A TLS server asking for client certificates, EXTERNAL offered, and two certificates from its
    CA: ``listed`` (in relay_clientcerts as "satellite") and ``unlisted``."""
    s = smarthost({
        "mynetworks": "192.0.2.0/24", "smtpd_sasl_auth_enable": "yes",
        "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
        "smtpd_tls_ask_ccert": "yes", "smtpd_tls_CAfile": "$config_directory/ca.pem",
        "relay_clientcerts": "texthash:$config_directory/relay_clientcerts",
        "smtpd_sasl_mechanism_filter": "static:all",  # Postfix's default filter drops EXTERNAL
    }, tls=True, start=False)
    s.main_cf["smtpd_tls_CAfile"] = str(s.config_dir / "ca.pem")
    s.main_cf["relay_clientcerts"] = f"texthash:{s.config_dir / 'relay_clientcerts'}"
    s.write_config()
    certs = {}
    for name in ("listed", "unlisted"):
        issued = s.ca.issue_cert(f"{name}.example.test")
        issued.private_key_and_cert_chain_pem.write_to_path(str(s.config_dir / f"{name}.pem"))
        certs[name] = str(s.config_dir / f"{name}.pem")
        if name == "listed":
            fingerprint = _fingerprint(issued.cert_chain_pems[0].bytes())
    (s.config_dir / "relay_clientcerts").write_text(f"{fingerprint} satellite\n")
    (s.config_dir / "sasl").mkdir()
    (s.config_dir / "sasl" / "smtpd.conf").write_text("pwcheck_method: auxprop\nmech_list: EXTERNAL PLAIN\n")
    s.write_config = lambda: None  # keep the files made above
    s.start()
    return s, certs


def external_client(s, cert: str | None) -> smtplib.SMTP:
    ctx = ssl.create_default_context(cafile=str(s.config_dir / "ca.pem"))
    if cert:
        ctx.load_cert_chain(cert)
    c = smtplib.SMTP("127.0.0.1", s.ports[0], timeout=10)
    c.starttls(context=ctx)
    c.ehlo("client.example")
    return c


def test_auth_external_with_a_listed_certificate_authenticates_and_relays(smarthost):
    s, certs = external_server(smarthost)
    with external_client(s, certs["listed"]) as c:
        assert "EXTERNAL" in c.esmtp_features["auth"].split()
        assert c.docmd("AUTH", "EXTERNAL =") == (235, b"2.7.0 Authentication successful")
        assert c.mail("a@example.org")[0] == 250
        assert c.rcpt("bob@foreign.example")[0] == 250  # relaying: permit_sasl_authenticated
        code, _ = c.data(b"Subject: by EXTERNAL\r\n\r\nhello\r\n")
        assert code == 250
    wait_for_text(s.maillog, "sasl_method=EXTERNAL, sasl_username=satellite")
    # The authorization identity may name the certificate's own identity (base64 "satellite").
    with external_client(s, certs["listed"]) as c:
        assert c.docmd("AUTH", "EXTERNAL c2F0ZWxsaXRl")[0] == 235


def test_auth_external_without_a_matching_certificate_or_with_another_authzid_is_535(smarthost):
    s, certs = external_server(smarthost)
    for cert in (None, certs["unlisted"]):  # no certificate; a verified one that is not listed
        with external_client(s, cert) as c:
            assert c.docmd("AUTH", "EXTERNAL =")[0] == 535
            assert c.mail("a@example.org")[0] == 250
            assert c.rcpt("bob@foreign.example")[0] == 554  # still a stranger
    with external_client(s, certs["listed"]) as c:
        assert c.docmd("AUTH", "EXTERNAL cm9vdA==")[0] == 535  # authzid "root"
    wait_for_text(s.maillog, "SASL EXTERNAL authentication failed: authorization identity not allowed")
    failed = s.log_text().count("SASL EXTERNAL authentication failed: no verified client certificate listed")
    assert failed == 2, s.describe()
