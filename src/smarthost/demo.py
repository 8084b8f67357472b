"""The embedded default: a complete smarthost configuration for loopback, written on demand.

``smarthost demo --dir DIR`` (the README's run command) writes, once, into DIR:

- ``main.cf``: host ``mail.demo.test``, domain ``demo.test`` delivered into Maildirs under
  ``DIR/mail`` (virtual mailboxes alice@, bob@, postmaster@), queue and data under DIR,
  opportunistic TLS with TLS facts in the log and Received header; nothing is ever sent
  anywhere else (other domains are refused, ``default_transport`` is the error transport);
- ``master.cf``: three services on unprivileged loopback ports, configured the Postfix way:
  2525 (smtp), 2587 (submission, STARTTLS required) and 2465 (smtps, implicit TLS), and the
  queue manager (other ports: ``smarthost demo --ports SMTP,SUBMISSION,SMTPS``);
- ``tls/``: a self-signed certificate for ``mail.demo.test`` and ``localhost`` (key 0600).

An existing directory is used as it is, so the admin's edits survive; the instructions then
name the ports its ``master.cf`` serves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from smarthost.certs import selfsigned

SMTP_PORT, SUBMISSION_PORT, SMTPS_PORT = 2525, 2587, 2465


class Ports(NamedTuple):
    smtp: int = SMTP_PORT
    submission: int = SUBMISSION_PORT
    smtps: int = SMTPS_PORT

MAIN_CF = """\
# smarthost demo configuration (Postfix syntax; see `smarthost -c {dir} postconf -n`).
myhostname = mail.demo.test
mydomain = demo.test
myorigin = $mydomain
mydestination =
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

# Mail for demo.test lands in Maildirs under {dir}/mail (virtual mailboxes).
virtual_mailbox_domains = demo.test
virtual_mailbox_base = {dir}/mail
virtual_mailbox_maps = texthash:{dir}/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
{minimum_uid}2bounce_notice_recipient = postmaster@demo.test

# The demo never sends mail anywhere else: other domains are refused at RCPT, and
# whatever would still leave (a bounce to a foreign sender) goes to the error transport.
smtpd_relay_restrictions = reject_unauth_destination
default_transport = error:this demo delivers to demo.test only
"""

VMAILBOX = """\
# address            Maildir under virtual_mailbox_base (trailing / = Maildir)
alice@demo.test      alice/
bob@demo.test        bob/
postmaster@demo.test postmaster/
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
qmgr                   unix  n       -       n       300     1       qmgr
"""


def ensure_demo(directory: Path, ports: Ports = Ports()) -> bool:
    """Write the demo configuration unless ``directory/main.cf`` exists. True if written."""
    if (directory / "main.cf").exists():
        return False
    directory.mkdir(parents=True, exist_ok=True)
    tls = directory / "tls"
    tls.mkdir(mode=0o700, exist_ok=True)
    if not (tls / "cert.pem").exists():
        selfsigned("mail.demo.test", ["localhost", "127.0.0.1", "::1"], tls / "cert.pem", tls / "key.pem", force=True)
    (directory / "master.cf").write_text(
        MASTER_CF.format(smtp=ports.smtp, submission=ports.submission, smtps=ports.smtps)
    )
    (directory / "vmailbox").write_text(VMAILBOX)
    uid, gid = _mail_owner(directory / "mail")
    tmp = directory / "main.cf.tmp"
    # Run as root, the demo delivers as root into its own directory (which may sit under /root,
    # where no other user could reach it); a real setup uses a dedicated mail user.
    minimum_uid = ("# Demo only: deliveries run as the user running the demo (root here).\nvirtual_minimum_uid = 0\n"
                   if uid == 0 else "")
    tmp.write_text(MAIN_CF.format(dir=directory, uid=uid, gid=gid, minimum_uid=minimum_uid))
    os.replace(tmp, directory / "main.cf")
    return True


def _mail_owner(base: Path) -> tuple[int, int]:
    """Who owns the demo Maildirs: the user running the demo."""
    base.mkdir(mode=0o700, exist_ok=True)
    return os.getuid(), os.getgid()


def served_ports(directory: Path) -> Ports:
    """The ports the demo's master.cf serves (an admin may have changed them), by role:
    wrapper mode is smtps, ``encrypt`` is submission, the other inet service is smtp."""
    from smarthost.config import load

    found = Ports()._asdict()
    for service in load(directory).inet_services():
        if service.params["smtpd_tls_wrappermode"]:
            found["smtps"] = service.port
        elif service.params.raw("smtpd_tls_security_level") == "encrypt":
            found["submission"] = service.port
        else:
            found["smtp"] = service.port
    return Ports(**found)


def instructions(directory: Path, created: bool, ports: Ports = Ports()) -> str:
    what = "Wrote a demo configuration to" if created else "Using the configuration in"
    smtp, submission, smtps = ports
    return f"""\
{what} {directory}
smarthost listens on 127.0.0.1: {smtp} (smtp, STARTTLS offered), {submission} (submission, STARTTLS required), {smtps} (smtps, implicit TLS).

Send a test message (in another terminal):
  swaks --server 127.0.0.1:{smtp} --from you@example.net --to alice@demo.test --tls
  python3 -c "import smtplib; s = smtplib.SMTP('127.0.0.1', {smtp}); s.starttls(); s.sendmail('you@example.net', ['alice@demo.test'], 'Subject: hi\\r\\n\\r\\nHello from Python.\\r\\n'); s.quit()"
See it arrive (Maildirs of alice@, bob@ and postmaster@demo.test):
  ls {directory}/mail/alice/new/
  .venv/bin/smarthost -c {directory} mailq          # what is still queued
Press Ctrl-C to stop.
"""
