"""pgsql: tables against a real PostgreSQL server from Debian's packages: a private cluster in a
temporary directory (initdb + pg_ctl, as the ``postgres`` user when we are root), listening on
127.0.0.1 on a free port with password (SCRAM) authentication, stopped afterwards."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from peers import PeerError, free_port, make_shared_dir, unavailable, wait_for_port
from smarthost.cli import main
from smarthost.tables import TableError, open_table

PASSWORD = "pg-Secret-4711"


@dataclass
class Cluster:
    bin: Path
    data: Path
    port: int
    run_as: list[str]

    def ctl(self, *args: str) -> None:
        log = self.data.parent / "server.log"
        subprocess.run(
            [*self.run_as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-w", "-t", "30", *args],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data.parent} -c fsync=off"
        self.ctl("-o", opts, "start")
        wait_for_port(self.port)

    def stop(self) -> None:
        self.ctl("-m", "fast", "stop")

    def admin(self, sql: str) -> None:
        """Run SQL as the superuser over the unix socket (trusted)."""
        import psycopg

        with psycopg.connect(host=str(self.data.parent), port=self.port, user="postgres", dbname="mail", autocommit=True) as c:
            c.execute(sql)


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    bin_dir = _postgres_bin()
    if bin_dir is None:
        unavailable("PostgreSQL server missing: install the postgresql package (scripts/install-peers.sh)")
    run_as: list[str] = []
    root = make_shared_dir(prefix="smarthost-pgsql-")
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            unavailable("runuser missing: needed to run PostgreSQL as the postgres user")
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    c = Cluster(bin_dir, root / "data", free_port(), run_as)
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if run_as:
        shutil.chown(pwfile, "postgres")
    started = False
    try:
        subprocess.run(
            [*run_as, str(bin_dir / "initdb"), "-D", str(c.data), "-U", "postgres", "--auth-local=trust",
             "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True,
        )  # fmt: skip
        c.start()
        started = True
        import psycopg

        with psycopg.connect(host=str(root), port=c.port, user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE mail")
        c.admin(
            f"""
            CREATE ROLE smarthost LOGIN PASSWORD '{PASSWORD}';
            CREATE TABLE aliases (address text, goto text);
            INSERT INTO aliases VALUES ('joe@example.com', 'joe@elsewhere.example'),
                                       ('list@example.com', 'a@example.net'),
                                       ('list@example.com', 'b@example.net'),
                                       ('list@example.com', NULL);
            CREATE TABLE relay_credentials (nexthop text, username text, password text);
            INSERT INTO relay_credentials VALUES ('[mail.example.com]:587', 'sat1', 'relay-pw');
            GRANT SELECT ON aliases, relay_credentials TO smarthost;
            GRANT DELETE ON aliases TO smarthost;
            """
        )
        yield c
    except (subprocess.CalledProcessError, PeerError) as e:
        detail = getattr(e, "stderr", b"") or b""
        pytest.fail(f"could not start PostgreSQL: {e}: {detail.decode(errors='replace')[-2000:]}", pytrace=False)
    finally:
        if started:
            try:
                c.stop()
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(root, ignore_errors=True)


def write_cf(tmp_path: Path, cluster: Cluster, query: str, extra: str = "", password: str = PASSWORD) -> Path:
    f = tmp_path / "pgsql.cf"
    f.write_text(
        f"hosts = 127.0.0.1:{cluster.port}\nuser = smarthost\npassword = {password}\ndbname = mail\n"
        f"query = {query}\nretry_interval = 0\n{extra}"
    )
    f.chmod(0o600)
    return f


def pg_table(tmp_path: Path, cluster: Cluster, query: str, **kwargs: str):
    return open_table(f"pgsql:{write_cf(tmp_path, cluster, query, **kwargs)}")


def test_lookups_with_expansions(tmp_path, cluster):
    t = pg_table(tmp_path, cluster, "SELECT goto FROM aliases WHERE address = '%u@%d'")
    assert t.lookup("Joe@Example.com") == "joe@elsewhere.example"
    assert t.lookup("list@example.com") == "a@example.net,b@example.net"
    assert t.lookup("nobody@example.com") is None
    assert t.lookup("joe") is None  # no domain for %d: no query


def test_relay_credentials_with_result_format(tmp_path, cluster):
    cf = write_cf(
        tmp_path,
        cluster,
        "SELECT username || ':' || password FROM relay_credentials WHERE nexthop = '%s'",
    )
    t = open_table(f"pgsql:{cf}")
    assert t.lookup("[mail.example.com]:587") == "sat1:relay-pw"
    assert t.lookup("[mail.example.com]") is None


@pytest.mark.parametrize(
    "key",
    ["x'; DROP TABLE aliases; --", "' OR '1'='1", "joe@example.com' OR 'a'='a", "\\'; DELETE FROM aliases; --"],
)
def test_injection_attempts_are_harmless(tmp_path, cluster, key):
    t = pg_table(tmp_path, cluster, "SELECT goto FROM aliases WHERE address = '%s'")
    assert t.lookup(key) is None
    assert t.lookup("joe@example.com") == "joe@elsewhere.example"  # the table is still there


def test_connection_is_read_only(tmp_path, cluster):
    cf = write_cf(tmp_path, cluster, "DELETE FROM aliases WHERE address = '%s' RETURNING goto")
    t = open_table(f"pgsql:{cf}")
    with pytest.raises(TableError, match="cannot execute DELETE in a read-only transaction"):
        t.lookup("joe@example.com")


def test_connection_is_reused_and_reopened_after_a_drop(tmp_path, cluster):
    t = pg_table(tmp_path, cluster, "SELECT pg_backend_pid()::text WHERE '%s' <> ''")
    pid = t.lookup("k")
    assert t.lookup("k") == pid
    cluster.admin(f"SELECT pg_terminate_backend({int(pid)})")
    new_pid = t.lookup("k")  # reconnects transparently
    assert new_pid is not None and new_pid != pid


def test_server_down_is_a_temporary_error_then_recovers(tmp_path, cluster, caplog):
    t = pg_table(tmp_path, cluster, "SELECT goto FROM aliases WHERE address = '%s'")
    assert t.lookup("joe@example.com") == "joe@elsewhere.example"
    cluster.stop()
    try:
        with caplog.at_level(logging.WARNING), pytest.raises(TableError) as e:
            t.lookup("joe@example.com")
        assert f"no PostgreSQL server answered (127.0.0.1:{cluster.port}); lookup deferred" in str(e.value)
    finally:
        cluster.start()
    assert t.lookup("joe@example.com") == "joe@elsewhere.example"
    assert PASSWORD not in caplog.text


def test_wrong_password_never_shows_the_password(tmp_path, cluster, caplog):
    wrong = "Wrong-Pass-0815"
    t = pg_table(tmp_path, cluster, "SELECT 1 WHERE '%s' <> ''", password=wrong)
    with caplog.at_level(logging.DEBUG), pytest.raises(TableError) as e:
        t.lookup("k")
    assert "password authentication failed" in caplog.text
    assert wrong not in str(e.value) and wrong not in caplog.text and wrong not in repr(t)


def test_postmap_query(tmp_path, cluster, capsys):
    cf = write_cf(tmp_path, cluster, "SELECT goto FROM aliases WHERE address = '%s'")
    assert main(["postmap", "-q", "joe@example.com", f"pgsql:{cf}"]) == 0
    assert main(["postmap", "-q", "nobody@example.com", f"pgsql:{cf}"]) == 1
    assert capsys.readouterr().out == "joe@elsewhere.example\n"
