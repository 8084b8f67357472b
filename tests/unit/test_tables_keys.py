"""Postfix's key search orders for access(5), aliases(5) and virtual(5)."""

import pytest

from smarthost.tables.keys import access_address_keys, alias_keys, domain_keys, split_extension, virtual_keys


def test_access_order_with_extension():
    # access(5) EMAIL ADDRESS EXTENSION: user+foo@domain, user@domain, domain, user+foo@, user@
    assert access_address_keys("User+Foo@Sub.Example.COM", "+") == [
        "user+foo@sub.example.com",
        "user@sub.example.com",
        "sub.example.com",
        "example.com",
        "com",
        "user+foo@",
        "user@",
    ]


def test_access_order_without_parent_matching_uses_dot_forms():
    assert access_address_keys("joe@sub.example.com", parent_matches_subdomains=False) == [
        "joe@sub.example.com",
        "sub.example.com",
        ".example.com",
        ".com",
        "joe@",
    ]


def test_access_null_sender_and_bare_user():
    assert access_address_keys("") == ["<>"]
    assert access_address_keys("postmaster") == ["postmaster@"]
    assert access_address_keys("joe@[192.0.2.1]") == ["joe@[192.0.2.1]", "[192.0.2.1]", "joe@"]


def test_alias_order():
    assert alias_keys("Joe+Lists", "+") == ["joe+lists", "joe"]
    assert alias_keys("joe", "+") == ["joe"]


def test_virtual_order():
    # virtual(5) ADDRESS EXTENSION: user+foo@domain, user@domain, user+foo, user, @domain
    assert virtual_keys("Joe+X@Example.com", "+", local_domain=True) == [
        "joe+x@example.com",
        "joe@example.com",
        "joe+x",
        "joe",
        "@example.com",
    ]
    assert virtual_keys("joe+x@example.com", "+") == ["joe+x@example.com", "joe@example.com", "@example.com"]
    assert virtual_keys("joe@example.com") == ["joe@example.com", "@example.com"]


@pytest.mark.parametrize(
    ("local", "delimiters", "expected"),
    [
        ("user+ext", "+", ("user", "+ext")),
        ("user-ext+x", "+-", ("user", "-ext+x")),  # the first delimiter character of any kind
        ("+ext", "+", ("+ext", None)),  # nothing before the delimiter
        ("user", "+", ("user", None)),
        ("user+ext", "", ("user+ext", None)),
        ("postmaster", "t", ("postmaster", None)),  # never split, whatever the delimiter
        ("matt", "t", ("ma", "tt")),
        ("owner-list", "-", ("owner-list", None)),
        ("list-request", "-", ("list-request", None)),
        ("list-outgoing", "-", ("list", "-outgoing")),
    ],
)
def test_split_extension(local, delimiters, expected):
    assert split_extension(local, delimiters) == expected


def test_domain_keys():
    assert domain_keys("a.b.c.") == ["a.b.c", "b.c", "c"]
    assert domain_keys("") == []
