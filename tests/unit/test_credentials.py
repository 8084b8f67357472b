"""smtp_sasl_password_maps lookups in Postfix's order, with real texthash/inline tables."""

import pytest

from smarthost.outbound.credentials import Credentials, candidate_keys, lookup_credentials
from smarthost.tables import TableError, open_table


def texthash(tmp_path, text):
    path = tmp_path / "sasl_passwd"
    path.write_text(text)
    return open_table(f"texthash:{path}")


def test_the_recipe_relayhost_with_port_matches_its_exact_key(tmp_path):
    table = texthash(tmp_path, "[mail.example.com]:587 relayuser:s3cret:with:colons\n")
    found = lookup_credentials([table], sender="a@example.org", host="mail.example.com", nexthop="[mail.example.com]:587")
    assert found == Credentials("relayuser", "s3cret:with:colons", "[mail.example.com]:587", table.name)


def test_key_without_port_does_not_match_a_next_hop_with_port(tmp_path):
    table = texthash(tmp_path, "[mail.example.com] user:pw\n")
    assert lookup_credentials([table], sender="", host="smtp.example.com", nexthop="[mail.example.com]:587") is None
    found = lookup_credentials([table], sender="", host="smtp.example.com", nexthop="[mail.example.com]")
    assert found is not None and found.key == "[mail.example.com]"


def test_remote_host_name_comes_before_the_next_hop(tmp_path):
    table = texthash(tmp_path, "mx1.example.net hostuser:a\nexample.net domainuser:b\n")
    found = lookup_credentials([table], sender="", host="mx1.example.net", nexthop="example.net")
    assert (found.username, found.key) == ("hostuser", "mx1.example.net")


@pytest.mark.parametrize(
    "sender, dependent, user",
    [
        ("alice@example.org", True, "alice"),
        ("bob@example.org", True, "org"),  # @domain
        ("carol@other.example", True, "relay"),  # falls through to the next hop
        ("alice@example.org", False, "relay"),  # sender keys only when enabled
        ("", True, "relay"),  # the null sender has no sender key
    ],
)
def test_sender_dependent_authentication(tmp_path, sender, dependent, user):
    table = texthash(
        tmp_path,
        "alice@example.org alice:pa\n@example.org org:po\n[mail.example.com]:587 relay:pr\n",
    )
    found = lookup_credentials(
        [table], sender=sender, host="mail.example.com", nexthop="[mail.example.com]:587", sender_dependent=dependent
    )
    assert found.username == user


def test_candidate_keys_for_the_config_doctor():
    keys = candidate_keys(
        sender="a@example.org", host="mail.example.com", nexthop="[mail.example.com]:587", sender_dependent=True
    )
    assert keys == ["a@example.org", "@example.org", "mail.example.com", "[mail.example.com]:587"]
    keys = candidate_keys(sender="a@example.org", host="mx.example", nexthop="mx.example", sender_dependent=False)
    assert keys == ["mx.example"]


def test_keys_are_case_insensitive_and_tables_are_searched_key_by_key(tmp_path):
    first = open_table("inline:{ {[MAIL.example.com]:587 = first:1} }")
    second = open_table("inline:{ mail.example.com=second:2 }")
    found = lookup_credentials([first, second], sender="", host="mail.example.com", nexthop="[mail.example.com]:587")
    assert found.username == "second"  # the host name key comes first, in every table
    found = lookup_credentials([first, second], sender="", host="other.example.com", nexthop="[mail.example.com]:587")
    assert found.username == "first"


def test_value_without_colon_is_a_username_with_an_empty_password():
    table = open_table("inline:{ mail.example.com=justuser }")
    found = lookup_credentials([table], sender="", host="mail.example.com", nexthop="mail.example.com")
    assert (found.username, found.password) == ("justuser", "")


def test_password_is_never_in_the_repr(tmp_path):
    table = texthash(tmp_path, "[mail.example.com]:587 relayuser:hunter2\n")
    found = lookup_credentials([table], sender="", host="x", nexthop="[mail.example.com]:587")
    assert "hunter2" not in repr(found) and "hunter2" not in str(found)
    assert "relayuser" in repr(found) and "[mail.example.com]:587" in repr(found)


def test_table_errors_propagate(tmp_path):
    class Broken:
        name = "broken"

        def lookup(self, key):
            raise TableError("broken")

    with pytest.raises(TableError):
        lookup_credentials([Broken()], sender="", host="h", nexthop="n")
