"""``smarthost cert``: every subcommand through the CLI, the files it writes (modes, refusal to
overwrite), the certificates' contents, ``show`` and ``verify``."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from smarthost import certs
from smarthost.cli import main

UTC = dt.timezone.utc


@pytest.fixture(autouse=True)
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cert_cli(*args: str) -> int:
    return main(["cert", *args])


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def load_cert(path: str | Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def ext(cert: x509.Certificate | x509.CertificateSigningRequest, cls):
    return cert.extensions.get_extension_for_class(cls)


def sans(cert) -> list[str]:
    return [certs.name_text(n) for n in ext(cert, x509.SubjectAlternativeName).value]


def colon_sha256(data: bytes) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.sha256(data).digest())


@pytest.fixture
def ca(workdir):
    """A CA made by ``cert ca init``: (ca.pem, ca.key)."""
    assert cert_cli("ca", "init", "--cn", "Example Mail CA", "--cert", "ca.pem", "--key", "ca.key") == 0
    return Path("ca.pem"), Path("ca.key")


@pytest.fixture
def server(ca, capsys):
    """A server certificate signed by ``ca``: (server.pem, server.key)."""
    assert cert_cli("request", "--cn", "mail.example.test", "--san", "localhost,127.0.0.1", "--san", "::1",
                    "--key", "server.key", "--csr", "server.csr") == 0
    assert cert_cli("sign", "--ca-cert", "ca.pem", "--ca-key", "ca.key", "--csr", "server.csr",
                    "--out", "server.pem") == 0
    capsys.readouterr()
    return Path("server.pem"), Path("server.key")


# --- selfsigned ---------------------------------------------------------------------------------


def test_selfsigned_writes_key_0600_and_certificate_with_sans(capsys):
    assert cert_cli("selfsigned", "--cn", "mail.example.test", "--san", "localhost", "--san", "192.0.2.7",
                    "--san", "2001:db8::1", "--cert", "cert.pem", "--key", "key.pem") == 0
    out = capsys.readouterr().out
    assert "smtpd_tls_cert_file = " + str(Path("cert.pem").resolve()) in out
    assert "smtpd_tls_key_file = " + str(Path("key.pem").resolve()) in out
    assert mode("key.pem") == 0o600
    cert = load_cert("cert.pem")
    assert cert.subject.rfc4514_string() == "CN=mail.example.test"
    assert cert.issuer == cert.subject
    assert sans(cert) == ["DNS:mail.example.test", "DNS:localhost", "IP:192.0.2.7", "IP:2001:db8::1"]
    assert ext(cert, x509.BasicConstraints).value.ca is False
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    key = serialization.load_pem_private_key(Path("key.pem").read_bytes(), None)
    assert certs.key_matches(cert.public_key(), key)
    # Valid now, for the default 825 days.
    lifetime = cert.not_valid_after_utc - dt.datetime.now(UTC)
    assert dt.timedelta(days=824) < lifetime <= dt.timedelta(days=825)


def test_selfsigned_days_and_rsa(capsys):
    assert cert_cli("selfsigned", "--cn", "mx.example.test", "--cert", "c.pem", "--key", "k.pem",
                    "--days", "30", "--rsa") == 0
    cert = load_cert("c.pem")
    assert isinstance(cert.public_key(), rsa.RSAPublicKey) and cert.public_key().key_size == 3072
    assert ext(cert, x509.KeyUsage).value.key_encipherment is True
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == dt.timedelta(days=30) + certs.CLOCK_SKEW
    assert "RSA 3072 private key, mode 0600" in capsys.readouterr().out
    assert cert_cli("selfsigned", "--cn", "mx.example.test", "--cert", "c2.pem", "--key", "k2.pem",
                    "--rsa", "2048") == 0
    assert load_cert("c2.pem").public_key().key_size == 2048


def test_selfsigned_rsa_size_outside_the_choices_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cert_cli("selfsigned", "--cn", "h.example", "--cert", "c.pem", "--key", "k.pem", "--rsa", "1024")
    assert exc.value.code == 2
    assert "--rsa" in capsys.readouterr().err
    assert not Path("k.pem").exists()


def test_selfsigned_refuses_to_overwrite_then_force_replaces(capsys):
    Path("key.pem").write_text("old key\n")
    Path("key.pem").chmod(0o644)
    assert cert_cli("selfsigned", "--cn", "h.example.test", "--cert", "cert.pem", "--key", "key.pem") == 1
    err = capsys.readouterr().err
    assert "key.pem exists; use --force to replace it" in err
    assert Path("key.pem").read_text() == "old key\n"
    assert not Path("cert.pem").exists(), "nothing is written when one output is refused"

    assert cert_cli("selfsigned", "--cn", "h.example.test", "--cert", "cert.pem", "--key", "key.pem",
                    "--force") == 0
    assert b"PRIVATE KEY" in Path("key.pem").read_bytes()
    assert mode("key.pem") == 0o600
    assert not [p for p in Path().iterdir() if p.name.startswith(".")], "no temporary file left behind"


def test_key_is_0600_even_with_a_permissive_umask():
    old = os.umask(0)
    try:
        assert cert_cli("selfsigned", "--cn", "h.example.test", "--cert", "c.pem", "--key", "k.pem") == 0
    finally:
        os.umask(old)
    assert mode("k.pem") == 0o600


def test_force_replaces_a_symlink_instead_of_writing_through_it(workdir):
    victim = workdir / "victim"
    victim.write_text("precious\n")
    Path("key.pem").symlink_to(victim)
    assert cert_cli("selfsigned", "--cn", "h.example.test", "--cert", "c.pem", "--key", "key.pem", "--force") == 0
    assert victim.read_text() == "precious\n"
    assert not Path("key.pem").is_symlink() and mode("key.pem") == 0o600


def test_a_dangling_symlink_counts_as_existing(capsys):
    Path("key.pem").symlink_to("/nonexistent/target")
    assert cert_cli("selfsigned", "--cn", "h.example.test", "--cert", "c.pem", "--key", "key.pem") == 1
    assert "key.pem exists" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["bad name", "-bad.example", "ex_ample.test", "a..b", "*.com.*", "x" * 64 + ".test"])
def test_invalid_names_are_refused_with_the_name(bad, capsys):
    assert cert_cli("selfsigned", "--cn", "h.example.test", f"--san={bad}", "--cert", "c.pem", "--key", "k.pem") == 1
    assert repr(bad) in capsys.readouterr().err
    assert not Path("k.pem").exists()


def test_internationalized_names_must_be_a_labels(capsys):
    assert cert_cli("selfsigned", "--cn", "mail.bücher.test", "--cert", "c.pem", "--key", "k.pem") == 1
    assert "A-label (xn--...)" in capsys.readouterr().err


def test_wildcard_san_is_accepted_and_names_are_lower_cased():
    assert cert_cli("selfsigned", "--cn", "Mail.Example.Test.", "--san", "*.example.test", "--cert", "c.pem",
                    "--key", "k.pem") == 0
    assert sans(load_cert("c.pem")) == ["DNS:mail.example.test", "DNS:*.example.test"]


def test_library_selfsigned_keeps_its_signature(workdir):
    # The call demo.py makes.
    certs.selfsigned("mail.demo.test", ["localhost", "127.0.0.1", "::1"], workdir / "c.pem", workdir / "k.pem",
                     force=True)
    assert sans(load_cert(workdir / "c.pem"))[-1] == "IP:::1"
    assert mode(workdir / "k.pem") == 0o600


# --- ca init ------------------------------------------------------------------------------------


def test_ca_init_makes_a_ten_year_ca_with_pathlen_0(ca, capsys):
    cert_path, key_path = ca
    assert mode(key_path) == 0o600
    cert = load_cert(cert_path)
    assert cert.subject.rfc4514_string() == "CN=Example Mail CA" and cert.issuer == cert.subject
    basic = ext(cert, x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    assert ext(cert, x509.SubjectKeyIdentifier).value.digest
    lifetime = cert.not_valid_after_utc - dt.datetime.now(UTC)
    assert dt.timedelta(days=3649) < lifetime <= dt.timedelta(days=3650)


def test_ca_init_days_rsa_and_refusal(ca, capsys):
    assert cert_cli("ca", "init", "--cn", "CA", "--cert", "ca.pem", "--key", "other.key") == 1
    assert "ca.pem exists; use --force" in capsys.readouterr().err
    assert not Path("other.key").exists()
    assert cert_cli("ca", "init", "--cn", "CA 2", "--cert", "ca2.pem", "--key", "ca2.key", "--days", "365",
                    "--rsa", "4096") == 0
    cert = load_cert("ca2.pem")
    assert cert.public_key().key_size == 4096
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=365) + certs.CLOCK_SKEW


@pytest.mark.parametrize("days", ["0", "-5", "many", "36501"])
def test_days_must_be_a_sensible_number(days, capsys):
    with pytest.raises(SystemExit):
        cert_cli("ca", "init", "--cn", "CA", "--cert", "ca.pem", "--key", "ca.key", "--days", days)
    assert "--days" in capsys.readouterr().err


# --- request ------------------------------------------------------------------------------------


def test_request_makes_a_key_and_a_signed_csr_with_sans(capsys):
    assert cert_cli("request", "--cn", "mail.example.test", "--san", "smtp.example.test", "--san", "192.0.2.1",
                    "--key", "k.pem", "--csr", "r.csr") == 0
    assert mode("k.pem") == 0o600
    csr = x509.load_pem_x509_csr(Path("r.csr").read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=mail.example.test"
    assert sans(csr) == ["DNS:mail.example.test", "DNS:smtp.example.test", "IP:192.0.2.1"]
    key = serialization.load_pem_private_key(Path("k.pem").read_bytes(), None)
    assert certs.key_matches(csr.public_key(), key)
    assert "Next: smarthost cert sign" in capsys.readouterr().out


def test_request_with_an_existing_key_needs_reuse_key_or_force(capsys):
    assert cert_cli("request", "--cn", "h.example.test", "--key", "k.pem", "--csr", "1.csr") == 0
    original = Path("k.pem").read_bytes()
    assert cert_cli("request", "--cn", "h.example.test", "--key", "k.pem", "--csr", "2.csr") == 1
    err = capsys.readouterr().err
    assert "k.pem exists; use --reuse-key" in err and "--force" in err
    assert not Path("2.csr").exists()

    assert cert_cli("request", "--cn", "h.example.test", "--key", "k.pem", "--csr", "2.csr", "--reuse-key") == 0
    assert Path("k.pem").read_bytes() == original
    first, second = (x509.load_pem_x509_csr(Path(p).read_bytes()) for p in ("1.csr", "2.csr"))
    assert certs.pubkey_fingerprint(first.public_key()) == certs.pubkey_fingerprint(second.public_key())

    assert cert_cli("request", "--cn", "h.example.test", "--key", "k.pem", "--csr", "3.csr", "--force") == 0
    assert Path("k.pem").read_bytes() != original


def test_request_reuse_key_errors(capsys):
    assert cert_cli("request", "--cn", "h.example.test", "--key", "missing.pem", "--csr", "r.csr",
                    "--reuse-key") == 1
    assert "cannot read private key missing.pem" in capsys.readouterr().err
    Path("k.pem").write_text("not a key\n")
    assert cert_cli("request", "--cn", "h.example.test", "--key", "k.pem", "--csr", "r.csr", "--reuse-key") == 1
    assert "k.pem does not hold a PEM private key" in capsys.readouterr().err
    assert cert_cli("request", "--cn", "h.example.test", "--key", "k.pem", "--csr", "r.csr", "--reuse-key",
                    "--rsa") == 1
    assert "cannot be combined with --reuse-key" in capsys.readouterr().err


def test_request_refuses_an_encrypted_key_with_the_fix(capsys):
    key = ec.generate_private_key(ec.SECP256R1())
    Path("k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.BestAvailableEncryption(b"secret")))
    assert cert_cli("request", "--cn", "h.example.test", "--key", "k.pem", "--csr", "r.csr", "--reuse-key") == 1
    err = capsys.readouterr().err
    assert "k.pem is encrypted" in err and "openssl pkey -in k.pem" in err
    assert "secret" not in err


# --- sign ---------------------------------------------------------------------------------------


def test_sign_server_profile(server, ca):
    cert, ca_cert = load_cert(server[0]), load_cert(ca[0])
    assert cert.issuer == ca_cert.subject
    assert cert.subject.rfc4514_string() == "CN=mail.example.test"
    assert sans(cert) == ["DNS:mail.example.test", "DNS:localhost", "IP:127.0.0.1", "IP:::1"]
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    usage = ext(cert, x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment and not usage.key_cert_sign
    assert ext(cert, x509.BasicConstraints).value.ca is False
    aki = ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki == ext(ca_cert, x509.SubjectKeyIdentifier).value.digest
    assert ext(cert, x509.SubjectKeyIdentifier).value.digest
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    cert.verify_directly_issued_by(ca_cert)
    lifetime = cert.not_valid_after_utc - dt.datetime.now(UTC)
    assert dt.timedelta(days=729) < lifetime <= dt.timedelta(days=730)
    key = serialization.load_pem_private_key(server[1].read_bytes(), None)
    assert certs.key_matches(cert.public_key(), key)


def test_sign_gives_random_serials_and_honours_days(server):
    assert cert_cli("sign", "--ca-cert", "ca.pem", "--ca-key", "ca.key", "--csr", "server.csr",
                    "--out", "again.pem", "--days", "90") == 0
    first, again = load_cert(server[0]), load_cert("again.pem")
    assert first.serial_number != again.serial_number
    assert again.serial_number.bit_length() > 64
    assert again.not_valid_after_utc - again.not_valid_before_utc == dt.timedelta(days=90) + certs.CLOCK_SKEW


def test_sign_rsa_leaf_gets_key_encipherment(ca):
    assert cert_cli("request", "--cn", "r.example.test", "--key", "r.key", "--csr", "r.csr", "--rsa", "2048") == 0
    assert cert_cli("sign", "--ca-cert", "ca.pem", "--ca-key", "ca.key", "--csr", "r.csr", "--out", "r.pem") == 0
    usage = ext(load_cert("r.pem"), x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment


def write_csr(path: str, cn: str | None, *extensions: x509.ExtensionType) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []))
    for extension in extensions:
        builder = builder.add_extension(extension, critical=isinstance(extension, x509.BasicConstraints))
    Path(path).write_bytes(certs.pem(builder.sign(key, hashes.SHA256())))


def test_sign_adds_the_cn_as_san_and_ignores_a_requested_ca_flag(ca):
    write_csr("plain.csr", "old-style.example.test", x509.BasicConstraints(ca=True, path_length=None))
    assert cert_cli("sign", "--ca-cert", "ca.pem", "--ca-key", "ca.key", "--csr", "plain.csr",
                    "--out", "plain.pem") == 0
    cert = load_cert("plain.pem")
    assert sans(cert) == ["DNS:old-style.example.test"]
    assert ext(cert, x509.BasicConstraints).value.ca is False


def test_sign_refuses_a_server_csr_that_names_no_host(ca, capsys):
    write_csr("person.csr", "John Doe")
    assert cert_cli("sign", "--ca-cert", "ca.pem", "--ca-key", "ca.key", "--csr", "person.csr",
                    "--out", "p.pem") == 1
    assert "person.csr: no subjectAltName, and its CN 'John Doe' is not a host name" in capsys.readouterr().err
    assert not Path("p.pem").exists()
    write_csr("nobody.csr", None)
    assert cert_cli("sign", "--ca-cert", "ca.pem", "--ca-key", "ca.key", "--csr", "nobody.csr",
                    "--out", "p.pem", "--client") == 1
    assert "nobody.csr: the request names no host" in capsys.readouterr().err


def test_sign_client_profile_prints_the_relay_clientcerts_entry(ca, capsys):
    write_csr("sat.csr", "Satellite One")
    capsys.readouterr()
    assert cert_cli("sign", "--ca-cert", "ca.pem", "--ca-key", "ca.key", "--csr", "sat.csr", "--out", "sat.pem",
                    "--client") == 0
    cert = load_cert("sat.pem")
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        ext(cert, x509.SubjectAlternativeName)
    out = capsys.readouterr().out
    fp = colon_sha256(cert.public_bytes(serialization.Encoding.DER))
    assert f"    {fp} Satellite One\n" in out
    assert "smtpd_tls_fingerprint_digest = sha256" in out


def test_sign_errors_name_the_files(ca, server, capsys):
    # Another CA's key.
    assert cert_cli("ca", "init", "--cn", "Other", "--cert", "o.pem", "--key", "o.key") == 0
    assert cert_cli("sign", "--ca-cert", "ca.pem", "--ca-key", "o.key", "--csr", "server.csr", "--out", "x.pem") == 1
    assert "the CA key does not belong to ca.pem" in capsys.readouterr().err
    # A certificate that is no CA.
    assert cert_cli("sign", "--ca-cert", "server.pem", "--ca-key", "server.key", "--csr", "server.csr",
                    "--out", "x.pem") == 1
    assert "server.pem is not a CA certificate" in capsys.readouterr().err
    # Not a CSR; a missing CA file; an existing output.
    assert cert_cli("sign", "--ca-cert", "ca.pem", "--ca-key", "ca.key", "--csr", "ca.pem", "--out", "x.pem") == 1
    assert "ca.pem holds no PEM certificate request" in capsys.readouterr().err
    assert cert_cli("sign", "--ca-cert", "nope.pem", "--ca-key", "ca.key", "--csr", "server.csr",
                    "--out", "x.pem") == 1
    assert "cannot read certificate nope.pem: No such file or directory" in capsys.readouterr().err
    assert cert_cli("sign", "--ca-cert", "ca.pem", "--ca-key", "ca.key", "--csr", "server.csr",
                    "--out", "server.pem") == 1
    assert "server.pem exists; use --force" in capsys.readouterr().err
    assert not Path("x.pem").exists()


def test_sign_refuses_a_tampered_csr(ca, capsys):
    assert cert_cli("request", "--cn", "h.example.test", "--key", "k.pem", "--csr", "r.csr") == 0
    der = bytearray(x509.load_pem_x509_csr(Path("r.csr").read_bytes()).public_bytes(serialization.Encoding.DER))
    i = der.index(b"h.example.test")
    der[i] = ord("x")  # the signed name changes; the signature no longer covers it
    Path("t.csr").write_bytes(certs.pem(x509.load_der_x509_csr(bytes(der))))
    assert cert_cli("sign", "--ca-cert", "ca.pem", "--ca-key", "ca.key", "--csr", "t.csr", "--out", "t.pem") == 1
    assert "t.csr: the request's signature does not verify" in capsys.readouterr().err


def test_leaf_validity_ends_with_the_cas(workdir):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = certs.build_ca(ca_key, "Short CA", days=10)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    cert = certs.issue(certs.build_csr(leaf_key, "h.example.test", []), ca_cert, ca_key, days=730)
    assert cert.not_valid_after_utc == ca_cert.not_valid_after_utc


# --- show ---------------------------------------------------------------------------------------


def test_show_prints_every_field_and_the_fingerprints(server, capsys):
    assert cert_cli("show", "server.pem", "--key", "server.key") == 0
    out = capsys.readouterr().out
    cert = load_cert("server.pem")
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    for line in [
        "server.pem:",
        "  subject:                    CN=mail.example.test",
        "  names (SAN):                DNS:mail.example.test, DNS:localhost, IP:127.0.0.1, IP:::1",
        "  issuer:                     CN=Example Mail CA",
        f"  valid until:                {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC (729 days left)",
        "  key:                        ECDSA P-256",
        "  CA:                         no",
        "  usage:                      serverAuth",
        "  SHA-256 fingerprint:        " + colon_sha256(cert.public_bytes(serialization.Encoding.DER)),
        "  SHA-256 pubkey fingerprint: " + colon_sha256(spki),
        "key server.key: matches",
    ]:
        assert line in out.splitlines(), (line, out)


def test_show_with_a_key_that_does_not_match_exits_1(server, ca, capsys):
    assert cert_cli("show", "server.pem", "--key", "ca.key") == 1
    assert "key ca.key: does NOT match" in capsys.readouterr().out


def test_show_json(server, capsys):
    assert cert_cli("show", "server.pem", "--key", "server.key", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    (info,) = report["certificates"]
    cert = load_cert("server.pem")
    assert report["key_matches"] is True
    assert info["subject"] == "CN=mail.example.test" and info["issuer"] == "CN=Example Mail CA"
    assert info["names"] == ["DNS:mail.example.test", "DNS:localhost", "IP:127.0.0.1", "IP:::1"]
    assert info["days_left"] == 729 and info["expired"] is False and info["ca"] is False
    assert info["not_after"] == cert.not_valid_after_utc.isoformat()
    assert info["sha256_fingerprint"] == colon_sha256(cert.public_bytes(serialization.Encoding.DER))
    assert info["usage"] == ["serverAuth"]


def test_show_a_chain_file_and_a_ca(server, ca, capsys):
    Path("chain.pem").write_bytes(server[0].read_bytes() + ca[0].read_bytes())
    assert cert_cli("show", "chain.pem") == 0
    out = capsys.readouterr().out
    assert "certificate 1 of 2 in chain.pem:" in out and "certificate 2 of 2 in chain.pem:" in out
    assert "  issuer:                     CN=Example Mail CA (self-signed)" in out
    assert "  CA:                         yes" in out


def test_show_an_expired_certificate(ca, capsys):
    expired = expired_cert()
    Path("old.pem").write_bytes(certs.pem(expired))
    assert cert_cli("show", "old.pem") == 0
    assert "(EXPIRED 9 days ago)" in capsys.readouterr().out
    assert cert_cli("show", "old.pem", "--json") == 0
    info = json.loads(capsys.readouterr().out)["certificates"][0]
    assert info["expired"] is True and info["days_left"] == -10


def test_show_a_request(capsys):
    assert cert_cli("request", "--cn", "h.example.test", "--key", "k.pem", "--csr", "r.csr") == 0
    capsys.readouterr()
    assert cert_cli("show", "r.csr", "--key", "k.pem") == 0
    out = capsys.readouterr().out
    assert "r.csr: certificate request" in out and "  signature:                  valid" in out
    assert "key k.pem: matches" in out


def test_show_errors(capsys):
    assert cert_cli("show", "missing.pem") == 1
    assert "missing.pem" in capsys.readouterr().err
    Path("junk.pem").write_text("hello\n")
    assert cert_cli("show", "junk.pem") == 1
    assert "junk.pem holds neither a PEM certificate nor a PEM certificate request" in capsys.readouterr().err


# --- verify -------------------------------------------------------------------------------------


def expired_cert(name: str = "old.example.test") -> x509.Certificate:
    """A certificate of the CA in ca.pem/ca.key that expired 9 days and some hours ago."""
    ca_cert = certs.load_certificates(Path("ca.pem"))[0]
    ca_key = certs.load_private_key(Path("ca.key"))
    csr = certs.build_csr(ec.generate_private_key(ec.SECP256R1()), name, [])
    past = dt.datetime.now(UTC) - dt.timedelta(days=10, hours=12)
    return certs.issue(csr, ca_cert, ca_key, days=1, now=past)


@pytest.mark.parametrize("name", ["mail.example.test", "LOCALHOST", "127.0.0.1", "::1"])
def test_verify_ok_with_a_name(server, name, capsys):
    assert cert_cli("verify", "server.pem", "--ca", "ca.pem", "--name", name) == 0
    out = capsys.readouterr().out
    assert f"server.pem: OK for {name}" in out
    assert "chain: CN=mail.example.test <- CN=Example Mail CA" in out


def test_verify_ok_without_a_name(server, capsys):
    assert cert_cli("verify", "server.pem", "--ca", "ca.pem") == 0
    assert "server.pem: OK\n" in capsys.readouterr().out


def test_verify_wrong_name(server, capsys):
    assert cert_cli("verify", "server.pem", "--ca", "ca.pem", "--name", "other.example.test") == 1
    err = capsys.readouterr().err
    assert "server.pem: verification failed: other.example.test is not a name of the certificate" in err
    assert "DNS:mail.example.test, DNS:localhost, IP:127.0.0.1, IP:::1" in err
    assert cert_cli("verify", "server.pem", "--ca", "ca.pem", "--name", "192.0.2.1") == 1


def test_verify_wrong_ca(server, capsys):
    assert cert_cli("ca", "init", "--cn", "Another CA", "--cert", "other.pem", "--key", "other.key") == 0
    assert cert_cli("verify", "server.pem", "--ca", "other.pem", "--name", "mail.example.test") == 1
    assert "no certificate in other.pem issued it (its issuer: CN=Example Mail CA)" in capsys.readouterr().err


def test_verify_impostor_ca_with_the_same_name(server, capsys):
    assert cert_cli("ca", "init", "--cn", "Example Mail CA", "--cert", "fake.pem", "--key", "fake.key") == 0
    assert cert_cli("verify", "server.pem", "--ca", "fake.pem", "--name", "mail.example.test") == 1
    assert ("server.pem: verification failed: the CA certificate named CN=Example Mail CA did not sign it"
            in capsys.readouterr().err)


def test_verify_expired(ca, capsys):
    Path("old.pem").write_bytes(certs.pem(expired_cert()))
    assert cert_cli("verify", "old.pem", "--ca", "ca.pem", "--name", "old.example.test") == 1
    err = capsys.readouterr().err
    assert "old.pem: verification failed: the certificate expired on " in err and "(9 days ago)" in err


def test_verify_self_signed_against_itself(capsys):
    assert cert_cli("selfsigned", "--cn", "self.example.test", "--cert", "self.pem", "--key", "self.key") == 0
    assert cert_cli("verify", "self.pem", "--ca", "self.pem", "--name", "self.example.test") == 0


def test_verify_client_certificate(ca, capsys):
    assert cert_cli("request", "--cn", "sat1.example.test", "--key", "c.key", "--csr", "c.csr") == 0
    assert cert_cli("sign", "--ca-cert", "ca.pem", "--ca-key", "ca.key", "--csr", "c.csr", "--out", "c.pem",
                    "--client") == 0
    assert cert_cli("verify", "c.pem", "--ca", "ca.pem") == 0
    assert cert_cli("verify", "c.pem", "--ca", "ca.pem", "--name", "sat1.example.test") == 0
    assert cert_cli("verify", "c.pem", "--ca", "ca.pem", "--name", "sat2.example.test") == 1


def test_verify_wildcard_matches_one_label_only(workdir):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = certs.build_ca(ca_key, "CA")
    csr = certs.build_csr(ec.generate_private_key(ec.SECP256R1()), "*.example.test", [])
    leaf = certs.issue(csr, ca_cert, ca_key)
    assert certs.verify([leaf], [ca_cert], "mail.example.test")
    for name in ("a.b.example.test", "example.test"):
        with pytest.raises(certs.CertError, match="is not a name of the certificate"):
            certs.verify([leaf], [ca_cert], name)


def test_verify_at_a_given_time(workdir):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = certs.build_ca(ca_key, "CA")
    leaf = certs.issue(certs.build_csr(ec.generate_private_key(ec.SECP256R1()), "h.example.test", []),
                       ca_cert, ca_key, days=30)
    soon = dt.datetime.now(UTC) + dt.timedelta(days=29)
    assert certs.verify([leaf], [ca_cert], "h.example.test", now=soon)
    with pytest.raises(certs.CertError, match="expired"):
        certs.verify([leaf], [ca_cert], "h.example.test", now=soon + dt.timedelta(days=2))
    with pytest.raises(certs.CertError, match="not valid before"):
        certs.verify([leaf], [ca_cert], "h.example.test", now=soon - dt.timedelta(days=60))


def test_verify_through_an_intermediate_in_the_file(workdir):
    """A leaf followed by its issuer in FILE: the path is built through it (here the
    intermediate is a pathlen-0 CA, which may not issue another CA, so the path must fail)."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = certs.build_ca(root_key, "Root")
    mid_key = ec.generate_private_key(ec.SECP256R1())
    mid_csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Mid")])).sign(mid_key, hashes.SHA256())
    mid = (x509.CertificateBuilder().subject_name(mid_csr.subject).issuer_name(root.subject)
           .public_key(mid_key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(root.not_valid_before_utc).not_valid_after(root.not_valid_after_utc)
           .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
           .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
           .add_extension(x509.SubjectKeyIdentifier.from_public_key(mid_key.public_key()), critical=False)
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
           .sign(root_key, hashes.SHA256()))
    leaf = certs.issue(certs.build_csr(ec.generate_private_key(ec.SECP256R1()), "h.example.test", []), mid, mid_key)
    with pytest.raises(certs.CertError):
        certs.verify([leaf, mid], [root], "h.example.test")  # root has pathlen 0: no intermediate allowed
    assert [c.subject for c in certs.verify([leaf, mid], [mid], "h.example.test")] == [leaf.subject, mid.subject]


def test_verify_errors_name_the_files(server, capsys):
    assert cert_cli("verify", "server.pem", "--ca", "nope.pem") == 1
    assert "cannot read certificate nope.pem" in capsys.readouterr().err


# --- fingerprints and names, directly -----------------------------------------------------------


def test_fingerprint_forms():
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certs.build_selfsigned(key, "h.example.test", [])
    fp = certs.fingerprint(cert)
    assert len(fp) == 32 * 3 - 1 and fp == fp.upper() and fp.count(":") == 31
    assert fp == colon_sha256(cert.public_bytes(serialization.Encoding.DER))
    renewed = certs.build_selfsigned(key, "h.example.test", [], days=10)
    assert certs.fingerprint(renewed) != fp
    assert certs.pubkey_fingerprint(renewed.public_key()) == certs.pubkey_fingerprint(cert.public_key())


def test_parse_name():
    assert certs.parse_name("[2001:db8::1]") == x509.IPAddress(ipaddress.ip_address("2001:db8::1"))
    assert certs.parse_name("Host.Example.") == x509.DNSName("host.example")
    assert certs.parse_name("*.example.test") == x509.DNSName("*.example.test")
    for bad in ("*.test", "a.*.test", "", "a" * 250 + ".test"):
        with pytest.raises(certs.CertError):
            certs.parse_name(bad)


def test_every_subcommand_has_help(capsys):
    for args in (["selfsigned"], ["ca", "init"], ["request"], ["sign"], ["show"], ["verify"]):
        with pytest.raises(SystemExit) as exc:
            cert_cli(*args, "--help")
        assert exc.value.code == 0
        assert "usage: smarthost cert " + " ".join(args) in capsys.readouterr().out


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_a_missing_directory_is_named(force, capsys):
    assert cert_cli("selfsigned", "--cn", "h.example.test", "--cert", "c.pem", "--key", "nodir/k.pem", *force) == 1
    assert "cannot create nodir/k.pem: No such file or directory" in capsys.readouterr().err
