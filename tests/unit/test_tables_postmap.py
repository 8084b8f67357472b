"""``smarthost postmap``: building, querying, dumping, incremental updates, exit codes."""

import io
import os
import stat
from pathlib import Path

import pytest

from smarthost.cli import main


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "etc").mkdir()
    monkeypatch.setenv("MAIL_CONFIG", str(tmp_path / "etc"))
    return tmp_path


def postmap(*args: str, stdin: str | None = None, monkeypatch=None) -> int:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(["postmap", *args])


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_recipe_sasl_passwd_round_trip(workdir, capsys):
    write(workdir / "sasl_passwd", "[mail.example.com]:587 user@example.com:s3cret\n", 0o600)
    assert postmap("hash:sasl_passwd") == 0
    assert stat.S_IMODE(os.stat(workdir / "sasl_passwd.lmdb").st_mode) == 0o600
    assert postmap("-q", "[mail.example.com]:587", "hash:sasl_passwd") == 0
    assert capsys.readouterr().out == "user@example.com:s3cret\n"
    assert postmap("-q", "[mail.example.com]", "hash:sasl_passwd") == 1
    assert capsys.readouterr() == ("", "")


def test_default_type_is_hash_without_main_cf(workdir, capsys):
    write(workdir / "access", "Example.com REJECT\n")
    assert postmap("access") == 0
    assert postmap("-q", "EXAMPLE.COM", "access") == 0
    assert capsys.readouterr().out == "REJECT\n"


def test_default_type_comes_from_main_cf(workdir, capsys):
    write(workdir / "etc" / "main.cf", "default_database_type = texthash\n")
    write(workdir / "access", "a b\n")
    assert postmap("access") == 1
    assert "postmap: fatal: texthash:access: texthash tables are read as they are" in capsys.readouterr().err
    assert postmap("-q", "a", "access") == 0  # texthash is queried directly
    assert capsys.readouterr().out == "b\n"


def test_first_table_with_the_key_answers(workdir, capsys):
    write(workdir / "one", "a 1\n")
    write(workdir / "two", "a 2\nb 2\n")
    assert postmap("one", "two") == 0
    assert postmap("-q", "b", "hash:one", "hash:two") == 0
    assert postmap("-q", "a", "hash:one", "hash:two") == 0
    assert capsys.readouterr().out == "2\n1\n"


def test_dump_prints_every_entry(workdir, capsys):
    write(workdir / "t", "b 2\na 1\n")
    assert postmap("lmdb:t") == 0
    assert postmap("-s", "lmdb:t") == 0
    assert capsys.readouterr().out == "a 1\nb 2\n"
    assert postmap("-s", "texthash:t") == 0
    assert capsys.readouterr().out == "b 2\na 1\n"
    write(workdir / "r", "/a/ b\n")
    assert postmap("-s", "regexp:r") == 1
    assert "-s is not supported for regexp tables" in capsys.readouterr().err


def test_duplicates_warn_by_default_and_r_replaces(workdir, capsys):
    write(workdir / "t", "a first\nA second\n")
    assert postmap("t") == 0
    assert capsys.readouterr().err == 'postmap: warning: t:2: duplicate entry "a" ignored; the first one is used\n'
    postmap("-q", "a", "t")
    assert capsys.readouterr().out == "first\n"
    assert postmap("-r", "t") == 0
    assert capsys.readouterr().err == ""
    postmap("-q", "a", "t")
    assert capsys.readouterr().out == "second\n"
    assert postmap("-w", "t") == 0
    assert capsys.readouterr().err == ""


def test_f_keeps_case(workdir, capsys):
    write(workdir / "t", "MixedCase v\n")
    assert postmap("-f", "t") == 0
    assert postmap("-f", "-q", "MixedCase", "t") == 0
    assert postmap("-f", "-q", "mixedcase", "t") == 1
    assert capsys.readouterr().out == "v\n"


def test_incremental_from_stdin(workdir, capsys, monkeypatch):
    write(workdir / "t", "a 1\n")
    assert postmap("t") == 0
    assert postmap("-i", "t", stdin="b 2\na again\n", monkeypatch=monkeypatch) == 0
    assert 'postmap: warning: -:2: duplicate entry "a" ignored' in capsys.readouterr().err
    assert postmap("-s", "t") == 0
    assert capsys.readouterr().out == "a 1\nb 2\n"


def test_query_keys_from_stdin(workdir, capsys, monkeypatch):
    write(workdir / "t", "a 1\nb 2\n")
    postmap("t")
    assert postmap("-q", "-", "t", stdin="a\nnope\nB\n", monkeypatch=monkeypatch) == 0
    assert capsys.readouterr().out == "a 1\nB 2\n"
    assert postmap("-q", "-", "t", stdin="nope\n", monkeypatch=monkeypatch) == 1


@pytest.mark.parametrize(
    ("spec", "content", "key", "value"),
    [
        ("texthash:t", "k v\n", "K", "v"),
        ("regexp:t", "/^(.*)@example\\.com$/ local $1\n", "Joe@Example.com", "local Joe"),
        ("pcre:t", "/^\\d+$/ digits\n", "123", "digits"),
        ("cidr:t", "192.0.2.0/24 OK\n", "192.0.2.9", "OK"),
        ("inline:{ k=v }", None, "k", "v"),
        ("static:{ any thing }", None, "x", "any thing"),
    ],
)
def test_query_works_for_every_table_type(workdir, capsys, spec, content, key, value):
    if content is not None:
        write(workdir / "t", content)
    assert postmap("-q", key, spec) == 0
    assert capsys.readouterr().out == value + "\n"


def test_errors_name_file_and_line_and_hide_secrets(workdir, capsys):
    write(workdir / "sasl_passwd", "[relay]:587 user:pw\nuser:hunter2\n", 0o600)
    assert postmap("sasl_passwd") == 1
    err = capsys.readouterr().err
    assert err.startswith('postmap: fatal: sasl_passwd:2: expected "key whitespace value"')
    assert "hunter2" not in err
    assert not (workdir / "sasl_passwd.lmdb").exists()


def test_missing_files(workdir, capsys):
    assert postmap("nope") == 1
    assert "postmap: fatal: postmap nope: cannot read nope: No such file or directory" in capsys.readouterr().err
    write(workdir / "t", "a b\n")
    assert postmap("-q", "a", "hash:t") == 1
    assert "t.lmdb does not exist: run smarthost postmap t" in capsys.readouterr().err


def test_building_a_type_that_needs_no_build_is_an_error(workdir, capsys):
    write(workdir / "t", "192.0.2.0/24 OK\n")
    assert postmap("cidr:t") == 1
    assert "postmap builds hash, btree, lmdb tables" in capsys.readouterr().err


def test_p_creates_0644(workdir):
    write(workdir / "t", "a b\n", 0o600)
    assert postmap("-p", "t") == 0
    assert stat.S_IMODE(os.stat(workdir / "t.lmdb").st_mode) == 0o644
