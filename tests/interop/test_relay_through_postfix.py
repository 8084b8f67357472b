"""The recipe's client side, literally: smarthost's queue manager relays through a REAL Postfix
configured as the recipe's server.

The Postfix (a private instance): STARTTLS with a trustme certificate, AUTH only after TLS
(``smtpd_tls_auth_only = yes``), SASL through the Dovecot auth protocol served by our own
``smarthost authd --dovecot`` (the Cyrus-saslauthd path through a private Postfix does not work
on this machine, see test_saslauthd_interop.py), relaying only for authenticated clients, and
delivering ``example.net`` into a virtual Maildir.

Our side, configured as a howto says::

    relayhost = [127.0.0.1]:PORT
    smtp_sasl_auth_enable = yes
    smtp_sasl_password_maps = hash:DIR/sasl_passwd     (compiled with `smarthost postmap`)
    smtp_sasl_security_options = noanonymous
    smtp_tls_security_level = verify, smtp_tls_CAfile = the trustme CA

The message must land in the Maildir with its content unchanged.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme
from peers import require_peer, wait_for_text

from smarthost.config import load
from smarthost.queue import Envelope, QueueStore, Recipient
from smarthost.queue.manager import QueueManager

SMARTHOST = [sys.executable, "-m", "smarthost"]
PASSWORD = "correct horse:battery staple"
BODY = (b"From: Alice <alice@satellite.example>\r\nTo: Bob <bob@example.net>\r\n"
        b"Subject: through the recipe's smarthost\r\nDate: Tue, 25 Nov 2025 11:00:00 +0000\r\n"
        b"Message-ID: <relay-interop-1@satellite.example>\r\n\r\n"
        b"Hello through a real Postfix.\r\n.a line with a leading dot\r\n\r\nbye\r\n")
NOBODY = 65534


class MailLog:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)

    warning = error = log


def _wait_for_socket(path: Path, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"authd exited with {proc.returncode}: {proc.stderr.read()}")
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(path))
                return
            except OSError:
                time.sleep(0.05)
    raise AssertionError(f"{path} never accepted connections")


@pytest.fixture(scope="module")
def authd(interop_dir: Path):
    """``smarthost authd`` with user alice, serving the Dovecot protocol to Postfix's smtpd."""
    config = interop_dir / "authd-config"
    config.mkdir()
    subprocess.run([*SMARTHOST, "-c", str(config), "users", "add", "alice"], input=PASSWORD + "\n",
                   text=True, check=True, capture_output=True)
    sockdir = interop_dir / "authd"
    sockdir.mkdir()
    sockdir.chmod(0o755)  # Postfix's smtpd runs as postfix and must reach the socket
    proc = subprocess.Popen([*SMARTHOST, "-c", str(config), "authd", "-m", str(sockdir), "-d",
                             "--dovecot", str(sockdir / "auth-client")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _wait_for_socket(sockdir / "auth-client", proc)
        yield sockdir / "auth-client"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def recipe_server(interop_dir: Path, authd: Path, start_postfix):
    """A real Postfix as the recipe's smarthost; returns (instance, CA, Maildir of bob)."""
    ca = trustme.CA()
    tls = interop_dir / "postfix-tls"
    tls.mkdir()
    tls.chmod(0o755)
    cert = ca.issue_cert("127.0.0.1", "mail.example.test")
    cert.private_key_pem.write_to_path(str(tls / "key.pem"))
    (tls / "key.pem").chmod(0o600)
    cert.cert_chain_pems[0].write_to_path(str(tls / "cert.pem"))
    vmail = interop_dir / "vmail"
    vmail.mkdir()
    os.chown(vmail, NOBODY, NOBODY)
    postfix = start_postfix("recipe-server", {
        "myhostname": "mail.example.test",
        "mynetworks": "192.0.2.0/24",  # loopback is NOT trusted: relaying needs AUTH
        "smtpd_tls_cert_file": str(tls / "cert.pem"),
        "smtpd_tls_key_file": str(tls / "key.pem"),
        "smtpd_tls_security_level": "may",
        "smtpd_tls_auth_only": "yes",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_type": "dovecot",
        "smtpd_sasl_path": str(authd),
        "smtpd_sasl_security_options": "noanonymous",
        "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
        "virtual_mailbox_domains": "example.net",
        "virtual_mailbox_base": str(vmail),
        "virtual_mailbox_maps": "inline:{ bob@example.net=bob/ }",
        "virtual_uid_maps": f"static:{NOBODY}",
        "virtual_gid_maps": f"static:{NOBODY}",
    })
    return postfix, ca, vmail / "bob" / "new"


def _our_config(directory: Path, port: int, ca: trustme.CA) -> Path:
    directory.mkdir()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    nexthop = f"[127.0.0.1]:{port}"
    (directory / "sasl_passwd").write_text(f"{nexthop} alice:{PASSWORD}\n")
    (directory / "sasl_passwd").chmod(0o600)
    postmap = subprocess.run([*SMARTHOST, "-c", str(directory), "postmap", f"hash:{directory / 'sasl_passwd'}"],
                             capture_output=True, text=True)
    assert postmap.returncode == 0, postmap.stderr
    main_cf = {
        "myhostname": "satellite.example.test",
        "mydestination": "satellite.example.test",
        "queue_directory": str(directory / "queue"),
        "alias_maps": "",
        "relayhost": nexthop,
        "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_password_maps": f"hash:{directory / 'sasl_passwd'}",
        "smtp_sasl_security_options": "noanonymous",
        "smtp_tls_security_level": "verify",
        "smtp_tls_CAfile": str(directory / "ca.pem"),
    }
    (directory / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main_cf.items()))
    (directory / "master.cf").write_text("")
    return directory


async def _relay(config_dir: Path) -> tuple[str, MailLog, QueueStore]:
    config = load(config_dir)
    store = QueueStore(config.params["queue_directory"])
    maillog = MailLog()
    manager = QueueManager(config, store, maillog)
    task = asyncio.create_task(manager.run())
    try:
        envelope = Envelope("alice@satellite.example", (Recipient("bob@example.net"),))
        queue_id = await store.submit(envelope, BODY)
        manager.wake()
        for _ in range(3000):
            await asyncio.sleep(0.01)
            if store.get(queue_id) is None or store.get(queue_id).attempts:
                break
        return queue_id, maillog, store
    finally:
        manager.stop()
        await asyncio.wait_for(task, 20)


def test_relay_through_real_postfix_with_starttls_and_auth(interop_dir: Path, recipe_server) -> None:
    require_peer("postmap")
    postfix, ca, maildir = recipe_server
    config_dir = _our_config(interop_dir / "satellite", postfix.port, ca)
    queue_id, maillog, store = asyncio.run(_relay(config_dir))
    try:
        log = "\n".join(maillog.lines)
        assert store.get(queue_id) is None, log + "\n--- postfix:\n" + postfix.log_text()[-3000:]
    finally:
        store.close()
    assert f"Verified TLS connection established to 127.0.0.1[127.0.0.1]:{postfix.port}" in log
    assert f"{queue_id}: to=<bob@example.net>, relay=127.0.0.1[127.0.0.1]:{postfix.port}," in log
    assert "dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as " in log
    assert PASSWORD not in log
    # Postfix saw AUTH over TLS from us, then delivered into bob's Maildir.
    wait_for_text(postfix.maillog, r"sasl_method=PLAIN, sasl_username=alice", what="Postfix log")
    wait_for_text(postfix.maillog, r"status=sent \(delivered to maildir\)", what="Postfix log")
    [delivered] = list(maildir.iterdir())
    content = delivered.read_bytes()
    # Postfix's virtual(8) stores LF line ends below its own Return-Path/Delivered-To/Received.
    assert content.endswith(BODY.replace(b"\r\n", b"\n"))
