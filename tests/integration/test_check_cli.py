"""``smarthost check`` as an admin runs it: the real command in a subprocess, its output and
exit status, on configuration directories with real certificates and compiled tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smarthost import certs
from smarthost.cli import main

HOST = "mail.example.com"


def smarthost(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smarthost", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    """A server with TLS and a satellite's relay settings, all correct."""
    d = tmp_path / "etc"
    d.mkdir()
    certs.selfsigned(HOST, [], d / "cert.pem", d / "key.pem")
    (d / "sasl_passwd").write_text("[relay.example.net]:587 sat:pw-satellite\n")
    (d / "sasl_passwd").chmod(0o600)
    assert main(["postmap", f"hash:{d / 'sasl_passwd'}"]) == 0
    (d / "main.cf").write_text(
        f"myhostname = {HOST}\n"
        "mydestination = $myhostname, localhost\n"
        "mynetworks = 127.0.0.0/8 [::1]/128\n"
        f"smtpd_tls_cert_file = {d / 'cert.pem'}\n"
        f"smtpd_tls_key_file = {d / 'key.pem'}\n"
        "relayhost = [relay.example.net]:587\n"
        "smtp_sasl_auth_enable = yes\n"
        f"smtp_sasl_password_maps = hash:{d / 'sasl_passwd'}\n"
        "smtp_sasl_security_options = noanonymous\n"
        "smtp_tls_security_level = encrypt\n"
    )
    (d / "master.cf").write_text("127.0.0.1:2525 inet n - n - - smtpd\n")
    return d


def test_clean_configuration(confdir):
    result = smarthost("-c", str(confdir), "check")
    assert (result.returncode, result.stdout, result.stderr) == (0, "0 error(s), 0 warning(s), 0 hint(s)\n", "")


def test_errors_give_file_line_fix_and_status_1(confdir):
    main_cf = confdir / "main.cf"
    main_cf.write_text(main_cf.read_text().replace("127.0.0.0/8 [::1]/128", "127.0.0.0/8 0.0.0.0/0"))
    earlier = time.time() - 60  # sasl_passwd edited after the last postmap
    os.utime(confdir / "sasl_passwd.lmdb", (earlier, earlier))
    (confdir / "sasl_passwd").write_text("[relay.example.net]:587 sat:new-password\n")
    result = smarthost("-c", str(confdir), "check")
    assert result.returncode == 1
    assert result.stderr == ""  # no library log noise: everything is a finding
    lines = result.stdout.splitlines()
    assert f"{main_cf}:3: error: mynetworks trusts 0.0.0.0/0 to relay without logging in: " \
           "it is every address on the Internet" in lines
    stale = lines.index(f"{main_cf}:8: error: smtp_sasl_password_maps: {confdir / 'sasl_passwd'} was changed "
                        f"after it was compiled: the server still uses the old {confdir / 'sasl_passwd.lmdb'}")
    assert lines[stale + 1] == f"  fix: smarthost postmap hash:{confdir / 'sasl_passwd'}"
    assert lines[-1].startswith("3 error(s)")
    assert "password" not in result.stdout.replace("smtp_sasl_password_maps", "").replace("passwords", "")


def test_warnings_only_exit_0(confdir):
    main_cf = confdir / "main.cf"
    main_cf.write_text(main_cf.read_text() + "smtpd_use_tls = yes  # from an old howto\n")
    result = smarthost("-c", str(confdir), "check")
    assert result.returncode == 0
    assert f"{main_cf}:11: warning: smtpd_use_tls: deprecated parameter (Postfix 2.2)" in result.stdout
    assert "  fix: replace it with: smtpd_tls_security_level = may" in result.stdout
    assert f"{main_cf}:11: warning: text after \"#\" is ignored here" in result.stdout


def test_json(confdir):
    (confdir / "key.pem").chmod(0o640)
    result = smarthost("-c", str(confdir), "check", "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert (data["errors"], data["warnings"], data["hints"]) == (1, 0, 0)
    assert data["findings"] == [{
        "severity": "error", "file": str(confdir / "main.cf"), "line": 5, "check": "tls.key-mode",
        "message": f"smtpd_tls_key_file: the private key {confdir / 'key.pem'} is readable by group or others "
                   "(mode 0640); the server refuses to start with it",
        "fix": f"chmod 600 {confdir / 'key.pem'}",
    }]


def test_sender(confdir):
    result = smarthost("-c", str(confdir), "check", "--sender", "alice@example.com")
    assert (result.returncode, result.stderr) == (0, "")
    assert "relay: [relay.example.net]:587 (host relay.example.net, port 587, no MX lookup)" in result.stdout
    assert "key [relay.example.net]:587 in hash:" in result.stdout and "user name sat" in result.stdout
    assert "pw-satellite" not in result.stdout
    data = json.loads(smarthost("-c", str(confdir), "check", "--sender", "alice@example.com", "--json").stdout)
    assert (data["nexthop"], data["key"], data["username"]) == ("[relay.example.net]:587", "[relay.example.net]:587",
                                                                "sat")
    assert "pw-satellite" not in json.dumps(data)


def test_sender_without_credentials_exits_1(confdir):
    (confdir / "sasl_passwd").write_text("[other.example.net]:587 sat:pw-satellite\n")
    assert main(["postmap", f"hash:{confdir / 'sasl_passwd'}"]) == 0
    result = smarthost("-c", str(confdir), "check", "--sender", "alice@example.com")
    assert result.returncode == 1 and "none found: the client does not log in" in result.stdout


def test_configuration_that_does_not_load(confdir):
    (confdir / "master.cf").write_text("smtp inet n - n - smtpd\n")
    result = smarthost("-c", str(confdir), "check")
    assert result.returncode == 1
    assert result.stdout.startswith(f"{confdir / 'master.cf'}:1: error: expected 8 columns")


def test_warnings_the_server_prints_at_start_are_findings(confdir):
    # A howto's master.cf line with the chroot column y: smarthost run warns at start; check says so too.
    master_cf = confdir / "master.cf"
    master_cf.write_text("# services\n127.0.0.1:2525 inet n - y - - smtpd\n")
    result = smarthost("-c", str(confdir), "check")
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    found = [n for n, line in enumerate(lines) if line.startswith(f"{master_cf}:2: warning: smarthost run would warn:")]
    assert len(found) == 1 and "chroot" in lines[found[0]], result.stdout
    assert lines[found[0] + 1].startswith("  fix: write n in the chroot column (the 5th) of this master.cf line")
    assert lines[-1] == "0 error(s), 1 warning(s), 0 hint(s)"
    master_cf.write_text("# services\n127.0.0.1:2525 inet n - n - - smtpd\n")
    assert smarthost("-c", str(confdir), "check").stdout == "0 error(s), 0 warning(s), 0 hint(s)\n"


def test_sender_through_port_465_says_implicit_tls(confdir):
    main_cf = confdir / "main.cf"
    main_cf.write_text(main_cf.read_text().replace("[relay.example.net]:587", "[relay.example.net]:465")
                       + "smtp_tls_wrappermode = yes\n")
    (confdir / "sasl_passwd").write_text("[relay.example.net]:465 sat:pw-satellite\n")
    assert main(["postmap", f"hash:{confdir / 'sasl_passwd'}"]) == 0
    result = smarthost("-c", str(confdir), "check", "--sender", "alice@example.com")
    assert (result.returncode, result.stderr) == (0, "")
    assert "relay: [relay.example.net]:465 (host relay.example.net, port 465, no MX lookup)" in result.stdout
    assert "  TLS: implicit TLS (wrapper mode)" in result.stdout
    data = json.loads(smarthost("-c", str(confdir), "check", "--sender", "alice@example.com", "--json").stdout)
    assert (data["port"], data["wrappermode"], data["mx_lookup"]) == (465, True, False)


def test_sender_through_a_relayhost_without_brackets_notes_the_mx_lookup(confdir):
    main_cf = confdir / "main.cf"
    main_cf.write_text(main_cf.read_text().replace("[relay.example.net]:587", "relay.example.net"))
    (confdir / "sasl_passwd").write_text("relay.example.net sat:pw-satellite\n")
    assert main(["postmap", f"hash:{confdir / 'sasl_passwd'}"]) == 0
    result = smarthost("-c", str(confdir), "check", "--sender", "alice@example.com")
    assert (result.returncode, result.stderr) == (0, "")
    assert "relay: relay.example.net (host relay.example.net, port 25, MX lookup)" in result.stdout
    assert "  TLS: smtp_tls_security_level = encrypt" in result.stdout
    assert ("  note: relay.example.net is looked up in DNS (MX); the MX host names found are tried as keys too"
            in result.stdout)
    assert "key relay.example.net in hash:" in result.stdout and "pw-satellite" not in result.stdout
