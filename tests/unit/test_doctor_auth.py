"""Doctor: AUTH before TLS, mech_list, and the auth socket (real unix sockets)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import pytest
from test_doctor_support import ConfDir, by_check, one

from smarthost.doctor import ERROR, WARNING


@pytest.fixture
def conf(tmp_path):
    return ConfDir(tmp_path).set(smtpd_sasl_auth_enable="yes")


@pytest.fixture
def short_dir():
    """Unix socket paths are limited to 107 bytes: a short directory under /tmp."""
    path = Path(tempfile.mkdtemp(prefix="dr", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


def listening(path: Path, *, listen: bool = True, mode: int = 0o666) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    if listen:
        s.listen(1)
    os.chmod(path, mode)
    return s


def greet_as_dovecot(sock: socket.socket) -> None:
    """Answer every connection with a Dovecot auth server handshake (the start check asks it)."""
    greeting = b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nSPID\t1\nCUID\t1\nCOOKIE\t" + b"0" * 32 + b"\nDONE\n"
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with conn:
            try:
                conn.sendall(greeting)
            except OSError:  # the doctor's own probe connects and hangs up at once
                pass


def smtpd_conf(conf: ConfDir, text: str) -> Path:
    (conf.dir / "sasl").mkdir(exist_ok=True)
    path = conf.dir / "sasl" / "smtpd.conf"
    path.write_text(text)
    return path


def saslauthd_conf(conf: ConfDir, socket_path: str, mechs: str = "PLAIN LOGIN") -> Path:
    return smtpd_conf(conf, f"pwcheck_method: saslauthd\nmech_list: {mechs}\nsaslauthd_path: {socket_path}\n")


def test_auth_before_starttls(conf, short_dir):
    saslauthd_conf(conf, str(short_dir / "mux"))
    sock = listening(short_dir / "mux")
    conf.set(smtpd_tls_auth_only="no")  # Postfix's default, copied from a howto
    found = one(conf.findings(), "auth.plaintext")
    assert (found.severity, found.line) == (ERROR, conf.line_of("smtpd_tls_auth_only"))
    assert "before STARTTLS" in found.message and found.fix == "smtpd_tls_auth_only = yes"
    conf.set(smtpd_tls_auth_only="yes")
    assert conf.findings() == []
    # Before TLS the server offers only what smtpd_sasl_security_options allow: noplaintext is safe.
    conf.set(smtpd_tls_auth_only="no", smtpd_sasl_security_options="noanonymous, noplaintext",
             smtpd_sasl_tls_security_options="noanonymous")
    saslauthd_conf(conf, str(short_dir / "mux"), "PLAIN LOGIN")
    assert by_check(conf.findings(), "auth.plaintext") == []
    sock.close()


def test_auth_on_a_service_without_tls(conf, short_dir):
    saslauthd_conf(conf, str(short_dir / "mux"))
    sock = listening(short_dir / "mux")
    conf.unset("smtpd_tls_cert_file", "smtpd_tls_key_file").set(smtpd_tls_auth_only="no")
    found = one(conf.findings(), "auth.plaintext")
    assert found.severity is ERROR and "no certificate is configured" in found.message
    assert "passwords cross the network in clear" in found.message
    conf.set(smtpd_tls_auth_only="yes")  # safe, but then AUTH is never offered
    found = one(conf.findings(), "auth.no-tls")
    assert found.severity is WARNING and "never offered" in found.message
    assert "smtpd_tls_cert_file =" in found.fix
    sock.close()


def test_cram_md5_asked_of_saslauthd(conf, short_dir):
    path = saslauthd_conf(conf, str(short_dir / "mux"), "PLAIN LOGIN CRAM-MD5 DIGEST-MD5")
    sock = listening(short_dir / "mux")
    found = one(conf.findings(), "auth.mech-list")
    assert (found.severity, found.file, found.line) == (WARNING, str(path), 2)
    assert "CRAM-MD5, DIGEST-MD5" in found.message and "pwcheck_method: saslauthd" in found.message
    assert found.fix == "mech_list: PLAIN LOGIN"
    saslauthd_conf(conf, str(short_dir / "mux"), "PLAIN LOGIN")
    assert conf.findings() == []
    sock.close()


def test_saslauthd_socket_missing(conf, short_dir):
    path = saslauthd_conf(conf, str(short_dir / "mux"))
    found = one(conf.findings(), "auth.socket")
    assert (found.severity, found.file, found.line) == (ERROR, str(path), 3)
    assert f"{short_dir / 'mux'} does not exist" in found.message
    assert f"smarthost authd -m {short_dir}" in found.fix
    sock = listening(short_dir / "mux")
    assert conf.findings() == []
    sock.close()


def test_saslauthd_path_names_the_directory(conf, short_dir):
    saslauthd_conf(conf, str(short_dir))
    found = one(conf.findings(), "auth.socket")
    assert "is a directory" in found.message and f"{short_dir / 'mux'}" in found.fix


def test_socket_left_behind_by_a_stopped_daemon(conf, short_dir):
    saslauthd_conf(conf, str(short_dir / "mux"))
    sock = listening(short_dir / "mux", listen=False)
    found = one(conf.findings(), "auth.socket")
    assert "nobody listens on it" in found.message
    sock.close()


def test_socket_outside_the_chroot(conf, short_dir):
    # The recipe's trap: saslauthd listens at /var/run/saslauthd/mux, smtpd is chrooted to the queue directory.
    spool = short_dir / "spool"
    spool.mkdir()
    saslauthd_conf(conf, str(short_dir / "run" / "mux"))
    sock = listening(short_dir / "run" / "mux")
    conf.set(queue_directory=str(spool))
    conf.master("127.0.0.1:2525 inet n - y - - smtpd\n")
    found = one(conf.findings(), "auth.socket")
    inside = f"{spool}{short_dir}/run/mux"
    assert (found.severity, found.file, found.line) == (ERROR, str(conf.dir / "master.cf"), 1)
    assert f"looks for the saslauthd socket at {inside}, which does not exist" in found.message
    assert "there is one at that path outside the chroot" in found.message
    assert f"-m {spool}{short_dir}/run" in found.fix and "chroot column" in found.fix
    inner = listening(Path(inside))
    found = conf.findings()
    assert [f.check for f in found] == ["start.warning"]  # what smarthost run says about the chroot column
    assert "the auth sockets (saslauthd_path, smtpd_sasl_path) are looked for inside queue_directory" in found[0].message
    sock.close()
    inner.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make files another user cannot reach")
def test_socket_directory_not_searchable_by_mail_owner(conf, short_dir):
    pwd.getpwnam("nobody")
    saslauthd_conf(conf, str(short_dir / "run" / "mux"))
    sock = listening(short_dir / "run" / "mux")
    os.chmod(short_dir / "run", 0o700)  # root:root 0700, as "saslauthd -m" may leave it
    conf.set(mail_owner="nobody")
    found = one(conf.findings(), "auth.socket-permissions")
    assert f"the directory {short_dir / 'run'} (mode 0700" in found.message
    assert "not searchable by mail_owner nobody" in found.message
    assert found.fix == f"chmod o+x {short_dir / 'run'}"
    os.chmod(short_dir / "run", 0o710)
    os.chown(short_dir / "run", 0, 0)
    found = one(conf.findings(), "auth.socket-permissions")
    assert found.fix == "adduser nobody root"
    os.chmod(short_dir / "run", 0o755)
    os.chmod(short_dir / "run" / "mux", 0o755)
    found = one(conf.findings(), "auth.socket-permissions")
    assert "may not connect to it (mode 0755" in found.message
    os.chmod(short_dir / "run" / "mux", 0o777)
    assert conf.findings() == []
    sock.close()


def test_dovecot_relative_socket_path(conf, short_dir):
    # Postfix's smtpd_sasl_path = private/auth is relative to queue_directory; the server reads it so too.
    conf.set(smtpd_sasl_type="dovecot", smtpd_sasl_path="private/auth", queue_directory=str(short_dir))
    found = one(conf.findings(), "auth.socket")
    assert found.severity is ERROR
    assert f"{short_dir}/private/auth (smtpd_sasl_path private/auth is relative to queue_directory) does not exist" \
        in found.message
    assert f"smarthost authd --dovecot {short_dir}/private/auth" in found.fix
    sock = listening(short_dir / "private" / "auth")
    threading.Thread(target=greet_as_dovecot, args=(sock,), daemon=True).start()
    assert by_check(conf.findings(), "auth.socket") == []
    conf.set(smtpd_sasl_path=str(short_dir / "private" / "auth"))
    assert by_check(conf.findings(), "auth.socket") == []
    sock.close()


def test_dovecot_socket_of_a_chrooted_service(conf, short_dir):
    # Chrooted: an absolute smtpd_sasl_path is inside the queue directory, a relative one is the same
    # socket (relative to the queue directory, never the queue directory twice).
    spool = short_dir / "q"
    spool.mkdir()
    conf.set(smtpd_sasl_type="dovecot", smtpd_sasl_path="/private/auth", queue_directory=str(spool))
    conf.master("127.0.0.1:10587 inet n - y - - smtpd\n")
    found = one(conf.findings(), "auth.socket")
    assert f"looks for the Dovecot auth socket at {spool}/private/auth, which does not exist" in found.message
    sock = listening(spool / "private" / "auth")
    threading.Thread(target=greet_as_dovecot, args=(sock,), daemon=True).start()
    assert by_check(conf.findings(), "auth.socket") == []
    conf.set(smtpd_sasl_path="private/auth")
    assert by_check(conf.findings(), "auth.socket") == []
    sock.close()
