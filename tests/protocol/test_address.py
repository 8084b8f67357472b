"""RFC 5321 §4.1.2 paths: what parses, into what, and what is refused."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smarthost.smtp.address import Address, AddressError, parse_path, split_path


@pytest.mark.parametrize(
    ("path", "local", "domain"),
    [
        ("<user@example.com>", "user", "example.com"),
        ("<First.Last+tag@Sub.Example.COM>", "First.Last+tag", "Sub.Example.COM"),
        # Relay tricks must come out exactly as written so the policy can judge them.
        ("<user%foreign@local>", "user%foreign", "local"),
        ('<"user@foreign"@local>', '"user@foreign"', "local"),
        ("<@local:user@foreign>", "user", "foreign"),
        ("<@a.example,@b.example:user@foreign>", "user", "foreign"),
        ("<foreign!user@local>", "foreign!user", "local"),
        ("<user@[192.0.2.1]>", "user", "[192.0.2.1]"),
        ("<user@[IPv6:2001:db8::1]>", "user", "[IPv6:2001:db8::1]"),
        ("<user@[x-tag:some-thing]>", "user", "[x-tag:some-thing]"),
        ('<"john doe"@example.com>', '"john doe"', "example.com"),
        ('<"a\\"b"@example.com>', '"a\\"b"', "example.com"),
        ("<o'brien@example.com>", "o'brien", "example.com"),
        ("<x@localhost>", "x", "localhost"),
    ],
)
def test_valid_paths(path, local, domain):
    address = parse_path(path)
    assert (address.local, address.domain, address.raw) == (local, domain, path)


def test_str_and_flags():
    assert str(parse_path("<a@b.example>")) == "a@b.example"
    assert parse_path("<a@[192.0.2.1]>").is_ip_literal
    assert not parse_path("<a@b.example>").is_ip_literal
    assert parse_path("<>", allow_null=True) is Address.NULL
    assert Address.NULL.is_null and str(Address.NULL) == ""


def test_null_path_only_when_allowed():
    with pytest.raises(AddressError):
        parse_path("<>")


def test_postmaster_without_domain_only_when_allowed():
    # RFC 5321 §4.5.1: RCPT TO:<Postmaster> must be accepted.
    address = parse_path("<Postmaster>", allow_postmaster=True)
    assert (address.local, address.domain, str(address)) == ("Postmaster", "", "Postmaster")
    with pytest.raises(AddressError):
        parse_path("<postmaster>")


@pytest.mark.parametrize(
    "path",
    [
        "user@example.com",  # no brackets
        "<user@example.com",
        "<user>",
        "<@example.com>",
        "<user@>",
        "<.user@example.com>",
        "<user.@example.com>",
        "<us..er@example.com>",
        "<user@-example.com>",
        "<user@example-.com>",
        "<user@example..com>",
        "<user@example.com.>",
        "<user@[192.0.2.256]>",
        "<user@[192.0.2]>",
        "<user@[IPv6:2001:db8::g]>",
        "<user@[IPv6:fe80::1%eth0]>",
        "<user@[bad-:x]>",
        "<user@[:x]>",
        "<us er@example.com>",
        "<user@exa mple.com>",
        '<"unterminated@example.com>',
        "<user@example.com> ",
        "<local:user@example.com>",
        "<user\x00@example.com>",
        "<a@b@c>",
    ],
)
def test_invalid_paths(path):
    with pytest.raises(AddressError):
        parse_path(path)


def test_length_limits():
    # RFC 5321 §4.5.3.1: local part 64, domain 255, path 256 octets.
    parse_path(f"<{'a' * 64}@example.com>")
    with pytest.raises(AddressError, match="local part"):
        parse_path(f"<{'a' * 65}@example.com>")
    with pytest.raises(AddressError, match="label"):
        parse_path(f"<a@{'b' * 64}.example>")
    domain = ".".join(["c" * 60] * 4)  # 243 octets
    parse_path(f"<a@{domain}>")
    with pytest.raises(AddressError, match="path too long"):
        parse_path(f"<{'a' * 10}@{domain}.{'d' * 10}>")


def test_utf8_needs_smtputf8():
    # RFC 6531 §3.3: UTF-8 local parts and U-label domains only with SMTPUTF8.
    with pytest.raises(AddressError) as info:
        parse_path("<jörg@bücher.example>")
    assert info.value.non_ascii
    address = parse_path("<jörg@bücher.example>", smtputf8=True)
    assert (address.local, address.domain) == ("jörg", "bücher.example")
    address = parse_path('<"jö rg"@example.com>', smtputf8=True)
    assert address.local == '"jö rg"'


def test_utf8_length_counts_octets():
    with pytest.raises(AddressError, match="local part"):
        parse_path(f"<{'ö' * 33}@example.com>", smtputf8=True)
    # 32 characters but 64 octets: one label too long (RFC 1035 §2.3.4), though the whole
    # domain has fewer than 63 characters.
    with pytest.raises(AddressError, match="label"):
        parse_path(f"<a@{'ü' * 32}.example>", smtputf8=True)
    parse_path(f"<a@{'ü' * 31}.example>", smtputf8=True)


def test_utf8_syntax_errors_are_not_reported_as_missing_smtputf8():
    with pytest.raises(AddressError) as info:
        parse_path("<jö rg@example.com>")
    assert not info.value.non_ascii


@pytest.mark.parametrize(
    ("argument", "path", "rest"),
    [
        ("<a@b.example>", "<a@b.example>", ""),
        ("<a@b.example> SIZE=10", "<a@b.example>", " SIZE=10"),
        ('<"x>y"@b.example> BODY=8BITMIME', '<"x>y"@b.example>', " BODY=8BITMIME"),
        ('<"x\\">y"@b.example>', '<"x\\">y"@b.example>', ""),
        ("<>", "<>", ""),
    ],
)
def test_split_path(argument, path, rest):
    assert split_path(argument) == (path, rest)


@pytest.mark.parametrize("argument", ["a@b.example", "<a@b.example", '<"a>@b.example'])
def test_split_path_errors(argument):
    with pytest.raises(AddressError):
        split_path(argument)


atext = st.sampled_from("abcXYZ019!#$%&'*+/=?^_`{|}~-")
atoms = st.text(atext, min_size=1, max_size=8)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)


@given(st.lists(atoms, min_size=1, max_size=4), st.lists(labels, min_size=1, max_size=4))
def test_generated_mailboxes_round_trip(local_atoms, domain_labels):
    local, domain = ".".join(local_atoms), ".".join(domain_labels)
    address = parse_path(f"<{local}@{domain}>")
    assert (address.local, address.domain) == (local, domain)


@given(st.text(max_size=80))
def test_arbitrary_text_parses_or_raises_address_error(text):
    try:
        address = parse_path(text, smtputf8=True, allow_null=True, allow_postmaster=True)
    except AddressError:
        return
    assert text.startswith("<") and text.endswith(">")
    assert len(address.local.encode()) <= 64 and len(address.domain.encode()) <= 255
