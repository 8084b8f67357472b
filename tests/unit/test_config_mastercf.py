"""master.cf: columns, -o overrides, inet addresses, listen addresses, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smarthost.config import ConfigError, Params, listen_addresses, load
from smarthost.config.mastercf import parse


def make(tmp_path: Path, master: str | None, main: str = ""):
    (tmp_path / "main.cf").write_text(main)
    if master is not None:
        (tmp_path / "master.cf").write_text(master)
    return load(tmp_path)


def error(tmp_path: Path, master: str, main: str = "") -> str:
    with pytest.raises(ConfigError) as info:
        make(tmp_path, master, main)
    return str(info.value)


def by_name(cfg):
    return {s.name: s for s in cfg.services}


def test_missing_master_cf_gives_smtp_and_the_queue_manager(tmp_path):
    service, qmgr = make(tmp_path, None).services
    assert (service.name, service.type, service.command, service.port, service.host) == ("smtp", "inet", "smtpd", 25, None)
    assert service.params["message_size_limit"] == 10240000
    assert (qmgr.name, qmgr.type, qmgr.command) == ("qmgr", "unix", "qmgr")


def test_columns_and_dash_defaults(tmp_path):
    cfg = make(
        tmp_path,
        "# service type  private unpriv  chroot  wakeup  maxproc command + args\n"
        "smtp      inet  n       -       y       -       -       smtpd -v\n"
        "pickup    unix  n       -       y       60      1       pickup\n"
        "qmgr      unix  n       -       n       300?    1       qmgr\n"
        "cleanup   unix  -       n       -       -       0       cleanup\n",
    )
    s = by_name(cfg)
    smtp = s["smtp"]
    assert (smtp.private, smtp.unpriv, smtp.chroot, smtp.wakeup, smtp.maxproc) == (False, True, True, 0, 100)
    assert smtp.args == ("-v",)
    assert (s["pickup"].wakeup, s["pickup"].maxproc, s["pickup"].port) == (60, 1, 0)
    assert s["qmgr"].wakeup == 300
    cleanup = s["cleanup"]
    assert (cleanup.private, cleanup.unpriv, cleanup.chroot, cleanup.maxproc) == (True, False, False, 0)
    assert smtp.file == f"{tmp_path}/master.cf" and smtp.line == 2
    assert cfg.warnings == ()


def test_maxproc_dash_follows_default_process_limit(tmp_path):
    cfg = make(tmp_path, "smtp inet n - n - - smtpd\n", "default_process_limit = 7\n")
    assert cfg.services[0].maxproc == 7


def test_overrides_in_every_form(tmp_path):
    cfg = make(
        tmp_path,
        "submission inet n - n - - smtpd\n"
        "  -o syslog_name=smarthost/submission\n"
        "  -o smtpd_tls_security_level=encrypt\n"
        "  -osmtpd_sasl_auth_enable=yes\n"
        "  -o { smtpd_banner = $myhostname says hello }\n"
        "  -o smtpd_recipient_restrictions=\n"
        "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n",
        "myhostname = mx.example.org\nsmtpd_recipient_restrictions = reject_unauth_destination\n",
    )
    (sub,) = cfg.services
    assert sub.port == 587
    assert sub.overrides == {
        "syslog_name": "smarthost/submission",
        "smtpd_tls_security_level": "encrypt",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_banner": "$myhostname says hello",
        "smtpd_recipient_restrictions": "",
        "smtpd_relay_restrictions": "permit_sasl_authenticated,reject",
    }
    assert sub.args == ()
    p = sub.params
    assert p["smtpd_tls_security_level"] == "encrypt"
    assert p["smtpd_sasl_auth_enable"] is True
    assert p["smtpd_banner"] == "mx.example.org says hello"
    assert p["smtpd_recipient_restrictions"] == []
    assert p["smtpd_relay_restrictions"] == ["permit_sasl_authenticated", "reject"]
    assert p.origin("smtpd_banner") == f"{tmp_path}/master.cf:1"
    assert cfg.params["smtpd_tls_security_level"] == "none"  # main.cf's own values are untouched
    assert cfg.warnings == ()


def test_invalid_override_names_master_cf_line(tmp_path):
    message = error(tmp_path, "smtp inet n - n - - smtpd\nsmtps inet n - n - - smtpd\n  -o smtpd_tls_wrappermode=sure\n")
    assert message == f'{tmp_path}/master.cf:2: smtpd_tls_wrappermode: "sure" is not yes or no; use yes or no'


def test_unknown_override_warns(tmp_path):
    cfg = make(tmp_path, "smtp inet n - n - - smtpd -o milter_macro_daemon_name=ORIGINATING\n")
    assert cfg.warnings == (f"{tmp_path}/master.cf:1: unknown parameter milter_macro_daemon_name",)


def test_deprecated_override_applies_to_that_service(tmp_path):
    cfg = make(tmp_path, "submission inet n - n - - smtpd -o smtpd_enforce_tls=yes\n", "smtpd_tls_security_level = may\n")
    (sub,) = cfg.services
    assert sub.params["smtpd_tls_security_level"] == "encrypt"
    assert cfg.params["smtpd_tls_security_level"] == "may"
    assert any("smtpd_enforce_tls is deprecated" in w and "master.cf:1" in w for w in cfg.warnings)


def test_service_name_expands_per_service(tmp_path):
    cfg = make(tmp_path, "relay unix - - n - - smtp -o syslog_name=postfix/$service_name\n")
    assert cfg.services[0].params["syslog_name"] == "postfix/relay"


def test_options_end_at_the_first_plain_argument(tmp_path):
    cfg = make(
        tmp_path,
        "maildrop unix - n n - - pipe\n  flags=DRXhu user=vmail argv=/usr/bin/maildrop -o x -d ${recipient}\n",
    )
    (service,) = cfg.services
    assert service.args == ("flags=DRXhu", "user=vmail", "argv=/usr/bin/maildrop", "-o", "x", "-d", "${recipient}")
    assert service.overrides == {}


@pytest.mark.parametrize(
    "name, host, port",
    [
        ("smtp", None, 25),
        ("submission", None, 587),
        ("smtps", None, 465),
        ("submissions", None, 465),
        ("2525", None, 2525),
        ("127.0.0.1:2525", "127.0.0.1", 2525),
        ("[::1]:25", "::1", 25),
        ("localhost:smtp", "localhost", 25),
    ],
)
def test_inet_service_names(tmp_path, name, host, port):
    (service,) = make(tmp_path, f"{name} inet n - n - - smtpd\n").services
    assert (service.host, service.port) == (host, port)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("smtpx", 'unknown service name "smtpx"; use a port number (e.g. 2525) or one of smtp, submission, smtps, submissions'),
        ("::1:25", 'IPv6 address "::1" needs brackets; write [::1]:25'),
        ("70000", "port 70000 is out of range; use a port from 1 to 65535"),
        ("[nothost]:25", '"nothost" is not an IP address; write [IPv6-address]:port'),
    ],
)
def test_bad_inet_service_names(tmp_path, name, expected):
    assert error(tmp_path, f"# comment\n{name} inet n - n - - smtpd\n") == f"{tmp_path}/master.cf:2: {expected}"


def test_unix_service_names_are_not_ports(tmp_path):
    assert make(tmp_path, "anything-goes unix - - n - - whatever\n").services[0].port == 0


@pytest.mark.parametrize(
    "line, expected",
    [
        (
            "smtp inet n - n - smtpd",
            "expected 8 columns (service type private unpriv chroot wakeup maxproc command), found 7; "
            'fill every column; "-" means the default',
        ),
        ("smtp tcp n - n - - smtpd", 'type: "tcp" is not a service type; use inet, unix, unix-dgram, fifo, pass'),
        ("smtp inet n yes n - - smtpd", 'unpriv: "yes" is not y, n or -; use y, n or - (the default)'),
        ("smtp inet n - n soon - smtpd", 'wakeup: "soon" is not a number; use a number or - (the default)'),
        ("smtp inet n - n - 1? smtpd", 'maxproc: "1?" is not a number; use a number or - (the default)'),
        ("smtp inet n - n - - smtpd -o", "-o needs name=value; write -o name=value"),
        ("smtp inet n - n - - smtpd -o novalue", 'missing "=" in "novalue"; write "name = value"'),
        ("smtp inet n - n - - smtpd -o { a = b", 'missing "}" after "{ a = b"; close the "{ ... }" group'),
    ],
)
def test_column_errors(tmp_path, line, expected):
    assert error(tmp_path, line + "\n") == f"{tmp_path}/master.cf:1: {expected}"


def test_private_inet_service_warns(tmp_path):
    cfg = make(tmp_path, "smtp inet y - n - - smtpd\n")
    assert cfg.services[0].private is False
    assert cfg.warnings == (f"{tmp_path}/master.cf:1: inet services cannot be private; smtp is treated as private = n",)


def test_duplicate_service_last_wins_with_warning(tmp_path):
    cfg = make(tmp_path, "smtp inet n - n - - smtpd\nsmtp inet n - n - - smtpd -o smtpd_banner=two\n")
    (smtp,) = cfg.services
    assert smtp.params["smtpd_banner"] == "two"
    assert f"{tmp_path}/master.cf:2: service smtp/inet is defined again; the one at line 1 is ignored" in cfg.warnings


def test_two_services_on_one_port_is_an_error(tmp_path):
    assert error(tmp_path, "smtps inet n - n - - smtpd\nsubmissions inet n - n - - smtpd\n") == (
        f"{tmp_path}/master.cf:2: submissions listens on port 465 like smtps at line 1; "
        "remove one of them or give one another port"
    )


@pytest.mark.parametrize(
    "main, expected",
    [
        ("", [(None, 25)]),
        ("inet_protocols = ipv4\n", [("0.0.0.0", 25)]),
        ("inet_interfaces = loopback-only\n", [("127.0.0.1", 25), ("::1", 25)]),
        ("inet_interfaces = loopback-only\ninet_protocols = ipv6\n", [("::1", 25)]),
        ("inet_interfaces = 192.0.2.1, [2001:db8::1]\n", [("192.0.2.1", 25), ("2001:db8::1", 25)]),
    ],
)
def test_listen_addresses_follow_inet_interfaces(tmp_path, main, expected):
    cfg = make(tmp_path, "smtp inet n - n - - smtpd\n", main)
    assert listen_addresses(cfg.services[0], cfg.params) == expected


def test_explicit_host_ignores_inet_interfaces(tmp_path):
    cfg = make(tmp_path, "127.0.0.1:2525 inet n - n - - smtpd\n", "inet_interfaces = loopback-only\n")
    assert listen_addresses(cfg.services[0], cfg.params) == [("127.0.0.1", 2525)]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("smtpinu:[]{}=-o 0123456789\n\t#$yn")), max_size=120))
def test_master_cf_parsing_never_crashes(text):
    try:
        parse(text, "master.cf", Params())
    except ConfigError as e:
        assert str(e).startswith("master.cf")
