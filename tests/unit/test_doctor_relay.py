"""Doctor: restrictions and networks that make an open relay."""

from __future__ import annotations

import ipaddress

import pytest
from test_doctor_support import ConfDir, by_check, one

from smarthost.doctor import ERROR, HINT, WARNING
from smarthost.doctor.relay import too_wide


@pytest.fixture
def conf(tmp_path):
    return ConfDir(tmp_path)


def test_permit_before_reject_unauth_destination_is_an_open_relay(conf):
    # A pre-2.10 howto: no relay restrictions, and a "permit" slipped in before the guard.
    conf.set(smtpd_relay_restrictions="",
             smtpd_recipient_restrictions="permit_mynetworks, permit_sasl_authenticated, permit, "
                                          "reject_unauth_destination")
    found = one(conf.findings(), "relay.open-relay")
    assert (found.severity, found.line) == (ERROR, conf.line_of("smtpd_recipient_restrictions"))
    assert "open relay" in found.message and "permit in smtpd_recipient_restrictions" in found.message
    assert found.fix == ("smtpd_recipient_restrictions = permit_mynetworks, permit_sasl_authenticated, "
                         "reject_unauth_destination, permit")
    conf.set(smtpd_recipient_restrictions=found.fix.partition(" = ")[2])
    assert conf.findings() == []


def test_permit_before_the_guard_in_one_list_only(conf):
    # The default relay restrictions still refuse strangers: a warning, not an open relay.
    conf.set(smtpd_recipient_restrictions="permit, reject_unauth_destination")
    found = one(conf.findings(), "relay.permit-before-guard")
    assert found.severity is WARNING and by_check(conf.findings(), "relay.open-relay") == []
    conf.set(smtpd_recipient_restrictions="reject_unauth_destination, permit")
    assert conf.findings() == []


def test_no_relay_guard_at_all(conf):
    conf.set(smtpd_relay_restrictions="permit_mynetworks, permit_sasl_authenticated")
    found = one(conf.findings(), "relay.no-guard")
    assert (found.severity, found.line) == (ERROR, conf.line_of("smtpd_relay_restrictions"))
    assert "reject_unauth_destination" in found.fix
    assert by_check(conf.findings(), "start") == []  # the same reason the server refuses to start
    conf.set(smtpd_relay_restrictions=found.fix.partition(" = ")[2])
    assert conf.findings() == []


@pytest.mark.parametrize("network", ["0.0.0.0/0", "[::]/0", "[::ffff:0.0.0.0]/96", "0.0.0.0/1"])
def test_mynetworks_that_trust_the_internet(conf, network):
    conf.set(mynetworks=f"127.0.0.0/8 {network}")
    findings = conf.findings()
    found = one(findings, "relay.mynetworks")
    assert (found.severity, found.line) == (ERROR, conf.line_of("mynetworks"))
    assert network in found.message
    relay = by_check(findings, "relay.open-relay")
    if network != "0.0.0.0/1":  # 203.0.113.45 is in the upper half
        assert "permit_mynetworks in smtpd_relay_restrictions" in relay[0].message
    conf.set(mynetworks="127.0.0.0/8 [::1]/128 192.168.0.0/16 [fd00::]/8")
    assert conf.findings() == []


def test_a_public_slash_8_and_a_wide_public_block(conf):
    conf.set(mynetworks="127.0.0.0/8 8.0.0.0/8 198.18.0.0/15 193.0.0.0/16")
    found = by_check(conf.findings(), "relay.mynetworks")
    assert [(f.severity, f.message.split()[2]) for f in found] == [(ERROR, "8.0.0.0/8"), (WARNING, "193.0.0.0/16")]


def test_mynetworks_from_a_file_points_at_its_line(conf):
    networks = conf.dir / "mynetworks"
    networks.write_text("# trusted\n127.0.0.0/8\n0.0.0.0/0\n")
    conf.set(mynetworks=str(networks))
    found = one(conf.findings(), "relay.mynetworks")
    assert (found.file, found.line) == (str(networks), 3)


def test_mynetworks_style_subnet(conf):
    conf.unset("mynetworks").set(mynetworks_style="subnet")
    found = one(conf.findings(), "relay.mynetworks-style")
    assert (found.severity, found.line) == (WARNING, conf.line_of("mynetworks_style"))
    assert "mynetworks = 127.0.0.0/8 [::1]/128" in found.fix
    conf.set(mynetworks="127.0.0.0/8 192.168.1.0/24")
    found = one(conf.findings(), "relay.mynetworks-style")
    assert found.severity is HINT and "ignored" in found.message
    conf.unset("mynetworks_style")
    assert conf.findings() == []


@pytest.mark.parametrize("entry", ["*", "*.com", "com", ".net", "static:yes"])
def test_relay_domains_that_match_everything(conf, entry):
    conf.set(relay_domains=f"example.org {entry}")
    found = one(conf.findings(), "relay.relay-domains")
    assert found.severity is ERROR and entry in found.message
    conf.set(relay_domains="example.org, .example.org")
    assert conf.findings() == []


def test_static_relay_domains_is_caught_by_the_stranger_too(conf):
    conf.set(relay_domains="static:yes")
    assert by_check(conf.findings(), "relay.open-relay")


@pytest.mark.parametrize(("network", "verdict"), [
    ("10.0.0.0/8", None), ("192.168.0.0/16", None), ("fe80::/10", None), ("127.0.0.0/8", None),
    ("192.0.2.0/24", None), ("198.51.100.0/24", None), ("2001:db8::/48", None),
    ("0.0.0.0/0", "error"), ("::/0", "error"), ("12.0.0.0/8", "error"), ("2000::/3", "error"),
    ("12.34.0.0/16", "warning"), ("2a00:1450::/32", "warning"), ("12.34.56.0/24", None),
])
def test_too_wide(network, verdict):
    result = too_wide(ipaddress.ip_network(network))
    assert (result[0] if result else None) == verdict
