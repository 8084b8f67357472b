"""TLS settings of main.cf and master.cf reach a real handshake: a real server on loopback,
Python ssl clients that offer only what a test needs, and what the client and the admin see."""

from __future__ import annotations

import smtplib
import ssl

import pytest

from peers import free_port, wait_for_text
from test_server import MSG, Raw, client_ctx


def _client(instance, *, version: ssl.TLSVersion | None = None, ciphers: str | None = None) -> ssl.SSLContext:
    ctx = client_ctx(instance)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


def starttls(port: int, ctx: ssl.SSLContext) -> tuple[str, str] | None:
    """STARTTLS on ``port`` with ``ctx``: (protocol, cipher) of the session, None if refused."""
    r = Raw(port)
    try:
        assert r.reply()[0] == 220
        code, text = r.cmd("EHLO client.example")
        assert code == 250 and "STARTTLS" in text.split("\n")
        assert r.cmd("STARTTLS")[0] == 220
        try:
            r.starttls(ctx)
        except (ssl.SSLError, ConnectionResetError):
            return None
        assert r.cmd("EHLO client.example")[0] == 250  # the session goes on inside TLS
        return r.sock.version(), r.sock.cipher()[0]
    finally:
        r.close()


def implicit(port: int, ctx: ssl.SSLContext) -> tuple[str, str] | None:
    """A wrapper-mode (smtps) connection: (protocol, cipher), None if the handshake fails."""
    try:
        r = Raw(port, wrap=ctx)
    except (ssl.SSLError, ConnectionResetError):
        return None
    try:
        assert r.reply()[0] == 220
        return r.sock.version(), r.sock.cipher()[0]
    finally:
        r.close()


TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize("protocols", [">=TLSv1.3", "!SSLv2, !SSLv3, !TLSv1, !TLSv1.1, !TLSv1.2", "TLSv1.3"])
def test_protocols_refuse_a_tls12_client_on_starttls(smarthost, protocols):
    s = smarthost({"smtpd_tls_protocols": protocols}, tls=True)
    assert starttls(s.ports[0], _client(s, version=TLS12)) is None
    assert starttls(s.ports[0], _client(s, version=TLS13))[0] == "TLSv1.3"


def test_the_exclusion_syntax_still_allows_what_it_does_not_exclude(smarthost):
    s = smarthost({"smtpd_tls_protocols": "!SSLv2, !SSLv3, !TLSv1, !TLSv1.1"}, tls=True)
    assert starttls(s.ports[0], _client(s, version=TLS12))[0] == "TLSv1.2"
    assert starttls(s.ports[0], _client(s, version=TLS13))[0] == "TLSv1.3"


def three_services(smarthost, main_cf: dict[str, str]):
    """One server with a ``may``, an ``encrypt`` and a wrapper-mode service; their ports."""
    may, encrypt, wrapper = free_port(), free_port(), free_port()
    master_cf = (f"127.0.0.1:{may} inet n - n - - smtpd\n"
                 f"127.0.0.1:{encrypt} inet n - n - - smtpd\n  -o smtpd_tls_security_level=encrypt\n"
                 f"127.0.0.1:{wrapper} inet n - n - - smtpd\n  -o smtpd_tls_wrappermode=yes\n")
    return smarthost(main_cf, master_cf=master_cf, tls=True), (may, encrypt, wrapper)


def test_mandatory_protocols_apply_to_encrypt_and_wrappermode_not_to_may(smarthost):
    s, (may, encrypt, wrapper) = three_services(smarthost, {"smtpd_tls_mandatory_protocols": ">=TLSv1.3"})
    old = _client(s, version=TLS12)
    assert starttls(may, old)[0] == "TLSv1.2"
    assert starttls(encrypt, old) is None
    assert implicit(wrapper, old) is None
    new = _client(s, version=TLS13)
    assert starttls(encrypt, new)[0] == "TLSv1.3"
    assert implicit(wrapper, new)[0] == "TLSv1.3"


def test_opportunistic_protocols_do_not_apply_to_mandatory_services(smarthost):
    s, (may, encrypt, wrapper) = three_services(smarthost, {"smtpd_tls_protocols": ">=TLSv1.3"})
    old = _client(s, version=TLS12)
    assert starttls(may, old) is None
    assert starttls(encrypt, old)[0] == "TLSv1.2"
    assert implicit(wrapper, old)[0] == "TLSv1.2"


def test_exclude_ciphers_refuse_a_client_offering_only_excluded_ones(smarthost):
    s = smarthost({"smtpd_tls_exclude_ciphers": "AES256, CHACHA20"}, tls=True)
    assert starttls(s.ports[0], _client(s, version=TLS12, ciphers="AES256")) is None
    assert starttls(s.ports[0], _client(s, version=TLS12, ciphers="AES256-GCM-SHA384:ECDHE-ECDSA-AES256-GCM-SHA384")) is None
    version, cipher = starttls(s.ports[0], _client(s, version=TLS12, ciphers="AES128:AES256"))
    assert version == "TLSv1.2" and "AES128" in cipher


def test_cipher_grades_per_security_level(smarthost):
    # OpenSSL 3 has no MEDIUM ciphers left, so high and medium offer the same TLS 1.2 suites;
    # the null grade shows which of the two grade parameters a service reads.
    s, (may, encrypt, wrapper) = three_services(
        smarthost, {"smtpd_tls_ciphers": "high", "smtpd_tls_mandatory_ciphers": "null"})
    strong = _client(s, version=TLS12, ciphers="HIGH")
    assert starttls(may, strong)[0] == "TLSv1.2"
    assert starttls(encrypt, strong) is None
    assert implicit(wrapper, strong) is None
    s2, (may2, encrypt2, _) = three_services(
        smarthost, {"smtpd_tls_ciphers": "null", "smtpd_tls_mandatory_ciphers": "medium"})
    strong2 = _client(s2, version=TLS12, ciphers="HIGH")
    assert starttls(may2, strong2) is None
    assert starttls(encrypt2, strong2)[0] == "TLSv1.2"


def test_mandatory_exclude_ciphers_apply_only_to_mandatory_tls(smarthost):
    s, (may, encrypt, wrapper) = three_services(smarthost, {"smtpd_tls_mandatory_exclude_ciphers": "AES128"})
    only_aes128 = _client(s, version=TLS12, ciphers="AES128")
    assert "AES128" in starttls(may, only_aes128)[1]
    assert starttls(encrypt, only_aes128) is None
    assert implicit(wrapper, only_aes128) is None
    assert "AES256" in implicit(wrapper, _client(s, version=TLS12, ciphers="AES128:AES256"))[1]


def test_security_level_none_with_a_certificate_offers_no_starttls(smarthost):
    s = smarthost({"smtpd_tls_security_level": "none"}, tls=True)
    r = Raw(s.ports[0])
    assert r.reply()[0] == 220
    code, text = r.cmd("EHLO client.example")
    assert code == 250 and "STARTTLS" not in text.split("\n")
    code, _ = r.cmd("STARTTLS")
    assert code in (502, 454)
    assert r.cmd("MAIL FROM:<a@example.org>")[0] == 250  # plaintext mail goes on
    r.close()


def _session_log(s) -> tuple[str, bytes]:
    with smtplib.SMTP("127.0.0.1", s.ports[0], timeout=10) as c:
        c.starttls(context=client_ctx(s))
        c.ehlo("client.example")
        c.mail("a@example.org")
        c.rcpt("bob@example.test")
        _, text = c.data(MSG)
    qid = text.decode().rsplit(" ", 1)[-1]
    wait_for_text(s.maillog, r"disconnect from localhost\[127\.0\.0\.1\]")
    return s.log_text(), s.read_body(qid)


def test_loglevel_0_logs_no_tls_line_and_received_header_no_has_no_tls_facts(smarthost):
    s = smarthost({"smtpd_tls_loglevel": "0", "smtpd_tls_received_header": "no"}, tls=True)
    log, body = _session_log(s)
    assert "TLS connection established" not in log
    received = body.split(b"\r\n\tby ", 1)[0]
    assert b"using" not in received and b"TLSv1" not in received
    assert b"with ESMTPS id" in body  # the protocol name still says TLS (RFC 3848)


def test_loglevel_1_logs_protocol_and_cipher_and_received_header_yes_has_them(smarthost):
    s = smarthost({"smtpd_tls_loglevel": "1", "smtpd_tls_received_header": "yes"}, tls=True)
    log, body = _session_log(s)
    line = next(x for x in log.splitlines() if "TLS connection established" in x)
    assert "Anonymous TLS connection established from localhost[127.0.0.1]: TLSv1.3 with cipher TLS_" in line
    assert "bits)" in line
    assert b"\r\n\t(using TLSv1.3 with cipher TLS_" in body.split(b"\r\n\tby ", 1)[0]
