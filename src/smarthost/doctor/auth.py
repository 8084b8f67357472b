"""SMTP AUTH on the server side: AUTH reachable without TLS, ``mech_list`` entries the password
method cannot verify, and the auth socket (saslauthd or Dovecot): missing, not a socket, nobody
listening, or out of reach of ``mail_owner``. The socket is looked for exactly where the server
looks (``inbound.auth.auth_socket``, as a Postfix smtpd does): inside ``queue_directory`` for a
service whose master.cf chroot column is ``y`` — the recipe's classic trap — and relative to
``queue_directory`` for a relative path (Dovecot's ``private/auth``)."""

from __future__ import annotations

import grp
import os
import pwd
import re
import socket
import stat
from pathlib import Path

from smarthost.config import ConfigError, Service
from smarthost.config.saslconf import SaslConf, load_sasl_conf
from smarthost.doctor.configfile import sasl_where
from smarthost.doctor.context import Context, service_where
from smarthost.doctor.findings import ERROR, HINT, WARNING
from smarthost.inbound.auth import auth_socket

CONNECT_TIMEOUT = 1.0
_MECH_WARNING = re.compile(
    r"(?P<file>.+):(?P<line>\d+): mech_list: (?P<reason>.+); removing (?P<name>\S+) from mech_list$")
_NO_FILE_WARNING = re.compile(r"(?P<file>.+): not found; using pwcheck_method: auxprop")


def check(ctx: Context) -> None:
    for service in ctx.smtpd_services:
        p = service.params
        if not p["smtpd_sasl_auth_enable"]:
            continue
        _tls_first(ctx, service)
        try:
            conf = load_sasl_conf(ctx.cfg.config_dir, p)
        except ConfigError as e:
            ctx.out.add(ERROR, (e.file, e.line), f"{e.param + ': ' if e.param else ''}{e.problem}",
                        e.fix or "correct the line", "auth.sasl-conf")
            continue
        _sasl_warnings(ctx, conf)
        if conf.type == "dovecot":
            _dovecot_socket(ctx, service, conf)
        elif "saslauthd" in conf.pwcheck_methods:
            assert conf.path is not None  # saslauthd is only ever named in a file
            _socket(ctx, service, conf.saslauthd_path, "saslauthd_path", "saslauthd socket",
                    sasl_where(conf.path, "saslauthd_path"), _saslauthd_start)


def _tls_first(ctx: Context, service: Service) -> None:
    p = service.params
    if p["smtpd_tls_wrappermode"]:
        return  # TLS from the first byte
    level = p["smtpd_tls_security_level"]
    has_cert = bool(p.raw("smtpd_tls_cert_file") or p["smtpd_tls_chain_files"])
    auth_only = p["smtpd_tls_auth_only"]
    # Before TLS only smtpd_sasl_security_options apply: with noplaintext no password crosses in clear.
    no_plaintext = "noplaintext" in {option.lower() for option in p["smtpd_sasl_security_options"]}
    if not has_cert or level == "none":
        why = "smtpd_tls_security_level = none" if has_cert else "no certificate is configured"
        where = ctx.where(p, "smtpd_tls_security_level" if has_cert else "smtpd_sasl_auth_enable")
        cert, key = ctx.cfg.config_dir / "cert.pem", ctx.cfg.config_dir / "key.pem"
        enable = ("smtpd_tls_security_level = may" if has_cert else
                  f"smtpd_tls_cert_file = {cert}\nsmtpd_tls_key_file = {key}\n"
                  f"(make them: smarthost cert selfsigned --cn {p['myhostname']} --cert {cert} --key {key})")
        if no_plaintext and not auth_only:
            return
        if auth_only:
            ctx.out.add(WARNING, where, f"service {service.name}: AUTH is enabled but never offered: it needs TLS "
                        f"(smtpd_tls_auth_only = yes) and the service has none ({why})", enable, "auth.no-tls")
        else:
            ctx.out.add(ERROR, ctx.where(p, "smtpd_tls_auth_only"),
                        f"service {service.name}: AUTH without TLS ({why}): passwords cross the network in clear",
                        "smtpd_tls_auth_only = yes\n" + enable, "auth.plaintext")
    elif not auth_only and not no_plaintext and level != "encrypt":
        ctx.out.add(ERROR, ctx.where(p, "smtpd_tls_auth_only"),
                    f"service {service.name}: AUTH is offered before STARTTLS (smtpd_tls_auth_only = no): "
                    "clients may send passwords in clear", "smtpd_tls_auth_only = yes", "auth.plaintext")


def _sasl_warnings(ctx: Context, conf: SaslConf) -> None:
    dropped: dict[tuple[str, int], tuple[str, list[str]]] = {}
    for warning in conf.warnings:
        m = _MECH_WARNING.match(warning)
        if m:
            dropped.setdefault((m["file"], int(m["line"])), (m["reason"], []))[1].append(m["name"])
            continue
        m = _NO_FILE_WARNING.match(warning)
        if m:
            ctx.out.add(HINT, (m["file"], None), "no SASL configuration file: AUTH checks smarthost's user database",
                        f"create {m['file']} (e.g. pwcheck_method: saslauthd and mech_list: PLAIN LOGIN), "
                        "or add users: smarthost users add NAME", "auth.sasl-conf")
            continue
        file, _, rest = warning.partition(": ")
        where_file, _, line = file.rpartition(":")
        where = (where_file, int(line)) if line.isdigit() else (file, None)
        ctx.out.add(WARNING, where, rest, "correct or remove this line", "auth.sasl-conf")
    methods = " ".join(conf.pwcheck_methods)
    for where, (reason, names) in dropped.items():
        kept = " ".join(conf.mech_list or ())
        ctx.out.add(WARNING, where,
                    f"mech_list asks for {', '.join(names)}, which pwcheck_method: {methods} cannot verify "
                    f"({reason}); clients choosing it would always fail, so smarthost does not offer it",
                    f"mech_list: {kept}", "auth.mech-list")


def _dovecot_socket(ctx: Context, service: Service, conf: SaslConf) -> None:
    where = ctx.where(service.params, "smtpd_sasl_path")
    path = conf.dovecot_path

    def start(directory: str) -> str:
        looked = auth_socket(path, "smtpd_sasl_path", service=service.name,
                             queue_directory=service.params["queue_directory"], chroot=service.chroot).path
        return (f"let Dovecot listen there (service auth {{ unix_listener {looked} {{ ... }} }}), "
                f"or run: smarthost authd --dovecot {looked}")

    _socket(ctx, service, path, "smtpd_sasl_path", "Dovecot auth socket", where, start)


def _saslauthd_start(directory: str) -> str:
    return f"start it there: smarthost authd -m {directory}  (or Cyrus: saslauthd -a pam -m {directory})"


def _socket(ctx: Context, service: Service, path: str, parameter: str, what: str, where, start) -> None:
    """Is the socket configured as ``path`` there (where the server looks: inside the chroot for
    a chrooted service), a socket, listened on, and reachable by mail_owner?"""
    p = service.params
    queue_dir = p["queue_directory"].rstrip("/") or "/"
    looked = auth_socket(path, parameter, service=service.name, queue_directory=p["queue_directory"],
                         chroot=service.chroot).path
    chrooted = (f"service {service.name} has chroot column y ({service.file}:{service.line}), so, as a chrooted "
                f"Postfix smtpd, it resolves {parameter} inside {queue_dir} and looks for the {what} at {looked}")
    relative = "" if looked == path else f" ({parameter} {path} is relative to queue_directory)"
    try:
        st = os.stat(looked)
    except FileNotFoundError:
        if service.chroot:
            outside = (" (there is one at that path outside the chroot)"
                       if path.startswith("/") and _is_socket(path) else "")
            directory = os.path.dirname(looked)
            ctx.out.add(ERROR, service_where(service), f"{chrooted}, which does not exist{outside}",
                        f"{start(directory)}\nor set the chroot column of {service.file}:{service.line} to n",
                        "auth.socket")
        else:
            ctx.out.add(ERROR, where, f"the {what} {looked}{relative} does not exist: every AUTH fails with 454",
                        f"{start(os.path.dirname(looked))}\nor name the socket the daemon uses", "auth.socket")
        return
    except OSError as e:
        ctx.out.add(HINT, where, f"cannot check the {what} {looked}: {e.strerror}", "run smarthost check as root",
                    "auth.socket")
        return
    context = f"{chrooted}: it" if service.chroot else f"the {what} {looked}"
    if not stat.S_ISSOCK(st.st_mode):
        is_dir = stat.S_ISDIR(st.st_mode)
        example = os.path.join(looked, "mux") if is_dir else looked
        ctx.out.add(ERROR, where, f"{context} is {'a directory' if is_dir else 'not a socket'}",
                    f"name the socket itself, e.g. {example}; {start(os.path.dirname(looked))}", "auth.socket")
        return
    if not _owner_reaches(ctx, service, looked, st, where, context):
        return
    problem = _connect(looked)
    if problem:
        ctx.out.add(ERROR, where, f"{context}: {problem}", start(os.path.dirname(looked)), "auth.socket")


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _connect(path: str) -> str | None:
    """None when something accepts connections at ``path``; else what went wrong."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(CONNECT_TIMEOUT)
        try:
            s.connect(path)
        except ConnectionRefusedError:
            return "nobody listens on it (the daemon is not running; the socket file was left behind)"
        except PermissionError:
            return None  # the doctor's own permissions; mail_owner's were checked
        except OSError as e:
            return f"cannot connect: {e.strerror}"
    return None


def _allowed(st: os.stat_result, uid: int, gids: set[int], bit_user: int, bit_group: int, bit_other: int) -> bool:
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & bit_user)
    if st.st_gid in gids:
        return bool(st.st_mode & bit_group)
    return bool(st.st_mode & bit_other)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _owner_reaches(ctx: Context, service: Service, path: str, st: os.stat_result, where, context: str) -> bool:
    """Whether mail_owner can search every directory to ``path`` and write to the socket; reports
    the first obstacle. An unknown mail_owner is not checked (the server runs as its caller then)."""
    owner = service.params["mail_owner"]
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        return True
    uid, gids = entry.pw_uid, set(os.getgrouplist(owner, entry.pw_gid))
    parts = Path(path).parent.parts
    for i in range(1, len(parts) + 1):
        directory = str(Path(*parts[:i]))
        try:
            dst = os.stat(directory)
        except OSError:
            return True
        if not _allowed(dst, uid, gids, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
            group = _group_name(dst.st_gid)
            fix = (f"adduser {owner} {group}" if dst.st_mode & stat.S_IXGRP and dst.st_gid not in gids
                   else f"chmod o+x {directory}")
            ctx.out.add(ERROR, where,
                        f"{context}: the directory {directory} (mode {stat.S_IMODE(dst.st_mode):04o}, group {group}) "
                        f"is not searchable by mail_owner {owner}", fix, "auth.socket-permissions")
            return False
    if not _allowed(st, uid, gids, stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH):
        group = _group_name(st.st_gid)
        fix = (f"adduser {owner} {group}" if st.st_mode & stat.S_IWGRP and st.st_gid not in gids
               else f"chmod 666 {path} (or start the daemon so that it creates the socket for everyone)")
        ctx.out.add(ERROR, where,
                    f"{context}: mail_owner {owner} may not connect to it "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}, group {group})", fix, "auth.socket-permissions")
        return False
    return True
