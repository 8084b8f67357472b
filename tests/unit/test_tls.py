"""TLS policy from configuration: protocol ranges, key file permissions, clear errors."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from smarthost.config import load
from tls_handshake import handshake  # tests/unit
from smarthost.tls import TLSConfigError, protocol_range, server_context


@pytest.mark.parametrize(
    ("spec", "low", "high"),
    [
        (">=TLSv1.2", ssl.TLSVersion.TLSv1_2, None),
        ("!SSLv2, !SSLv3, !TLSv1, !TLSv1.1", ssl.TLSVersion.TLSv1_2, None),
        ("TLSv1.2", ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2),
        (">=TLSv1 <=TLSv1.2", ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_2),
    ],
)
def test_protocol_ranges_in_both_postfix_syntaxes(spec, low, high):
    assert protocol_range(spec, "smtpd_tls_protocols") == (low, high)


def test_a_list_that_excludes_everything_is_an_error():
    with pytest.raises(TLSConfigError, match="excludes every protocol"):
        protocol_range("!TLSv1 !TLSv1.1 !TLSv1.2 !TLSv1.3 !SSLv3", "smtpd_tls_protocols")


def _config(tmp_path: Path, key_mode: int) -> object:
    cert = trustme.CA().issue_cert("mx.example.test")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    (tmp_path / "key.pem").chmod(key_mode)
    (tmp_path / "main.cf").write_text(
        f"smtpd_tls_cert_file = {tmp_path}/cert.pem\nsmtpd_tls_key_file = {tmp_path}/key.pem\n"
    )
    return load(tmp_path).params


def test_default_context_is_tls12_or_later(tmp_path):
    ctx = server_context(_config(tmp_path, 0o600), mandatory=False)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_a_key_readable_by_others_is_refused_with_the_fix(tmp_path):
    with pytest.raises(TLSConfigError) as err:
        server_context(_config(tmp_path, 0o644), mandatory=False)
    assert f"run chmod 600 {tmp_path}/key.pem" in str(err.value)


def test_a_key_that_does_not_match_the_certificate_is_named(tmp_path):
    params = _config(tmp_path, 0o600)
    other = trustme.CA().issue_cert("other.example.test")
    other.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    with pytest.raises(TLSConfigError, match="check that the key belongs to the certificate"):
        server_context(params, mandatory=False)


def test_no_certificate_means_no_tls(tmp_path):
    (tmp_path / "main.cf").write_text("")
    assert server_context(load(tmp_path).params, mandatory=False) is None


def _pump_handshake(server: ssl.SSLContext, client: ssl.SSLContext, session=None) -> ssl.SSLObject:
    """A whole TLS handshake in memory; returns the client's side once it has read the tickets."""
    cli = handshake(server, client, session=session)
    with pytest.raises(ssl.SSLWantReadError):
        cli.read(1)  # takes in the NewSessionTicket messages; no application data
    return cli


def test_a_tls13_client_can_resume_its_session_with_the_ticket_it_got(tmp_path):
    server = server_context(_config(tmp_path, 0o600), mandatory=False)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    first = _pump_handshake(server, client)
    assert first.version() == "TLSv1.3" and not first.session_reused
    second = _pump_handshake(server, client, first.session)
    assert second.session_reused
