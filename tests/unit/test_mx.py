"""MX selection with a fake resolver (never a real DNS): preference, shuffling, implicit MX, null MX, errors."""

import asyncio

import dns.exception
import dns.rdata
import dns.resolver
import pytest

from smarthost.outbound.mx import DnsError, MxHost, destinations, host_addresses, mx_hosts
from smarthost.outbound.routing import parse_nexthop
from smarthost.smtp.client import Status


class FakeResolver:
    """Answers from a dict {(name, rdtype): [record text, ...] | exception}; records every query."""

    def __init__(self, zone):
        self.zone = zone
        self.queries = []

    async def resolve(self, qname, rdtype):
        self.queries.append((qname, rdtype))
        answer = self.zone.get((qname, rdtype), dns.resolver.NXDOMAIN())
        if isinstance(answer, Exception):
            raise answer
        return [dns.rdata.from_text("IN", rdtype, text) for text in answer]


class Reverse:
    def shuffle(self, x):
        x.reverse()


def run(coro):
    return asyncio.run(coro)


def test_mx_by_preference_with_equal_preferences_shuffled():
    resolver = FakeResolver(
        {("example.com.", "MX"): ["20 backup.example.com.", "10 a.example.com.", "10 b.example.com.", "10 c.example.com."]}
    )
    hosts = run(mx_hosts("example.com", resolver, Reverse()))
    assert hosts == [
        MxHost("c.example.com", 10),
        MxHost("b.example.com", 10),
        MxHost("a.example.com", 10),
        MxHost("backup.example.com", 20),
    ]
    assert resolver.queries == [("example.com.", "MX")]


def test_no_mx_means_the_domain_itself():
    resolver = FakeResolver({("example.com.", "MX"): dns.resolver.NoAnswer()})
    assert run(mx_hosts("example.com", resolver, Reverse())) == [MxHost("example.com", 0)]


def test_null_mx_bounces_with_5_1_10():
    resolver = FakeResolver({("example.com.", "MX"): ["0 ."]})
    with pytest.raises(DnsError) as info:
        run(mx_hosts("example.com", resolver))
    assert info.value.permanent and info.value.enhanced == "5.1.10"
    assert info.value.outcome().status is Status.BOUNCED


def test_null_mx_mixed_with_others_is_still_null_mx():
    resolver = FakeResolver({("example.com.", "MX"): ["0 .", "10 mx.example.com."]})
    with pytest.raises(DnsError, match="null MX"):
        run(mx_hosts("example.com", resolver))


@pytest.mark.parametrize(
    "error, permanent, enhanced",
    [
        (dns.resolver.NXDOMAIN(), True, "5.1.2"),
        (dns.resolver.NoNameservers(), False, "4.4.3"),  # SERVFAIL
        (dns.resolver.LifetimeTimeout(timeout=5.0, errors=[]), False, "4.4.3"),
        (dns.exception.DNSException("odd"), False, "4.4.3"),  # unknown: temporary
    ],
)
def test_lookup_errors(error, permanent, enhanced):
    resolver = FakeResolver({("example.com.", "MX"): error})
    with pytest.raises(DnsError) as info:
        run(mx_hosts("example.com", resolver))
    assert (info.value.permanent, info.value.enhanced) == (permanent, enhanced)
    expected = Status.BOUNCED if permanent else Status.DEFERRED
    assert info.value.outcome().status is expected


def test_timeout_message_names_the_query():
    resolver = FakeResolver({("example.com.", "MX"): dns.resolver.LifetimeTimeout(timeout=5.0, errors=[])})
    with pytest.raises(DnsError, match="name=example.com type=MX: timeout"):
        run(mx_hosts("example.com", resolver))


def test_host_addresses_both_families_in_order():
    resolver = FakeResolver(
        {("mx.example.com.", "AAAA"): ["2001:db8::25"], ("mx.example.com.", "A"): ["192.0.2.25", "192.0.2.26"]}
    )
    assert run(host_addresses("mx.example.com", resolver)) == ["2001:db8::25", "192.0.2.25", "192.0.2.26"]
    assert run(host_addresses("mx.example.com", resolver, families=("ipv4",))) == ["192.0.2.25", "192.0.2.26"]


def test_host_addresses_one_family_failing_temporarily_is_enough_with_the_other():
    resolver = FakeResolver(
        {("mx.example.com.", "AAAA"): dns.resolver.NoNameservers(), ("mx.example.com.", "A"): ["192.0.2.25"]}
    )
    assert run(host_addresses("mx.example.com", resolver)) == ["192.0.2.25"]


def test_host_addresses_failures():
    temporary = FakeResolver(
        {("mx.example.com.", "AAAA"): dns.resolver.NoAnswer(), ("mx.example.com.", "A"): dns.resolver.NoNameservers()}
    )
    with pytest.raises(DnsError) as info:
        run(host_addresses("mx.example.com", temporary))
    assert not info.value.permanent
    missing = FakeResolver({("mx.example.com.", "AAAA"): dns.resolver.NoAnswer()})
    with pytest.raises(DnsError) as info:
        run(host_addresses("mx.example.com", missing))
    assert info.value.permanent and info.value.enhanced == "5.4.4"


def test_ip_addresses_need_no_lookup():
    resolver = FakeResolver({})
    assert run(host_addresses("192.0.2.1", resolver)) == ["192.0.2.1"]
    assert resolver.queries == []


def test_destinations_of_a_next_hop():
    resolver = FakeResolver({("example.com.", "MX"): ["10 mx.example.com."]})
    assert run(destinations(parse_nexthop("[mail.example.com]:587"), resolver)) == [MxHost("mail.example.com", 0)]
    assert resolver.queries == []  # [host]: no MX lookup
    assert run(destinations(parse_nexthop("example.com"), resolver)) == [MxHost("mx.example.com", 10)]
