"""Routing as trivial-rewrite(8)/transport(5) decide it, and the next-hop syntax."""

import pytest

from smarthost.outbound.routing import (
    NextHop,
    NextHopError,
    Route,
    RoutingParams,
    RoutingTables,
    parse_nexthop,
    parse_nexthops,
    route,
)
from smarthost.tables import TableError


class FakeTable:
    def __init__(self, data, name="fake"):
        self.name = name
        self.data = {k.lower(): v for k, v in data.items()}
        self.keys = []

    def lookup(self, key):
        self.keys.append(key)
        return self.data.get(key.lower())


class FakeDomains:
    def __init__(self, local=("mail.example.com", "localhost"), relay=("relayed.example",)):
        self.local, self.relay = set(local), set(relay)

    def is_local_domain(self, domain):
        return domain in self.local

    def is_relay_domain(self, domain):
        return domain in self.relay


PARAMS = RoutingParams(myhostname="mail.example.com")


def tables(transport=None, sender_relay=None, domains=None):
    return RoutingTables(
        domains=domains or FakeDomains(),
        transport_maps=[FakeTable(transport)] if transport else [],
        sender_dependent_relayhost_maps=[FakeTable(sender_relay)] if sender_relay else [],
    )


@pytest.mark.parametrize(
    "text, host, port, mx",
    [
        ("[mail.example.com]", "mail.example.com", 25, False),
        ("[mail.example.com]:587", "mail.example.com", 587, False),
        ("mail.example.com", "mail.example.com", 25, True),
        ("example.com:2525", "example.com", 2525, True),
        ("[192.0.2.7]", "192.0.2.7", 25, False),
        ("[192.0.2.7]:465", "192.0.2.7", 465, False),
        ("[ipv6:2001:db8::1]:587", "2001:db8::1", 587, False),
        ("[IPv6:2001:db8::1]", "2001:db8::1", 25, False),
        ("[2001:db8::1]", "2001:db8::1", 25, False),
        ("[mail.example.com]:submission", "mail.example.com", 587, False),
        (" example.com. ", "example.com", 25, True),
    ],
)
def test_parse_nexthop(text, host, port, mx):
    hop = parse_nexthop(text)
    assert (hop.host, hop.port, hop.mx_lookup) == (host, port, mx)
    assert hop.text == text.strip()


def test_address_next_hops_know_they_are_addresses():
    assert parse_nexthop("[192.0.2.7]").is_address
    assert not parse_nexthop("[mail.example.com]").is_address


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[mail.example.com", 'missing "]"'),
        ("192.0.2.7", "needs brackets"),
        ("2001:db8::1", "[ipv6:address]"),
        ("[mail.example.com]:0", "not a port"),
        ("[mail.example.com]:70000", "not a port"),
        ("[mail.example.com]:", "host:port"),
        ("[mail.example.com]587", "host:port"),
        ("[ipv6:nonsense]", "not an IPv6 address"),
        ("[ipv6:fe80::1%eth0]", "not an IPv6 address"),
        ("[999.1.1.1]", "not a host name or IP address"),
        ("bad host", "not a host name"),
        ("", "not a host name"),
    ],
)
def test_parse_nexthop_errors_say_what_to_write(text, fragment):
    with pytest.raises(NextHopError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_nexthop(text)


def test_next_hop_lists():
    assert [h.host for h in parse_nexthops("[a.example]:587, b.example  c.example")] == ["a.example", "b.example", "c.example"]


ROUTES = [
    # (description, params overrides, transport table, sender relay table, recipient, sender, expected)
    ("local domain", {}, None, None, "bob@mail.example.com", "a@x.org", Route("local", "mail.example.com")),
    ("unqualified is local", {}, None, None, "postmaster", "", Route("local", "mail.example.com")),
    ("default: MX of the domain", {}, None, None, "bob@example.net", "a@x.org", Route("smtp", "example.net")),
    ("relayhost", {"relayhost": "[smart.example]:587"}, None, None, "bob@example.net", "a@x.org", Route("smtp", "[smart.example]:587")),
    ("relayhost is not for local mail", {"relayhost": "[smart.example]"}, None, None, "bob@mail.example.com", "", Route("local", "mail.example.com")),
    ("relay domain", {}, None, None, "bob@relayed.example", "a@x.org", Route("relay", "relayed.example")),
    ("relay domain via relayhost", {"relayhost": "[smart.example]"}, None, None, "bob@relayed.example", "", Route("relay", "[smart.example]")),
    ("relay_transport nexthop wins", {"relayhost": "[smart.example]", "relay_transport": "relay:[inside.example]"}, None, {"a@x.org": "[s.example]"}, "bob@relayed.example", "a@x.org", Route("relay", "[inside.example]")),
    ("default_transport nexthop beats relayhost", {"relayhost": "[smart.example]", "default_transport": "smtp:[other.example]:2525"}, None, None, "bob@example.net", "", Route("smtp", "[other.example]:2525")),
    ("sender relayhost beats relayhost", {"relayhost": "[smart.example]"}, None, {"alice@x.org": "[alice.example]:587"}, "bob@example.net", "Alice@x.org", Route("smtp", "[alice.example]:587")),
    ("sender relayhost by @domain", {"relayhost": "[smart.example]"}, None, {"@x.org": "[xorg.example]"}, "bob@example.net", "carol@x.org", Route("smtp", "[xorg.example]")),
    ("sender relayhost DUNNO keeps relayhost", {"relayhost": "[smart.example]"}, None, {"alice@x.org": "DUNNO", "@x.org": "[xorg.example]"}, "bob@example.net", "alice@x.org", Route("smtp", "[smart.example]")),
    ("null sender key", {}, None, {"<>": "[bounces.example]"}, "bob@example.net", "", Route("smtp", "[bounces.example]")),
    ("transport: both", {"relayhost": "[smart.example]"}, {"example.net": "smtp:[mx.example.net]:2525"}, None, "bob@example.net", "", Route("smtp", "[mx.example.net]:2525")),
    ("transport: only transport resets nexthop to the domain", {"relayhost": "[smart.example]"}, {"example.net": "slow:"}, None, "bob@example.net", "", Route("slow", "example.net")),
    ("transport: bare transport name", {"relayhost": "[smart.example]"}, {"example.net": "slow"}, None, "bob@example.net", "", Route("slow", "example.net")),
    ("transport: only nexthop keeps transport", {}, {"relayed.example": ":[gw.example]"}, None, "bob@relayed.example", "", Route("relay", "[gw.example]")),
    ("transport: null changes nothing", {"relayhost": "[smart.example]"}, {"example.net": ":", "*": "smtp:[all.example]"}, None, "bob@example.net", "", Route("smtp", "[smart.example]")),
    ("transport: parent domain", {}, {".example.net": "smtp:[sub.example]"}, None, "bob@a.b.example.net", "", Route("smtp", "[sub.example]")),
    ("transport: .domain is not the domain itself", {}, {".example.net": "smtp:[sub.example]"}, None, "bob@example.net", "", Route("smtp", "example.net")),
    ("transport: wildcard", {}, {"*": "smtp:[all.example]"}, None, "bob@example.net", "", Route("smtp", "[all.example]")),
    ("transport: address beats domain", {}, {"bob@example.net": "smtp:[bob.example]", "example.net": "smtp:[dom.example]"}, None, "Bob@Example.NET", "", Route("smtp", "[bob.example]")),
    ("transport: user+ext@domain then user@domain", {"recipient_delimiter": "+"}, {"bob@example.net": "smtp:[bob.example]"}, None, "bob+news@example.net", "", Route("smtp", "[bob.example]")),
    ("transport: local override", {}, {"mail.example.com": "smtp:[elsewhere.example]"}, None, "bob@mail.example.com", "", Route("smtp", "[elsewhere.example]")),
    ("transport: local:", {}, {"example.net": "local:"}, None, "bob@example.net", "", Route("local", "example.net")),
    ("transport: error", {}, {"example.net": "error:5.1.1 mail for example.net is not deliverable: really"}, None, "bob@example.net", "", Route("error", None, "5.1.1 mail for example.net is not deliverable: really")),
    ("transport: retry", {}, {"example.net": "retry:4.3.5 maintenance"}, None, "bob@example.net", "", Route("retry", None, "4.3.5 maintenance")),
    ("local_transport with nexthop", {"local_transport": "lmtp:unix:private/dovecot"}, None, None, "bob@mail.example.com", "", Route("lmtp", "unix:private/dovecot")),
]


@pytest.mark.parametrize("description, overrides, transport, sender_relay, recipient, sender, expected", ROUTES, ids=[r[0] for r in ROUTES])
def test_route(description, overrides, transport, sender_relay, recipient, sender, expected):
    params = RoutingParams(**{"myhostname": "mail.example.com", **overrides})
    assert route(recipient, sender, params, tables(transport, sender_relay)) == expected


def test_transport_search_order():
    table = FakeTable({})
    t = RoutingTables(domains=FakeDomains(), transport_maps=[table])
    params = RoutingParams(myhostname="mail.example.com", recipient_delimiter="+-")
    route("Bob+x@a.Example.net", "", params, t)
    assert table.keys == ["bob+x@a.example.net", "bob@a.example.net", "a.example.net", ".example.net", ".net", "*"]


def test_each_key_is_tried_in_every_table_before_the_next_key():
    first, second = FakeTable({"*": "smtp:[first.example]"}), FakeTable({"example.net": "smtp:[second.example]"})
    t = RoutingTables(domains=FakeDomains(), transport_maps=[first, second])
    assert route("bob@example.net", "", PARAMS, t).nexthop == "[second.example]"


def test_table_errors_reach_the_caller_as_temporary_failures():
    class Broken:
        name = "broken"

        def lookup(self, key):
            raise TableError("broken: cannot read")

    t = RoutingTables(domains=FakeDomains(), transport_maps=[Broken()])
    with pytest.raises(TableError):
        route("bob@example.net", "", PARAMS, t)


def test_params_from_config(tmp_path):
    from smarthost.config import load

    (tmp_path / "main.cf").write_text(
        "myhostname = sat.example.org\nrelayhost = [mail.example.com]:587\nrelay_transport = relay\n"
    )
    (tmp_path / "master.cf").write_text("")
    params = RoutingParams.from_params(load(tmp_path).params)
    assert params.myhostname == "sat.example.org"
    assert params.relayhost == "[mail.example.com]:587"
    assert params.default_transport == "smtp"
    hop = parse_nexthop(params.relayhost)
    assert hop == NextHop("mail.example.com", 587, False, "[mail.example.com]:587")
