"""NetworkList: mynetworks syntax, matching (IPv4, IPv6, mapped, negation), files, tables, errors."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smarthost.netaddr import NetworkList, parse_network
from smarthost.tables import open_table


@pytest.mark.parametrize(
    ("entries", "client", "expected"),
    [
        (["127.0.0.0/8"], "127.0.0.1", True),
        (["127.0.0.0/8"], "128.0.0.1", False),
        (["192.0.2.7"], "192.0.2.7", True),
        (["192.0.2.7"], "192.0.2.8", False),
        (["[::1]/128"], "::1", True),
        (["::1/128"], "::1", True),
        (["[::1]"], "::1", True),
        (["[2001:db8::]/32"], "2001:db8:1::5", True),
        (["[2001:db8::]/32"], "2001:db9::5", False),
        (["2001:db8::/32"], "2001:DB8::5", True),
        # An IPv4-mapped IPv6 client matches IPv4 networks, and a mapped network entry
        # matches plain IPv4 clients.
        (["192.0.2.0/24"], "::ffff:192.0.2.1", True),
        (["192.0.2.0/24"], "::ffff:198.51.100.1", False),
        (["[::ffff:127.0.0.0]/104"], "127.0.0.5", True),
        (["[::ffff:127.0.0.0]/104"], "::ffff:127.0.0.5", True),
        # IPv4 networks never match a native IPv6 client and vice versa.
        (["0.0.0.0/0"], "2001:db8::1", False),
        (["[2001:db8::]/32"], "192.0.2.1", False),
        # First match decides; "!" excludes.
        (["!192.0.2.1", "192.0.2.0/24"], "192.0.2.1", False),
        (["!192.0.2.1", "192.0.2.0/24"], "192.0.2.2", True),
        (["192.0.2.0/24", "!192.0.2.1"], "192.0.2.1", True),
        (["!!192.0.2.1"], "192.0.2.1", True),
        (["! 10.0.0.0/8"], "10.1.2.3", False),
        # Client address spellings the socket layer or a literal may produce.
        (["192.0.2.0/24"], "[192.0.2.9]", True),
        (["[fe80::]/10"], "fe80::1%eth0", True),
        (["0.0.0.0/0"], "not-an-address", False),
        ([], "127.0.0.1", False),
    ],
)
def test_contains(entries, client, expected):
    assert NetworkList.parse(entries).contains(client) is expected


def test_repeated_lookups_give_the_same_answer():
    nets = NetworkList.parse(["10.0.0.0/8"])
    assert [nets.contains("10.0.0.1") for _ in range(3)] == [True, True, True]
    assert [nets.contains("11.0.0.1") for _ in range(3)] == [False, False, False]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("foo", '"foo" is not an IP address or network: write e.g. 192.0.2.0/24'),
        ("010.0.0.1", '"010.0.0.1" is not an IP address'),
        ("192.0.2.1/24", 'non-null host address bits in "192.0.2.1/24", perhaps you should use "192.0.2.0/24" instead'),
        ("[2001:db8::1]/32", 'perhaps you should use "[2001:db8::]/32" instead'),
        ("10.0.0.0/33", 'bad prefix length in "10.0.0.0/33": write a number from 0 to 32'),
        ("10.0.0.0/8a", 'bad prefix length in "10.0.0.0/8a"'),
        ("10.0.0.0/255.0.0.0", 'bad prefix length in "10.0.0.0/255.0.0.0"'),
        ("[::1", '"[::1" is not a network: write [address] or [address]/prefix'),
        ("[::1]x", '"[::1]x" is not a network'),
        ("!", 'empty network list entry "!"'),
        ("hash:/etc/postfix/network_table", '"hash:/etc/postfix/network_table": tables are not supported in this list'),
    ],
)
def test_invalid_entries_name_the_entry_and_a_fix(entry, message):
    with pytest.raises(ValueError) as e:
        NetworkList.parse(["127.0.0.0/8", entry])
    assert message in str(e.value)


def test_file_entry_includes_its_lines(tmp_path):
    f = tmp_path / "networks"
    f.write_text("# trusted\n192.0.2.0/24, 198.51.100.7\n  [2001:db8::]/32\n")
    nets = NetworkList.parse(["127.0.0.0/8", str(f)])
    assert nets.contains("192.0.2.200")
    assert nets.contains("198.51.100.7")
    assert nets.contains("2001:db8::9")
    assert not nets.contains("198.51.100.8")


def test_negated_file_entry_excludes_its_networks(tmp_path):
    f = tmp_path / "blocked"
    f.write_text("10.9.0.0/16\n")
    nets = NetworkList.parse([f"!{f}", "10.0.0.0/8"])
    assert not nets.contains("10.9.1.1")
    assert nets.contains("10.8.1.1")


def test_error_in_file_names_file_and_line(tmp_path):
    f = tmp_path / "networks"
    f.write_text("192.0.2.0/24\n\n10.0.0.1/8\n")
    with pytest.raises(ValueError, match=rf"^{f}:3: non-null host address bits in \"10.0.0.1/8\""):
        NetworkList.parse([str(f)])


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="cannot read .*/absent"):
        NetworkList.parse([str(tmp_path / "absent")])


def test_table_entries_look_up_the_client_address(tmp_path):
    cidr = tmp_path / "nets.cidr"
    cidr.write_text("203.0.113.0/24 yes\n")
    nets = NetworkList.parse(
        ["inline:{ 192.0.2.9=yes }", f"cidr:{cidr}"], open_table=lambda spec: open_table(spec)
    )
    assert nets.contains("192.0.2.9")
    assert nets.contains("::ffff:192.0.2.9")
    assert nets.contains("203.0.113.77")
    assert not nets.contains("192.0.2.10")


def test_bad_table_entry_names_entry_and_type():
    with pytest.raises(ValueError, match=r'"nosuch:/x": unsupported table type "nosuch"'):
        NetworkList.parse(["nosuch:/x"], open_table=lambda spec: open_table(spec))


def test_parse_network_accepts_all_spellings():
    assert parse_network("[2001:db8::]/32") == ipaddress.ip_network("2001:db8::/32")
    assert parse_network("2001:db8::/32") == ipaddress.ip_network("2001:db8::/32")
    assert parse_network("[::1]") == ipaddress.ip_network("::1/128")
    assert parse_network(" 192.0.2.1 ") == ipaddress.ip_network("192.0.2.1/32")


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_ipv4_matching_agrees_with_ipaddress(net_int, client_int, prefix):
    net = ipaddress.IPv4Network((net_int, prefix), strict=False)
    client = ipaddress.IPv4Address(client_int)
    nets = NetworkList.parse([str(net)])
    assert nets.contains(str(client)) is (client in net)
    assert nets.contains(f"::ffff:{client}") is (client in net)


@given(st.integers(0, 2**128 - 1), st.integers(0, 2**128 - 1), st.integers(0, 128))
def test_ipv6_matching_agrees_with_ipaddress(net_int, client_int, prefix):
    net = ipaddress.IPv6Network((net_int, prefix), strict=False)
    client = ipaddress.IPv6Address(client_int)
    if client.ipv4_mapped is not None:
        return  # matched as IPv4, covered above
    nets = NetworkList.parse([f"[{net.network_address}]/{prefix}"])
    assert nets.contains(str(client)) is (client in net)
