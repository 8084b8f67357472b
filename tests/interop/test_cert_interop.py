"""Certificates made by ``smarthost cert`` as OpenSSL, Postfix and smarthost see them: ``openssl
verify`` accepts the chain, ``openssl x509 -text`` shows the SANs, ``openssl req -verify`` the
CSR; a real Postfix and smarthost serve them to ``openssl s_client -verify_return_error``; and a
client certificate's printed ``relay_clientcerts`` line lets Postfix relay for its holder."""

from __future__ import annotations

import os
import smtplib
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from peers import free_port, require_peer

from smarthost.cli import main

HOST = "mail.example.test"


def cert(*args: str | Path) -> None:
    assert main(["cert", *map(str, args)]) == 0


def openssl(*args: str | Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_peer("openssl"), *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=30)


@pytest.fixture(scope="module")
def pki(interop_dir: Path) -> Path:
    """The recipe's files, made by ``smarthost cert``: a CA; an ECDSA server certificate and an
    RSA one for HOST, localhost and 127.0.0.1; a client certificate; a self-signed certificate."""
    d = interop_dir / "pki"
    d.mkdir()
    d.chmod(0o755)
    cert("ca", "init", "--cn", "Example Mail CA", "--cert", d / "ca.pem", "--key", d / "ca.key")
    for name, key_args in (("server", []), ("rsa", ["--rsa", "2048"])):
        cert("request", "--cn", HOST, "--san", "localhost,127.0.0.1", "--key", d / f"{name}.key",
             "--csr", d / f"{name}.csr", *key_args)
        cert("sign", "--ca-cert", d / "ca.pem", "--ca-key", d / "ca.key", "--csr", d / f"{name}.csr",
             "--out", d / f"{name}.pem")
    cert("request", "--cn", "satellite.example.test", "--key", d / "client.key", "--csr", d / "client.csr")
    cert("sign", "--ca-cert", d / "ca.pem", "--ca-key", d / "ca.key", "--csr", d / "client.csr",
         "--out", d / "client.pem", "--client")
    cert("selfsigned", "--cn", HOST, "--cert", d / "self.pem", "--key", d / "self.key")
    return d


# --- openssl on the files ---------------------------------------------------------------------


def test_openssl_verify_accepts_the_chain(pki):
    result = openssl("verify", "-CAfile", pki / "ca.pem", "-purpose", "sslserver", "-verify_hostname", HOST,
                     pki / "server.pem", pki / "rsa.pem")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"{pki / 'server.pem'}: OK", f"{pki / 'rsa.pem'}: OK"]
    client = openssl("verify", "-CAfile", pki / "ca.pem", "-purpose", "sslclient", pki / "client.pem")
    assert client.returncode == 0, client.stdout + client.stderr
    selfsigned = openssl("verify", "-CAfile", pki / "self.pem", pki / "self.pem")
    assert selfsigned.returncode == 0, selfsigned.stdout + selfsigned.stderr


def test_openssl_verify_rejects_a_foreign_ca_and_a_wrong_purpose(pki):
    # Controls for the test above: openssl does check what we claim it checks.
    foreign = openssl("verify", "-CAfile", pki / "self.pem", pki / "server.pem")
    assert foreign.returncode != 0
    purpose = openssl("verify", "-CAfile", pki / "ca.pem", "-purpose", "sslserver", pki / "client.pem")
    assert purpose.returncode != 0


def test_openssl_x509_text_shows_the_sans_and_the_profile(pki):
    result = openssl("x509", "-noout", "-text", "-in", pki / "server.pem")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert f"DNS:{HOST}, DNS:localhost, IP Address:127.0.0.1" in text
    assert "TLS Web Server Authentication" in text
    assert "CA:FALSE" in text and "ecdsa-with-SHA256" in text
    ca = openssl("x509", "-noout", "-text", "-in", pki / "ca.pem").stdout
    assert "CA:TRUE, pathlen:0" in ca and "Certificate Sign, CRL Sign" in ca


def test_openssl_req_verifies_the_csr(pki):
    for name in ("server", "rsa", "client"):
        result = openssl("req", "-verify", "-noout", "-text", "-in", pki / f"{name}.csr")
        assert result.returncode == 0, result.stderr
        assert "verify OK" in result.stdout + result.stderr


def test_keys_are_0600_and_openssl_reads_them(pki):
    for name in ("ca", "server", "rsa", "client", "self"):
        key = pki / f"{name}.key"
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600, key
        assert openssl("pkey", "-in", key, "-noout").returncode == 0, key


def test_fingerprints_agree_with_openssl(pki, capsys):
    assert main(["cert", "show", str(pki / "client.pem"), "--key", str(pki / "client.key")]) == 0
    shown = capsys.readouterr().out
    ours = openssl("x509", "-noout", "-fingerprint", "-sha256", "-in", pki / "client.pem").stdout
    fp = ours.strip().split("=", 1)[1]
    assert f"SHA-256 fingerprint:        {fp}\n" in shown
    # The public-key form, computed the way postconf(5) tells (x509 -pubkey | pkey -outform DER | dgst).
    pubkey = openssl("x509", "-in", pki / "client.pem", "-noout", "-pubkey").stdout
    der = subprocess.run([require_peer("openssl"), "pkey", "-pubin", "-outform", "DER"], input=pubkey.encode(),
                         capture_output=True, timeout=30).stdout
    digest = subprocess.run([require_peer("openssl"), "dgst", "-sha256", "-c"], input=der, capture_output=True,
                            timeout=30).stdout.decode().split("= ", 1)[1].strip()
    assert f"SHA-256 pubkey fingerprint: {digest.upper()}\n" in shown


# --- served by Postfix and smarthost --------------------------------------------------------


def s_client_verifies(port: int, ca: Path, *check: str) -> subprocess.CompletedProcess[str]:
    return openssl("s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}", "-brief", "-crlf",
                   "-verify_return_error", "-CAfile", ca, *check, stdin="QUIT\n")


def assert_served(port: int, pki: Path, ca: Path, describe: str = "") -> None:
    for check in (["-verify_hostname", HOST], ["-verify_hostname", "localhost"], ["-verify_ip", "127.0.0.1"]):
        ok = s_client_verifies(port, ca, *check)
        assert ok.returncode == 0, f"{check}: {ok.stdout}{ok.stderr}{describe}"
        assert "Verification: OK" in ok.stderr, ok.stderr
    # Control: a name the certificate does not carry fails the handshake.
    wrong = s_client_verifies(port, ca, "-verify_hostname", "other.example.test")
    assert wrong.returncode != 0 and "Verification: OK" not in wrong.stderr


@pytest.mark.parametrize("name", ["server", "rsa"])
def test_postfix_serves_the_certificate(pki, start_postfix, name):
    postfix = start_postfix(f"postfix-{name}", {
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": str(pki / f"{name}.pem"),
        "smtpd_tls_key_file": str(pki / f"{name}.key"),
    })
    assert_served(postfix.port, pki, pki / "ca.pem", postfix.log_text())


def test_postfix_serves_the_selfsigned_certificate(pki, start_postfix):
    postfix = start_postfix("postfix-self", {
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": str(pki / "self.pem"),
        "smtpd_tls_key_file": str(pki / "self.key"),
    })
    ok = s_client_verifies(postfix.port, pki / "self.pem", "-verify_hostname", HOST)
    assert ok.returncode == 0 and "Verification: OK" in ok.stderr, ok.stdout + ok.stderr + postfix.log_text()


def test_smarthost_serves_the_certificate(pki, start_smarthost):
    port = free_port()
    server = start_smarthost("smarthost", {
        "myhostname": HOST,
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": str(pki / "server.pem"),
        "smtpd_tls_key_file": str(pki / "server.key"),
    }, f"127.0.0.1:{port} inet n - n - - smtpd\n")
    assert_served(port, pki, pki / "ca.pem", server.describe())


def test_postfix_relays_for_the_client_certificate_line_that_sign_prints(pki, start_postfix, interop_dir, capsys):
    """``sign --client`` prints a relay_clientcerts line; Postfix, given exactly that line, lets the
    holder of the certificate relay (permit_tls_clientcerts) and refuses everyone else."""
    d = interop_dir / "clientcert"
    d.mkdir()
    d.chmod(0o755)
    cert("request", "--cn", "satellite.example.test", "--key", d / "sat.key", "--csr", d / "sat.csr")
    capsys.readouterr()
    cert("sign", "--ca-cert", pki / "ca.pem", "--ca-key", pki / "ca.key", "--csr", d / "sat.csr",
         "--out", d / "sat.pem", "--client")
    line = capsys.readouterr().out.splitlines()[-1].strip()
    (d / "relay_clientcerts").write_text(line + "\n")
    postfix = start_postfix("postfix-ccert", {
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": str(pki / "server.pem"),
        "smtpd_tls_key_file": str(pki / "server.key"),
        "smtpd_tls_CAfile": str(pki / "ca.pem"),
        "smtpd_tls_ask_ccert": "yes",
        "smtpd_tls_fingerprint_digest": "sha256",
        "relay_clientcerts": f"texthash:{d / 'relay_clientcerts'}",
        "mynetworks": "192.0.2.0/24",
        "smtpd_relay_restrictions": "permit_tls_clientcerts, reject_unauth_destination",
    })

    def rcpt(client_cert: bool) -> int:
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        if client_cert:
            context.load_cert_chain(str(d / "sat.pem"), str(d / "sat.key"))
        with smtplib.SMTP("127.0.0.1", postfix.port, local_hostname="satellite.example.test", timeout=20) as smtp:
            smtp.starttls(context=context)  # verifies 127.0.0.1 against the IP SAN
            smtp.ehlo("satellite.example.test")
            smtp.mail("alice@satellite.example.test")
            code, _ = smtp.rcpt("bob@elsewhere.example")
            return code

    assert rcpt(client_cert=True) == 250, postfix.log_text()
    assert rcpt(client_cert=False) == 554, postfix.log_text()
