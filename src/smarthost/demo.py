"""The embedded default: a complete smarthost configuration for loopback, written on demand.

``smarthost demo --dir DIR`` (the README's run command) writes, once, into DIR:

- ``main.cf``: host ``mail.demo.test``, local domain ``demo.test``, ``mynetworks`` = loopback,
  queue and data under DIR, opportunistic TLS with TLS facts in the log and Received header;
- ``master.cf``: three services on unprivileged loopback ports, configured the Postfix way:
  2525 (smtp), 2587 (submission, STARTTLS required) and 2465 (smtps, implicit TLS);
- ``tls/``: a self-signed certificate for ``mail.demo.test`` and ``localhost`` (key 0600).

An existing directory is used as it is, so the admin's edits survive.
"""

from __future__ import annotations

import os
from pathlib import Path

from smarthost.certs import selfsigned

SMTP_PORT, SUBMISSION_PORT, SMTPS_PORT = 2525, 2587, 2465

MAIN_CF = """\
# smarthost demo configuration (Postfix syntax; see `smarthost -c {dir} postconf -n`).
myhostname = mail.demo.test
mydomain = demo.test
mydestination = $myhostname, $mydomain, localhost
mynetworks = 127.0.0.0/8, [::1]/128
inet_interfaces = loopback-only

queue_directory = {dir}/queue
data_directory = {dir}/data

# TLS: offered on 2525, required on 2587, implicit on 2465.
smtpd_tls_cert_file = {dir}/tls/cert.pem
smtpd_tls_key_file = {dir}/tls/key.pem
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes

# Postfix 3.x's relay rule: loopback may relay, strangers only reach demo.test.
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination
"""

MASTER_CF = """\
# service            type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:{smtp}       inet  n       -       n       -       -       smtpd
127.0.0.1:{submission}       inet  n       -       n       -       -       smtpd
  -o syslog_name=smarthost/submission
  -o smtpd_tls_security_level=encrypt
127.0.0.1:{smtps}       inet  n       -       n       -       -       smtpd
  -o syslog_name=smarthost/smtps
  -o smtpd_tls_wrappermode=yes
"""


def ensure_demo(directory: Path) -> bool:
    """Write the demo configuration unless ``directory/main.cf`` exists. True if written."""
    if (directory / "main.cf").exists():
        return False
    directory.mkdir(parents=True, exist_ok=True)
    tls = directory / "tls"
    tls.mkdir(mode=0o700, exist_ok=True)
    if not (tls / "cert.pem").exists():
        selfsigned("mail.demo.test", ["localhost", "127.0.0.1", "::1"], tls / "cert.pem", tls / "key.pem", force=True)
    (directory / "master.cf").write_text(
        MASTER_CF.format(smtp=SMTP_PORT, submission=SUBMISSION_PORT, smtps=SMTPS_PORT)
    )
    tmp = directory / "main.cf.tmp"
    tmp.write_text(MAIN_CF.format(dir=directory))
    os.replace(tmp, directory / "main.cf")
    return True


def instructions(directory: Path, created: bool) -> str:
    what = "Wrote a demo configuration to" if created else "Using the configuration in"
    return f"""\
{what} {directory}
smarthost listens on 127.0.0.1: {SMTP_PORT} (smtp, STARTTLS offered), {SUBMISSION_PORT} (submission, STARTTLS required), {SMTPS_PORT} (smtps, implicit TLS).

Send a test message (in another terminal):
  swaks --server 127.0.0.1:{SMTP_PORT} --from you@example.net --to alice@demo.test --tls
  python3 -c "import smtplib; s = smtplib.SMTP('127.0.0.1', {SMTP_PORT}); s.starttls(); s.sendmail('you@example.net', ['alice@demo.test'], 'Subject: hi\\r\\n\\r\\nHello from Python.\\r\\n'); s.quit()"
See what was queued:
  .venv/bin/smarthost -c {directory} mailq
Press Ctrl-C to stop.
"""
