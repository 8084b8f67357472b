"""``smarthost setup server|client``: a complete, commented configuration directory for each role.

:func:`setup_server` writes the smarthost of the classic recipe (``mail.example.com``): MX on
port 25 (STARTTLS offered, no AUTH), submission on 587 (STARTTLS required, AUTH, authenticated
users relay, nobody else) and smtps on 465 (implicit TLS, RFC 8314), a certificate (self-signed,
issued by a CA made with ``smarthost cert ca init``, or existing files), the users in the user
database with ``sasl/smtpd.conf`` (``pwcheck_method: auxprop``, or ``saslauthd`` for
``smarthost authd``), and a Maildir per user under ``virtual_mailbox_base``.

:func:`setup_client` writes the satellite: SMTP on loopback only, everything relayed through
``relayhost = [host]:port`` with SASL credentials in ``sasl_passwd`` (0600, compiled like
``postmap``) over TLS that is required (``encrypt``) or verified against a CA (``verify``).

Both refuse to write over an existing ``main.cf`` or ``master.cf`` unless ``force`` is given;
files are written whole (temporary file + rename), secrets mode 0600 from the start. The server's
``tls/key.pem`` and ``tls/cert.pem`` are never replaced without ``force``, and even then a pair
that still fits (the key matches, the host name and the SANs asked for are in it, it is valid for
more than 30 days and, for a CA's certificate, that CA issued it) is kept, so satellites that
pinned it go on working; a new one is made only when asked (``new_cert``) or when the old one does
not fit, and :attr:`SetupResult.notes` says which happened. The
results name the files written and the next steps for the admin. Passwords never appear in
reprs, errors or the files other than ``sasl_passwd`` (the user database stores hashes).
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from smarthost import certs
from smarthost.authd.userdb import UserDB, UserDBError, split_login
from smarthost.certs import CertError
from smarthost.tables import TableError
from smarthost.tables.lmdbtable import compile_file

AUXPROP, SASLAUTHD = "auxprop", "saslauthd"
DEFAULT_AUTHD_SOCKET_DIR = "/var/run/saslauthd"  # smarthost authd's default -m, as Cyrus saslauthd's
DEFAULT_MAIL_OWNER = "vmail"
#: Used for virtual_uid_maps when the mail owner does not exist yet (the next steps create it).
FALLBACK_MAIL_UID = 5000
DEFAULT_VIRTUAL_BASE = "/var/mail/vhosts/"


class SetupError(Exception):
    """The setup cannot be done as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Ports:
    smtp: int = 25
    submission: int = 587
    smtps: int = 465

    @classmethod
    def offset(cls, n: int) -> Ports:
        """The standard ports plus ``n`` (e.g. 10000: 10025, 10587, 10465)."""
        ports = cls(25 + n, 587 + n, 465 + n)
        if not all(0 < p < 65536 for p in (ports.smtp, ports.submission, ports.smtps)):
            raise SetupError(f"port offset {n} gives ports outside 1-65535")
        return ports


@dataclass(frozen=True)
class CertificateSource:
    """Where the server's certificate comes from: ``selfsigned`` (made now), ``ca`` (a key and a
    certificate issued now by the CA in ``ca_cert``/``ca_key``) or ``files`` (``cert_file`` and
    ``key_file`` as they are). ``sans``: more names for a certificate made now."""

    kind: str = "selfsigned"
    ca_cert: Path | None = None
    ca_key: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    sans: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServerAnswers:
    hostname: str
    domains: tuple[str, ...]
    users: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # (login, password)
    networks: tuple[str, ...] = ()  # trusted to relay without AUTH, besides loopback
    certificate: CertificateSource = CertificateSource()
    pwcheck: str = AUXPROP
    saslauthd_socket_dir: str | None = None
    ports: Ports = Ports()
    listen: str | None = None  # inet_interfaces; None: all
    local_state: bool = False  # queue, data, log, mailboxes and sockets inside the directory
    mail_owner: str | None = None


@dataclass(frozen=True)
class ClientAnswers:
    hostname: str
    relayhost: str  # the smarthost's name or address (no brackets)
    relay_port: int = 587
    username: str = ""
    password: str = field(default="", repr=False)
    ca_file: Path | None = None  # verify the smarthost's certificate against this CA
    networks: tuple[str, ...] = ()
    smtp_port: int = 25
    local_state: bool = False


#: A certificate kept by setup must stay valid at least this long.
KEEP_CERT_MIN_DAYS = 30


@dataclass
class SetupResult:
    directory: Path
    written: list[Path]
    next_steps: list[str]
    #: What the admin must know about the run, e.g. that the existing certificate was kept or replaced.
    notes: list[str] = field(default_factory=list)


# --- writing files ---------------------------------------------------------------------------


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    """Replace ``path`` whole: a temporary file created with ``mode`` (0600 until chmod), renamed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _prepare(directory: Path, force: bool) -> None:
    for name in ("main.cf", "master.cf"):
        if (directory / name).exists() and not force:
            raise SetupError(f"{directory / name} exists; use --force to replace the configuration "
                             f"in {directory}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SetupError(f"cannot create {directory}: {e.strerror}") from None


def _header(role: str, directory: Path) -> str:
    return (f"# smarthost {role} configuration, written by `smarthost setup {role}` on "
            f"{dt.date.today().isoformat()}.\n"
            f"# Postfix syntax and parameter names: a Postfix howto's snippets work here.\n"
            f"# Show it: smarthost -c {directory} postconf -n    Check it: smarthost -c {directory} check\n")


def _networks(extra: Sequence[str]) -> str:
    return ", ".join(["127.0.0.0/8", "[::1]/128", *extra])


def _service(name: str, standard: int, port: int) -> str:
    """A master.cf service name: the service's name on its standard port, else the number."""
    return name if port == standard else str(port)


_QMGR = "qmgr       unix  n       -       n       300     1       qmgr\n"


# --- the server ------------------------------------------------------------------------------


def _mail_owner(answers: ServerAnswers) -> tuple[int, int, str | None]:
    """(uid, gid, the user to create if missing) for the virtual mailboxes."""
    if os.geteuid() != 0 and answers.mail_owner is None:
        return os.getuid(), os.getgid(), None
    name = answers.mail_owner or DEFAULT_MAIL_OWNER
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        if name.isdigit() and int(name) > 0:
            return int(name), int(name), None
        if answers.mail_owner is not None:
            raise SetupError(f"--mail-owner {name}: no such user; create it first "
                             f"(useradd -r -u {FALLBACK_MAIL_UID} -s /usr/sbin/nologin {name})") from None
        return FALLBACK_MAIL_UID, FALLBACK_MAIL_UID, name
    if entry.pw_uid == 0:
        raise SetupError(f"--mail-owner {name}: mailboxes must not belong to root; name an unprivileged user")
    return entry.pw_uid, entry.pw_gid, None


def _unfit(cert: Path, key: Path, answers: ServerAnswers) -> str | None:
    """Why the existing ``cert``/``key`` pair cannot serve ``answers`` (None: it fits)."""
    source = answers.certificate
    try:
        chain = certs.load_certificates(cert)
        if not certs.key_matches(chain[0].public_key(), certs.load_private_key(key)):
            return f"{key} is not the key of {cert}"
        anchors = certs.load_certificates(source.ca_cert) if source.kind == "ca" and source.ca_cert else [chain[0]]
        for name in (answers.hostname, *source.sans):
            certs.verify(chain, anchors, name, ca_name=str(source.ca_cert) if source.kind == "ca" else str(cert))
    except CertError as e:
        return str(e)
    days = certs.describe(chain[0]).days_left()
    if days < KEEP_CERT_MIN_DAYS:
        return f"it expires in {days} days"
    return None


def _server_certificate(directory: Path, answers: ServerAnswers, force: bool, new_cert: bool,
                        notes: list[str]) -> tuple[Path, Path, Path | None]:
    """(cert file, key file, CA file for clients or None), making them as asked. An existing pair
    in DIR/tls is kept when it fits (see the module docstring); ``notes`` gets what happened."""
    source = answers.certificate
    tls = directory / "tls"
    cert, key = tls / "cert.pem", tls / "key.pem"
    sans = [*source.sans]
    try:
        if source.kind == "files":
            if source.cert_file is None or source.key_file is None:
                raise SetupError("existing certificate files need both --cert and --key")
            cert_path, key_path = source.cert_file.resolve(), source.key_file.resolve()
            leaf = certs.load_certificates(cert_path)[0]
            if not certs.key_matches(leaf.public_key(), certs.load_private_key(key_path)):
                raise SetupError(f"{key_path} is not the key of {cert_path}; check --cert and --key")
            return cert_path, key_path, None
        if source.kind not in ("selfsigned", "ca"):
            raise SetupError(f"unknown certificate source {source.kind!r}")
        if source.kind == "ca" and (source.ca_cert is None or source.ca_key is None):
            raise SetupError("a certificate from your CA needs both --ca-cert and --ca-key")
        existing = [p for p in (cert, key) if os.path.lexists(p)]
        if existing and not force and not new_cert:
            raise SetupError(f"{existing[0]} exists; use --force to keep the certificate if it still fits, "
                             "or --new-cert to replace it")
        ca_copy = tls / "ca.pem" if source.kind == "ca" else cert
        if existing and not new_cert:
            why = _unfit(cert, key, answers) if len(existing) == 2 else f"{existing[0]} has no partner"
            if why is None:
                if source.kind == "ca":
                    shutil.copyfile(source.ca_cert, ca_copy)
                notes.append(f"Kept the existing certificate {cert} and key {key}: they still fit "
                             f"{answers.hostname} (make a new pair with --new-cert)")
                return cert, key, ca_copy
            notes.append(f"WARNING: the existing certificate {cert} does not fit ({why}); made a NEW key and "
                         f"certificate. Clients that trusted the old one must get {ca_copy} again.")
        elif existing:
            notes.append(f"Replaced the certificate {cert} and key {key} (--new-cert). "
                         f"Clients that trusted the old one must get {ca_copy} again.")
        tls.mkdir(mode=0o700, exist_ok=True)
        if source.kind == "selfsigned":
            certs.selfsigned(answers.hostname, sans, cert, key, force=True)
            return cert, key, cert
        csr = tls / "request.csr"
        certs.request(answers.hostname, sans, key, csr, force=True)
        certs.sign(source.ca_cert, source.ca_key, csr, cert, force=True)
        shutil.copyfile(source.ca_cert, ca_copy)
        return cert, key, ca_copy
    except CertError as e:
        raise SetupError(str(e)) from None


def _user_address(login: str, domains: Sequence[str]) -> str:
    name, realm = split_login(login)
    return f"{name}@{realm or domains[0]}"


def server_main_cf(directory: Path, answers: ServerAnswers, cert: Path, key: Path, owner: tuple[int, int]) -> str:
    a = answers
    state = directory if a.local_state else None
    mail_base = f"{directory}/mail/" if state else DEFAULT_VIRTUAL_BASE
    lines = [
        _header("server", directory),
        "# --- Who we are ----------------------------------------------------------------",
        f"myhostname = {a.hostname}",
        f"mydomain = {a.domains[0]}",
        "myorigin = $mydomain",
        "# Mail for the host itself (root, postmaster) is delivered here; the mail domains below.",
        "mydestination = $myhostname, localhost",
        "# Networks whose clients may relay without logging in (loopback: local programs).",
        f"mynetworks = {_networks(a.networks)}",
        f"inet_interfaces = {a.listen or 'all'}",
        "compatibility_level = 3.6",
        "",
    ]
    if state:
        lines += [
            "# --- State kept inside this directory (--local-state) ----------------------------",
            f"queue_directory = {directory}/queue",
            f"data_directory = {directory}/data",
            f"maillog_file = {directory}/maillog",
            "",
        ]
    lines += [
        "# --- TLS: offered on 25, required on submission (587), implicit on smtps (465) -----",
        f"smtpd_tls_cert_file = {cert}",
        f"smtpd_tls_key_file = {key}",
        "smtpd_tls_security_level = may",
        "smtpd_tls_auth_only = yes",
        "smtpd_tls_loglevel = 1",
        "smtpd_tls_received_header = yes",
        "",
        "# --- SMTP AUTH (Cyrus syntax in sasl/smtpd.conf); switched on per service in master.cf",
        "smtpd_sasl_auth_enable = no",
        "smtpd_sasl_type = cyrus",
        "smtpd_sasl_path = smtpd",
        "smtpd_sasl_security_options = noanonymous",
        "smtpd_sasl_tls_security_options = noanonymous",
        "",
        "# --- Relaying: our networks and logged-in users only; never an open relay ----------",
        "smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
        "",
        "# --- Mailboxes: one Maildir per user of the mail domains --------------------------",
        f"virtual_mailbox_domains = {', '.join(a.domains)}",
        f"virtual_mailbox_base = {mail_base}",
        f"virtual_mailbox_maps = texthash:{directory}/vmailbox",
        f"virtual_uid_maps = static:{owner[0]}",
        f"virtual_gid_maps = static:{owner[1]}",
        f"virtual_minimum_uid = {min(100, owner[0])}",
        "# No local aliases: postmaster and root of this host go to root.",
        "alias_maps =",
        "alias_database =",
        "",
    ]
    return "\n".join(lines)


def server_master_cf(ports: Ports) -> str:
    submission_options = (
        "  -o smtpd_tls_security_level=encrypt\n"
        "  -o smtpd_sasl_auth_enable=yes\n"
        "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n"
    )
    return (
        "# smarthost services (master.cf(5) columns). Written by `smarthost setup server`.\n"
        "# service  type  private unpriv  chroot  wakeup  maxproc command + args\n"
        "# MX: mail from the world for our domains; STARTTLS offered, no AUTH.\n"
        f"{_service('smtp', 25, ports.smtp):<10} inet  n       -       n       -       -       smtpd\n"
        "# Submission (RFC 6409): users log in after STARTTLS, then relay anywhere.\n"
        f"{_service('submission', 587, ports.submission):<10} inet  n       -       n       -       -       smtpd\n"
        "  -o syslog_name=smarthost/submission\n"
        + submission_options +
        "# Submission over implicit TLS (RFC 8314).\n"
        f"{_service('smtps', 465, ports.smtps):<10} inet  n       -       n       -       -       smtpd\n"
        "  -o syslog_name=smarthost/smtps\n"
        "  -o smtpd_tls_wrappermode=yes\n"
        "  -o smtpd_sasl_auth_enable=yes\n"
        "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n"
        "# Delivery: the queue manager.\n"
        + _QMGR
    )


def sasl_conf(directory: Path, answers: ServerAnswers) -> str:
    if answers.pwcheck == SASLAUTHD:
        return (
            "# How SMTP AUTH checks passwords (Cyrus SASL syntax).\n"
            "# saslauthd protocol: `smarthost authd` (or Cyrus saslauthd) answers on this socket.\n"
            "# It can verify plaintext mechanisms only (PLAIN, LOGIN); TLS protects them.\n"
            "pwcheck_method: saslauthd\n"
            "mech_list: PLAIN LOGIN\n"
            f"saslauthd_path: {_authd_socket_dir(directory, answers)}/mux\n"
        )
    return (
        "# How SMTP AUTH checks passwords (Cyrus SASL syntax).\n"
        "# auxprop: the user database (smarthost -c DIR users add|del|passwd|list),\n"
        "# argon2id hashes and SCRAM verifiers (no plaintext passwords stored).\n"
        "pwcheck_method: auxprop\n"
        "auxprop_plugin: sasldb\n"
        "mech_list: SCRAM-SHA-256 SCRAM-SHA-1 PLAIN LOGIN\n"
        "sasldb_path: sasldb\n"
    )


def _authd_socket_dir(directory: Path, answers: ServerAnswers) -> str:
    if answers.saslauthd_socket_dir:
        return answers.saslauthd_socket_dir
    return f"{directory}/run" if answers.local_state else DEFAULT_AUTHD_SOCKET_DIR


def setup_server(directory: Path, answers: ServerAnswers, *, force: bool = False,
                 new_cert: bool = False) -> SetupResult:
    """Write the smarthost's configuration into ``directory``; raises SetupError. ``new_cert``:
    replace an existing certificate and key even when they still fit."""
    directory = Path(directory).resolve()
    if not answers.domains:
        raise SetupError("name at least one mail domain (--domain example.com)")
    if answers.pwcheck not in (AUXPROP, SASLAUTHD):
        raise SetupError(f"unknown password check {answers.pwcheck!r}")
    _prepare(directory, force)
    uid, gid, missing_owner = _mail_owner(answers)
    notes: list[str] = []
    cert, key, ca_for_clients = _server_certificate(directory, answers, force, new_cert, notes)
    written = [cert, key]
    (directory / "sasl").mkdir(exist_ok=True)
    written.append(_write(directory / "sasl" / "smtpd.conf", sasl_conf(directory, answers)))
    db = UserDB(directory / "sasldb")
    try:
        for login, password in answers.users:
            try:
                db.add(login, password)
            except UserDBError:
                if not force:
                    raise
                db.set_password(login, password)
    except UserDBError as e:
        raise SetupError(str(e)) from None
    finally:
        db.close()
    written.append(directory / "sasldb")
    mailboxes = "".join(
        f"{address} {address.split('@')[1]}/{address.split('@')[0]}/\n"
        for address in dict.fromkeys(_user_address(login, answers.domains) for login, _ in answers.users)
    )
    written.append(_write(directory / "vmailbox", "# address  Maildir under virtual_mailbox_base "
                          "(a trailing / means Maildir)\n" + mailboxes))
    if answers.local_state:
        for sub in ("queue", "data"):
            (directory / sub).mkdir(mode=0o700, exist_ok=True)
        (directory / "mail").mkdir(mode=0o755, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(directory / "mail", uid, gid)
        if answers.pwcheck == SASLAUTHD and not answers.saslauthd_socket_dir:
            (directory / "run").mkdir(mode=0o755, exist_ok=True)
    written.append(_write(directory / "master.cf", server_master_cf(answers.ports)))
    written.append(_write(directory / "main.cf", server_main_cf(directory, answers, cert, key, (uid, gid))))
    return SetupResult(directory, written, _server_steps(directory, answers, ca_for_clients, missing_owner, uid),
                       notes)


def _server_steps(directory: Path, a: ServerAnswers, ca_file: Path | None, missing_owner: str | None,
                  uid: int) -> list[str]:
    host = a.listen if a.listen and a.listen not in ("all", "loopback-only") else a.hostname
    steps = []
    if missing_owner:
        steps.append(f"Create the owner of the mailboxes: useradd -r -u {uid} -d {DEFAULT_VIRTUAL_BASE} "
                     f"-s /usr/sbin/nologin {missing_owner} && mkdir -p {DEFAULT_VIRTUAL_BASE} && "
                     f"chown {missing_owner}: {DEFAULT_VIRTUAL_BASE}")
    if a.pwcheck == SASLAUTHD:
        steps.append(f"Start the auth daemon: smarthost -c {directory} authd -m {_authd_socket_dir(directory, a)}")
    steps.append(f"Start smarthost: smarthost -c {directory} start   (in the foreground: smarthost -c {directory} run)")
    if not a.local_state:
        steps.append(f"Open ports {a.ports.smtp}, {a.ports.submission} and {a.ports.smtps} in the firewall; "
                     f"point the MX record of {', '.join(a.domains)} at {a.hostname}")
    user = a.users[0][0] if a.users else "USER"
    address = _user_address(user, a.domains)
    steps.append(f"Test a login and a message: swaks --server {host}:{a.ports.submission} --tls "
                 f"--auth-user {user} --from {address} --to {address}")
    ca = f" --ca {ca_file}" if ca_file else ""
    steps.append(f"Probe it: smarthost probe {host}:{a.ports.submission} --name {a.hostname}{ca} --user {user}")
    relay_ca = f" --ca {ca_file}" if ca_file else ""
    steps.append(f"Set up a satellite: smarthost -c /etc/smarthost setup client --relayhost "
                 f"{a.hostname}:{a.ports.submission} --relay-user {user}{relay_ca}")
    steps.append(f"Add users later: smarthost -c {directory} users add NAME, and a line in {directory}/vmailbox")
    return steps


# --- the client ------------------------------------------------------------------------------


def relayhost_value(host: str, port: int) -> str:
    """``[host]:port``: brackets turn off MX lookups (the classic recipe's form, also the key of
    ``sasl_passwd``, which must match it exactly)."""
    return f"[{host}]:{port}"


def client_main_cf(directory: Path, answers: ClientAnswers, ca_copy: Path | None) -> str:
    a = answers
    relayhost = relayhost_value(a.relayhost, a.relay_port)
    level = "verify" if ca_copy else "encrypt"
    lines = [
        _header("client", directory),
        "# --- Who we are: a satellite that sends everything through the smarthost --------",
        f"myhostname = {a.hostname}",
        "myorigin = $myhostname",
        "# Nothing is delivered here: mail for every domain, ours included, goes to the relayhost.",
        "mydestination =",
        "# Only local programs may send through us: SMTP on loopback, no relaying for others.",
        "inet_interfaces = loopback-only",
        f"mynetworks = {_networks(a.networks)}",
        "smtpd_relay_restrictions = permit_mynetworks, reject",
        "compatibility_level = 3.6",
        "",
    ]
    if a.local_state:
        lines += [
            "# --- State kept inside this directory (--local-state) ----------------------------",
            f"queue_directory = {directory}/queue",
            f"data_directory = {directory}/data",
            f"maillog_file = {directory}/maillog",
            "",
        ]
    lines += [
        "# --- The smarthost, and how we log in to it ---------------------------------------",
        f"relayhost = {relayhost}",
        "smtp_sasl_auth_enable = yes",
        "# The key in sasl_passwd must be exactly the relayhost value above.",
        f"smtp_sasl_password_maps = hash:{directory}/sasl_passwd",
        "smtp_sasl_security_options = noanonymous",
        "smtp_sasl_tls_security_options = noanonymous",
        "",
        "# --- TLS to the smarthost: required" + (", and its certificate verified" if ca_copy else "") + " ---",
        f"smtp_tls_security_level = {level}",
    ]
    if ca_copy:
        lines.append(f"smtp_tls_CAfile = {ca_copy}")
    if a.relay_port == 465:
        lines.append("# Port 465 speaks TLS from the first byte (RFC 8314).")
        lines.append("smtp_tls_wrappermode = yes")
    lines += ["smtp_tls_loglevel = 1", ""]
    return "\n".join(lines)


def client_master_cf(port: int) -> str:
    return (
        "# smarthost services (master.cf(5) columns). Written by `smarthost setup client`.\n"
        "# service  type  private unpriv  chroot  wakeup  maxproc command + args\n"
        "# Local programs send on loopback (inet_interfaces = loopback-only).\n"
        f"{_service('smtp', 25, port):<10} inet  n       -       n       -       -       smtpd\n"
        "# Delivery to the relayhost: the queue manager.\n"
        + _QMGR
    )


def setup_client(directory: Path, answers: ClientAnswers, *, force: bool = False) -> SetupResult:
    """Write the satellite's configuration into ``directory``; raises SetupError."""
    directory = Path(directory).resolve()
    a = answers
    if not a.relayhost or any(c in a.relayhost for c in "[] \t"):
        raise SetupError(f"--relayhost {a.relayhost!r}: give the smarthost's name or address, e.g. mail.example.com")
    if not a.username or not a.password:
        raise SetupError("the smarthost login needs a user name (--relay-user) and a password")
    if any(c.isspace() for c in a.username) or "\n" in a.password or ":" in a.username:
        raise SetupError("the relay user name must not contain spaces or ':', the password no line break")
    _prepare(directory, force)
    written = []
    ca_copy = None
    if a.ca_file is not None:
        try:
            certs.load_certificates(a.ca_file)
        except CertError as e:
            raise SetupError(str(e)) from None
        (directory / "tls").mkdir(mode=0o755, exist_ok=True)
        ca_copy = directory / "tls" / "relay-ca.pem"
        shutil.copyfile(a.ca_file, ca_copy)
        written.append(ca_copy)
    key = relayhost_value(a.relayhost, a.relay_port)
    passwd = _write(directory / "sasl_passwd",
                    "# relayhost  user:password  (keep this file 0600; rebuild with smarthost postmap)\n"
                    f"{key} {a.username}:{a.password}\n", mode=0o600)
    try:
        compile_file(passwd)
    except TableError as e:
        raise SetupError(str(e)) from None
    written += [passwd, directory / "sasl_passwd.lmdb"]
    if a.local_state:
        for sub in ("queue", "data"):
            (directory / sub).mkdir(mode=0o700, exist_ok=True)
    written.append(_write(directory / "master.cf", client_master_cf(a.smtp_port)))
    written.append(_write(directory / "main.cf", client_main_cf(directory, a, ca_copy)))
    ca = f" --ca {ca_copy}" if ca_copy else ""
    steps = [
        f"Start smarthost: smarthost -c {directory} start   (in the foreground: smarthost -c {directory} run)",
        f"Check the smarthost and your login: smarthost probe {a.relayhost}:{a.relay_port}{ca} --user {a.username}",
        f"Send a test message: swaks --server 127.0.0.1:{a.smtp_port} --from root@{a.hostname} --to you@example.org",
        f"Watch the queue: smarthost -c {directory} mailq",
        f"Change the password: edit {directory}/sasl_passwd, then smarthost postmap hash:{directory}/sasl_passwd",
    ]
    return SetupResult(directory, written, steps)
