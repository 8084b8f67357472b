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
    hops = parse_nexthops("[a.example]:587, b.example  c.example")
    assert [h.host for h in hops] == ["a.example", "b.example", "c.example"]


def case(description, recipient, expected, *, sender="", transport=None, sender_relay=None, **params):
    return pytest.param(recipient, sender, params, transport, sender_relay, expected, id=description)


SMART = {"relayhost": "[smart.example]"}
ROUTES = [
    case("local domain", "bob@mail.example.com", Route("local", "mail.example.com")),
    case("unqualified is local", "postmaster", Route("local", "mail.example.com")),
    case("default: MX of the domain", "bob@example.net", Route("smtp", "example.net")),
    case("relayhost", "bob@example.net", Route("smtp", "[smart.example]:587"), relayhost="[smart.example]:587"),
    case("relayhost is not for local mail", "bob@mail.example.com", Route("local", "mail.example.com"), **SMART),
    case("relay domain", "bob@relayed.example", Route("relay", "relayed.example")),
    case("relay domain via relayhost", "bob@relayed.example", Route("relay", "[smart.example]"), **SMART),
    case(
        "relay_transport nexthop wins",
        "bob@relayed.example",
        Route("relay", "[inside.example]"),
        sender="a@x.org",
        sender_relay={"a@x.org": "[s.example]"},
        relay_transport="relay:[inside.example]",
        **SMART,
    ),
    case(
        "default_transport nexthop beats relayhost",
        "bob@example.net",
        Route("smtp", "[other.example]:2525"),
        default_transport="smtp:[other.example]:2525",
        **SMART,
    ),
    case(
        "sender relayhost beats relayhost",
        "bob@example.net",
        Route("smtp", "[alice.example]:587"),
        sender="Alice@x.org",
        sender_relay={"alice@x.org": "[alice.example]:587"},
        **SMART,
    ),
    case(
        "sender relayhost by @domain",
        "bob@example.net",
        Route("smtp", "[xorg.example]"),
        sender="carol@x.org",
        sender_relay={"@x.org": "[xorg.example]"},
        **SMART,
    ),
    case(
        "sender relayhost DUNNO keeps relayhost",
        "bob@example.net",
        Route("smtp", "[smart.example]"),
        sender="alice@x.org",
        sender_relay={"alice@x.org": "DUNNO", "@x.org": "[xorg.example]"},
        **SMART,
    ),
    case("null sender key", "bob@example.net", Route("smtp", "[bounces.example]"), sender_relay={"<>": "[bounces.example]"}),
    case(
        "transport: both",
        "bob@example.net",
        Route("smtp", "[mx.example.net]:2525"),
        transport={"example.net": "smtp:[mx.example.net]:2525"},
        **SMART,
    ),
    case(
        "transport: only transport resets nexthop to the domain",
        "bob@example.net",
        Route("slow", "example.net"),
        transport={"example.net": "slow:"},
        **SMART,
    ),
    case(
        "transport: bare transport name",
        "bob@example.net",
        Route("slow", "example.net"),
        transport={"example.net": "slow"},
        **SMART,
    ),
    case(
        "transport: only nexthop keeps transport",
        "bob@relayed.example",
        Route("relay", "[gw.example]"),
        transport={"relayed.example": ":[gw.example]"},
    ),
    case(
        "transport: null changes nothing",
        "bob@example.net",
        Route("smtp", "[smart.example]"),
        transport={"example.net": ":", "*": "smtp:[all.example]"},
        **SMART,
    ),
    case(
        "transport: parent domain",
        "bob@a.b.example.net",
        Route("smtp", "[sub.example]"),
        transport={".example.net": "smtp:[sub.example]"},
    ),
    case(
        "transport: .domain is not the domain itself",
        "bob@example.net",
        Route("smtp", "example.net"),
        transport={".example.net": "smtp:[sub.example]"},
    ),
    case("transport: wildcard", "bob@example.net", Route("smtp", "[all.example]"), transport={"*": "smtp:[all.example]"}),
    case(
        "transport: address beats domain",
        "Bob@Example.NET",
        Route("smtp", "[bob.example]"),
        transport={"bob@example.net": "smtp:[bob.example]", "example.net": "smtp:[dom.example]"},
    ),
    case(
        "transport: user+ext@domain then user@domain",
        "bob+news@example.net",
        Route("smtp", "[bob.example]"),
        transport={"bob@example.net": "smtp:[bob.example]"},
        recipient_delimiter="+",
    ),
    case(
        "transport: local override",
        "bob@mail.example.com",
        Route("smtp", "[elsewhere.example]"),
        transport={"mail.example.com": "smtp:[elsewhere.example]"},
    ),
    case("transport: local:", "bob@example.net", Route("local", "example.net"), transport={"example.net": "local:"}),
    case(
        "transport: error",
        "bob@example.net",
        Route("error", None, "5.1.1 mail for example.net is not deliverable: really"),
        transport={"example.net": "error:5.1.1 mail for example.net is not deliverable: really"},
    ),
    case(
        "transport: retry",
        "bob@example.net",
        Route("retry", None, "4.3.5 maintenance"),
        transport={"example.net": "retry:4.3.5 maintenance"},
    ),
    case(
        "local_transport with nexthop",
        "bob@mail.example.com",
        Route("lmtp", "unix:private/dovecot"),
        local_transport="lmtp:unix:private/dovecot",
    ),
]


@pytest.mark.parametrize("recipient, sender, overrides, transport, sender_relay, expected", ROUTES)
def test_route(recipient, sender, overrides, transport, sender_relay, expected):
    params = RoutingParams(myhostname="mail.example.com", **overrides)
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
