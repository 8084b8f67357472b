"""Tables: the registry, texthash (format, limits, errors, reload), inline, static, cidr."""

import logging
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smarthost import tables
from smarthost.tables import Table, TableError, known_table_types, open_table, register_table_type, split_list
from smarthost.tables.cidr import CidrTable, parse_cidr
from smarthost.tables.texthash import TexthashTable, parse_texthash


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


# --- registry ----------------------------------------------------------------------------------


def test_unknown_type_names_it_and_lists_known_types():
    with pytest.raises(TableError) as e:
        open_table("nosuch:/etc/postfix/access")
    assert str(e.value) == (
        'unsupported table type "nosuch" in "nosuch:/etc/postfix/access"; known types: btree, cidr, hash, inline,'
        " lmdb, pcre, pgsql, regexp, sqlite, static, texthash"
    )


@pytest.mark.parametrize("spec", ["/etc/postfix/access", "texthash:", ":x"])
def test_spec_without_type_or_name_is_refused(spec):
    with pytest.raises(TableError, match="is not a table: write type:name, e.g. texthash:/etc/smarthost/access"):
        open_table(spec)


def test_registered_type_opens_through_its_opener():
    class Upper:
        def __init__(self, name):
            self.name = f"upper:{name}"

        def lookup(self, key):
            return key.upper()

    register_table_type("upper", lambda name, config_dir: Upper(name))
    try:
        t = open_table("UPPER:anything")
        assert isinstance(t, Table)
        assert (t.name, t.lookup("abc")) == ("upper:anything", "ABC")
        assert "upper" in known_table_types()
    finally:
        tables._registry.pop("upper")


# --- texthash ----------------------------------------------------------------------------------


def test_texthash_format(tmp_path):
    f = write(
        tmp_path / "access",
        "# comment\n"
        "\n"
        "Example.COM\tREJECT Go Away\n"
        "   # indented comment\n"
        "user@example.net   OK\n"
        "long.example  550 5.7.1 first part\n"
        "    second part\n"
        "\tthird part\n"
        "crlf.example OK\r\n",
    )
    t = open_table(f"texthash:{f}")
    assert t.name == f"texthash:{f}"
    assert t.lookup("example.com") == "REJECT Go Away"
    assert t.lookup("EXAMPLE.com") == "REJECT Go Away"
    assert t.lookup("USER@example.NET") == "OK"
    assert t.lookup("long.example") == "550 5.7.1 first part second part third part"
    assert t.lookup("crlf.example") == "OK"
    assert t.lookup("missing.example") is None
    assert t.lookup("# comment") is None


def test_texthash_relative_path_resolves_against_config_dir(tmp_path):
    write(tmp_path / "access", "a b\n")
    t = open_table("texthash:access", config_dir=tmp_path)
    assert t.lookup("a") == "b"
    assert t.name == "texthash:access"


def test_texthash_duplicate_keeps_first_and_warns(tmp_path, caplog):
    f = write(tmp_path / "access", "a first\nA second\n")
    with caplog.at_level(logging.WARNING):
        t = open_table(f"texthash:{f}")
    assert t.lookup("a") == "first"
    assert f'{f}:2: duplicate entry "a" ignored' in caplog.text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a b\nkeyonly\n", ':2: expected "key whitespace value", found a key without a value'),
        ("  leading value\n", ":1: continuation line (it starts with whitespace) without a line before it"),
        (b"a b\nc \xff\n", ":2: not UTF-8 text"),
        ("a " + "x" * 70000 + "\n", ":1: logical line longer than 65536 characters"),
    ],
)
def test_texthash_errors_name_file_and_line(tmp_path, content, message):
    f = write(tmp_path / "access", content)
    with pytest.raises(TableError) as e:
        open_table(f"texthash:{f}")
    assert str(e.value).startswith(f"{f}{message}")


def test_texthash_error_does_not_echo_the_line(tmp_path):
    f = write(tmp_path / "sasl_passwd", "[relay.example]:587 user:secret\nuser:hunter2\n")
    with pytest.raises(TableError) as e:
        open_table(f"texthash:{f}")
    assert "hunter2" not in str(e.value)


def test_texthash_size_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "MAX_FILE_BYTES", 1024 * 1024)
    f = write(tmp_path / "big", "k v\n" * 300_000)
    with pytest.raises(TableError, match=r"is larger than 1 MiB"):
        open_table(f"texthash:{f}")


def test_texthash_missing_file(tmp_path):
    with pytest.raises(TableError, match=rf"texthash:{tmp_path}/nope: cannot read {tmp_path}/nope: No such file"):
        open_table(f"texthash:{tmp_path}/nope")


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def rewrite(path: Path, text: str, mtime_ns: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_texthash_changed_file_is_reread_at_most_once_a_second(tmp_path):
    f = tmp_path / "access"
    rewrite(f, "a old\n", 1_000_000_000_000_000_000)
    clock = FakeClock()
    t = TexthashTable("texthash:access", f, parse_texthash, clock=clock)
    rewrite(f, "a new\n", 1_000_000_001_000_000_000)
    clock.now += 0.5
    assert t.lookup("a") == "old"  # not checked yet
    clock.now += 0.5
    assert t.lookup("a") == "new"


def test_texthash_same_size_same_second_change_is_noticed(tmp_path):
    f = tmp_path / "access"
    rewrite(f, "a 1\n", 1_000_000_000_000_000_000)
    clock = FakeClock()
    t = TexthashTable("texthash:access", f, parse_texthash, clock=clock)
    rewrite(f, "a 2\n", 1_000_000_000_000_000_001)
    clock.now += 1
    assert t.lookup("a") == "2"


def test_texthash_broken_or_missing_file_fails_lookups_until_fixed(tmp_path, caplog):
    f = tmp_path / "access"
    rewrite(f, "a ok\n", 1_000_000_000_000_000_000)
    clock = FakeClock()
    t = TexthashTable("texthash:access", f, parse_texthash, clock=clock)

    rewrite(f, "a ok\nbroken\n", 1_000_000_002_000_000_000)
    clock.now += 1
    with caplog.at_level(logging.ERROR), pytest.raises(TableError, match=f"{f}:2: expected"):
        t.lookup("a")
    assert "texthash:access: changed file not loaded" in caplog.text
    with pytest.raises(TableError):  # still broken: no re-read needed to know
        t.lookup("a")

    f.unlink()
    clock.now += 1
    with pytest.raises(TableError, match="cannot read"):
        t.lookup("a")

    rewrite(f, "a fixed\n", 1_000_000_003_000_000_000)
    clock.now += 1
    assert t.lookup("a") == "fixed"


def test_texthash_atomic_replace_is_noticed(tmp_path):
    f = tmp_path / "access"
    rewrite(f, "a 1\n", 1_000_000_000_000_000_000)
    clock = FakeClock()
    t = TexthashTable("texthash:access", f, parse_texthash, clock=clock)
    tmp = tmp_path / "access.tmp"
    rewrite(tmp, "a 2\n", 1_000_000_000_000_000_000)  # same size, same mtime, new inode
    os.replace(tmp, f)
    clock.now += 1
    assert t.lookup("a") == "2"


# --- inline, static ----------------------------------------------------------------------------


def test_inline_table():
    t = open_table("inline:{ Key1=value1, key2=Value2 { key3 = text with spaces, and commas } }")
    assert t.lookup("KEY1") == "value1"
    assert t.lookup("key2") == "Value2"
    assert t.lookup("key3") == "text with spaces, and commas"
    assert t.lookup("key4") is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("inline:key=value", "an inline table is written inline:{ key=value"),
        ("inline:{ key = value }", "inline table: item 1 is not key=value"),
        ("inline:{ a=b, { c=d }", 'inline table: missing "}"'),
        ("inline:{ =b }", "inline table: item 1 is not key=value"),
    ],
)
def test_inline_errors(spec, message):
    with pytest.raises(TableError, match=message):
        open_table(spec)


def test_inline_and_static_names_hide_values():
    t = open_table("inline:{ [relay.example]:587=user:hunter2 }")
    assert "hunter2" not in t.name and "hunter2" not in repr(t)
    assert "[relay.example]:587" in t.name
    s = open_table("static:user:hunter2")
    assert "hunter2" not in s.name and "hunter2" not in repr(s)


def test_static_table():
    assert open_table("static:OK").lookup("anything") == "OK"
    assert open_table("static:{ REJECT go away }").lookup("x") == "REJECT go away"


# --- cidr --------------------------------------------------------------------------------------


def test_cidr_first_match_in_file_order(tmp_path):
    f = write(
        tmp_path / "clients.cidr",
        "# comment\n"
        "192.0.2.1      REJECT one host\n"
        "192.0.2.0/24   OK\n"
        "[2001:db8::]/32 DUNNO\n"
        "!10.0.0.0/8    REJECT not ten\n"
        "10.1.0.0/16    never reached for non-ten\n",
    )
    t = open_table(f"cidr:{f}")
    assert t.lookup("192.0.2.1") == "REJECT one host"
    assert t.lookup("192.0.2.2") == "OK"
    assert t.lookup("::ffff:192.0.2.2") == "OK"
    assert t.lookup("2001:db8::7") == "DUNNO"
    assert t.lookup("198.51.100.1") == "REJECT not ten"
    assert t.lookup("10.1.2.3") == "never reached for non-ten"
    assert t.lookup("10.2.2.3") is None
    assert t.lookup("mail.example.com") is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("192.0.2.0/24 OK\n192.0.2.1/24 OK\n", ':2: non-null host address bits in "192.0.2.1/24"'),
        ("192.0.2.0/24\n", ':1: expected "network/prefix whitespace result"'),
        ("if 192.0.2.0/24\n192.0.2.1 OK\nendif\n", ":1: if/endif blocks are not supported yet"),
        ("example.com OK\n", ':1: "example.com" is not an IP address or network'),
    ],
)
def test_cidr_errors_name_file_and_line(tmp_path, content, message):
    f = write(tmp_path / "t.cidr", content)
    with pytest.raises(TableError) as e:
        open_table(f"cidr:{f}")
    assert str(e.value).startswith(f"{f}{message}")


def test_cidr_reload(tmp_path):
    f = tmp_path / "t.cidr"
    rewrite(f, "192.0.2.0/24 OK\n", 1_000_000_000_000_000_000)
    clock = FakeClock()
    t = CidrTable("cidr:t.cidr", f, parse_cidr, clock=clock)
    rewrite(f, "192.0.2.0/24 REJECT\n", 1_000_000_001_000_000_000)
    clock.now += 1
    assert t.lookup("192.0.2.5") == "REJECT"


# --- list splitting ----------------------------------------------------------------------------


def test_split_list_keeps_brace_groups():
    assert split_list("permit_mynetworks,check_client_access inline:{ a=b, c=d },\n reject") == [
        "permit_mynetworks",
        "check_client_access",
        "inline:{ a=b, c=d }",
        "reject",
    ]


@given(st.lists(st.from_regex(r"[a-z_:./0-9]+", fullmatch=True), max_size=8), st.sampled_from([" ", ",", ", ", "\n\t"]))
def test_split_list_round_trips_plain_items(items, sep):
    assert split_list(sep.join(items)) == items
