"""Doctor: main.cf itself — comments after values, deprecated, obsolete, unknown and repeated
parameters, and a configuration that does not load."""

from __future__ import annotations

import pytest
from test_doctor_support import ConfDir, one

from smarthost.doctor import ERROR, WARNING


@pytest.fixture
def conf(tmp_path):
    return ConfDir(tmp_path)


def base(conf: ConfDir) -> str:
    return "".join(f"{k} = {v}\n" for k, v in conf.settings.items())


def test_comment_after_a_value(conf):
    conf.main_text(base(conf) + "relay_domains = example.org   # our customers\n")
    found = one(conf.findings(), "config.trailing-comment")
    assert (found.severity, found.file, found.line) == (WARNING, conf.main_cf, 6)
    assert found.fix == "write it as two lines:\n# our customers\nrelay_domains = example.org"
    conf.main_text(base(conf) + "# our customers\nrelay_domains = example.org\n")
    assert conf.findings() == []


@pytest.mark.parametrize(("old", "modern"), [
    ("smtpd_use_tls = yes", "smtpd_tls_security_level = may"),
    ("smtpd_use_tls = yes\nsmtpd_enforce_tls = yes", "smtpd_tls_security_level = encrypt"),
    ("smtp_use_tls = yes", "smtp_tls_security_level = may"),
])
def test_deprecated_tls_switches(conf, old, modern):
    conf.main_text(base(conf) + old + "\n")
    found = one(conf.findings(), "config.deprecated")
    assert found.severity is WARNING and found.line == 5 + old.count("\n") + 1
    assert found.fix == f"replace it with: {modern}"
    conf.main_text(base(conf) + modern + "\n")
    assert conf.findings() == []


def test_old_sasl_application_name(conf):
    conf.main_text(base(conf) + "smtpd_sasl_application_name = smtpd\n")
    found = one(conf.findings(), "config.deprecated")
    assert found.fix == "rename it: smtpd_sasl_path = smtpd"


def test_obsolete_parameter_the_loader_does_not_know(conf):
    conf.main_text(base(conf) + "virtual_maps = hash:/etc/postfix/virtual\n")
    found = one(conf.findings(), "config.deprecated")
    assert "virtual_maps is an obsolete Postfix parameter" in found.message
    assert "virtual_alias_maps" in found.fix


def test_misspelt_parameter(conf):
    conf.main_text(base(conf) + "smtpd_tls_auth_ony = yes\n")
    found = one(conf.findings(), "config.unknown")
    assert (found.severity, found.line) == (WARNING, 6)
    assert found.fix == "did you mean smtpd_tls_auth_only? write: smtpd_tls_auth_only = yes"
    conf.main_text(base(conf) + "smtpd_tls_auth_only = yes\n")
    assert conf.findings() == []


def test_parameter_set_twice(conf):
    conf.main_text(base(conf) + "mynetworks = 127.0.0.0/8\n")
    found = one(conf.findings(), "config.repeated")
    assert found.line == 6 and "lines 3 and 6" in found.fix


def test_obsolete_restriction(conf):
    conf.set(smtpd_recipient_restrictions="permit_mynetworks, check_relay_domains, reject_unauth_destination")
    found = one(conf.findings(), "config.deprecated-restriction")
    assert found.fix == "replace check_relay_domains with reject_unauth_destination"
    assert one(conf.findings(), "start").severity is ERROR  # smarthost refuses it at start


def test_configuration_that_does_not_load(conf):
    conf.set(message_size_limit="lots")
    [found] = conf.findings()
    assert (found.check, found.severity, found.line) == ("config.error", ERROR, conf.line_of("message_size_limit"))
    assert '"lots" is not a number' in found.message and "10240000" in found.fix


def test_misspelt_override_in_master_cf(conf):
    conf.master("127.0.0.1:2525 inet n - n - - smtpd\n  -o smtpd_tls_auth_ony=yes\n")
    found = one(conf.findings(), "config.unknown")
    assert (found.file, found.line, found.fix) == (str(conf.dir / "master.cf"), 1, "did you mean smtpd_tls_auth_only?")
