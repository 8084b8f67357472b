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


# --- address extensions (recipient_delimiter) -------------------------------------------------


@pytest.mark.parametrize(
    ("delimiter", "sender", "keys"),
    [
        ("+", "joe+x@example.org", ["joe+x@example.org", "joe@example.org", "example.org", "org", "joe+x@", "joe@"]),
        ("+-", "joe-x+y@example.org", ["joe-x+y@example.org", "joe@example.org", "example.org", "org", "joe-x+y@", "joe@"]),
        # Postfix does not split when the first delimiter starts the local part...
        ("+-", "-x+y@example.org", ["-x+y@example.org", "example.org", "org", "-x+y@"]),
        ("+", "+x@example.org", ["+x@example.org", "example.org", "org", "+x@"]),
        # ... nor postmaster, nor (with "-") the mailing-list names owner-* and *-request.
        ("+", "Postmaster+x@example.org", ["Postmaster+x@example.org", "Postmaster@example.org", "example.org", "org", "Postmaster+x@", "Postmaster@"]),
        ("+", "postmaster@example.org", ["postmaster@example.org", "example.org", "org", "postmaster@"]),
        ("-", "owner-list@example.org", ["owner-list@example.org", "example.org", "org", "owner-list@"]),
        ("-", "list-request@example.org", ["list-request@example.org", "example.org", "org", "list-request@"]),
        ("+", "list-request+x@example.org", ["list-request+x@example.org", "list-request@example.org", "example.org", "org", "list-request+x@", "list-request@"]),
        ("", "joe+x@example.org", ["joe+x@example.org", "example.org", "org", "joe+x@"]),
    ],
)
def test_access_keys_split_the_extension_like_postfix(delimiter, sender, keys):
    table = RecordingTable()
    policy = with_table(table, sender_restrictions=["check_sender_access fake:table"], recipient_delimiter=delimiter)
    policy.check_sender(OUTSIDER, sender)
    assert table.keys == keys


# --- sender login maps (smtpd_sender_login_maps) -----------------------------------------------

LOGINS = {
    "alice@example.com": "alice",
    "carol@example.com": "carol",
    "shared@example.com": "alice, Bob  carol",
    "@partner.example": "bob",
    "dave": "dave",
    "nobody@example.com": "",
}


def as_user(login: str | None) -> ClientFacts:
    return ClientFacts(address="203.0.113.9", helo="laptop.example.org", sasl_username=login, tls=True)


def with_logins(maps=None, **changes) -> Policy:
    """The seed's relay rule, example.com local, and login maps from ``maps`` (spec -> table)."""
    maps = maps if maps is not None else {"fake:logins": RecordingTable(LOGINS)}
    settings = dict(
        relay_restrictions=SEED_RELAY,
        mynetworks=NetworkList.parse(["192.168.0.0/16"]),
        mydestination=["example.com"],
        myhostname="mail.example.com",
        recipient_delimiter="+",
        sender_login_maps=" ".join(maps),
    )
    settings.update(changes)
    return Policy.build(PolicySettings(**settings), open_table=maps.__getitem__)


def not_owned(sender: str, login: str) -> str:
    return f"553 5.7.1 <{sender}>: Sender address rejected: not owned by user {login}"


def not_logged_in(sender: str) -> str:
    return f"553 5.7.1 <{sender}>: Sender address rejected: not logged in"


ALL = "reject_sender_login_mismatch"
AUTH = "reject_authenticated_sender_login_mismatch"
UNAUTH = "reject_unauthenticated_sender_login_mismatch"
KNOWN = "reject_known_sender_login_mismatch"


@pytest.mark.parametrize(
    ("restriction", "login", "sender", "expected"),
    [
        # The owner, in any case, with an address extension, or via the owner list.
        (ALL, "alice", "alice@example.com", "permit"),
        (ALL, "ALICE", "Alice@Example.COM", "permit"),
        (ALL, "alice", "alice+news@example.com", "permit"),
        (ALL, "alice", "shared@example.com", "permit"),
        (ALL, "bob", "shared@example.com", "permit"),
        (ALL, "carol", "shared@example.com", "permit"),
        (ALL, "bob", "anyone@partner.example", "permit"),
        (ALL, "dave", "dave@example.com", "permit"),  # the bare "user" key: example.com is local
        # A sender not owned by the user is refused (issue 3), as is one nobody owns.
        (ALL, "alice", "carol@example.com", not_owned("carol@example.com", "alice")),
        (ALL, "dave", "shared@example.com", not_owned("shared@example.com", "dave")),
        (ALL, "alice", "anyone@partner.example", not_owned("anyone@partner.example", "alice")),
        (ALL, "alice", "nobody@example.com", not_owned("nobody@example.com", "alice")),
        (ALL, "alice", "stranger@foreign.example", not_owned("stranger@foreign.example", "alice")),
        (ALL, "dave", "dave@foreign.example", not_owned("dave@foreign.example", "dave")),  # "dave" is for local domains only
        (ALL, "alice@example.com", "alice@example.com", not_owned("alice@example.com", "alice@example.com")),
        # A client that is not logged in may not use a listed sender; unlisted ones are free.
        (ALL, None, "alice@example.com", not_logged_in("alice@example.com")),
        (ALL, None, "anyone@partner.example", not_logged_in("anyone@partner.example")),
        (ALL, None, "nobody@example.com", not_logged_in("nobody@example.com")),
        (ALL, None, "stranger@foreign.example", "permit"),
        # The null sender is never checked.
        (ALL, "alice", "", "permit"),
        (ALL, None, "", "permit"),
        (AUTH, "alice", "", "permit"),
        (KNOWN, None, "", "permit"),
        # The partial forms.
        (AUTH, "alice", "carol@example.com", not_owned("carol@example.com", "alice")),
        (AUTH, "alice", "stranger@foreign.example", not_owned("stranger@foreign.example", "alice")),
        (AUTH, None, "alice@example.com", "permit"),
        (UNAUTH, None, "alice@example.com", not_logged_in("alice@example.com")),
        (UNAUTH, "alice", "carol@example.com", "permit"),
        (KNOWN, "alice", "carol@example.com", not_owned("carol@example.com", "alice")),
        (KNOWN, "alice", "stranger@foreign.example", "permit"),
        (KNOWN, "alice", "alice@example.com", "permit"),
        (KNOWN, None, "carol@example.com", not_logged_in("carol@example.com")),
        (KNOWN, None, "stranger@foreign.example", "permit"),
    ],
)
def test_sender_login_mismatch(restriction, login, sender, expected):
    policy = with_logins(sender_restrictions=[restriction])
    d = policy.check_recipient(as_user(login), sender, "bob@example.com")
    assert line(d) == expected
    if d.rejected:
        assert (d.action, d.restriction, d.stage) == ("reject", restriction, Stage.SENDER)
    assert line(policy.check_sender(as_user(login), sender)) == expected


def test_seed_submission_setup_refuses_foreign_senders_and_strangers(tmp_path):
    # Issue 3: after AUTH the user relays, but only with an address the user owns.
    logins = tmp_path / "sender_logins"
    logins.write_text("alice@example.com alice\n@example.org bob, carol\n")
    policy = make(
        sender_restrictions=["reject_sender_login_mismatch"],
        sender_login_maps=f"texthash:{logins}",
    )
    assert policy.check_recipient(AUTHENTICATED, "alice@example.com", "x@foreign.example").action == "permit"
    assert policy.check_recipient(AUTHENTICATED, "boss@example.org", "x@foreign.example").reply_line == (
        not_owned("boss@example.org", "alice")
    )
    assert policy.check_recipient(as_user("carol"), "boss@example.org", "x@foreign.example").action == "permit"
    # A failed AUTH leaves the client unauthenticated: no relaying, and no listed sender.
    assert policy.check_recipient(OUTSIDER, "eve@evil.example", "x@foreign.example").reply_line == (
        "554 5.7.1 <x@foreign.example>: Relay access denied"
    )
    assert policy.check_recipient(OUTSIDER, "alice@example.com", "bob@example.com").reply_line == (
        not_logged_in("alice@example.com")
    )


def test_login_mismatch_in_the_recipient_list_and_from_an_access_table():
    policy = with_logins(recipient_restrictions=[ALL, "permit_sasl_authenticated", "reject"])
    d = policy.check_recipient(as_user("alice"), "carol@example.com", "x@foreign.example")
    assert (d.reply_line, d.stage) == (not_owned("carol@example.com", "alice"), Stage.RECIPIENT)
    assert policy.check_recipient(as_user("alice"), "alice@example.com", "x@foreign.example").action == "permit"

    access = RecordingTable({"example.com": "reject_sender_login_mismatch"})
    maps = {"fake:logins": RecordingTable(LOGINS), "fake:access": access}
    policy = with_logins(maps, sender_restrictions=["check_sender_access fake:access"], sender_login_maps="fake:logins")
    assert policy.check_recipient(as_user("alice"), "carol@example.com", "bob@example.com").reply_line == (
        not_owned("carol@example.com", "alice")
    )
    assert policy.check_recipient(as_user("alice"), "carol@foreign.example", "bob@example.com").action == "permit"


@pytest.mark.parametrize(
    ("sender", "changes", "keys"),
    [
        ("Alice+News@Example.COM.", {}, ["alice+news@example.com", "alice@example.com", "alice+news", "alice", "@example.com"]),
        ("joe@foreign.example", {}, ["joe@foreign.example", "@foreign.example"]),
        ("joe@[192.0.2.1]", {"inet_addresses_for_ip_literals": ["192.0.2.1"]}, ["joe@[192.0.2.1]", "joe", "@[192.0.2.1]"]),
        # A sender without a domain is user@$myorigin, and $myorigin is local.
        ("joe", {}, ["joe@mail.example.com", "joe", "@mail.example.com"]),
        ("joe", {"myorigin": "example.org"}, ["joe@example.org", "joe", "@example.org"]),
        ("joe@example.org", {"myorigin": "example.org"}, ["joe@example.org", "joe", "@example.org"]),
    ],
)
def test_sender_login_map_lookup_order(sender, changes, keys):
    table = RecordingTable()
    with_logins({"fake:logins": table}, sender_restrictions=[ALL], **changes).check_sender(as_user("alice"), sender)
    assert table.keys == keys


def test_each_key_is_tried_in_every_map_before_the_next_key():
    first = RecordingTable({"@example.com": "carol"})
    second = RecordingTable({"alice@example.com": "alice"})
    maps = {"fake:first": first, "fake:second": second}
    policy = with_logins(maps, sender_restrictions=[ALL], sender_login_maps=["fake:first, fake:second"])
    assert policy.check_sender(as_user("alice"), "alice@example.com").action == "permit"
    assert (first.keys, second.keys) == (["alice@example.com"], ["alice@example.com"])
    assert line(policy.check_sender(as_user("alice"), "bob@example.com")) == not_owned("bob@example.com", "alice")


def test_with_sasl_disabled_unauthenticated_clients_are_not_checked():
    # postconf(5): the unauthenticated part applies "when SASL is enabled".
    policy = with_logins(sender_restrictions=[ALL], sasl_auth_enable=False)
    assert policy.check_sender(OUTSIDER, "alice@example.com").action == "permit"
    assert line(policy.check_sender(as_user("alice"), "carol@example.com")) == not_owned("carol@example.com", "alice")


def test_login_map_failure_defers_naming_the_sender():
    policy = with_logins({"fake:logins": RecordingTable(fail=True)}, sender_restrictions=[ALL])
    d = policy.check_recipient(as_user("alice"), "alice@example.com", "bob@example.com")
    assert (d.action, d.reply_line) == ("defer", "451 4.3.0 <alice@example.com>: Temporary lookup failure")
    assert d.reason.endswith("(fake:table: connection refused)")


def test_login_text_is_made_printable():
    d = with_logins(sender_restrictions=[ALL]).check_sender(as_user("eve\r\n250 ok"), "alice@example.com")
    assert d.text == "<alice@example.com>: Sender address rejected: not owned by user eve??250 ok"


@pytest.mark.parametrize("restriction", [ALL, AUTH, UNAUTH, KNOWN])
def test_login_mismatch_without_login_maps_is_refused(restriction):
    with pytest.raises(PolicyError) as e:
        make(sender_restrictions=[restriction])
    assert str(e.value) == (
        f"smtpd_sender_restrictions: {restriction} needs smtpd_sender_login_maps, the table of the SASL logins "
        "that own each sender address; e.g. smtpd_sender_login_maps = texthash:/etc/smarthost/sender_logins"
    )


@pytest.mark.parametrize(
    ("maps", "message"),
    [
        ("/etc/postfix/sender_logins", 'smtpd_sender_login_maps: "/etc/postfix/sender_logins" is not a table: write type:name'),
        ("nosuch:/etc/postfix/sender_logins", 'smtpd_sender_login_maps: nosuch:/etc/postfix/sender_logins: unsupported table type "nosuch"'),
        ("inline:{ a=b", 'smtpd_sender_login_maps: missing "}"'),
    ],
)
def test_bad_login_maps_are_refused(maps, message):
    with pytest.raises(PolicyError) as e:
        make(sender_login_maps=maps)
    assert str(e.value).startswith(message)


@given(
    owners=st.lists(st.text(alphabet="abcXYZ.@_-", min_size=1, max_size=6), min_size=1, max_size=4),
    separators=st.lists(st.sampled_from([",", " ", ", ", " ,\t", ",,"]), min_size=4, max_size=4),
    other=st.text(alphabet="abcXYZ.@_-", min_size=1, max_size=6),
)
def test_owner_lists_split_at_commas_and_whitespace(owners, separators, other):
    value = "".join(o + s for o, s in zip(owners, separators))
    policy = with_logins({"fake:logins": RecordingTable({"team@example.com": value})}, sender_restrictions=[AUTH])
    for owner in owners:
        assert policy.check_sender(as_user(owner.swapcase()), "team@example.com").action == "permit"
    expected = "permit" if other.casefold() in {o.casefold() for o in owners} else not_owned("team@example.com", other)
    assert line(policy.check_sender(as_user(other), "team@example.com")) == expected
