"""Postfix as the client: a private Postfix with ``relayhost = [127.0.0.1]:PORT`` relays the
mail it is given into smarthost over STARTTLS, the way a satellite in front of us would."""

from __future__ import annotations

import re

import pytest
from peers import free_port, require_peer, wait_for_text

MESSAGE = (
    "From: Alice <alice@satellite.example>\n"
    "To: Bob <bob@remote.example>, Carol <carol@elsewhere.example>\n"
    "Subject: relayed by Postfix\n"
    "Date: Tue, 25 Nov 2025 11:00:00 +0000\n"
    "Message-ID: <postfix-interop-1@satellite.example>\n"
    "\n"
    "Hello through Postfix.\n"
    ".a line with a leading dot\n"
    "bye\n"
)
# Postfix sends the message with CRLF line ends, below the Received header its own smtpd/pickup adds.
MESSAGE_ON_WIRE = MESSAGE.replace("\n", "\r\n").encode()
RECIPIENTS = ["bob@remote.example", "carol@elsewhere.example"]


@pytest.fixture(scope="module")
def smarthost(start_smarthost):
    port = free_port()
    return start_smarthost(
        "smarthost",
        {"mynetworks": "127.0.0.0/8", "mydestination": "", "smtpd_tls_loglevel": "1"},
        f"127.0.0.1:{port} inet n - n - - smtpd\n",
        tls=True,
    )


@pytest.fixture(scope="module")
def postfix(start_postfix, smarthost):
    return start_postfix(
        "postfix",
        {
            "myhostname": "satellite.example",
            "relayhost": f"[127.0.0.1]:{smarthost.ports[0]}",
            "smtp_tls_security_level": "may",
            "smtp_tls_loglevel": "1",
        },
    )


def test_postfix_relays_into_smarthost_over_tls(postfix, smarthost):
    postfix.sendmail("alice@satellite.example", RECIPIENTS, MESSAGE.encode())

    sent = wait_for_text(
        postfix.maillog,
        r"to=<bob@remote\.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=sent "
        r"\(250 2\.0\.0 Ok: queued as (\S+)\)",
        timeout=30, what="Postfix's log",
    )
    queue_id = sent.group(1)
    log = postfix.log_text()
    port = smarthost.ports[0]
    assert re.search(rf"TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]:{port}: TLSv1\.[23] with cipher",
                     log), log
    # Both recipients went in one transaction: Postfix logs the same queue id for Carol.
    assert re.search(rf"to=<carol@elsewhere\.example>, .*status=sent \(250 2\.0\.0 Ok: queued as {queue_id}\)", log)

    entry = smarthost.wait_for_entry(queue_id)
    assert entry.envelope.sender == "alice@satellite.example"
    assert sorted(r.address for r in entry.envelope.recipients) == RECIPIENTS
    body = smarthost.read_body(queue_id)
    assert body.endswith(MESSAGE_ON_WIRE), body
    headers = body[: -len(MESSAGE_ON_WIRE)]
    # smarthost's trace header on top (with the TLS facts), Postfix's below it.
    assert headers.startswith(b"Received: from satellite.example (localhost [127.0.0.1])"), headers
    assert headers.count(b"Received: ") == 2, headers
    assert re.search(r"TLS connection established from \S+\[127\.0\.0\.1\]: TLSv1\.[23]", smarthost.log_text())


def test_postfix_bounces_what_we_refuse(start_smarthost, start_postfix):
    """A relay attempt refused with 554 (reject_unauth_destination) bounces in Postfix, with our reply."""
    port = free_port()
    strict = start_smarthost(
        "strict",
        {"mynetworks": "192.0.2.0/24", "mydestination": "example.test",
         "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination"},
        f"127.0.0.1:{port} inet n - n - - smtpd\n",
    )
    client = start_postfix("postfix-strict", {"myhostname": "satellite.example",
                                              "relayhost": f"[127.0.0.1]:{port}"})
    client.sendmail("alice@satellite.example", ["mallory@foreign.example"], MESSAGE.encode())

    wait_for_text(
        client.maillog,
        r"to=<mallory@foreign\.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:\d+, .*status=bounced "
        r"\(host 127\.0\.0\.1\[127\.0\.0\.1\] said: 554 5\.7\.1 <mallory@foreign\.example>: Relay access denied",
        timeout=30, what="Postfix's log",
    )
    assert strict.queue_entries() == []


def test_postfix_as_the_recipes_client_authenticates_into_smarthost(start_smarthost, start_postfix, interop_dir):
    """The satellite half of the recipe, literally: relayhost, a postmap'd sasl_passwd, TLS;
    smarthost lets only authenticated clients relay (loopback is not in its mynetworks)."""
    import subprocess
    import sys

    port = free_port()
    server = start_smarthost(
        "auth-server",
        {"mynetworks": "192.0.2.0/24", "mydestination": "", "smtpd_sasl_auth_enable": "yes",
         "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
         "cyrus_sasl_config_path": "sasl"},
        f"127.0.0.1:{port} inet n - n - - smtpd\n",
        tls=True,
    )
    # The recipe's server side: sasl/smtpd.conf and a user (the server re-reads nothing at AUTH
    # time but the user database, so adding both after start is fine).
    (server.config_dir / "sasl").mkdir(exist_ok=True)
    (server.config_dir / "sasl" / "smtpd.conf").write_text("pwcheck_method: auxprop\nmech_list: PLAIN LOGIN\n")
    subprocess.run([sys.executable, "-m", "smarthost", "-c", str(server.config_dir), "users", "add", "satellite"],
                   input="s4t-Pass word\n", text=True, check=True, capture_output=True)
    server.stop()
    server.start()
    client_dir = interop_dir / "recipe-client-etc"
    client_dir.mkdir()
    client_dir.chmod(0o755)
    passwd = client_dir / "sasl_passwd"
    passwd.write_text(f"[127.0.0.1]:{port} satellite:s4t-Pass word\n")
    passwd.chmod(0o600)
    postfix = start_postfix("recipe-client", {
        "myhostname": "satellite.example",
        "relayhost": f"[127.0.0.1]:{port}",
        "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_password_maps": f"hash:{passwd}",
        "smtp_sasl_security_options": "noanonymous",
        "smtp_tls_security_level": "encrypt",
        "smtp_tls_loglevel": "1",
    })
    # Postfix's own postmap, as the howtos say (-c: this private instance's configuration).
    subprocess.run([require_peer("postmap"), "-c", str(postfix.config_dir), f"hash:{passwd}"], check=True)
    postfix.sendmail("alice@satellite.example", ["bob@remote.example"], MESSAGE.encode())
    sent = wait_for_text(postfix.maillog, r"to=<bob@remote\.example>, .*status=sent \(250 2\.0\.0 Ok: queued as (\S+)\)",
                         timeout=30, what="Postfix's log")
    queue_id = sent.group(1)
    entry = server.wait_for_entry(queue_id)
    assert entry.envelope.sasl_username == "satellite"
    assert server.read_body(queue_id).endswith(MESSAGE_ON_WIRE)
    assert f"{queue_id}: client=localhost[127.0.0.1], sasl_method=PLAIN, sasl_username=satellite" in server.log_text()
