"""Doctor: the relay client (relayhost, credentials, client TLS) and ``check --sender``."""

from __future__ import annotations

import json

import pytest
from test_doctor_support import ConfDir, one

from smarthost.cli import main
from smarthost.config import load
from smarthost.doctor import ERROR, HINT, format_human, format_json, sender_report

PASSWORDS = ("pw-alice", "pw-default", "pw-team")


@pytest.fixture
def conf(tmp_path):
    return ConfDir(tmp_path)


def passwd(conf: ConfDir, text: str, name: str = "sasl_passwd") -> str:
    source = conf.dir / name
    source.write_text(text)
    source.chmod(0o600)
    assert main(["postmap", f"hash:{source}"]) == 0
    return f"hash:{source}"


def relay_client(conf: ConfDir, relayhost: str, table: str) -> None:
    conf.set(relayhost=relayhost, smtp_sasl_auth_enable="yes", smtp_sasl_password_maps=table,
             smtp_sasl_security_options="noanonymous", smtp_tls_security_level="encrypt")


def test_relayhost_with_port_but_key_without(conf):
    # The classic: relayhost = [host]:587, but sasl_passwd says [host].
    table = passwd(conf, "[mail.example.net] alice:pw-alice\n")
    relay_client(conf, "[mail.example.net]:587", table)
    findings = conf.findings()
    found = one(findings, "client.credentials")
    assert (found.severity, found.line) == (ERROR, conf.line_of("relayhost"))
    assert "looked up: mail.example.net, [mail.example.net]:587" in found.message
    assert "the table has: [mail.example.net]" in found.message
    assert found.fix == (f"in {conf.dir / 'sasl_passwd'}, change the key [mail.example.net] to [mail.example.net]:587"
                         f" (the relayhost exactly as written)\nthen run: smarthost postmap {table}")
    assert "pw-alice" not in format_human(findings) + format_json(findings)
    passwd(conf, "[mail.example.net]:587 alice:pw-alice\n")
    assert conf.findings() == []


def test_host_key_matches_any_port(conf):
    table = passwd(conf, "mail.example.net alice:pw-alice\n")
    relay_client(conf, "[mail.example.net]:587", table)
    assert conf.findings() == []


def test_sasl_enabled_without_password_maps(conf):
    conf.set(relayhost="[mail.example.net]:587", smtp_sasl_auth_enable="yes", smtp_tls_security_level="encrypt")
    found = one(conf.findings(), "client.credentials")
    assert "smtp_sasl_password_maps is empty" in found.message and found.line == conf.line_of("smtp_sasl_auth_enable")


@pytest.mark.parametrize("relayhost", ["[mail.example.net]:465", "[mail.example.net]:smtps"])
def test_port_465_without_wrapper_mode(conf, relayhost):
    table = passwd(conf, f"{relayhost} alice:pw-alice\n")
    relay_client(conf, relayhost, table)
    found = one(conf.findings(), "client.465-without-wrappermode")
    assert (found.severity, found.line) == (ERROR, conf.line_of("relayhost"))
    assert found.fix == "smtp_tls_wrappermode = yes\nsmtp_tls_security_level = encrypt"
    conf.set(smtp_tls_wrappermode="yes")
    assert conf.findings() == []


def test_sasl_without_tls(conf):
    table = passwd(conf, "[mail.example.net]:587 alice:pw-alice\n")
    relay_client(conf, "[mail.example.net]:587", table)
    conf.set(smtp_tls_security_level="none")
    found = one(conf.findings(), "client.sasl-without-tls")
    assert (found.severity, found.line) == (ERROR, conf.line_of("smtp_tls_security_level"))
    assert "in clear" in found.message and found.fix == "smtp_tls_security_level = encrypt"
    conf.set(smtp_tls_security_level="may")
    found = one(conf.findings(), "client.sasl-without-tls")
    assert found.severity is HINT
    conf.set(smtp_tls_security_level="encrypt")
    assert conf.findings() == []


@pytest.fixture
def sender_dependent(conf):
    relay_client(conf, "[mail.example.net]:587", passwd(
        conf, "alice@example.com alice:pw-alice\n[mail.example.net]:587 default:pw-default\n"
              "[smtp.example.com]:587 team:pw-team\n"))
    conf.set(sender_dependent_relayhost_maps=passwd(conf, "@example.com [smtp.example.com]:587\n", "relay_by_sender"),
             smtp_sender_dependent_authentication="yes", mydestination="$myhostname, localhost")
    return load(conf.dir)


def test_sender_with_own_credentials(sender_dependent):
    report = sender_report(sender_dependent, "alice@example.com", "bob@example.net")
    assert (report.transport, report.nexthop, report.host, report.port) == ("smtp", "[smtp.example.com]:587",
                                                                           "smtp.example.com", 587)
    assert report.keys_tried[:2] == ("alice@example.com", "@example.com")
    assert (report.key, report.username, report.errors) == ("alice@example.com", "alice", ())
    assert "key alice@example.com" in report.human() and "user name alice" in report.human()


def test_sender_of_the_domain_uses_the_relay_key(sender_dependent):
    report = sender_report(sender_dependent, "carol@example.com", "bob@example.net")
    assert (report.nexthop, report.key, report.username) == ("[smtp.example.com]:587", "[smtp.example.com]:587", "team")


def test_other_senders_use_relayhost(sender_dependent):
    report = sender_report(sender_dependent, "dave@elsewhere.org", "bob@example.net")
    assert (report.nexthop, report.key, report.username) == ("[mail.example.net]:587", "[mail.example.net]:587",
                                                             "default")
    text = report.human() + json.dumps(report.as_dict())
    assert not any(p in text for p in PASSWORDS)


def test_local_recipient_is_not_relayed(sender_dependent):
    report = sender_report(sender_dependent, "alice@example.com", "root@localhost")
    assert report.transport == "local" and report.nexthop is None and not report.sasl


def test_no_credentials_for_this_sender(conf):
    relay_client(conf, "[mail.example.net]:587", passwd(conf, "[other.example.net]:587 x:pw-team\n"))
    report = sender_report(load(conf.dir), "alice@example.com", "bob@example.net")
    assert report.sasl and report.key is None
    assert report.keys_tried == ("mail.example.net", "[mail.example.net]:587")
    assert "none found" in report.human()

