"""``smarthost postconf``: listing, -n -d -x -h, -e editing, -M, exit codes."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest

from smarthost.cli import postconf


def run(capsys, config_dir: Path, *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="smarthost")
    parser.add_argument("-c", dest="config_dir")
    postconf.register(parser.add_subparsers())
    args = parser.parse_args(["-c", str(config_dir), "postconf", *argv])
    status = args.func(args)
    out, err = capsys.readouterr()
    return status, out, err


MAIN_CF = """\
# Server identity
myhostname = mx.example.org

# Who may relay
mynetworks = 127.0.0.0/8,
    # the office
    192.0.2.0/24
smtpd_banner = $myhostname ESMTP
"""


@pytest.fixture
def confdir(tmp_path):
    (tmp_path / "main.cf").write_text(MAIN_CF)
    return tmp_path


def test_no_arguments_lists_every_parameter_sorted_unexpanded(capsys, confdir):
    status, out, err = run(capsys, confdir)
    lines = out.splitlines()
    assert status == 0 and err == ""
    assert lines == sorted(lines)
    assert "myorigin = $myhostname" in lines
    assert "smtpd_banner = $myhostname ESMTP" in lines
    assert "relayhost =" in lines
    assert "mynetworks = 127.0.0.0/8, 192.0.2.0/24" in lines


def test_named_parameters_and_expansion(capsys, confdir):
    assert run(capsys, confdir, "smtpd_banner", "message_size_limit")[1] == (
        "smtpd_banner = $myhostname ESMTP\nmessage_size_limit = 10240000\n"
    )
    assert run(capsys, confdir, "-x", "smtpd_banner")[1] == "smtpd_banner = mx.example.org ESMTP\n"
    assert run(capsys, confdir, "-h", "-x", "myorigin")[1] == "mx.example.org\n"


def test_unknown_name_warns_and_exits_1(capsys, confdir):
    status, out, err = run(capsys, confdir, "no_such_thing", "mail_name")
    assert status == 1
    assert out == "mail_name = smarthost\n"
    assert err == "postconf: warning: no_such_thing: unknown parameter\n"


def test_n_shows_only_main_cf_settings(capsys, confdir):
    status, out, _ = run(capsys, confdir, "-n")
    assert status == 0
    assert out == (
        "myhostname = mx.example.org\nmynetworks = 127.0.0.0/8, 192.0.2.0/24\nsmtpd_banner = $myhostname ESMTP\n"
    )


def test_d_shows_defaults_ignoring_main_cf(capsys, confdir):
    (confdir / "main.cf").write_text("message_size_limit = broken\n")  # -d does not read main.cf
    status, out, _ = run(capsys, confdir, "-d", "message_size_limit", "smtpd_banner", "relay_domains")
    assert status == 0
    assert out == "message_size_limit = 10240000\nsmtpd_banner = $myhostname ESMTP $mail_name\nrelay_domains =\n"


def test_warnings_go_to_stderr(capsys, confdir):
    (confdir / "main.cf").write_text("frobnicate = 1\n")
    status, _, err = run(capsys, confdir, "mail_name")
    assert status == 0
    assert err == f"postconf: warning: {confdir}/main.cf:1: unknown parameter frobnicate\n"


def test_invalid_main_cf_is_fatal(capsys, confdir):
    (confdir / "main.cf").write_text("biff = no\nmessage_size_limit = ten\n")
    status, out, err = run(capsys, confdir)
    assert (status, out) == (1, "")
    assert err == (
        f'postconf: fatal: {confdir}/main.cf:2: message_size_limit: "ten" is not a number; '
        "use a size in bytes, e.g. 10240000\n"
    )


def test_missing_config_dir_is_fatal(capsys, tmp_path):
    status, _, err = run(capsys, tmp_path / "missing")
    assert status == 1
    assert err.startswith(f"postconf: fatal: {tmp_path}/missing: configuration directory does not exist")


def test_e_replaces_last_definition_with_continuations_and_keeps_comments(capsys, confdir):
    os.chmod(confdir / "main.cf", 0o640)
    before = (confdir / "main.cf").stat().st_ino
    status, out, err = run(capsys, confdir, "-e", "mynetworks = 10.0.0.0/8", "relayhost=[smtp.example.net]:587")
    assert (status, out, err) == (0, "", "")
    assert (confdir / "main.cf").read_text() == (
        "# Server identity\n"
        "myhostname = mx.example.org\n"
        "\n"
        "# Who may relay\n"
        "mynetworks = 10.0.0.0/8\n"
        "    # the office\n"
        "smtpd_banner = $myhostname ESMTP\n"
        "relayhost = [smtp.example.net]:587\n"
    )
    st = (confdir / "main.cf").stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_ino != before  # replaced by rename, never rewritten in place
    assert sorted(p.name for p in confdir.iterdir()) == ["main.cf"]  # no temporary file left behind
    assert run(capsys, confdir, "-h", "-x", "mynetworks")[1] == "10.0.0.0/8\n"


def test_e_edits_the_last_of_repeated_definitions(capsys, tmp_path):
    (tmp_path / "main.cf").write_text("biff = yes\n# keep\nbiff = yes\n")
    assert run(capsys, tmp_path, "biff=no")[0] == 0  # name=value implies -e, as in Postfix
    assert (tmp_path / "main.cf").read_text() == "biff = yes\n# keep\nbiff = no\n"


def test_e_creates_main_cf(capsys, tmp_path):
    assert run(capsys, tmp_path, "-e", "myhostname=mx.example.org")[0] == 0
    path = tmp_path / "main.cf"
    assert path.read_text() == "myhostname = mx.example.org\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_e_refuses_invalid_values_and_leaves_the_file_alone(capsys, confdir):
    status, _, err = run(capsys, confdir, "-e", "message_size_limit=10M")
    assert status == 1
    assert err == (
        f'postconf: fatal: {confdir}/main.cf:9: message_size_limit: "10M" is not a number; '
        "use a size in bytes, e.g. 10240000\n"
    )
    assert (confdir / "main.cf").read_text() == MAIN_CF


def test_e_refuses_a_value_that_breaks_master_cf(capsys, confdir):
    (confdir / "master.cf").write_text("smtp inet n - n - - smtpd -o smtpd_recipient_limit=$limit\n")
    status, _, err = run(capsys, confdir, "-e", "limit=many")
    assert status == 1
    assert err == (
        f'postconf: fatal: {confdir}/master.cf:1: smtpd_recipient_limit: "many" is not a number '
        '(expanded from "$limit"); use a whole number, e.g. 1000\n'
    )
    assert (confdir / "main.cf").read_text() == MAIN_CF


def test_e_warns_about_what_it_wrote(capsys, confdir):
    status, _, err = run(capsys, confdir, "-e", "smtpd_use_tls=yes")
    assert status == 0
    assert err == (
        f"postconf: warning: {confdir}/main.cf:9: smtpd_use_tls is deprecated; "
        "use smtpd_tls_security_level = may instead\n"
    )


def test_e_rejects_malformed_pairs(capsys, confdir):
    status, _, err = run(capsys, confdir, "-e", "bad name=1")
    assert status == 1
    assert "expected name=value" in err
    assert (confdir / "main.cf").read_text() == MAIN_CF


def test_M_lists_services(capsys, confdir):
    (confdir / "master.cf").write_text(
        "smtp inet n - y - - smtpd\nsubmission inet n - n - - smtpd -o { smtpd_banner = hi there } -o biff=no\n"
    )
    status, out, _ = run(capsys, confdir, "-M")
    assert status == 0
    assert out.splitlines() == [
        "smtp        inet  n y y 0 100 smtpd",
        "submission  inet  n y n 0 100 smtpd -o { smtpd_banner = hi there } -o biff=no",
    ]
