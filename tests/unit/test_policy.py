"""SMTP restrictions: Postfix's semantics, reply texts, access tables, and the relay-trick matrix."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smarthost.inbound.policy import ClientFacts, Decision, Policy, PolicyError, PolicySettings, Stage, valid_hostname
from smarthost.netaddr import NetworkList
from smarthost.tables import TableError

SEED_RELAY = ["permit_mynetworks", "permit_sasl_authenticated", "reject_unauth_destination"]
OUTSIDER = ClientFacts(address="203.0.113.7", name="unknown", helo="client.example.org")
INSIDER = ClientFacts(address="192.168.1.20", name="pc.lan", helo="pc.lan")
AUTHENTICATED = ClientFacts(address="203.0.113.8", helo="laptop.example.org", sasl_username="alice", tls=True)


def make(**changes) -> Policy:
    settings = dict(
        relay_restrictions=SEED_RELAY,
        mynetworks=NetworkList.parse(["127.0.0.0/8", "[::1]/128", "192.168.0.0/16"]),
        mydestination=["mail.example.com", "example.com", "localhost"],
        relay_domains=["relayed.example", ".dotted.example"],
        myhostname="mail.example.com",
        inet_addresses_for_ip_literals=["192.0.2.1", "2001:db8::1"],
    )
    settings.update(changes)
    return Policy.build(PolicySettings(**settings))


def line(d: Decision) -> str:
    return d.reply_line if d.rejected else d.action


# --- relaying ----------------------------------------------------------------------------------

RELAY_TRICKS = [
    "bob@foreign.example",
    "Bob@Foreign.Example.",
    "bob%foreign.example@example.com",
    "bob%foreign.example@relayed.example",
    '"bob@foreign.example"@example.com',
    "foreign.example!bob@example.com",
    "bob@foreign.example@example.com",
    "bob@example.com@foreign.example",
    "bob@[198.51.100.1]",
    "bob@[IPv6:2001:db8::2]",
    "bob%foreign.example",
    "foreign.example!bob",
    "bob@example.com.foreign.example",
    "bob@notexample.com",
    "bob@dotted.example",  # ".dotted.example" covers subdomains only
    "bob@",
    "bob@example.com%foreign.example",
]


@pytest.mark.parametrize("recipient", RELAY_TRICKS)
def test_outsider_cannot_relay(recipient):
    d = make().check_recipient(OUTSIDER, "eve@evil.example", recipient)
    assert d.rejected
    assert (d.code, d.enhanced, d.text) == (554, "5.7.1", f"<{recipient}>: Relay access denied")
    assert d.reason == f"554 5.7.1 <{recipient}>: Relay access denied"
    assert (d.restriction, d.stage) == ("reject_unauth_destination", Stage.RELAY)


@pytest.mark.parametrize(
    "recipient",
    [
        "bob@example.com",
        "BOB@Example.COM.",
        "bob@mail.example.com",
        "postmaster",
        "postmaster@localhost",
        "bob@[192.0.2.1]",
        "bob@[IPv6:2001:db8::1]",
        "bob@relayed.example",
        "bob@sub.relayed.example",
        "bob@sub.dotted.example",
        '"bob smith"@example.com',
    ],
)
def test_anyone_may_send_to_our_domains(recipient):
    d = make().check_recipient(OUTSIDER, "eve@evil.example", recipient)
    assert d.action == "permit"
    assert not d.rejected


@pytest.mark.parametrize("facts", [INSIDER, AUTHENTICATED, ClientFacts(address="::ffff:192.168.3.4"), ClientFacts(address="::1")])
@pytest.mark.parametrize("recipient", RELAY_TRICKS)
def test_trusted_clients_can_relay(facts, recipient):
    d = make().check_recipient(facts, "alice@example.com", recipient)
    assert d.action == "permit"
    assert d.restriction in ("permit_mynetworks", "permit_sasl_authenticated")


def test_postfix_default_relay_restrictions_defer_with_454():
    policy = Policy.build(PolicySettings(mydestination=["example.com"]))
    d = policy.check_recipient(OUTSIDER, "", "bob@foreign.example")
    assert (d.action, d.reply_line) == ("defer", "454 4.7.1 <bob@foreign.example>: Relay access denied")
    assert policy.check_recipient(ClientFacts(address="127.0.0.1"), "", "bob@foreign.example").action == "permit"


@given(
    local=st.text(alphabet="abc.+-_\"@%!", min_size=1, max_size=12),
    domain=st.sampled_from(["example.com", "relayed.example", "sub.relayed.example", "[192.0.2.1]"]),
)
def test_routing_characters_in_local_part_are_never_relayed(local, domain):
    d = make().check_recipient(OUTSIDER, "", f"{local}@{domain}")
    assert d.rejected is any(c in local for c in "@%!")


def test_permit_in_an_earlier_list_does_not_open_the_relay():
    # Postfix semantics: "permit" ends its own list only.
    policy = make(client_restrictions=["permit"], sender_restrictions=["permit"])
    d = policy.check_recipient(OUTSIDER, "eve@evil.example", "bob@foreign.example")
    assert d.reply_line == "554 5.7.1 <bob@foreign.example>: Relay access denied"


def test_open_relay_configuration_is_refused():
    with pytest.raises(PolicyError) as e:
        make(relay_restrictions=["permit_mynetworks"], recipient_restrictions=["permit_sasl_authenticated"])
    assert str(e.value).startswith(
        "smtpd_relay_restrictions, smtpd_recipient_restrictions: specify at least one of reject_unauth_destination"
    )
    # The guard may sit in the recipient list instead (Postfix before 2.10).
    policy = make(relay_restrictions=[], recipient_restrictions=SEED_RELAY)
    assert policy.check_recipient(OUTSIDER, "", "bob@foreign.example").rejected


def test_permit_auth_destination():
    policy = make(recipient_restrictions=["permit_auth_destination", "reject"])
    assert policy.check_recipient(OUTSIDER, "", "bob@example.com").action == "permit"
    assert policy.check_recipient(INSIDER, "", "bob@foreign.example").reply_line == (
        "554 5.7.1 <bob@foreign.example>: Recipient address rejected: Access denied"
    )


# --- list semantics and reply texts ------------------------------------------------------------


@pytest.mark.parametrize(
    ("lists", "expected"),
    [
        (dict(client_restrictions=["reject"]), "554 5.7.1 <unknown[203.0.113.7]>: Client host rejected: Access denied"),
        (dict(helo_restrictions=["reject"]), "554 5.7.1 <client.example.org>: Helo command rejected: Access denied"),
        (dict(sender_restrictions=["reject"]), "554 5.7.1 <eve@evil.example>: Sender address rejected: Access denied"),
        (dict(recipient_restrictions=["reject"]), "554 5.7.1 <bob@example.com>: Recipient address rejected: Access denied"),
        (dict(client_restrictions=["defer"]), "450 4.7.1 <unknown[203.0.113.7]>: Client host rejected: Access denied"),
        (dict(recipient_restrictions=["defer"]), "450 4.7.1 <bob@example.com>: Recipient address rejected: Access denied"),
        (dict(client_restrictions=["permit", "reject"]), "permit"),
        (dict(client_restrictions=["reject"], recipient_restrictions=["permit"]), "554 5.7.1 <unknown[203.0.113.7]>: Client host rejected: Access denied"),
        (dict(helo_restrictions=["permit"], sender_restrictions=["reject"]), "554 5.7.1 <eve@evil.example>: Sender address rejected: Access denied"),
        (dict(), "permit"),
    ],
)
def test_list_semantics(lists, expected):
    d = make(**lists).check_recipient(OUTSIDER, "eve@evil.example", "bob@example.com")
    assert line(d) == expected


def test_reject_and_defer_actions():
    assert make(client_restrictions=["reject"]).check_recipient(OUTSIDER, "", "bob@example.com").action == "reject"
    d = make(client_restrictions=["defer"]).check_recipient(OUTSIDER, "", "bob@example.com")
    assert (d.action, d.rejected, d.restriction, d.stage) == ("defer", True, "defer", Stage.CLIENT)


def test_null_sender_is_named_as_empty_brackets():
    d = make(sender_restrictions=["reject"]).check_recipient(OUTSIDER, "", "bob@example.com")
    assert d.text == "<>: Sender address rejected: Access denied"


def test_client_text_is_made_printable():
    d = make().check_recipient(OUTSIDER, "", "bob\r\n250 ok@foreign.example")
    assert d.text == "<bob??250 ok@foreign.example>: Relay access denied"


def test_delay_reject_no_evaluates_client_list_separately():
    policy = make(client_restrictions=["reject"], helo_restrictions=["reject"], sender_restrictions=["reject"],
                  delay_reject=False)
    assert policy.check_recipient(OUTSIDER, "eve@evil.example", "bob@example.com").action == "permit"
    assert policy.check_client(OUTSIDER).text == "<unknown[203.0.113.7]>: Client host rejected: Access denied"
    assert policy.check_helo(OUTSIDER).text == "<client.example.org>: Helo command rejected: Access denied"
    assert policy.check_sender(OUTSIDER, "eve@evil.example").text == (
        "<eve@evil.example>: Sender address rejected: Access denied"
    )


def test_separate_checks_without_a_recipient_do_not_apply_recipient_restrictions():
    policy = make(client_restrictions=["reject_unauth_destination", "reject_non_fqdn_recipient"])
    assert policy.check_client(OUTSIDER).action == "permit"


def test_data_restrictions():
    policy = make(data_restrictions=["reject_non_fqdn_recipient", "reject_non_fqdn_sender"])
    assert policy.check_data(OUTSIDER, "eve@evil.example", ["bob"]).reply_line == (
        "504 5.5.2 <bob>: Recipient address rejected: need fully-qualified address"
    )
    # Recipient restrictions only apply with exactly one recipient.
    assert policy.check_data(OUTSIDER, "eve@evil.example", ["bob", "carol"]).action == "permit"
    assert policy.check_data(OUTSIDER, "eve", ["bob", "carol"]).reply_line == (
        "504 5.5.2 <eve>: Sender address rejected: need fully-qualified address"
    )
    assert make(data_restrictions=["reject"]).check_data(OUTSIDER, "", ["bob@example.com"]).reply_line == (
        "554 5.7.1 <DATA>: Data command rejected: Access denied"
    )


# --- individual restrictions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("restriction", "facts", "sender", "recipient", "expected"),
    [
        ("reject_non_fqdn_sender", OUTSIDER, "eve", "bob@example.com", "504 5.5.2 <eve>: Sender address rejected: need fully-qualified address"),
        ("reject_non_fqdn_sender", OUTSIDER, "eve@localhost", "bob@example.com", "504 5.5.2 <eve@localhost>: Sender address rejected: need fully-qualified address"),
        ("reject_non_fqdn_sender", OUTSIDER, "eve@under_score.example", "bob@example.com", "permit"),
        ("reject_non_fqdn_sender", OUTSIDER, "eve@-bad.example", "bob@example.com", "504 5.5.2 <eve@-bad.example>: Sender address rejected: need fully-qualified address"),
        ("reject_non_fqdn_sender", OUTSIDER, "eve@evil.example", "bob@example.com", "permit"),
        ("reject_non_fqdn_sender", OUTSIDER, "eve@evil.example.", "bob@example.com", "permit"),
        ("reject_non_fqdn_sender", OUTSIDER, "eve@[192.0.2.9]", "bob@example.com", "permit"),
        ("reject_non_fqdn_sender", OUTSIDER, "", "bob@example.com", "permit"),
        ("reject_non_fqdn_recipient", OUTSIDER, "", "postmaster", "504 5.5.2 <postmaster>: Recipient address rejected: need fully-qualified address"),
        ("reject_non_fqdn_recipient", OUTSIDER, "", "bob@localhost", "504 5.5.2 <bob@localhost>: Recipient address rejected: need fully-qualified address"),
        ("reject_non_fqdn_recipient", OUTSIDER, "", "bob@example.com", "permit"),
        ("reject_non_fqdn_helo_hostname", ClientFacts("203.0.113.7", helo="localhost"), "", "bob@example.com", "504 5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname"),
        ("reject_non_fqdn_helo_hostname", ClientFacts("203.0.113.7", helo="bad!.example"), "", "bob@example.com", "504 5.5.2 <bad!.example>: Helo command rejected: need fully-qualified hostname"),
        ("reject_non_fqdn_helo_hostname", ClientFacts("203.0.113.7", helo="mx.example.org."), "", "bob@example.com", "permit"),
        ("reject_non_fqdn_helo_hostname", ClientFacts("203.0.113.7", helo="[192.0.2.9]"), "", "bob@example.com", "permit"),
        ("reject_non_fqdn_helo_hostname", ClientFacts("203.0.113.7", helo=""), "", "bob@example.com", "permit"),
        ("reject_non_fqdn_hostname", ClientFacts("203.0.113.7", helo="localhost"), "", "bob@example.com", "504 5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname"),
        ("reject_invalid_helo_hostname", ClientFacts("203.0.113.7", helo="bad host"), "", "bob@example.com", "501 5.5.2 <bad host>: Helo command rejected: Invalid name"),
        ("reject_invalid_helo_hostname", ClientFacts("203.0.113.7", helo="-x.example"), "", "bob@example.com", "501 5.5.2 <-x.example>: Helo command rejected: Invalid name"),
        ("reject_invalid_helo_hostname", ClientFacts("203.0.113.7", helo="192.0.2.9"), "", "bob@example.com", "501 5.5.2 <192.0.2.9>: Helo command rejected: Invalid name"),
        ("reject_invalid_helo_hostname", ClientFacts("203.0.113.7", helo="a..example"), "", "bob@example.com", "501 5.5.2 <a..example>: Helo command rejected: Invalid name"),
        ("reject_invalid_helo_hostname", ClientFacts("203.0.113.7", helo="[192.0.2.999]"), "", "bob@example.com", "501 5.5.2 <[192.0.2.999]>: Helo command rejected: invalid ip address"),
        ("reject_invalid_helo_hostname", ClientFacts("203.0.113.7", helo="[::1]"), "", "bob@example.com", "501 5.5.2 <[::1]>: Helo command rejected: invalid ip address"),
        ("reject_invalid_helo_hostname", ClientFacts("203.0.113.7", helo="[IPv6:::1]"), "", "bob@example.com", "permit"),
        ("reject_invalid_helo_hostname", ClientFacts("203.0.113.7", helo="[192.0.2.9]"), "", "bob@example.com", "permit"),
        ("reject_invalid_helo_hostname", ClientFacts("203.0.113.7", helo="localhost"), "", "bob@example.com", "permit"),
        ("reject_invalid_hostname", ClientFacts("203.0.113.7", helo="bad host"), "", "bob@example.com", "501 5.5.2 <bad host>: Helo command rejected: Invalid name"),
        ("reject_plaintext_session", OUTSIDER, "", "bob@example.com", "450 4.7.1 Session encryption is required"),
        ("reject_plaintext_session", AUTHENTICATED, "", "bob@example.com", "permit"),
        ("permit_inet_interfaces", ClientFacts("192.0.2.1"), "", "bob@foreign.example", "permit"),
        ("permit_inet_interfaces", OUTSIDER, "", "bob@foreign.example", "554 5.7.1 <bob@foreign.example>: Relay access denied"),
        ("permit_mynetworks", INSIDER, "", "bob@foreign.example", "permit"),
        ("permit_sasl_authenticated", AUTHENTICATED, "", "bob@foreign.example", "permit"),
        ("permit_sasl_authenticated", OUTSIDER, "", "bob@foreign.example", "554 5.7.1 <bob@foreign.example>: Relay access denied"),
    ],
)
def test_restriction(restriction, facts, sender, recipient, expected):
    policy = make(relay_restrictions=[restriction, "reject_unauth_destination"])
    assert line(policy.check_recipient(facts, sender, recipient)) == expected


@pytest.mark.parametrize(
    "name",
    ["mail.example.com", "a", "x-1.example", "under_score.example", "bücher.example", "a" * 63 + ".example"],
)
def test_valid_hostnames(name):
    assert valid_hostname(name)


@pytest.mark.parametrize(
    "name", ["", ".", "a..b", "-a.example", "a-.example", "1.2.3.4", "a b", "a" * 64 + ".example", "x." * 128 + "x"]
)
def test_invalid_hostnames(name):
    assert not valid_hostname(name)


# --- build errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(client_restrictions=["permit_mynetwork"]), 'smtpd_client_restrictions: unknown restriction "permit_mynetwork"; did you mean "permit_mynetworks"?'),
        (dict(sender_restrictions=["reject_unknown_sender_domain"]), "smtpd_sender_restrictions: reject_unknown_sender_domain is not implemented in smarthost yet; remove it from the list"),
        (dict(client_restrictions=["check_client_access"]), "smtpd_client_restrictions: check_client_access needs a table argument, e.g. check_client_access texthash:/etc/smarthost/access"),
        (dict(client_restrictions=["check_client_access", "reject"]), "smtpd_client_restrictions: check_client_access needs a table argument"),
        (dict(client_restrictions=["texthash:/etc/x"]), 'smtpd_client_restrictions: table "texthash:/etc/x" without a check_*_access restriction before it'),
        (dict(client_restrictions=["check_client_access nosuch:/etc/postfix/access"]), 'smtpd_client_restrictions: check_client_access nosuch:/etc/postfix/access: unsupported table type "nosuch"'),
        (dict(recipient_restrictions=["check_recipient_access inline:{ a=b"]), 'smtpd_recipient_restrictions: missing "}"'),
        (dict(mydestination=["/nonexistent/mydestination"]), "mydestination: list file: cannot read /nonexistent/mydestination"),
        (dict(inet_addresses_for_ip_literals=["mail.example.com"]), 'inet_interfaces: "mail.example.com" is not an IP address'),
    ],
)
def test_build_errors_name_restriction_and_fix(changes, message):
    with pytest.raises(PolicyError) as e:
        make(**changes)
    assert str(e.value).startswith(message)


def test_restriction_names_are_case_insensitive():
    policy = make(relay_restrictions=["Permit_MyNetworks", "REJECT_UNAUTH_DESTINATION"])
    assert policy.check_recipient(INSIDER, "", "bob@foreign.example").action == "permit"
    assert policy.check_recipient(OUTSIDER, "", "bob@foreign.example").rejected


# --- access tables -----------------------------------------------------------------------------


class RecordingTable:
    """A table that answers from a dict and records the keys it was asked for."""

    def __init__(self, data=None, fail=False):
        self.name = "fake:table"
        self.data = {k.lower(): v for k, v in (data or {}).items()}
        self.keys: list[str] = []
        self.fail = fail

    def lookup(self, key):
        self.keys.append(key)
        if self.fail:
            raise TableError("fake:table: connection refused")
        return self.data.get(key.lower())


def with_table(table, **changes) -> Policy:
    settings = dict(
        relay_restrictions=SEED_RELAY,
        mynetworks=NetworkList.parse(["192.168.0.0/16"]),
        mydestination=["example.com"],
        recipient_delimiter="+",
    )
    settings.update(changes)
    return Policy.build(PolicySettings(**settings), open_table=lambda spec: table)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("OK", "permit"),
        ("ok", "permit"),
        ("1234567", "permit"),
        ("REJECT", "554 5.7.1 <bob@example.com>: Recipient address rejected: Access denied"),
        ("REJECT No such user", "554 5.7.1 <bob@example.com>: Recipient address rejected: No such user"),
        ("reject 5.1.1 No such user", "554 5.1.1 <bob@example.com>: Recipient address rejected: No such user"),
        ("DEFER", "450 4.7.1 <bob@example.com>: Recipient address rejected: Access denied"),
        ("DEFER 5.2.2 Mailbox full", "450 4.2.2 <bob@example.com>: Recipient address rejected: Mailbox full"),
        ("550 Go away", "550 5.7.1 <bob@example.com>: Recipient address rejected: Go away"),
        ("550 5.1.1 Unknown user", "550 5.1.1 <bob@example.com>: Recipient address rejected: Unknown user"),
        ("421 Try later", "421 4.7.1 <bob@example.com>: Recipient address rejected: Try later"),
        ("550 4.1.1 Mixed classes", "550 5.1.1 <bob@example.com>: Recipient address rejected: Mixed classes"),
        ("DUNNO", "554 5.7.1 <bob@example.com>: Recipient address rejected: Access denied"),
        ("permit_mynetworks", "554 5.7.1 <bob@example.com>: Recipient address rejected: Access denied"),
        ("reject_non_fqdn_sender, permit", "504 5.5.2 <eve>: Sender address rejected: need fully-qualified address"),
        ("HOLD", "451 4.3.5 Server configuration error"),
        ("250 Fine", "451 4.3.5 Server configuration error"),
        ("no_such_restriction", "451 4.3.5 Server configuration error"),
        ("check_client_access texthash:/x", "451 4.3.5 Server configuration error"),
    ],
)
def test_access_table_results(value, expected):
    table = RecordingTable({"bob@example.com": value})
    policy = with_table(table, recipient_restrictions=["check_recipient_access fake:table", "reject"])
    assert line(policy.check_recipient(OUTSIDER, "eve", "bob@example.com")) == expected


def test_access_table_restriction_value_is_evaluated_for_the_client():
    table = RecordingTable({"bob@example.com": "permit_mynetworks"})
    policy = with_table(table, recipient_restrictions=["check_recipient_access fake:table", "reject"])
    d = policy.check_recipient(INSIDER, "", "bob@example.com")
    assert (d.action, d.restriction) == ("permit", "permit_mynetworks")


def test_unsupported_action_is_logged_with_detail():
    table = RecordingTable({"bob@example.com": "HOLD"})
    policy = with_table(table, recipient_restrictions=["check_recipient_access fake:table"])
    d = policy.check_recipient(OUTSIDER, "", "bob@example.com")
    assert d.reason == '451 4.3.5 Server configuration error (fake:table: access action "HOLD" is not supported yet)'


def test_access_ok_before_reject_unauth_destination_lets_that_recipient_relay():
    table = RecordingTable({"partner.example": "OK"})
    policy = with_table(table, relay_restrictions=["check_recipient_access fake:table", "reject_unauth_destination"])
    assert policy.check_recipient(OUTSIDER, "", "bob@partner.example").action == "permit"
    assert policy.check_recipient(OUTSIDER, "", "bob@other.example").rejected


def test_address_lookup_order():
    table = RecordingTable()
    policy = with_table(table, sender_restrictions=["check_sender_access fake:table"])
    policy.check_recipient(OUTSIDER, "Alice+Lists@Mail.Example.ORG", "bob@example.com")
    assert table.keys == [
        "Alice+Lists@Mail.Example.ORG",
        "Alice@Mail.Example.ORG",
        "mail.example.org",
        "example.org",
        "org",
        "Alice+Lists@",
        "Alice@",
    ]


def test_address_lookup_order_without_extension_and_for_literals():
    table = RecordingTable()
    policy = with_table(table, recipient_restrictions=["check_recipient_access fake:table"],
                        inet_addresses_for_ip_literals=["192.0.2.1"])
    policy.check_recipient(OUTSIDER, "", "bob@[192.0.2.1]")
    assert table.keys == ["bob@[192.0.2.1]", "[192.0.2.1]", "bob@"]


def test_null_sender_is_looked_up_as_angle_brackets():
    table = RecordingTable({"<>": "REJECT no bounces here"})
    policy = with_table(table, sender_restrictions=["check_sender_access fake:table"])
    assert policy.check_recipient(OUTSIDER, "", "bob@example.com").reply_line == (
        "554 5.7.1 <>: Sender address rejected: no bounces here"
    )


@pytest.mark.parametrize(
    ("facts", "keys"),
    [
        (ClientFacts("192.0.2.7", "Host.Example.COM"), ["host.example.com", "example.com", "com", "192.0.2.7", "192.0.2", "192.0", "192"]),
        (ClientFacts("192.0.2.7"), ["192.0.2.7", "192.0.2", "192.0", "192"]),
        (ClientFacts("::ffff:192.0.2.7"), ["192.0.2.7", "192.0.2", "192.0", "192"]),
        (ClientFacts("2001:DB8::7"), ["2001:db8::7", "2001:db8:", "2001:db8", "2001"]),
    ],
)
def test_client_lookup_order(facts, keys):
    table = RecordingTable()
    policy = with_table(table, client_restrictions=["check_client_access fake:table"])
    policy.check_recipient(facts, "", "bob@example.com")
    assert table.keys == keys


def test_client_access_reply_names_the_client_in_any_list():
    table = RecordingTable({"192.0.2": "REJECT"})
    policy = with_table(table, recipient_restrictions=["check_client_access fake:table"])
    assert policy.check_recipient(ClientFacts("192.0.2.7"), "", "bob@example.com").reply_line == (
        "554 5.7.1 <unknown[192.0.2.7]>: Client host rejected: Access denied"
    )


def test_helo_access():
    table = RecordingTable({"example.org": "REJECT You are not us"})
    policy = with_table(table, helo_restrictions=["check_helo_access fake:table"])
    d = policy.check_recipient(ClientFacts("203.0.113.7", helo="mx.Example.org."), "", "bob@example.com")
    assert d.reply_line == "554 5.7.1 <mx.Example.org.>: Helo command rejected: You are not us"
    assert table.keys == ["mx.example.org", "example.org"]
    assert policy.check_recipient(ClientFacts("203.0.113.7", helo=""), "", "bob@example.com").action == "permit"


def test_dunno_stops_lookups_of_shorter_keys():
    table = RecordingTable({"bob@example.com": "DUNNO", "example.com": "REJECT"})
    policy = with_table(table, recipient_restrictions=["check_recipient_access fake:table"])
    assert policy.check_recipient(OUTSIDER, "", "bob@example.com").action == "permit"
    assert table.keys == ["bob@example.com"]
    assert policy.check_recipient(OUTSIDER, "", "carol@example.com").rejected


def test_parent_domain_matches_subdomains():
    table = RecordingTable({"spam.example": "REJECT"})
    policy = with_table(table, sender_restrictions=["check_sender_access fake:table"])
    assert policy.check_recipient(OUTSIDER, "x@a.b.spam.example", "bob@example.com").rejected
    assert not policy.check_recipient(OUTSIDER, "x@notspam.example", "bob@example.com").rejected


def test_table_failure_defers_with_generic_text_and_logged_detail():
    table = RecordingTable(fail=True)
    policy = with_table(table, sender_restrictions=["check_sender_access fake:table"])
    d = policy.check_recipient(OUTSIDER, "eve@evil.example", "bob@example.com")
    assert (d.action, d.reply_line) == ("defer", "451 4.3.0 <eve@evil.example>: Temporary lookup failure")
    assert d.reason.endswith("(fake:table: connection refused)")


def test_texthash_table_in_a_restriction_list(tmp_path):
    access = tmp_path / "sender_access"
    access.write_text("evil.example REJECT\n")
    policy = make(sender_restrictions=["check_sender_access texthash:" + str(access)])
    assert policy.check_recipient(OUTSIDER, "eve@evil.example", "bob@example.com").rejected
    assert policy.check_recipient(OUTSIDER, "eve@fine.example", "bob@example.com").action == "permit"


def test_inline_table_in_a_restriction_list():
    policy = make(client_restrictions=["check_client_access inline:{ 203.0.113.7=REJECT, { 203.0.113.8 = 550 5.7.1 go away } }"])
    assert policy.check_recipient(OUTSIDER, "", "bob@example.com").reply_line == (
        "554 5.7.1 <unknown[203.0.113.7]>: Client host rejected: Access denied"
    )
    assert policy.check_recipient(AUTHENTICATED, "", "bob@example.com").reply_line == (
        "550 5.7.1 <unknown[203.0.113.8]>: Client host rejected: go away"
    )


# --- domain lists ------------------------------------------------------------------------------


def test_domain_lists(tmp_path):
    domains = tmp_path / "relay_domains"
    domains.write_text("# relayed\nfile.example, other.example\n")
    policy = make(
        mydestination=["Example.COM.", ".sub.example.com", "!bad.other.example", f"inline:{{ table.example=yes }}"],
        relay_domains=["!no.relayed.example", "relayed.example", str(domains), "inline:{ trelay.example=x }"],
    )
    assert policy.is_local_domain("example.com")
    assert policy.is_local_domain("EXAMPLE.com.")
    assert not policy.is_local_domain("www.example.com")  # mydestination: exact unless ".domain"
    assert policy.is_local_domain("a.sub.example.com")
    assert policy.is_local_domain("table.example")
    assert not policy.is_local_domain("x.table.example")
    assert policy.is_local_domain("[192.0.2.1]")
    assert policy.is_local_domain("[IPv6:2001:db8::1]")
    assert not policy.is_local_domain("[192.0.2.2]")
    assert policy.is_relay_domain("relayed.example")
    assert policy.is_relay_domain("deep.sub.relayed.example")  # relay_domains: subdomains too
    assert not policy.is_relay_domain("no.relayed.example")
    assert not policy.is_relay_domain("x.no.relayed.example")
    assert policy.is_relay_domain("file.example") and policy.is_relay_domain("other.example")
    assert policy.is_relay_domain("x.trelay.example")
    assert not policy.is_relay_domain("[192.0.2.1]")
    assert not policy.is_relay_domain("example.org")
