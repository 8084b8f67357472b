"""regexp: and pcre: tables: matching rules, if/endif, $n substitution, flags, errors, fuzzing."""

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smarthost.tables import TableError, open_table
from smarthost.tables.regexp import InlineRegexpTable, RegexpTable, parse_pcre, parse_regexp


def table(tmp_path: Path, kind: str, text: str):
    f = tmp_path / "t"
    f.write_text(text)
    return open_table(f"{kind}:{f}")


ACCESS = r"""
# regexp_table(5)'s example access map
/[%!@].*[%!@]/       550 Sender-specified routing rejected
/^postmaster@/       OK
if !/^owner-/
/^(.*)-outgoing@(.*)$/  550 Use ${1}@${2} instead
endif
"""


@pytest.mark.parametrize("kind", ["regexp", "pcre"])
def test_manual_example(tmp_path, kind):
    t = table(tmp_path, kind, ACCESS)
    assert t.lookup("a%b@c") == "550 Sender-specified routing rejected"
    assert t.lookup("Postmaster@example.com") == "OK"
    assert t.lookup("list-outgoing@example.com") == "550 Use list@example.com instead"
    assert t.lookup("owner-list-outgoing@example.com") is None
    assert t.lookup("user@example.com") is None


@pytest.mark.parametrize("kind", ["regexp", "pcre"])
def test_first_match_wins_and_negation(tmp_path, kind):
    t = table(tmp_path, kind, "/^a/ first\n/^ab/ second\n!/x/ no x here\n")
    assert t.lookup("abc") == "first"
    assert t.lookup("bcd") == "no x here"
    assert t.lookup("xyz") is None


@pytest.mark.parametrize("kind", ["regexp", "pcre"])
def test_case_flag_toggles_default_insensitivity(tmp_path, kind):
    t = table(tmp_path, kind, "/^Exact$/i sensitive\n/^any$/ insensitive\n")
    assert t.lookup("Exact") == "sensitive"
    assert t.lookup("exact") is None
    assert t.lookup("ANY") == "insensitive"


@pytest.mark.parametrize("kind", ["regexp", "pcre"])
def test_substitution_forms(tmp_path, kind):
    t = table(tmp_path, kind, "/^(a)(b)?(c)$/ $1-${2}-$(3) costs $$5\n")
    assert t.lookup("abc") == "a-b-c costs $5"
    assert t.lookup("ac") == "a--c costs $5"  # a group that did not take part is empty


@pytest.mark.parametrize("kind", ["regexp", "pcre"])
def test_nested_if_blocks(tmp_path, kind):
    t = table(
        tmp_path,
        kind,
        "if /@example\\.com$/\nif /^admin/\n/./ admin at example\nendif\n/^(.*)@/ user $1\nendif\n/./ other\n",
    )
    assert t.lookup("admin@example.com") == "admin at example"
    assert t.lookup("joe@example.com") == "user joe"
    assert t.lookup("joe@example.net") == "other"


def test_delimiters_and_escaped_delimiter(tmp_path):
    t = table(tmp_path, "regexp", "|^a/b$| slash\n/^c\\/d$/ escaped\n")
    assert t.lookup("a/b") == "slash"
    assert t.lookup("c/d") == "escaped"


def test_posix_syntax_is_translated(tmp_path):
    t = table(
        tmp_path,
        "regexp",
        "/^[[:digit:]]+$/ digits\n/^a\\d$/ posix d\n/^[[:alpha:]_]+$/ word\n/\\<cat\\>/ whole cat\n/[\\]/ backslash\n",
    )
    assert t.lookup("2024") == "digits"
    assert t.lookup("Ab_c") == "word"
    assert t.lookup("a cat!") == "whole cat"
    assert t.lookup("concatenate 1") is None
    assert t.lookup("ad") == "posix d"  # POSIX: \d is "d"
    assert t.lookup("a\\b") == "backslash"


def test_regexp_dollar_is_the_end_of_the_key(tmp_path):
    t = table(tmp_path, "regexp", "/^a$/ end\n/^b$/m multi-line\n")
    assert t.lookup("a") == "end"
    assert t.lookup("a\n") is None
    assert t.lookup("x\nb\ny") == "multi-line"


def test_pcre_flags(tmp_path):
    t = table(tmp_path, "pcre", "/b/A anchored\n/a.c/s dotall\n/ x y z /x verbose\n/\\d{3}/ digits\n")
    assert t.lookup("bxx") == "anchored"
    assert t.lookup("xbx") is None
    assert t.lookup("a\nc") == "dotall"
    assert t.lookup("xyz") == "verbose"
    assert t.lookup("a123") == "digits"


def test_keys_are_not_case_folded(tmp_path):
    t = table(tmp_path, "pcre", "/^(.*)$/i $1\n")
    assert t.lookup("MiXeD") == "MiXeD"


def test_inline_rules(tmp_path):
    t = open_table("regexp:{ {/^a/ starts with a}, { /^(b)/ $1 } }")
    assert t.lookup("abc") == "starts with a"
    assert t.lookup("bcd") == "b"
    with pytest.raises(TableError, match=r"write each rule in braces"):
        open_table("pcre:{ /a/ b }")


@pytest.mark.parametrize(
    ("kind", "content", "message"),
    [
        ("regexp", "/a/ ok\nabc def\n", ':2: expected a pattern in delimiters, e.g. "/pattern/ result"'),
        ("regexp", "/a/ ok\n/abc def\n", ':2: missing closing "/" after the pattern'),
        ("regexp", "/a/\n", ":1: missing result after the pattern"),
        ("pcre", "/a(/ x\n", ":1: missing ), unterminated subpattern"),
        ("regexp", "/(a)/ $2\n", ":1: $2 in the result, but the pattern has 1 group(s)"),
        ("regexp", "!/(a)/ $1\n", ":1: $1 in the result of a negated pattern"),
        ("regexp", "/a/ cost $x\n", ':1: "$" in the result must be $1..$99'),
        ("regexp", "/a/ b\nendif\n", ':2: "endif" without "if"'),
        ("regexp", "/a/ b\nif /x/\n/y/ z\n", ':2: "if" without "endif"'),
        ("regexp", "if /x/ extra\nendif\n", ':1: text after the pattern of "if"'),
        ("regexp", "if /x/\nendif now\n", ':2: text after "endif"'),
        ("regexp", "/a/q b\n", ':1: unknown flag "q"; i m are known'),
        ("regexp", "/a/x b\n", ':1: flag "x" (basic regular expressions) is not supported'),
        ("pcre", "/a/U b\n", ':1: flag "U" is not supported'),
        ("regexp", "/[[:foo:]]/ b\n", ':1: unknown character class "[:foo:]"'),
        ("regexp", "/[[.a.]]/ b\n", ':1: collating element "[.a.]" is not supported'),
        ("regexp", "/[abc/ b\n", ':1: missing "]"'),
        ("regexp", "x\n" + "if /a/\n" * 65, ":1: expected a pattern"),
        ("regexp", "if /a/\n" * 65, ":65: if..endif nested deeper than 64"),
    ],
)
def test_errors_name_file_and_line(tmp_path, kind, content, message):
    f = tmp_path / "t"
    f.write_text(content)
    with pytest.raises(TableError) as e:
        open_table(f"{kind}:{f}")
    assert str(e.value).startswith(f"{f}{message}")


def test_changed_file_is_reloaded(tmp_path):
    f = tmp_path / "t"
    f.write_text("/a/ old\n")
    now = [1000.0]
    t = RegexpTable("regexp:t", f, parse_regexp, clock=lambda: now[0])
    f.write_text("/a/ new\n")
    os.utime(f, ns=(2 * 10**18, 2 * 10**18))
    now[0] += 1
    assert t.lookup("a") == "new"


# Garbage in: only TableError out, never another exception; good lines still parse.
_line = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda neg, d, body, flags, result: f"{neg}{d}{body}{d}{flags} {result}",
        st.sampled_from(["", "!", "if ", "if !"]),
        st.sampled_from(list("/#|~!,%")),
        st.text(alphabet="ab()[]{}^$.*+?|\\:=-0123456789", max_size=15),
        st.text(alphabet="imsxAEUXuq", max_size=3),
        st.text(alphabet="ab $(){}12", max_size=10),
    ),
    st.sampled_from(["endif", "if", "  continued", "# comment", ""]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_line, max_size=12), st.sampled_from([parse_regexp, parse_pcre]), st.text(max_size=20))
def test_parser_never_crashes_on_garbage(lines, parse, key):
    path = Path("fuzz")
    try:
        rules = parse("\n".join(lines), path)
    except TableError as e:
        assert str(e).startswith("fuzz:")
        return
    result = InlineRegexpTable("fuzz", rules).lookup(key)
    assert result is None or isinstance(result, str)
