"""Doctor: restrictions and networks that make an open relay."""

from __future__ import annotations

import ipaddress

import pytest
from test_doctor_support import INTERFACES, ConfDir, by_check, one

from smarthost.doctor import ERROR, HINT, WARNING
from smarthost.doctor.relay import local_networks, too_wide


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
    conf.set(mynetworks="127.0.0.0/8 [::1]/128 192.168.1.0/24 [fd00:1::]/64")
    assert conf.findings() == []


def test_a_public_slash_8_and_a_wide_public_block(conf):
    conf.set(mynetworks="127.0.0.0/8 8.0.0.0/8 192.168.1.0/24 193.0.0.0/16")
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


@pytest.mark.parametrize("network", ["10.0.0.0/8", "192.168.0.0/16", "172.16.0.0/12", "[fd00::]/8", "[fd00::]/48"])
def test_a_private_range_wider_than_this_machines_networks(conf, network):
    # The host is on 192.168.1.0/24 and fd00:1::/64 (INTERFACES); a howto's 10.0.0.0/8 trusts far more.
    conf.set(mynetworks=f"127.0.0.0/8 {network}")
    found = one(conf.findings(), "relay.mynetworks")
    assert (found.severity, found.line) == (WARNING, conf.line_of("mynetworks"))
    assert network in found.message and "wider than this machine's own networks" in found.message
    assert ("[fd00:1::]/64" if "[" in network else "192.168.1.0/24") in found.message
    assert "mynetworks = 127.0.0.0/8 [::1]/128 192.168.1.0/24 [fd00:1::]/64" in found.fix
    conf.set(mynetworks=found.fix.partition(": ")[2].partition(";")[0].partition(" = ")[2])
    assert conf.findings() == []


@pytest.mark.parametrize("network", ["192.168.1.0/24", "192.168.1.128/25", "192.168.1.7/32", "[fd00:1::]/64",
                                     "10.8.0.0/24", "[fe80::]/10"])
def test_a_private_range_inside_or_beside_this_machines_networks_is_fine(conf, network):
    # Its own LAN or a part of it; a remote office's /24 over a VPN (no wider than ours); link-local.
    conf.set(mynetworks=f"127.0.0.0/8 {network}")
    assert conf.findings() == []


@pytest.mark.parametrize(("network", "verdict"), [
    ("10.0.0.0/8", "warning"), ("192.168.0.0/16", "warning"), ("192.168.1.0/24", None), ("10.1.2.0/24", None),
    ("[::ffff:10.0.0.0]/104", "warning"), ("fd00::/8", "warning"), ("fd00:1::/64", None),
    ("0.0.0.0/0", "error"), ("12.0.0.0/8", "error"), ("12.34.56.0/24", None),
])
def test_too_wide_against_the_local_networks(network, verdict):
    net = ipaddress.ip_network(network.replace("[", "").replace("]", ""))
    result = too_wide(net, INTERFACES)
    assert (result[0] if result else None) == verdict


def test_without_known_local_networks_private_ranges_are_not_judged():
    loopback_only = tuple(ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128"))
    assert too_wide(ipaddress.ip_network("10.0.0.0/8"), loopback_only) is None


def test_this_machines_networks_are_read():
    nets = local_networks()
    assert ipaddress.ip_network("127.0.0.0/8") in nets and ipaddress.ip_network("::1/128") in nets
    assert all(isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network)) for n in nets)


def test_the_interface_readers(tmp_path):
    proc = tmp_path / "net"
    proc.mkdir()
    (proc / "route").write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"   # default via 192.168.1.1
        "eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"   # 192.168.1.0/24
        "tun0\t0000080A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"   # 10.8.0.0/16
        "eth0\t0000000A\t0101A8C0\t0003\t0\t0\t0\t000000FF\t0\t0\t0\n")  # 10.0.0.0/8 via a router
    (proc / "if_inet6").write_text(
        "00000000000000000000000000000001 01 80 10 80       lo\n"
        "fd000001000000000000000000000005 02 40 00 80     eth0\n")
    assert [str(n) for n in local_networks(proc)] == ["127.0.0.0/8", "::1/128", "fd00:1::/64", "192.168.1.0/24",
                                                      "10.8.0.0/16"]
    (proc / "route").unlink()
    (proc / "if_inet6").unlink()
    nets = local_networks(proc)  # falls back to `ip -j addr` where iproute2 is installed, else loopback
    assert nets[:2] == INTERFACES[:2]
