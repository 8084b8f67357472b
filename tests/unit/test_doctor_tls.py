"""Doctor: the server's certificate and key (real certificates made with smarthost.certs)."""

from __future__ import annotations

import datetime as dt

import pytest
from test_doctor_support import HOST, ConfDir, by_check, one

from smarthost import certs
from smarthost.doctor import ERROR, WARNING

NOW = dt.datetime.now(dt.timezone.utc)


@pytest.fixture
def conf(tmp_path):
    return ConfDir(tmp_path)


def test_a_fresh_selfsigned_setup_has_no_findings(conf):
    assert conf.findings() == []


def test_key_of_another_certificate(conf):
    # The trap: a second "cert selfsigned" run wrote other.pem/other-key.pem; main.cf mixes them.
    certs.selfsigned(HOST, [], conf.dir / "other.pem", conf.dir / "other-key.pem")
    conf.set(smtpd_tls_key_file=str(conf.dir / "other-key.pem"))
    found = one(conf.findings(), "tls.key-mismatch")
    assert (found.severity, found.file, found.line) == (ERROR, conf.main_cf, conf.line_of("smtpd_tls_key_file"))
    assert "does not belong to the certificate" in found.message
    assert str(conf.cert) in found.message and "other-key.pem" in found.message
    # The server itself would refuse to start; that is the same problem, said once.
    assert by_check(conf.findings(), "start") == []
    conf.set(smtpd_tls_key_file=str(conf.key))
    assert conf.findings() == []


def test_expired_and_expiring_certificates(conf):
    key = certs.load_private_key(conf.key)
    expired = certs.build_selfsigned(key, HOST, [], days=30, now=NOW - dt.timedelta(days=40))
    conf.cert.write_bytes(certs.pem(expired))
    found = one(conf.findings(), "tls.expiry")
    assert found.severity is ERROR and "expired on" in found.message
    assert found.line == conf.line_of("smtpd_tls_cert_file")
    assert f"smarthost cert selfsigned --cn {HOST}" in found.fix and "--force" in found.fix

    soon = certs.build_selfsigned(key, HOST, [], days=20, now=NOW)
    conf.cert.write_bytes(certs.pem(soon))
    found = one(conf.findings(), "tls.expiry")
    assert found.severity is WARNING and "in 19 day(s)" in found.message

    fine = certs.build_selfsigned(key, HOST, [], days=31, now=NOW)
    conf.cert.write_bytes(certs.pem(fine))
    assert conf.findings() == []


def test_private_key_readable_by_others(conf):
    conf.key.chmod(0o644)  # what "openssl genrsa -out key.pem" with umask 022 leaves
    found = one(conf.findings(), "tls.key-mode")
    assert found.severity is ERROR and "mode 0644" in found.message
    assert found.fix == f"chmod 600 {conf.key}"
    assert by_check(conf.findings(), "start") == []
    conf.key.chmod(0o600)
    assert conf.findings() == []


def test_chain_does_not_verify_against_cafile(conf, tmp_path):
    ca_key = certs.generate_key()
    ca = certs.build_ca(ca_key, "Example Mail CA")
    other_key = certs.generate_key()
    other_ca = certs.build_ca(other_key, "Some Other CA")
    (conf.dir / "ca.pem").write_bytes(certs.pem(other_ca))
    leaf_key = certs.load_private_key(conf.key)
    csr = certs.build_csr(leaf_key, HOST, [])
    conf.cert.write_bytes(certs.pem(certs.issue(csr, ca, ca_key)))
    conf.set(smtpd_tls_CAfile=str(conf.dir / "ca.pem"))
    found = one(conf.findings(), "tls.chain")
    assert found.severity is ERROR and found.line == conf.line_of("smtpd_tls_CAfile")
    assert "does not verify against smtpd_tls_CAfile" in found.message and "issued it" in found.message
    (conf.dir / "ca.pem").write_bytes(certs.pem(ca))
    assert conf.findings() == []


def test_myhostname_not_in_the_certificate(conf):
    certs.selfsigned("localhost", [], conf.cert, conf.key, force=True)  # the demo's certificate, kept
    found = one(conf.findings(), "tls.name")
    assert found.severity is ERROR and found.line == conf.line_of("smtpd_tls_cert_file")
    assert f"myhostname {HOST} is not a name" in found.message and "DNS:localhost" in found.message
    assert f"--cn {HOST}" in found.fix
    certs.selfsigned("*.example.com", [], conf.cert, conf.key, force=True)  # a wildcard covers it
    assert conf.findings() == []


def test_missing_certificate_file(conf):
    conf.cert.unlink()
    found = one(conf.findings(), "tls.certificate")
    assert found.severity is ERROR and str(conf.cert) in found.message
    assert by_check(conf.findings(), "start") == []


def test_encrypt_on_port_25(conf):
    conf.master("smtp inet n - n - - smtpd\n  -o smtpd_tls_security_level=encrypt\n")
    found = one(conf.findings(), "tls.encrypt-on-25")
    assert found.severity is WARNING and (found.file, found.line) == (str(conf.dir / "master.cf"), 1)
    conf.master("smtp inet n - n - - smtpd\nsubmission inet n - n - - smtpd\n  -o smtpd_tls_security_level=encrypt\n")
    assert conf.findings() == []


def test_smtps_service_without_wrapper_mode(conf):
    conf.master("smtps inet n - n - - smtpd\n")
    found = one(conf.findings(), "tls.465-without-wrappermode")
    assert found.severity is ERROR and found.line == 1
    assert "-o smtpd_tls_wrappermode=yes" in found.fix
    conf.master("smtps inet n - n - - smtpd\n  -o smtpd_tls_wrappermode=yes\n")
    assert conf.findings() == []


def test_certificate_and_key_in_one_file(conf):
    combined = conf.dir / "combined.pem"
    combined.write_bytes(conf.cert.read_bytes() + conf.key.read_bytes())
    combined.chmod(0o600)
    conf.unset("smtpd_tls_key_file").set(smtpd_tls_cert_file=str(combined))
    assert conf.findings() == []
    combined.chmod(0o644)
    found = one(conf.findings(), "tls.key-mode")
    assert found.line == conf.line_of("smtpd_tls_cert_file")  # the key comes from that line
