"""Client TLS policy: levels, smtp_tls_policy_maps, and which certificate names a level accepts."""

from __future__ import annotations

import ssl

import pytest
import trustme

from smarthost.outbound.routing import parse_nexthop
from smarthost.outbound.tlspolicy import (
    ClientTLSSettings,
    Level,
    TLSPolicies,
    certificate_matches,
    policy_keys,
)
from smarthost.tables import open_table
from smarthost.tls import TLSConfigError
from tls_handshake import handshake  # tests/unit


def cert(*dns: str, ips: tuple[str, ...] = (), cn: str | None = None) -> dict:
    sans = tuple(("DNS", d) for d in dns) + tuple(("IP Address", i) for i in ips)
    subject = ((("commonName", cn),),) if cn else ()
    return {"subjectAltName": sans, "subject": subject}


@pytest.mark.parametrize("names, patterns, ok", [
    (("mail.example.com",), ["mail.example.com"], True),
    (("MAIL.Example.COM.",), ["mail.example.com"], True),
    (("other.example.com",), ["mail.example.com"], False),
    (("*.example.com",), ["mail.example.com"], True),
    (("*.example.com",), ["a.b.example.com"], False),  # one label only
    (("*.example.com",), ["example.com"], False),
    (("mx1.example.com",), [".example.com"], True),  # dot-nexthop: any subdomain
    (("example.com",), [".example.com"], False),
    (("*.example.com",), [".example.com"], True),
    (("m*.example.com",), ["mail.example.com"], False),  # partial wildcards are not honoured
    (("evil.com",), ["mail.example.com", ".example.com"], False),
])
def test_certificate_name_matching(names, patterns, ok) -> None:
    assert certificate_matches(cert(*names), patterns) is ok


def test_ip_addresses_match_ip_subject_alt_names_only() -> None:
    assert certificate_matches(cert(ips=("127.0.0.1",)), ["127.0.0.1"])
    assert not certificate_matches(cert("127.0.0.1"), ["127.0.0.1"])


def test_common_name_counts_only_without_dns_names() -> None:
    assert certificate_matches(cert(cn="mail.example.com"), ["mail.example.com"])
    assert not certificate_matches(cert("other.example.com", cn="mail.example.com"), ["mail.example.com"])


def test_policy_keys_follow_the_nexthop_as_written() -> None:
    assert policy_keys(parse_nexthop("[mail.example.com]:587")) == ["[mail.example.com]:587"]
    assert policy_keys(parse_nexthop("example.com")) == ["example.com", ".com"]
    assert policy_keys(parse_nexthop("mx.sub.example.com")) == ["mx.sub.example.com", ".sub.example.com",
                                                                ".example.com", ".com"]


def test_policy_map_overrides_the_level_and_names() -> None:
    table = open_table("inline:{ { [mail.example.com]:587 = secure match=example.com:.example.com }, "
                       "{ .example.org = encrypt } }")
    policies = TLSPolicies(ClientTLSSettings(level=Level.MAY), [table])
    secure = policies.for_nexthop(parse_nexthop("[mail.example.com]:587"))
    assert secure.level is Level.SECURE and secure.match == ("example.com", ".example.com")
    assert secure.context.verify_mode == ssl.CERT_REQUIRED
    assert policies.for_nexthop(parse_nexthop("mx.example.org")).level is Level.ENCRYPT
    default = policies.for_nexthop(parse_nexthop("[other.example]"))
    assert default.level is Level.MAY and default.context.verify_mode == ssl.CERT_NONE


def test_default_names_per_level() -> None:
    policies = TLSPolicies(ClientTLSSettings(level=Level.SECURE))
    policy = policies.for_nexthop(parse_nexthop("example.com"))
    assert policy.names_for("mx1.example.com", "example.com") == ["example.com", ".example.com"]
    verify = TLSPolicies(ClientTLSSettings(level=Level.VERIFY)).for_nexthop(parse_nexthop("example.com"))
    assert verify.names_for("mx1.example.com", "example.com") == ["mx1.example.com"]


def test_none_has_no_context_and_unsupported_levels_fail_at_start() -> None:
    assert TLSPolicies(ClientTLSSettings(level=Level.NONE)).for_nexthop(parse_nexthop("x.example")).context is None
    with pytest.raises(TLSConfigError, match="smtp_tls_security_level: TLS level dane-only is not supported"):
        ClientTLSSettings.from_params({"smtp_tls_security_level": "dane-only"})
    assert ClientTLSSettings.from_params({"smtp_tls_security_level": "dane"}).level is Level.MAY


def _handshake(client_ctx: ssl.SSLContext, server_cipher: str) -> str | None:
    """A real TLS 1.2 handshake against a server offering only ``server_cipher``: the cipher
    agreed on, or None when the handshake failed."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    trustme.CA().issue_cert("mx.example.org").configure_cert(server_ctx)
    server_ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # TLS 1.3 suites are not cipher-list ciphers
    server_ctx.set_ciphers(server_cipher)
    try:
        return handshake(server_ctx, client_ctx, server_hostname="mx.example.org").cipher()[0]
    except ssl.SSLError:
        return None


def test_mandatory_exclude_ciphers_apply_at_mandatory_levels_only() -> None:
    settings = ClientTLSSettings.from_params({"smtp_tls_mandatory_exclude_ciphers": ["AES128"]})
    cipher = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256"
    policies = TLSPolicies(settings)
    assert _handshake(policies.for_nexthop(parse_nexthop("x.example")).context, cipher) is not None  # may
    encrypt = TLSPolicies(ClientTLSSettings.from_params({
        "smtp_tls_security_level": "encrypt", "smtp_tls_mandatory_exclude_ciphers": ["AES128"]}))
    assert _handshake(encrypt.for_nexthop(parse_nexthop("x.example")).context, cipher) is None
    assert _handshake(encrypt.for_nexthop(parse_nexthop("x.example")).context,
                      "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES256-GCM-SHA384") is not None


def test_exclude_ciphers_apply_at_every_level() -> None:
    settings = ClientTLSSettings.from_params({"smtp_tls_exclude_ciphers": ["AES128"]})
    context = TLSPolicies(settings).for_nexthop(parse_nexthop("x.example")).context
    assert _handshake(context, "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256") is None


def test_policy_map_exclude_replaces_the_mandatory_exclusions() -> None:
    table = open_table("inline:{ { [relay.example]:587 = encrypt exclude=AES256 }, { [plain.example] = may exclude=AES128 } }")
    settings = ClientTLSSettings.from_params({"smtp_tls_mandatory_exclude_ciphers": ["AES128"]})
    policies = TLSPolicies(settings, [table])
    relay = policies.for_nexthop(parse_nexthop("[relay.example]:587")).context
    assert _handshake(relay, "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256") is not None
    assert _handshake(relay, "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES256-GCM-SHA384") is None
    plain = policies.for_nexthop(parse_nexthop("[plain.example]")).context  # not mandatory: no effect
    assert _handshake(plain, "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256") is not None
    with pytest.raises(TLSConfigError, match="unsupported attribute 'tafile=x'; use match=, protocols=, ciphers= or exclude="):
        TLSPolicies(settings, [open_table("inline:{ { [a.example] = encrypt tafile=x } }")]).for_nexthop(
            parse_nexthop("[a.example]"))
