"""Cyrus SASL's smtpd.conf: the recipe's file as it is, what gets advertised, and errors with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from smarthost.config import ConfigError, Params, Setting
from smarthost.config.model import map_deprecated
from smarthost.config.saslconf import DEFAULT_SASLAUTHD_PATH, load_sasl_conf


def params(**values: str) -> Params:
    return Params({name: Setting(value, "main.cf", number) for number, (name, value) in enumerate(values.items(), 1)})


def write(directory: Path, text: str, name: str = "sasl/smtpd.conf") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_recipes_file_loads_as_it_is(tmp_path):
    path = write(tmp_path, "pwcheck_method: saslauthd\nmech_list: PLAIN LOGIN\n")
    conf = load_sasl_conf(tmp_path, params())
    assert conf.path == path and conf.type == "cyrus"
    assert conf.pwcheck_methods == ("saslauthd",)
    assert conf.mech_list == ("PLAIN", "LOGIN")
    assert conf.saslauthd_path == DEFAULT_SASLAUTHD_PATH == "/var/run/saslauthd/mux"
    assert conf.warnings == ()
    assert conf.mechanisms(["noanonymous"]) == ("PLAIN", "LOGIN")


def test_saslauthd_never_offers_secret_mechanisms(tmp_path):
    path = write(tmp_path, "# the recipe, extended\npwcheck_method: saslauthd\nmech_list: plain login cram-md5 scram-sha-256 digest-md5\n")
    conf = load_sasl_conf(tmp_path, params())
    assert conf.mechanisms([]) == ("PLAIN", "LOGIN")
    assert conf.warnings == tuple(
        f"{path}:3: mech_list: saslauthd can verify plaintext passwords only; removing {name} from mech_list"
        for name in ("CRAM-MD5", "SCRAM-SHA-256", "DIGEST-MD5")
    )


def test_auxprop_offers_cram_md5_only_when_mech_list_asks(tmp_path):
    path = write(tmp_path, "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: SCRAM-SHA-256 CRAM-MD5 PLAIN DIGEST-MD5\n")
    conf = load_sasl_conf(tmp_path, params())
    assert conf.mechanisms(["noanonymous"]) == ("SCRAM-SHA-256", "CRAM-MD5", "PLAIN")
    assert conf.mechanisms(["noplaintext"]) == ("SCRAM-SHA-256", "CRAM-MD5")
    assert conf.warnings == (
        f"{path}:3: mech_list: the user database stores SCRAM verifiers and CRAM-MD5 secrets, not plaintext"
        " passwords; removing DIGEST-MD5 from mech_list",
    )
    assert conf.sasldb_path == tmp_path / "sasldb"
    write(tmp_path, "pwcheck_method: auxprop\n")  # without mech_list: never CRAM-MD5
    assert "CRAM-MD5" not in load_sasl_conf(tmp_path, params()).mechanisms([])


def test_defaults_without_mech_list(tmp_path):
    write(tmp_path, "pwcheck_method: saslauthd auxprop\n")
    conf = load_sasl_conf(tmp_path, params())
    assert conf.mechanisms(["noanonymous"]) == ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "LOGIN")
    assert conf.mechanisms(["noanonymous", "noplaintext"]) == ("SCRAM-SHA-256", "SCRAM-SHA-1")
    assert conf.mechanisms(["noanonymous"], available=["PLAIN", "scram-sha-1"]) == ("SCRAM-SHA-1", "PLAIN")


def test_unsupported_mechanisms_are_removed_with_a_warning(tmp_path):
    path = write(tmp_path, "pwcheck_method: saslauthd\nmech_list: PLAIN GSSAPI ANONYMOUS\n")
    conf = load_sasl_conf(tmp_path, params())
    assert conf.mech_list == ("PLAIN",)
    assert f"{path}:2: mech_list: smarthost does not implement it; removing GSSAPI from mech_list" in conf.warnings


def test_external_stays_when_listed(tmp_path):
    write(tmp_path, "pwcheck_method: saslauthd\nmech_list: EXTERNAL PLAIN\n")
    conf = load_sasl_conf(tmp_path, params())
    assert conf.mechanisms(["noanonymous"]) == ("EXTERNAL", "PLAIN")
    assert conf.mechanisms(["noplaintext"]) == ("EXTERNAL",)


def test_application_name_and_search_path(tmp_path):
    write(tmp_path, "pwcheck_method: auxprop\nsasldb_path: /var/lib/smarthost/users\n", name="cyrus/submission.conf")
    conf = load_sasl_conf(
        tmp_path, params(smtpd_sasl_path="submission", cyrus_sasl_config_path=f"/nonexistent:{tmp_path}/cyrus")
    )
    assert conf.path == tmp_path / "cyrus/submission.conf"
    assert conf.sasldb_path == Path("/var/lib/smarthost/users")


def test_the_old_parameter_name_selects_the_file(tmp_path):
    write(tmp_path, "pwcheck_method: saslauthd\n", name="sasl/smtp.conf")
    mapped, _ = map_deprecated({"smtpd_sasl_application_name": Setting("smtp", "main.cf", 3)}, {})
    conf = load_sasl_conf(tmp_path, Params(mapped))
    assert conf.path == tmp_path / "sasl/smtp.conf"


def test_missing_file_means_cyrus_defaults(tmp_path):
    conf = load_sasl_conf(tmp_path, params())
    assert conf.path is None and conf.pwcheck_methods == ("auxprop",)
    assert conf.sasldb_path == tmp_path / "sasldb"
    assert conf.warnings and str(tmp_path / "sasl/smtpd.conf") in conf.warnings[0]


def test_dovecot_reads_no_file(tmp_path):
    write(tmp_path, "this is not cyrus syntax\n")
    conf = load_sasl_conf(tmp_path, params(smtpd_sasl_type="dovecot", smtpd_sasl_path="private/auth"))
    assert conf.type == "dovecot" and conf.dovecot_path == "private/auth" and conf.path is None
    assert conf.mechanisms(["noanonymous"]) == ()
    assert conf.mechanisms(["noanonymous"], available=["plain", "LOGIN", "ANONYMOUS"]) == ("PLAIN", "LOGIN")


def test_comments_blank_lines_spaces_and_duplicates(tmp_path):
    path = write(tmp_path, "\n   # comment\n  pwcheck_method :   saslauthd  \nmech_list: PLAIN\nmech_list: LOGIN\nlog_level: 3\n")
    conf = load_sasl_conf(tmp_path, params())
    assert conf.pwcheck_methods == ("saslauthd",) and conf.mech_list == ("LOGIN",) and conf.log_level == 3
    assert conf.warnings == (f"{path}:5: mech_list is also set on line 4; this line wins",)


def test_keys_smarthost_does_not_use_warn(tmp_path):
    path = write(tmp_path, "pwcheck_method: saslauthd\nsql_engine: pgsql\n")
    assert load_sasl_conf(tmp_path, params()).warnings == (f"{path}:2: sql_engine is not used by smarthost; ignored",)


@pytest.mark.parametrize(
    ("text", "line", "problem", "fix"),
    [
        ("pwcheck_method: saslauthd\nmech_list PLAIN\n", 2, "expected 'key: value'", "'name: value'"),
        ("pwcheck_method: pwcheck\n", 1, 'unsupported method "pwcheck"', "saslauthd"),
        ("pwcheck_method:\n", 1, "empty value", "auxprop"),
        ("pwcheck_method: auxprop\nauxprop_plugin: sql\n", 2, 'plugin "sql" is not supported', "sasldb"),
        ("pwcheck_method: saslauthd\nmech_list: CRAM-MD5\n", 2, "leaves no mechanism", "PLAIN LOGIN"),
        ("pwcheck_method: saslauthd\nsaslauthd_path:\n", 2, "empty value", "saslauthd_path:"),
        ("log_level: loud\n", 1, '"loud" is not a number', "number"),
    ],
)
def test_errors_name_file_line_and_fix(tmp_path, text, line, problem, fix):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_sasl_conf(tmp_path, params())
    assert exc.value.file == str(path) and exc.value.line == line
    assert problem in exc.value.problem and fix in (exc.value.fix or "")
    assert str(exc.value).startswith(f"{path}:{line}: ")


def test_bad_application_name_names_main_cf(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_sasl_conf(tmp_path, params(smtpd_sasl_path="../etc/shadow"))
    assert (exc.value.file, exc.value.line, exc.value.param) == ("main.cf", 1, "smtpd_sasl_path")


def test_oversized_or_binary_files_are_refused(tmp_path):
    path = write(tmp_path, "")
    path.write_bytes(b"pwcheck_method: saslauthd\n\xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_sasl_conf(tmp_path, params())
    path.write_bytes(b"#" * (1 << 17))
    with pytest.raises(ConfigError, match="larger than"):
        load_sasl_conf(tmp_path, params())
