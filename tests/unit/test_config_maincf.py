"""main.cf: syntax, $ expansion, types, defaults, deprecated names, warnings, limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smarthost.config import ConfigError, Params, load
from smarthost.config.loader import main_params
from smarthost.config.maincf import parse


def make(tmp_path: Path, main: str | bytes | None = None, master: str | None = None):
    if main is not None:
        (tmp_path / "main.cf").write_bytes(main.encode() if isinstance(main, str) else main)
    if master is not None:
        (tmp_path / "master.cf").write_text(master)
    return load(tmp_path)


def error(tmp_path: Path, main: str) -> str:
    with pytest.raises(ConfigError) as info:
        make(tmp_path, main)
    return str(info.value)


# --- syntax ---


def test_missing_main_cf_means_defaults(tmp_path):
    cfg = make(tmp_path)
    assert cfg.params["message_size_limit"] == 10240000
    assert cfg.params.is_default("message_size_limit")
    assert cfg.params["config_directory"] == str(tmp_path)
    assert cfg.warnings == ()


def test_missing_config_dir_is_an_error_with_a_fix(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "nope")
    assert str(info.value) == (
        f"{tmp_path / 'nope'}: configuration directory does not exist; "
        "create it, or name another one with -c DIR or MAIL_CONFIG"
    )


def test_comments_blank_lines_and_continuations(tmp_path):
    cfg = make(
        tmp_path,
        "# a comment\n"
        "\n"
        "   # indented comment\n"
        "smtpd_recipient_restrictions =\n"
        "    permit_mynetworks,\n"
        "#   reject_unknown_client_hostname,\n"
        "\n"
        "\treject_unauth_destination\n"
        "smtpd_banner = first\n"
        "  second line\n",
    )
    assert cfg.params["smtpd_recipient_restrictions"] == ["permit_mynetworks", "reject_unauth_destination"]
    assert cfg.params["smtpd_banner"] == "first second line"
    assert cfg.params.origin("smtpd_banner") == f"{tmp_path}/main.cf:9"
    assert cfg.warnings == ()


def test_whitespace_around_equals_and_crlf(tmp_path):
    cfg = make(tmp_path, "myhostname=mx.example.org\r\nmydomain   =   example.org   \r\n")
    assert cfg.params["myhostname"] == "mx.example.org"
    assert cfg.params["mydomain"] == "example.org"


def test_trailing_comment_is_dropped_with_a_warning(tmp_path):
    cfg = make(tmp_path, "biff = no\nsmtp_tls_security_level = encrypt # This option deprecated\n")
    assert cfg.params["smtp_tls_security_level"] == "encrypt"
    assert any(w.startswith(f"{tmp_path}/main.cf:2: text after \"#\" is a comment") for w in cfg.warnings)


def test_indented_first_line_is_an_error(tmp_path):
    assert error(tmp_path, "  myhostname = x\n").startswith(f"{tmp_path}/main.cf:1: line starts with whitespace")


def test_missing_equals_is_an_error(tmp_path):
    assert error(tmp_path, "biff = no\nmyhostname mail.example.com\n") == (
        f'{tmp_path}/main.cf:2: missing "=" in "myhostname mail.example.com"; write "name = value"'
    )


def test_bad_parameter_name(tmp_path):
    assert "is not a parameter name" in error(tmp_path, "my-host = x\n")


def test_later_definition_wins_with_a_warning(tmp_path):
    cfg = make(tmp_path, "message_size_limit = 1\nmessage_size_limit = 2\n")
    assert cfg.params["message_size_limit"] == 2
    assert f"{tmp_path}/main.cf:2: message_size_limit is set again; the setting at line 1 is ignored" in cfg.warnings


def test_unknown_parameter_warns_and_keeps_value(tmp_path):
    cfg = make(tmp_path, "biff = no\nfrobnicate = yes\n")
    assert f"{tmp_path}/main.cf:2: unknown parameter frobnicate" in cfg.warnings
    assert cfg.params["frobnicate"] == "yes"


def test_unknown_parameter_used_from_master_cf_does_not_warn(tmp_path):
    cfg = make(
        tmp_path,
        "mua_client_restrictions = permit_sasl_authenticated, reject\n",
        "submission inet n - n - - smtpd\n  -o smtpd_client_restrictions=$mua_client_restrictions\n",
    )
    assert cfg.warnings == ()
    (submission,) = cfg.services
    assert submission.params["smtpd_client_restrictions"] == ["permit_sasl_authenticated", "reject"]


def test_file_larger_than_1_mib_is_refused(tmp_path):
    message = error(tmp_path, "# " + "x" * (1 << 20) + "\n")
    assert message.startswith(f"{tmp_path}/main.cf: file is larger than 1 MiB")


def test_logical_line_longer_than_64_kib_is_refused(tmp_path):
    text = "mydestination = a\n" + "  b\n" * 25000
    assert error(tmp_path, text).startswith(f"{tmp_path}/main.cf:1: logical line is longer than 64 KiB")


def test_non_utf8_comment_is_fine_but_not_in_a_value(tmp_path):
    assert make(tmp_path, b"# Gr\xfc\xdfe\nbiff = no\n").params["biff"] is False
    with pytest.raises(ConfigError, match=r"main.cf:2: line is not valid UTF-8"):
        make(tmp_path, b"biff = no\nsmtpd_banner = Gr\xfc\xdfe\n")


# --- expansion ---


def test_expansion_forms_and_lazy_evaluation(tmp_path):
    cfg = make(
        tmp_path,
        "myhostname = mx.example.org\n"
        "smtpd_banner = $myhostname ${mail_name} $(mydomain) costs $$5\n"
        "myorigin = $mydomain\n"
        "mydomain = one.example\n"
        "mydomain = two.example\n",
    )
    assert cfg.params["smtpd_banner"] == "mx.example.org smarthost two.example costs $5"
    assert cfg.params["myorigin"] == "two.example"
    assert cfg.params.unexpanded("myorigin") == "$mydomain"


def test_conditional_expansion(tmp_path):
    cfg = make(
        tmp_path,
        "smtpd_tls_cert_file = /etc/cert.pem\n"
        "a1 = ${smtpd_tls_cert_file?yes}\n"
        "a2 = ${smtpd_tls_CAfile?yes}\n"
        "a3 = ${smtpd_tls_CAfile:fallback}\n"
        "a4 = ${smtpd_tls_cert_file:fallback}\n"
        "a5 = ${smtpd_tls_cert_file?{has $mail_name}:{none}}\n"
        "a6 = ${smtpd_tls_CAfile?{has}:{none}}\n"
        "a7 = ${undefined_thing:{x}}\n"
        "used = $a1 $a2 $a3 $a4 $a5 $a6 $a7\n",
    )
    p = cfg.params
    assert [p[f"a{i}"] for i in range(1, 8)] == ["yes", "", "fallback", "", "has smarthost", "none", "x"]
    assert not any("undefined_thing" in w for w in cfg.warnings)


def test_defaults_follow_settings(tmp_path):
    cfg = make(tmp_path, "myhostname = mx.example.org\nsmtpd_tls_cert_file = /etc/ssl/c.pem\n")
    p = cfg.params
    assert p["mydomain"] == "example.org"
    assert p["mydestination"] == ["mx.example.org", "localhost.example.org", "localhost"]
    assert p["smtpd_banner"] == "mx.example.org ESMTP smarthost"
    assert p["smtpd_tls_key_file"] == "/etc/ssl/c.pem"
    assert p["smtpd_tls_security_level"] == "may"
    assert make(tmp_path, "myhostname = mx\n").params["smtpd_tls_security_level"] == "none"


def test_recursion_loop_is_an_error_naming_the_parameter(tmp_path):
    message = error(tmp_path, "biff = no\nmyhostname = $mydomain\nmydomain = $myorigin\nmyorigin = $myhostname\n")
    assert message == (
        f"{tmp_path}/main.cf:2: myhostname: circular reference $myhostname -> $mydomain -> $myorigin -> $myhostname; "
        "remove one of these $ references"
    )


def test_self_reference_is_a_loop(tmp_path):
    assert "circular reference $relayhost -> $relayhost" in error(tmp_path, "relayhost = [$relayhost]\n")


def test_undefined_reference_expands_to_nothing_with_a_warning(tmp_path):
    cfg = make(tmp_path, "biff = no\nsmtpd_banner = $myhostname $nothing_here ESMTP\n")
    assert cfg.params["smtpd_banner"].endswith("  ESMTP")
    assert f"{tmp_path}/main.cf:2: smtpd_banner: $nothing_here is not set; it expands to nothing" in cfg.warnings


def test_unclosed_brace_is_an_error(tmp_path):
    assert error(tmp_path, "smtpd_banner = ${myhostname\n").startswith(
        f'{tmp_path}/main.cf:1: smtpd_banner: missing "}}" after'
    )


def test_exponential_expansion_is_bounded(tmp_path):
    lines = ["v0 = " + "x" * 1000]
    lines += [f"v{i} = " + f"$v{i - 1}" * 10 for i in range(1, 8)]
    assert "longer than 1 MiB after $ expansion" in error(tmp_path, "\n".join(lines) + "\n")


# --- types ---


@pytest.mark.parametrize(
    "line, expected",
    [
        ("message_size_limit = ten", 'message_size_limit: "ten" is not a number; use a size in bytes, e.g. 10240000'),
        ("smtpd_recipient_limit = -5", 'smtpd_recipient_limit: "-5" is not a number; use a whole number, e.g. 1000'),
        ("smtpd_tls_loglevel = 5", "smtpd_tls_loglevel: 5 is out of range; use a number from 0 to 4"),
        ("smtpd_worker_processes = 0", "smtpd_worker_processes: 0 is out of range; use a number from 1 to 32"),
        ("smtpd_tls_auth_only = maybe", 'smtpd_tls_auth_only: "maybe" is not yes or no; use yes or no'),
        (
            "smtpd_timeout = 5 minutes",
            'smtpd_timeout: "5 minutes" is not a time; use a number with an optional unit s, m, h, d or w, e.g. 300s',
        ),
        (
            "smtpd_tls_security_level = required",
            'smtpd_tls_security_level: "required" is not a valid value; use one of none, may, encrypt',
        ),
        (
            "mynetworks = 127.0.0.0/8, 10.0.0.0/33",
            'mynetworks: bad prefix length in "10.0.0.0/33"; write a number from 0 to 32 after the "/"',
        ),
        ("smtpd_tls_protocols = TLSv9", 'smtpd_tls_protocols: "TLSv9" is not a TLS protocol; use e.g. >=TLSv1.2, or !SSLv2, !SSLv3'),
        ("inet_protocols = ipv5", 'inet_protocols: "ipv5" is not a valid value; use all, ipv4, ipv6 or ipv4, ipv6'),
    ],
)
def test_invalid_values_name_file_line_parameter_and_fix(tmp_path, line, expected):
    assert error(tmp_path, f"# header\n{line}\n") == f"{tmp_path}/main.cf:2: {expected}"


def test_bad_value_reached_through_a_reference_blames_the_written_line(tmp_path):
    message = error(tmp_path, "biff = no\ndefault_destination_concurrency_limit = lots\n")
    assert message.startswith(f"{tmp_path}/main.cf:2: default_destination_concurrency_limit:")


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("smtpd_timeout", "300s", 300.0),
        ("smtpd_timeout", "5m", 300.0),
        ("smtpd_timeout", "1h", 3600.0),
        ("smtpd_timeout", "2d", 172800.0),
        ("smtpd_timeout", "1w", 604800.0),
        ("smtpd_timeout", "45", 45.0),
        ("maximal_queue_lifetime", "3", 3 * 86400.0),
        ("delay_warning_time", "4", 4 * 3600.0),
        ("smtpd_tls_auth_only", "no", False),
        ("smtpd_tls_auth_only", "TRUE", True),
        ("smtpd_forbid_bare_newline", "yes", "normalize"),
        ("smtpd_forbid_bare_newline", "reject", "reject"),
        ("smtp_tls_security_level", "", "none"),
        ("message_size_limit", "0", 0),
    ],
)
def test_typed_values(tmp_path, name, value, expected):
    assert make(tmp_path, f"{name} = {value}\n").params[name] == expected


def test_lists_split_on_commas_and_whitespace_keeping_order_and_braces(tmp_path):
    cfg = make(
        tmp_path,
        "mydestination = c.example,b.example  a.example ,\n  , z.example\n"
        "smtpd_client_restrictions = check_client_access inline:{ 1.2.3.4=REJECT, 5.6.7.8=OK }, permit\n"
        "mynetworks = 127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128 192.168.0.0/16 !10.1.2.3 hash:/etc/nets\n",
    )
    assert cfg.params["mydestination"] == ["c.example", "b.example", "a.example", "z.example"]
    assert cfg.params["smtpd_client_restrictions"] == [
        "check_client_access",
        "inline:{ 1.2.3.4=REJECT, 5.6.7.8=OK }",
        "permit",
    ]
    assert cfg.params["smtpd_client_event_limit_exceptions"] == cfg.params["mynetworks"]
    assert cfg.params.raw("mydestination") == "c.example,b.example  a.example , , z.example"


def test_mynetworks_style_subnet_warns_and_trusts_loopback_only(tmp_path):
    cfg = make(tmp_path, "mynetworks_style = subnet\n")
    assert cfg.params["mynetworks"] == ["127.0.0.0/8", "[::1]/128"]
    assert any(w.startswith(f"{tmp_path}/main.cf:1: mynetworks_style = subnet is treated as host") for w in cfg.warnings)


def test_safe_defaults():
    p = Params()
    assert p["relay_domains"] == []
    assert p["disable_vrfy_command"] is True
    assert p["smtpd_tls_auth_only"] is True
    assert p["smtpd_tls_protocols"] == [">=TLSv1.2"]
    assert p["smtpd_relay_restrictions"] == ["permit_mynetworks", "permit_sasl_authenticated", "defer_unauth_destination"]


# --- deprecated names ---


@pytest.mark.parametrize(
    "lines, name, level",
    [
        ("smtpd_use_tls = yes", "smtpd_tls_security_level", "may"),
        ("smtpd_use_tls = no", "smtpd_tls_security_level", "none"),
        ("smtpd_enforce_tls = yes", "smtpd_tls_security_level", "encrypt"),
        ("smtpd_use_tls = yes\nsmtpd_enforce_tls = yes", "smtpd_tls_security_level", "encrypt"),
        ("smtp_use_tls = yes", "smtp_tls_security_level", "may"),
        ("smtp_enforce_tls = yes", "smtp_tls_security_level", "encrypt"),
    ],
)
def test_deprecated_tls_switches_map_with_a_warning(tmp_path, lines, name, level):
    cfg = make(tmp_path, lines + "\n")
    assert cfg.params[name] == level
    assert cfg.params.origin(name).startswith(f"{tmp_path}/main.cf:")
    assert any(f"is deprecated; use {name} = {level} instead" in w for w in cfg.warnings)


def test_explicit_level_wins_over_deprecated_switch(tmp_path):
    cfg = make(tmp_path, "smtpd_tls_security_level = encrypt\nsmtpd_use_tls = no\n")
    assert cfg.params["smtpd_tls_security_level"] == "encrypt"
    assert (
        f"{tmp_path}/main.cf:2: smtpd_use_tls is deprecated and ignored because "
        f"smtpd_tls_security_level is set at {tmp_path}/main.cf:1"
    ) in cfg.warnings


def test_renamed_parameter(tmp_path):
    cfg = make(tmp_path, "smtpd_sasl_application_name = smtpd2\n")
    assert cfg.params["smtpd_sasl_path"] == "smtpd2"
    assert any("smtpd_sasl_application_name is an old name" in w for w in cfg.warnings)


def test_tls_random_source_is_accepted_quietly(tmp_path):
    assert make(tmp_path, "tls_random_source = dev:/dev/urandom\n").warnings == ()


# --- overrides ---


def test_with_overrides_checks_and_reexpands(tmp_path):
    base = make(tmp_path, "myhostname = mx.example.org\n").params
    over = base.with_overrides({"myhostname": "sub.example.org", "smtpd_tls_wrappermode": "yes"}, origin="master.cf:12")
    assert over["smtpd_banner"] == "sub.example.org ESMTP smarthost"
    assert over["smtpd_tls_wrappermode"] is True
    assert over.origin("smtpd_tls_wrappermode") == "master.cf:12"
    assert base["smtpd_tls_wrappermode"] is False
    with pytest.raises(ConfigError) as info:
        base.with_overrides({"smtpd_tls_wrappermode": "sometimes"}, origin="master.cf:12")
    assert str(info.value) == 'master.cf:12: smtpd_tls_wrappermode: "sometimes" is not yes or no; use yes or no'


def test_debian_main_cf_loads_cleanly(tmp_path):
    cfg = make(
        tmp_path,
        "smtpd_banner = $myhostname ESMTP $mail_name (Debian/GNU)\nbiff = no\nappend_dot_mydomain = no\n"
        "readme_directory = no\ncompatibility_level = 3.6\n"
        "smtpd_tls_cert_file=/etc/ssl/certs/ssl-cert-snakeoil.pem\n"
        "smtpd_tls_key_file=/etc/ssl/private/ssl-cert-snakeoil.key\nsmtpd_tls_security_level=may\n"
        "smtp_tls_CApath=/etc/ssl/certs\nsmtp_tls_security_level=may\n"
        "smtp_tls_session_cache_database = btree:${data_directory}/smtp_scache\n"
        "smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated defer_unauth_destination\n"
        "myhostname = mail.example.com\nalias_maps = hash:/etc/aliases\nalias_database = hash:/etc/aliases\n"
        "myorigin = /etc/mailname\nmydestination = $myhostname, example.com, localhost\nrelayhost = \n"
        "mynetworks = 127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128\nmailbox_size_limit = 0\n"
        "recipient_delimiter = +\ninet_interfaces = all\ninet_protocols = all\n",
    )
    assert cfg.warnings == ()
    assert cfg.params["smtp_tls_session_cache_database"] == "btree:/var/lib/smarthost/smtp_scache"


# --- robustness ---

_CONFIG_TEXT = st.text(alphabet=st.sampled_from(list("ab_ =$#{}():?,\n\t \\x\r") + ["\udcff", "é"]), max_size=200)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_CONFIG_TEXT, st.text(max_size=200)))
def test_main_cf_parsing_and_expansion_never_crash(text):
    try:
        main_params(Path("/nonexistent"), parse(text, "main.cf"))
    except ConfigError as e:
        assert str(e).startswith("main.cf")
