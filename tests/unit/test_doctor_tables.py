"""Doctor: tables named in main.cf and master.cf, compiled with the real ``smarthost postmap``."""

from __future__ import annotations

import os
import time

import pytest
from test_doctor_support import ConfDir, by_check, one

from smarthost.cli import main
from smarthost.doctor import ERROR, WARNING


@pytest.fixture
def conf(tmp_path):
    return ConfDir(tmp_path)


def postmap(spec: str) -> None:
    assert main(["postmap", spec]) == 0


def test_forgotten_postmap(conf):
    source = conf.dir / "sasl_passwd"
    source.write_text("[mail.example.net]:587 alice:secret\n")
    source.chmod(0o600)
    conf.set(smtp_sasl_password_maps=f"hash:{source}")
    found = one(conf.findings(), "tables.missing")
    assert (found.severity, found.line) == (ERROR, conf.line_of("smtp_sasl_password_maps"))
    assert f"{source}.lmdb does not exist" in found.message
    assert found.fix == f"smarthost postmap hash:{source}"
    postmap(f"hash:{source}")
    assert conf.findings() == []


def test_source_edited_after_postmap(conf):
    source = conf.dir / "access"
    source.write_text("192.0.2.1 REJECT\n")
    postmap(f"hash:{source}")
    conf.set(smtpd_client_restrictions=f"check_client_access hash:{source}")
    assert conf.findings() == []
    earlier = time.time() - 60  # compiled a minute ago, then the source was edited
    os.utime(conf.dir / "access.lmdb", (earlier, earlier))
    source.write_text("192.0.2.1 REJECT\n192.0.2.2 REJECT\n")
    found = one(conf.findings(), "tables.stale")
    assert found.severity is ERROR and "the server still uses the old" in found.message
    assert found.fix == f"smarthost postmap hash:{source}"
    postmap(f"hash:{source}")
    assert conf.findings() == []


def test_relative_table_name_and_neither_file(conf):
    conf.set(transport_maps="lmdb:transport")  # relative: inside the configuration directory
    found = one(conf.findings(), "tables.missing")
    assert f"neither {conf.dir / 'transport'} nor {conf.dir / 'transport.lmdb'} exists" in found.message
    assert found.fix.endswith(f"smarthost postmap lmdb:{conf.dir / 'transport'}")
    (conf.dir / "transport").write_text("example.net smtp:[192.0.2.7]\n")
    postmap(f"lmdb:{conf.dir / 'transport'}")
    assert conf.findings() == []


def test_access_map_missing_stops_the_server_said_once(conf):
    conf.set(smtpd_recipient_restrictions=f"check_recipient_access hash:{conf.dir / 'rcpt'}, reject_unauth_destination")
    findings = conf.findings()
    assert one(findings, "tables.missing").severity is ERROR
    assert by_check(findings, "start") == []


def test_table_in_a_master_cf_override(conf):
    conf.master("127.0.0.1:2525 inet n - n - - smtpd\n"
                f"  -o smtpd_sender_restrictions=check_sender_access,btree:{conf.dir}/senders\n")
    found = one(conf.findings(), "tables.missing")
    assert (found.file, found.line) == (str(conf.dir / "master.cf"), 1)


def test_missing_text_table(conf):
    conf.set(smtpd_client_restrictions=f"check_client_access cidr:{conf.dir / 'clients.cidr'}")
    found = one(conf.findings(), "tables.missing")
    assert "clients.cidr" in found.message
    (conf.dir / "clients.cidr").write_text("192.0.2.0/24 REJECT\n")
    assert conf.findings() == []


def test_relay_passwords_readable_by_others(conf):
    source = conf.dir / "sasl_passwd"
    source.write_text("[mail.example.net]:587 alice:secret\n")
    source.chmod(0o644)
    postmap(f"hash:{source}")
    conf.set(smtp_sasl_password_maps=f"hash:{source}")
    found = one(conf.findings(), "tables.secret-mode")
    assert found.severity is WARNING and "mode 0644" in found.message
    assert found.fix == f"chmod 600 {source} {source}.lmdb"
    source.chmod(0o600)
    (conf.dir / "sasl_passwd.lmdb").chmod(0o600)
    assert conf.findings() == []


def test_caches_are_not_tables(conf):
    # Debian's main.cf names the TLS session cache like a table; tlsmgr writes it, nobody runs postmap.
    conf.set(smtp_tls_session_cache_database=f"btree:{conf.dir}/smtp_scache")
    assert conf.findings() == []
