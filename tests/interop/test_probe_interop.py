"""``smarthost probe`` reports the same facts as the tools admins trust: ``swaks`` (banner, EHLO
capabilities before and after STARTTLS, cipher, the server's certificate) and ``openssl s_client
-starttls smtp -brief`` (protocol, cipher suite, peer certificate subject, verification result),
against smarthost and against a real Postfix; and the relay test against a Postfix that refuses
strangers and one that trusts the prober's network (``mynetworks = 127.0.0.0/8``)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from peers import free_port, require_peer

from smarthost import certs
from smarthost.cli import main


@pytest.fixture(scope="module")
def smarthost_server(start_smarthost):
    server = start_smarthost("probe-smarthost", {"mynetworks": "192.0.2.0/24", "mydestination": "example.test"},
                             f"127.0.0.1:{free_port()} inet n - n - - smtpd\n", tls=True)
    return server.ports[0], server.config_dir / "ca.pem"


def _postfix_tls(interop_dir: Path, name: str) -> tuple[Path, dict[str, str]]:
    ca = trustme.CA()
    tls = interop_dir / f"{name}-tls"
    tls.mkdir()
    tls.chmod(0o755)
    cert = ca.issue_cert("127.0.0.1", "postfix.example.test")
    cert.private_key_pem.write_to_path(str(tls / "key.pem"))
    (tls / "key.pem").chmod(0o600)
    cert.cert_chain_pems[0].write_to_path(str(tls / "cert.pem"))
    ca.cert_pem.write_to_path(str(tls / "ca.pem"))
    return tls / "ca.pem", {"smtpd_tls_cert_file": str(tls / "cert.pem"), "smtpd_tls_key_file": str(tls / "key.pem"),
                            "smtpd_tls_security_level": "may"}


@pytest.fixture(scope="module")
def postfix_server(interop_dir, start_postfix):
    ca, tls = _postfix_tls(interop_dir, "probe-postfix")
    postfix = start_postfix("probe-postfix", {"mynetworks": "192.0.2.0/24", **tls})
    return postfix.port, ca


@pytest.fixture(scope="module")
def postfix_open_relay(interop_dir, start_postfix):
    ca, tls = _postfix_tls(interop_dir, "probe-relay")
    # Postfix refuses to start with `permit` (or `permit, reject_unauth_destination`); the open
    # relay here is the common mistake of trusting the prober's network.
    postfix = start_postfix("probe-relay", {"mynetworks": "127.0.0.0/8", **tls})
    return postfix, ca


@pytest.fixture(params=["smarthost", "postfix"])
def target(request):
    return request.getfixturevalue(f"{request.param}_server")


def probe_json(*args: str) -> tuple[int, dict]:
    stdin, sys.stdin = sys.stdin, io.StringIO("")
    out = io.StringIO()
    stdout, sys.stdout = sys.stdout, out
    try:
        status = main(["probe", *args, "--json", "--timeout", "15"])
    finally:
        sys.stdin, sys.stdout = stdin, stdout
    return status, json.loads(out.getvalue())


def swaks(port: int, *args: str) -> str:
    result = subprocess.run(
        [require_peer("swaks"), "--server", f"127.0.0.1:{port}", "--helo", "probe.invalid", "--tls",
         "--quit-after", "EHLO", "--tls-get-peer-cert", "--timeout", "15", *args],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def s_client(port: int, *args: str) -> str:
    result = subprocess.run(
        [require_peer("openssl"), "s_client", "-starttls", "smtp", "-brief", "-connect", f"127.0.0.1:{port}", *args],
        input="QUIT\n", capture_output=True, text=True, timeout=30)
    return result.stdout + result.stderr


def swaks_capabilities(output: str, marker: str) -> dict[str, str]:
    """The EHLO reply swaks shows (``<-`` before TLS, ``<~`` after), as keyword -> parameters."""
    lines = [line[4 + 4:] for line in output.splitlines() if line.startswith(f"{marker}  250")]
    caps: dict[str, str] = {}
    for line in lines[1:]:  # the first line is the server's name
        keyword, _, params = line.partition(" ")
        keyword, eq, inline = keyword.partition("=")
        caps[keyword.upper()] = (inline + " " + params).strip() if eq else params
    return caps


def subject_parts(text: str) -> set[str]:
    """``O = trustme, OU = x`` (openssl) or ``OU=x,O=trustme`` (RFC 4514) -> {"O=trustme", "OU=x"}."""
    return {re.sub(r"\s*=\s*", "=", part.strip(), count=1) for part in re.split(r",\s*(?=[A-Za-z]+\s*=)", text)}


def test_probe_reports_what_swaks_and_openssl_show(target):
    port, ca = target
    status, r = probe_json(f"127.0.0.1:{port}", "--ca", str(ca))
    assert status == 0, r
    shown = swaks(port)

    # Banner and capabilities, before and after STARTTLS: swaks's transcript.
    banner = re.search(r"^<-  (220 .*)$", shown, re.MULTILINE).group(1)
    assert r["banner"] == banner
    assert r["capabilities_before_tls"] == swaks_capabilities(shown, "<-")
    assert r["capabilities_after_tls"] == swaks_capabilities(shown, "<~")
    # Cipher: "TLS started with cipher TLSv1.3:TLS_AES_256_GCM_SHA384:256".
    protocol, cipher, bits = re.search(r"TLS started with cipher (\S+):(\S+):(\d+)", shown).groups()
    assert (r["tls"]["protocol"], r["tls"]["cipher"], r["tls"]["bits"]) == (protocol, cipher, int(bits))
    # The certificate swaks received: same fingerprint, same names.
    pem = re.search(r"^=== (-----BEGIN CERTIFICATE-----$.*?-----END CERTIFICATE-----)$", shown,
                    re.MULTILINE | re.DOTALL).group(1).replace("\n=== ", "\n")
    leaf = x509.load_pem_x509_certificate(pem.encode())
    chain = r["tls"]["chain"]
    assert chain[0]["fingerprint"] == certs.fingerprint(leaf)
    assert chain[0]["names"] == [certs.name_text(n) for n in certs.subject_alt_names(leaf)]

    # openssl s_client -brief: protocol, cipher suite, subject, verification.
    brief = s_client(port, "-CAfile", str(ca), "-verify_ip", "127.0.0.1")
    assert f"Protocol version: {r['tls']['protocol']}" in brief
    assert f"Ciphersuite: {r['tls']['cipher']}" in brief
    peer = re.search(r"^Peer certificate: (.*)$", brief, re.MULTILINE).group(1)
    assert subject_parts(peer) == subject_parts(chain[0]["subject"])
    assert "Verification: OK" in brief and r["tls"]["verified"] is True


def test_verification_failure_reads_like_openssls(target):
    port, _ = target
    status, r = probe_json(f"127.0.0.1:{port}")  # the system trust store knows no trustme CA
    brief = s_client(port)
    # OpenSSL goes on after the first error and reports the last one too; the handshake that
    # verifies (ours, and s_client -verify_return_error) stops at the first.
    error = re.search(r"^verify error:num=\d+:(.*)$", brief, re.MULTILINE).group(1)
    assert "Verification error: " in brief
    assert status == 1 and r["tls"]["verified"] is False
    assert r["tls"]["verify_error"] == error


def test_relay_test_against_postfix(postfix_server, postfix_open_relay):
    port, ca = postfix_server
    status, r = probe_json(f"127.0.0.1:{port}", "--ca", str(ca), "--relay-test")
    assert status == 0, r["relay_test"]
    assert all(t["reply"].startswith("454 4.7.1") for t in r["relay_test"] if "example.net" in t["recipient"]
               and t["trick"] in ("foreign sender, foreign recipient", "local sender, foreign recipient"))

    relay, ca = postfix_open_relay
    status, r = probe_json(f"127.0.0.1:{relay.port}", "--ca", str(ca), "--relay-test")
    assert status == 1
    accepted = {t["trick"] for t in r["relay_test"] if t["accepted"]}
    assert {"foreign sender, foreign recipient", "local sender, foreign recipient", "address literal"} <= accepted
    assert relay.queued_count() == 0  # never DATA
    assert "data=" not in relay.log_text()  # Postfix counts the commands of each session
