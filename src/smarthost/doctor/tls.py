"""The SMTP server's TLS: certificate and key files, validity, names, the chain against
``smtpd_tls_CAfile``, key permissions, and TLS settings that break mail (``encrypt`` on port 25,
port 465 without wrapper mode)."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

from cryptography import x509

from smarthost import certs
from smarthost.config import Params, Service
from smarthost.doctor.context import Context, service_where
from smarthost.doctor.findings import ERROR, WARNING

EXPIRY_WARNING_DAYS = 30


def check(ctx: Context) -> None:
    seen: set[tuple] = set()
    for service in ctx.smtpd_services:
        p = service.params
        _service_settings(ctx, service)
        pairs = []
        cert = p.raw("smtpd_tls_cert_file")
        if cert:
            pairs.append((cert, p.raw("smtpd_tls_key_file") or cert, "smtpd_tls_cert_file", "smtpd_tls_key_file"))
        for chain in p["smtpd_tls_chain_files"]:  # each file: the key, then the certificate chain
            pairs.append((chain, chain, "smtpd_tls_chain_files", "smtpd_tls_chain_files"))
        for pair in pairs:
            key = (*pair, p.raw("smtpd_tls_CAfile"), p["myhostname"])
            if key not in seen:
                seen.add(key)
                _check_pair(ctx, p, *pair)


def _service_settings(ctx: Context, service: Service) -> None:
    p = service.params
    wrapper = p["smtpd_tls_wrappermode"]
    level = p["smtpd_tls_security_level"]
    if service.port == 25 and level == "encrypt" and not wrapper:
        ctx.out.add(
            WARNING, ctx.where(p, "smtpd_tls_security_level"),
            f"service {service.name} (port 25) requires TLS: mail from servers without TLS is refused "
            "(RFC 3207 section 4: a public MX must not require it)",
            "on port 25 use: smtpd_tls_security_level = may (require TLS on submission only, "
            "with -o smtpd_tls_security_level=encrypt in master.cf)", "tls.encrypt-on-25")
    if service.port == 465 and not wrapper:
        ctx.out.add(
            ERROR, service_where(service),
            f"service {service.name} listens on port 465, where clients start TLS at once, "
            "but smtpd_tls_wrappermode is not set: every client times out",
            "add to this master.cf line:  -o smtpd_tls_wrappermode=yes", "tls.465-without-wrappermode")


def _check_pair(ctx: Context, p: Params, cert_file: str, key_file: str, cert_param: str, key_param: str) -> None:
    out = ctx.out
    host = p["myhostname"]
    cert_where, key_where = ctx.where(p, cert_param), ctx.where(p, key_param)
    if key_param == "smtpd_tls_key_file" and p.is_default(key_param):
        key_where = cert_where
    make_new = f"smarthost cert selfsigned --cn {host} --cert {cert_file} --key {key_file} --force"
    try:
        chain = certs.load_certificates(Path(cert_file))
    except certs.CertError as e:
        out.add(ERROR, cert_where, f"{cert_param}: {e}", f"make a certificate: {make_new}", "tls.certificate")
        return
    _key_mode(ctx, key_file, key_where, key_param)
    try:
        private_key = certs.load_private_key(Path(key_file))
    except certs.CertError as e:
        out.add(ERROR, key_where, f"{key_param}: {e}", f"make a new pair: {make_new}", "tls.key")
        private_key = None
    leaf = chain[0]
    if private_key is not None and not certs.key_matches(leaf.public_key(), private_key):
        out.add(ERROR, key_where,
                f"the private key {key_file} does not belong to the certificate {cert_file}: TLS cannot start",
                f"set {key_param} to the key made with this certificate (check: smarthost cert show {cert_file} "
                f"--key KEYFILE), or make a new pair: {make_new}", "tls.key-mismatch")
    info = certs.describe(leaf)
    expired = _validity(ctx, info, cert_file, cert_where, make_new if info.self_signed else None, key_file)
    _names(ctx, info, host, cert_file, cert_where, make_new, p)
    ca_file = p.raw("smtpd_tls_CAfile")
    if ca_file and not expired:
        _chain(ctx, chain, ca_file, cert_file, ctx.where(p, "smtpd_tls_CAfile"))


def _key_mode(ctx: Context, key_file: str, where: tuple[str, int | None], key_param: str) -> None:
    try:
        mode = stat.S_IMODE(os.stat(key_file).st_mode)
    except OSError:
        return  # reported when the key is read
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        ctx.out.add(ERROR, where,
                    f"{key_param}: the private key {key_file} is readable by group or others (mode {mode:04o}); "
                    "the server refuses to start with it",
                    f"chmod 600 {key_file}", "tls.key-mode")


def _validity(ctx: Context, info: certs.CertInfo, cert_file: str, where, make_new: str | None, key_file: str) -> bool:
    """Report an expired, not yet valid or soon expiring certificate; True when it is unusable now."""
    renew = make_new or (
        f"renew it: smarthost cert request --cn HOST --key {key_file} --reuse-key --csr renew.csr, "
        f"have the CSR signed, and install the new certificate as {cert_file}")
    if info.not_before > ctx.now:
        ctx.out.add(ERROR, where, f"the certificate {cert_file} is not valid before "
                    f"{info.not_before:%Y-%m-%d %H:%M} UTC (is the clock right?)", renew, "tls.expiry")
        return True
    if info.not_after <= ctx.now:
        ctx.out.add(ERROR, where, f"the certificate {cert_file} expired on {info.not_after:%Y-%m-%d}: "
                    "clients that verify refuse it", renew, "tls.expiry")
        return True
    days = info.days_left(ctx.now)
    if days < EXPIRY_WARNING_DAYS:
        ctx.out.add(WARNING, where, f"the certificate {cert_file} expires on {info.not_after:%Y-%m-%d}, "
                    f"in {days} day(s)", renew, "tls.expiry")
    return False


def matches_name(names: tuple[str, ...], host: str) -> bool:
    """Whether ``host`` is one of the certificate's ``DNS:``/``IP:`` names; a ``*.`` wildcard
    stands for exactly one whole left-most label (RFC 6125 section 6.4.3)."""
    host = host.lower().removesuffix(".")
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    for name in names:
        kind, _, value = name.partition(":")
        if kind == "IP" and address is not None and ipaddress.ip_address(value) == address:
            return True
        if kind == "DNS" and address is None:
            value = value.lower().removesuffix(".")
            if value.startswith("*."):
                head, _, rest = host.partition(".")
                if head and rest == value[2:]:
                    return True
            elif value == host:
                return True
    return False


def _names(ctx: Context, info: certs.CertInfo, host: str, cert_file: str, where, make_new: str, p: Params) -> None:
    if matches_name(info.names, host):
        return
    shown = ", ".join(info.names) or "none"
    fix = f"make a certificate for {host}: {make_new}"
    dns = [n[4:] for n in info.names if n.startswith("DNS:") and "*" not in n]
    if dns:
        fix += f"\nor, if the server's name is {dns[0]}: myhostname = {dns[0]}"
    ctx.out.add(ERROR, where,
                f"myhostname {host} is not a name of the certificate {cert_file} (its names: {shown}): "
                "clients that verify the name refuse the connection", fix, "tls.name")


def _chain(ctx: Context, chain: list[x509.Certificate], ca_file: str, cert_file: str, where) -> None:
    try:
        anchors = certs.load_certificates(Path(ca_file))
    except certs.CertError as e:
        ctx.out.add(ERROR, where, f"smtpd_tls_CAfile: {e}", "point smtpd_tls_CAfile at your CA's certificate (PEM)",
                    "tls.chain")
        return
    try:
        certs.verify(chain, anchors, now=ctx.now, ca_name=ca_file)
    except certs.CertError as e:
        ctx.out.add(ERROR, where, f"the certificate {cert_file} does not verify against smtpd_tls_CAfile: {e}",
                    f"put the intermediate certificates after the server certificate in {cert_file}, or set "
                    f"smtpd_tls_CAfile to the CA that issued it (test: smarthost cert verify {cert_file} --ca CAFILE)",
                    "tls.chain")

