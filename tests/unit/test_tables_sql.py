"""sqlite: tables and what they share with pgsql: (query expansions as bound parameters,
result_format, domain, expansion_limit, the configuration file)."""

import sqlite3
from pathlib import Path

import pytest

from smarthost.tables import TableError, open_table
from smarthost.tables.pgsql import _connect_args, _display, parse_pgsql_cf
from smarthost.tables.sql import Query


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "mail.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE aliases (address TEXT, goto TEXT);
        INSERT INTO aliases VALUES ('joe@example.com', 'joe@elsewhere.example'),
                                   ('list@example.com', 'a@example.net'),
                                   ('list@example.com', 'b@example.net'),
                                   ('list@example.com', NULL),
                                   ('it''s@example.com', 'quoted');
        CREATE TABLE domains (name TEXT, transport TEXT);
        INSERT INTO domains VALUES ('example.com', 'relay.example.com'), ('com', 'tld');
        """
    )
    conn.commit()
    conn.close()
    return path


def cf(tmp_path: Path, text: str, name: str = "t.cf") -> str:
    (tmp_path / name).write_text(text)
    return f"sqlite:{tmp_path / name}"


def test_query_with_key(tmp_path, db):
    t = open_table(cf(tmp_path, f"dbpath = {db}\nquery = SELECT goto FROM aliases WHERE address='%s'\n"))
    assert t.lookup("Joe@Example.COM") == "joe@elsewhere.example"  # keys are lower-cased
    assert t.lookup("list@example.com") == "a@example.net,b@example.net"  # NULL left out
    assert t.lookup("it's@example.com") == "quoted"
    assert t.lookup("nobody@example.com") is None
    assert t.lookup("caf\udce9@example.com") is None  # a surrogate-escaped byte from the wire


def test_relative_dbpath_and_continuation_lines(tmp_path, db):
    t = open_table(cf(tmp_path, "dbpath = mail.sqlite\nquery = SELECT goto\n  FROM aliases WHERE address='%s'\n"))
    assert t.lookup("joe@example.com") == "joe@elsewhere.example"


def test_user_and_domain_expansions(tmp_path, db):
    t = open_table(cf(tmp_path, f"dbpath = {db}\nquery = SELECT goto FROM aliases WHERE address = '%u@%d'\n"))
    assert t.lookup("joe@example.com") == "joe@elsewhere.example"
    assert t.lookup("joe") is None  # %d without a domain: no query
    assert t.lookup("@example.com") is None  # %u with an empty local part: no query


def test_domain_label_expansions(tmp_path, db):
    t = open_table(cf(tmp_path, f"dbpath = {db}\nquery = SELECT transport FROM domains WHERE name = '%2.%1'\n"))
    assert t.lookup("user@mail.example.com") == "relay.example.com"
    t1 = open_table(cf(tmp_path, f"dbpath = {db}\nquery = SELECT transport FROM domains WHERE name = '%3'\n", "b.cf"))
    assert t1.lookup("user@example.com") is None  # not enough labels


def test_percent_escape_and_like(tmp_path, db):
    t = open_table(cf(tmp_path, f"dbpath = {db}\nquery = SELECT goto FROM aliases WHERE address LIKE '%%@%d' AND address = '%s'\n"))
    assert t.lookup("joe@example.com") == "joe@elsewhere.example"


def test_result_format(tmp_path, db):
    t = open_table(
        cf(
            tmp_path,
            f"dbpath = {db}\nquery = SELECT transport FROM domains WHERE name = '%d'\n"
            "result_format = smtp:[%s] for %U at %D, 100%%\n",
        )
    )
    assert t.lookup("joe@example.com") == "smtp:[relay.example.com] for joe at example.com, 100%"


def test_domain_restricts_which_keys_are_looked_up(tmp_path, db):
    t = open_table(
        cf(tmp_path, f"dbpath = {db}\ndomain = example.com, inline:{{ other.example=1 }}\nquery = SELECT '%s'\n")
    )
    assert t.lookup("joe@example.com") == "joe@example.com"
    assert t.lookup("joe@other.example") == "joe@other.example"
    assert t.lookup("joe@example.net") is None
    assert t.lookup("example.com") is None  # a bare domain is not looked up
    assert t.lookup("@example.com") is None


def test_expansion_limit(tmp_path, db):
    t = open_table(
        cf(tmp_path, f"dbpath = {db}\nexpansion_limit = 1\nquery = SELECT goto FROM aliases WHERE address='%s'\n")
    )
    assert t.lookup("joe@example.com") == "joe@elsewhere.example"
    with pytest.raises(TableError, match=r"lookup returned more than 1 results \(expansion_limit\)"):
        t.lookup("list@example.com")


@pytest.mark.parametrize(
    "key",
    [
        "x'; DROP TABLE aliases; --",
        "' OR '1'='1",
        "joe@example.com' OR 'a'='a",
        "%s%d\\'",
    ],
)
def test_injection_attempts_are_harmless(tmp_path, db, key):
    t = open_table(cf(tmp_path, f"dbpath = {db}\nquery = SELECT goto FROM aliases WHERE address='%s'\n"))
    assert t.lookup(key) is None
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM aliases").fetchone() == (5,)


def test_database_is_read_only(tmp_path, db):
    t = open_table(cf(tmp_path, f"dbpath = {db}\nquery = DELETE FROM aliases WHERE address = '%s' RETURNING goto\n"))
    with pytest.raises(TableError, match=r"query failed: attempt to write a readonly database"):
        t.lookup("joe@example.com")
    assert sqlite3.connect(db).execute("SELECT count(*) FROM aliases").fetchone() == (5,)


def test_missing_database_fails_at_open(tmp_path):
    with pytest.raises(TableError, match=r"cannot open .*nope\.sqlite: unable to open database file"):
        open_table(cf(tmp_path, f"dbpath = {tmp_path}/nope.sqlite\nquery = SELECT '%s'\n"))


def test_bad_sql_is_a_temporary_error(tmp_path, db):
    t = open_table(cf(tmp_path, f"dbpath = {db}\nquery = SELECT nonsense FROM nowhere WHERE x = '%s'\n"))
    with pytest.raises(TableError, match=r"query failed: no such table: nowhere"):
        t.lookup("x")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("dbpath = x\nquery = SELECT 1\nbogus = 1\n", ':3: unknown parameter "bogus"; known: dbpath, domain,'),
        ("dbpath = x\nquery = SELECT '%x'\n", ':2: "%x" in query: write %s, %u, %d, %1..%9 or %% for a percent sign'),
        ("dbpath = x\nquery = SELECT '%s\n", ":2: unterminated ' in query"),
        ('dbpath = x\nquery = SELECT "%s" FROM t\n', ":2: expansion inside a double-quoted identifier in query"),
        ("dbpath = x\nquery = SELECT 1\nresult_format = %z\n", ':3: "%z" in result_format'),
        ("dbpath = x\nquery = SELECT 1\nexpansion_limit = many\n", ":3: expansion_limit must be a number"),
        ("dbpath = x\nno equals sign\n", ':2: expected "name = value"'),
        ("query = SELECT 1\n", ': missing "dbpath = /path/to/database.sqlite"'),
        ("dbpath = x\n", ": missing \"query = SELECT ... WHERE ... = '%s'\""),
    ],
)
def test_configuration_errors_name_file_and_line(tmp_path, content, message):
    spec = cf(tmp_path, content)
    with pytest.raises(TableError) as e:
        open_table(spec)
    assert str(e.value).startswith(f"{tmp_path / 't.cf'}{message}")


def test_config_change_is_picked_up(tmp_path, db):
    import os

    spec = cf(tmp_path, f"dbpath = {db}\nquery = SELECT 'one' WHERE '%s' <> ''\n")
    t = open_table(spec)
    assert t.lookup("k") == "one"
    (tmp_path / "t.cf").write_text(f"dbpath = {db}\nquery = SELECT 'two' WHERE '%s' <> ''\n")
    os.utime(tmp_path / "t.cf", ns=(2 * 10**18, 2 * 10**18))
    t._checked -= 1  # as if a second had passed
    assert t.lookup("k") == "two"


# --- the query compiler ------------------------------------------------------------------------


def test_whole_literal_becomes_one_parameter():
    q = Query.parse("SELECT goto FROM aliases WHERE address='%s' AND active = 1")
    assert q.sql("?") == "SELECT goto FROM aliases WHERE address=? AND active = 1"
    assert q.sql("%s") == "SELECT goto FROM aliases WHERE address=%s AND active = 1"
    assert q.params("a'b") == ["a'b"]


def test_partial_literal_becomes_a_concatenation():
    q = Query.parse("SELECT 1 WHERE a = '%u@%d' AND b LIKE '100%%'")
    assert q.sql("?") == "SELECT 1 WHERE a = (CAST(? AS TEXT) || '@' || CAST(? AS TEXT)) AND b LIKE '100%'"
    assert q.sql("%s") == "SELECT 1 WHERE a = (CAST(%s AS TEXT) || '@' || CAST(%s AS TEXT)) AND b LIKE '100%%'"
    assert q.params("joe@example.com") == ["joe", "example.com"]
    assert q.params("joe") is None


def test_unquoted_expansion_and_quotes_in_literals():
    q = Query.parse("SELECT 'it''s' WHERE id = %s AND \"col\"\"x\" = 'a''%s'")
    assert q.sql("?") == "SELECT 'it''s' WHERE id = ? AND \"col\"\"x\" = ('a''' || CAST(? AS TEXT))"


# --- pgsql configuration (the server tests are in tests/interop/test_pgsql_table.py) --------------


def test_pgsql_config_hides_the_password(tmp_path):
    f = tmp_path / "pg.cf"
    f.write_text("hosts = db1:5433 unix:/run/postgresql\nuser = mail\npassword = hunter2\ndbname = mail\nquery = SELECT 1\n")
    settings = parse_pgsql_cf(f.read_text(), f)
    assert "hunter2" not in repr(settings)
    assert settings.hosts == ("db1:5433", "unix:/run/postgresql")
    assert _connect_args("db1:5433", settings)[1]["host"] == "db1"
    assert _connect_args("db1:5433", settings)[1]["port"] == "5433"
    assert _connect_args("unix:/run/postgresql", settings)[1]["host"] == "/run/postgresql"
    assert _connect_args("inet:[2001:db8::1]:5432", settings)[1]["host"] == "2001:db8::1"
    assert _display("postgresql://mail:hunter2@db1/mail") == "postgresql://mail:***@db1/mail"


def test_pgsql_config_errors(tmp_path):
    f = tmp_path / "pg.cf"
    f.write_text("user = mail\npassword = hunter2\nquery = SELECT 1\n")
    with pytest.raises(TableError, match=r'pg\.cf: missing "hosts = HOST\[:PORT\] \.\.\."') as e:
        open_table(f"pgsql:{f}")
    assert "hunter2" not in str(e.value)
    f.write_text("hosts = h\npassword = hunter2 \\\nquery = SELECT 1\nretry_interval = soon\n")
    with pytest.raises(TableError) as e:
        open_table(f"pgsql:{f}")
    assert "hunter2" not in str(e.value)
