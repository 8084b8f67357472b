"""The recipe's client side, literally: smarthost's queue manager relays through a REAL Postfix
configured as the recipe's server.

The Postfix (a private instance), as the howtos set it up: STARTTLS with a trustme certificate,
AUTH only after TLS (``smtpd_tls_auth_only = yes``), Cyrus SASL with ``sasl/smtpd.conf`` saying
``pwcheck_method: saslauthd`` and ``mech_list: PLAIN LOGIN``, checked by a real Cyrus
``saslauthd -a sasldb`` (``peers.CyrusSaslauthd``); relaying only for authenticated clients, and
delivering ``example.net`` into a virtual Maildir.

Our side, configured as a howto says::

    relayhost = [127.0.0.1]:PORT
    smtp_sasl_auth_enable = yes
    smtp_sasl_password_maps = hash:DIR/sasl_passwd     (compiled with `smarthost postmap`)
    smtp_sasl_security_options = noanonymous
    smtp_tls_security_level = verify, smtp_tls_CAfile = the trustme CA

The message must land in the Maildir with its content unchanged; once with the mechanism our
client prefers (PLAIN), once with ``smtp_sasl_mechanism_filter = login``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trustme
from peers import (
    CyrusSaslauthd,
    PeerError,
    PostfixInstance,
    cyrus_recipe_server_cf,
    free_port,
    require_peer,
    require_root,
    wait_for_text,
)

from smarthost.config import load
from smarthost.queue import Envelope, QueueStore, Recipient
from smarthost.queue.manager import QueueManager

SMARTHOST = [sys.executable, "-m", "smarthost"]
PASSWORD = "correct horse:battery staple"
REALM = "example.test"  # smtpd_sasl_local_domain: the login alice is alice@example.test in sasldb
NOBODY = 65534


def body(n: int) -> bytes:
    return (b"From: Alice <alice@satellite.example>\r\nTo: Bob <bob@example.net>\r\n"
            b"Subject: through the recipe's smarthost\r\nDate: Tue, 25 Nov 2025 11:00:00 +0000\r\n"
            b"Message-ID: <relay-interop-%d@satellite.example>\r\n\r\n"
            b"Hello through a real Postfix.\r\n.a line with a leading dot\r\n\r\nbye \xc3\xa9\r\n" % n)


class MailLog:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)

    warning = error = log


@pytest.fixture(scope="module")
def saslauthd(interop_dir: Path):
    """A real Cyrus saslauthd over a private sasldb with the user alice."""
    require_root("saslauthd's private sasldb needs a mount namespace")
    for command in ("saslauthd", "saslpasswd2", "unshare"):
        require_peer(command)
    daemon = CyrusSaslauthd(interop_dir / "saslauthd", {"alice": PASSWORD}, REALM)
    try:
        daemon.start()
    except PeerError as e:
        error = str(e)
    else:
        yield daemon
        daemon.stop()
        return
    pytest.fail(error, pytrace=False)


@pytest.fixture(scope="module")
def recipe_server(interop_dir: Path, saslauthd: CyrusSaslauthd):
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
    for command in ("postfix", "sendmail", "script"):
        require_peer(command)
    directory = interop_dir / "recipe-server"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    postfix = PostfixInstance(directory, free_port(), {
        "myhostname": "mail.example.test",
        **cyrus_recipe_server_cf(directory / "etc", saslauthd, REALM, tls / "cert.pem", tls / "key.pem"),
        "virtual_mailbox_domains": "example.net",
        "virtual_mailbox_base": str(vmail),
        "virtual_mailbox_maps": "inline:{ bob@example.net=bob/ }",
        "virtual_uid_maps": f"static:{NOBODY}",
        "virtual_gid_maps": f"static:{NOBODY}",
    })
    try:
        postfix.start()
    except PeerError as e:
        postfix.stop()
        pytest.fail(str(e), pytrace=False)
    try:
        yield postfix, ca, vmail / "bob" / "new"
    finally:
        postfix.stop()


def _our_config(directory: Path, port: int, ca: trustme.CA, extra: dict[str, str]) -> Path:
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
        **extra,
    }
    (directory / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main_cf.items()))
    (directory / "master.cf").write_text("")
    return directory


async def _relay(config_dir: Path, message: bytes) -> tuple[str, MailLog, QueueStore]:
    config = load(config_dir)
    store = QueueStore(config.params["queue_directory"])
    maillog = MailLog()
    manager = QueueManager(config, store, maillog)
    task = asyncio.create_task(manager.run())
    try:
        envelope = Envelope("alice@satellite.example", (Recipient("bob@example.net"),))
        queue_id = await store.submit(envelope, message)
        manager.wake()
        for _ in range(3000):
            await asyncio.sleep(0.01)
            entry = store.get(queue_id)  # read once: the delivery may finish between two reads
            if entry is None or entry.attempts:
                break
        return queue_id, maillog, store
    finally:
        manager.stop()
        await asyncio.wait_for(task, 20)


@pytest.mark.parametrize(("n", "extra", "mechanism"), [
    (1, {}, "PLAIN"),
    (2, {"smtp_sasl_mechanism_filter": "login"}, "LOGIN"),
])
def test_relay_through_real_postfix_with_starttls_and_cyrus_auth(
        interop_dir: Path, recipe_server, n: int, extra: dict[str, str], mechanism: str) -> None:
    require_peer("postmap")
    postfix, ca, maildir = recipe_server
    message = body(n)
    config_dir = _our_config(interop_dir / f"satellite-{n}", postfix.port, ca, extra)
    queue_id, maillog, store = asyncio.run(_relay(config_dir, message))
    try:
        log = "\n".join(maillog.lines)
        assert store.get(queue_id) is None, log + "\n--- postfix:\n" + postfix.log_text()[-3000:]
    finally:
        store.close()
    assert f"Verified TLS connection established to 127.0.0.1[127.0.0.1]:{postfix.port}" in log
    assert f"{queue_id}: to=<bob@example.net>, relay=127.0.0.1[127.0.0.1]:{postfix.port}," in log
    assert "dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as " in log
    assert PASSWORD not in log
    # Postfix saw AUTH over TLS from us, checked by Cyrus saslauthd, then delivered into bob's Maildir.
    wait_for_text(postfix.maillog, rf"sasl_method={mechanism}, sasl_username=alice", what="Postfix log")
    marker = b"<relay-interop-%d@satellite.example>" % n
    for _ in range(200):
        delivered = [p for p in maildir.iterdir() if marker in p.read_bytes()] if maildir.exists() else []
        if delivered:
            break
        time.sleep(0.05)
    [path] = delivered
    # Postfix's virtual(8) stores LF line ends below its own Return-Path/Delivered-To/Received.
    assert path.read_bytes().endswith(message.replace(b"\r\n", b"\n"))
