"""``smarthost cert``: keys and certificates, every step of the openssl recipe in one tool.

    cert selfsigned --cn HOST [--san NAME...] --cert FILE --key FILE [--days N] [--rsa [BITS]] [--force]
    cert ca init --cn NAME --cert FILE --key FILE [--days N] [--rsa [BITS]] [--force]
    cert request --cn HOST [--san NAME...] --key FILE --csr FILE [--reuse-key] [--rsa [BITS]] [--force]
    cert sign --ca-cert FILE --ca-key FILE --csr FILE --out FILE [--days N] [--client] [--force]
    cert show FILE [--key FILE] [--json]
    cert verify FILE --ca FILE [--name HOST]

Keys are ECDSA P-256 unless ``--rsa`` asks for RSA (3072 bits, or 2048/4096), written mode 0600;
no file is replaced without ``--force``. Exit status: 0 on success; 1 on an error (the message
names the file and what to do), when ``show --key`` finds a key that does not match, or when
``verify`` does not verify. The work is done by :mod:`smarthost.certs`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from cryptography import x509

from smarthost import certs
from smarthost.certs import CertError, CertInfo


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cert", help="make, sign, show and verify certificates and keys",
        description="Keys, certificates, a small CA and its signatures: the openssl recipe in one tool. "
                    "Keys are ECDSA P-256 unless --rsa is given, and are written mode 0600.",
    )
    actions = parser.add_subparsers(dest="cert_command", metavar="ACTION", required=True)

    p = actions.add_parser("selfsigned", help="make a key and a self-signed server certificate",
                           description="Make a key and a self-signed server certificate for HOST (and the --san names).")
    _names(p)
    p.add_argument("--cert", required=True, type=Path, metavar="FILE", help="certificate to write (PEM)")
    p.add_argument("--key", required=True, type=Path, metavar="FILE", help="private key to write (PEM, mode 0600)")
    _days(p, certs.SELFSIGNED_DAYS)
    _rsa_force(p)
    p.set_defaults(func=cmd_selfsigned)

    ca = actions.add_parser("ca", help="a certificate authority of your own",
                            description="A certificate authority of your own, to sign server and client certificates.")
    ca_actions = ca.add_subparsers(dest="ca_command", metavar="ACTION", required=True)
    p = ca_actions.add_parser("init", help="make a CA key and certificate",
                              description="Make a CA key and its self-signed CA certificate (CA:TRUE, pathlen 0).")
    p.add_argument("--cn", required=True, metavar="NAME", help='the CA\'s name, e.g. "Example Mail CA"')
    p.add_argument("--cert", required=True, type=Path, metavar="FILE", help="CA certificate to write (PEM)")
    p.add_argument("--key", required=True, type=Path, metavar="FILE", help="CA private key to write (PEM, mode 0600)")
    _days(p, certs.CA_DAYS)
    _rsa_force(p)
    p.set_defaults(func=cmd_ca_init)

    p = actions.add_parser("request", help="make a key and a certificate signing request (CSR)",
                           description="Make a key (or use an existing one with --reuse-key) and a CSR for HOST.")
    _names(p)
    p.add_argument("--key", required=True, type=Path, metavar="FILE", help="private key to write (or reuse)")
    p.add_argument("--csr", required=True, type=Path, metavar="FILE", help="request to write (PEM)")
    p.add_argument("--reuse-key", action="store_true", help="make the request for the existing key in --key")
    _rsa_force(p)
    p.set_defaults(func=cmd_request)

    p = actions.add_parser("sign", help="sign a CSR with your CA",
                           description="The CA signs a CSR: a server certificate (serverAuth), or with --client a "
                                       "client certificate (clientAuth) for relay_clientcerts.")
    p.add_argument("--ca-cert", required=True, type=Path, metavar="FILE", help="the CA certificate")
    p.add_argument("--ca-key", required=True, type=Path, metavar="FILE", help="the CA private key")
    p.add_argument("--csr", required=True, type=Path, metavar="FILE", help="the request to sign")
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="certificate to write (PEM)")
    _days(p, certs.SIGN_DAYS)
    p.add_argument("--client", action="store_true", help="a client certificate (clientAuth) instead of a server one")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_sign)

    p = actions.add_parser("show", help="show a certificate (or CSR): names, validity, fingerprints",
                           description="Show subject, names, issuer, validity, days left and SHA-256 fingerprints of "
                                       "every certificate in FILE (or a CSR); with --key, whether the key matches "
                                       "(exit status 1 if not).")
    p.add_argument("file", type=Path, metavar="FILE", help="PEM certificate(s) or certificate request")
    p.add_argument("--key", type=Path, metavar="FILE", help="a private key to check against the (first) certificate")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_show)

    p = actions.add_parser("verify", help="verify a certificate against a CA file and a host name",
                           description="Verify FILE (the certificate, then any intermediates) against the CA "
                                       "certificates in --ca, and --name against its names. Exit status 0 only "
                                       "when it verifies.")
    p.add_argument("file", type=Path, metavar="FILE", help="PEM certificate, optionally followed by intermediates")
    p.add_argument("--ca", required=True, type=Path, metavar="FILE", help="trusted CA certificate(s), PEM")
    p.add_argument("--name", metavar="HOST", help="the host name (or IP address) clients connect to")
    p.set_defaults(func=cmd_verify)


def _days_type(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not 1 <= days <= 36500:
        raise argparse.ArgumentTypeError(f"days must be between 1 and 36500, not {days}")
    return days


def _days(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--days", type=_days_type, default=default, metavar="N",
                   help=f"validity in days (default: {default})")


def _names(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cn", required=True, metavar="HOST", help="the host name (the certificate's common name)")
    p.add_argument("--san", action="extend", nargs="+", default=[], metavar="NAME",
                   help="more host names or IP addresses (repeat, or separate with commas)")


def _rsa_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rsa", type=int, nargs="?", const=certs.DEFAULT_RSA_BITS, choices=certs.RSA_SIZES,
                   metavar="BITS", help=f"an RSA key instead of ECDSA P-256 (default {certs.DEFAULT_RSA_BITS} bits; "
                                        f"{', '.join(map(str, certs.RSA_SIZES))})")
    p.add_argument("--force", action="store_true", help="replace existing files")


def _sans(args: argparse.Namespace) -> list[str]:
    return [name for arg in args.san for name in arg.split(",") if name]


def _fail(message: str) -> int:
    print(f"smarthost cert: error: {message}", file=sys.stderr)
    return 1


def _date(when: dt.datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M:%S} UTC"


def _validity(cert: x509.Certificate) -> str:
    return f"valid until {_date(cert.not_valid_after_utc)}"


def _names_of(cert: x509.Certificate | x509.CertificateSigningRequest) -> str:
    return ", ".join(certs.name_text(n) for n in certs.subject_alt_names(cert)) or "(no subjectAltName)"


def _wrote_key(path: Path, cert: x509.Certificate | x509.CertificateSigningRequest) -> str:
    return f"wrote {path} ({certs.key_description(cert.public_key())} private key, mode 0600)"


def cmd_selfsigned(args: argparse.Namespace) -> int:
    try:
        cert = certs.selfsigned(args.cn, _sans(args), args.cert, args.key, days=args.days, force=args.force,
                                rsa_bits=args.rsa)
    except CertError as e:
        return _fail(str(e))
    print(_wrote_key(args.key, cert))
    print(f"wrote {args.cert} (self-signed for {_names_of(cert)}; {_validity(cert)})")
    print("main.cf:")
    print(f"    smtpd_tls_cert_file = {args.cert.resolve()}")
    print(f"    smtpd_tls_key_file = {args.key.resolve()}")
    return 0


def cmd_ca_init(args: argparse.Namespace) -> int:
    try:
        cert = certs.ca_init(args.cn, args.cert, args.key, days=args.days, force=args.force, rsa_bits=args.rsa)
    except CertError as e:
        return _fail(str(e))
    print(_wrote_key(args.key, cert))
    print(f"wrote {args.cert} (CA {cert.subject.rfc4514_string()}; {_validity(cert)})")
    print(f"Keep {args.key} offline if you can; give {args.cert} to clients as their CA file "
          "(smtp_tls_CAfile, smtpd_tls_CAfile).")
    return 0


def cmd_request(args: argparse.Namespace) -> int:
    try:
        csr = certs.request(args.cn, _sans(args), args.key, args.csr, reuse_key=args.reuse_key, force=args.force,
                            rsa_bits=args.rsa)
    except CertError as e:
        return _fail(str(e))
    if args.reuse_key:
        print(f"using the existing key {args.key} ({certs.key_description(csr.public_key())})")
    else:
        print(_wrote_key(args.key, csr))
    print(f"wrote {args.csr} (request for {csr.subject.rfc4514_string()}, {_names_of(csr)})")
    print(f"Next: smarthost cert sign --ca-cert CA.pem --ca-key CA.key --csr {args.csr} --out CERT.pem")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    try:
        cert = certs.sign(args.ca_cert, args.ca_key, args.csr, args.out, days=args.days, client=args.client,
                          force=args.force)
    except CertError as e:
        return _fail(str(e))
    kind = "client" if args.client else "server"
    print(f"wrote {args.out} ({kind} certificate for {cert.subject.rfc4514_string()}, {_names_of(cert)}; "
          f"{_validity(cert)})")
    if args.client:
        holder = certs.common_name(cert.subject) or cert.subject.rfc4514_string()
        print("relay_clientcerts / check_ccert_access entry (smtpd_tls_fingerprint_digest = sha256):")
        print(f"    {certs.fingerprint(cert)} {holder}")
    return 0


# --- show -------------------------------------------------------------------------------------


def _info_json(info: CertInfo, now: dt.datetime) -> dict[str, object]:
    return {
        "subject": info.subject,
        "issuer": info.issuer,
        "names": list(info.names),
        "serial": info.serial,
        "not_before": info.not_before.isoformat(),
        "not_after": info.not_after.isoformat(),
        "days_left": info.days_left(now),
        "expired": info.not_after < now,
        "key": info.key,
        "ca": info.is_ca,
        "self_signed": info.self_signed,
        "usage": list(info.usage),
        "sha256_fingerprint": info.fingerprint,
        "sha256_pubkey_fingerprint": info.pubkey_fingerprint,
    }


def _rows(rows: list[tuple[str, str]]) -> list[str]:
    return [f"  {label + ':':<28}{value}" for label, value in rows]


def _info_lines(info: CertInfo, now: dt.datetime) -> list[str]:
    if info.not_after < now:
        ago = (now - info.not_after) // dt.timedelta(days=1)
        remaining = f"EXPIRED {ago} days ago" if ago else "EXPIRED today"
    elif info.not_before > now:
        remaining = f"NOT YET VALID (until {_date(info.not_before)})"
    else:
        remaining = f"{info.days_left(now)} days left"
    return _rows([
        ("subject", info.subject),
        ("names (SAN)", ", ".join(info.names) or "(none)"),
        ("issuer", info.issuer + (" (self-signed)" if info.self_signed else "")),
        ("serial", info.serial),
        ("valid from", _date(info.not_before)),
        ("valid until", f"{_date(info.not_after)} ({remaining})"),
        ("key", info.key),
        ("CA", "yes" if info.is_ca else "no"),
        ("usage", ", ".join(info.usage) or "(any)"),
        ("SHA-256 fingerprint", info.fingerprint),
        ("SHA-256 pubkey fingerprint", info.pubkey_fingerprint),
    ])


def _request_json(csr: x509.CertificateSigningRequest) -> dict[str, object]:
    return {
        "subject": csr.subject.rfc4514_string(),
        "names": [certs.name_text(n) for n in certs.subject_alt_names(csr)],
        "key": certs.key_description(csr.public_key()),
        "signature_valid": csr.is_signature_valid,
        "sha256_pubkey_fingerprint": certs.pubkey_fingerprint(csr.public_key()),
    }


def _request_lines(req: dict[str, object]) -> list[str]:
    return _rows([
        ("subject", str(req["subject"])),
        ("names (SAN)", ", ".join(req["names"]) or "(none)"),
        ("key", str(req["key"])),
        ("signature", "valid" if req["signature_valid"] else "INVALID"),
        ("SHA-256 pubkey fingerprint", str(req["sha256_pubkey_fingerprint"])),
    ])


def _load_for_show(path: Path) -> list[x509.Certificate] | x509.CertificateSigningRequest:
    try:
        return certs.load_certificates(path)
    except CertError:
        pass
    try:
        return certs.load_csr(path)
    except CertError:
        raise CertError(f"{path} holds neither a PEM certificate nor a PEM certificate request") from None


def cmd_show(args: argparse.Namespace) -> int:
    now = dt.datetime.now(dt.timezone.utc)
    try:
        loaded = _load_for_show(args.file)
        key = certs.load_private_key(args.key) if args.key else None
    except CertError as e:
        return _fail(str(e))
    if isinstance(loaded, x509.CertificateSigningRequest):
        public_key = loaded.public_key()
        request = _request_json(loaded)
        report: dict[str, object] = {"file": str(args.file), "request": request}
        lines = [f"{args.file}: certificate request"] + _request_lines(request)
    else:
        public_key = loaded[0].public_key()
        infos = [certs.describe(c) for c in loaded]
        report = {"file": str(args.file), "certificates": [_info_json(i, now) for i in infos]}
        lines = []
        for n, info in enumerate(infos, 1):
            where = f"certificate {n} of {len(infos)} in {args.file}" if len(infos) > 1 else str(args.file)
            lines += ([""] if n > 1 else []) + [f"{where}:"] + _info_lines(info, now)
    matches = None
    if key is not None:
        matches = certs.key_matches(public_key, key)
        report["key_file"] = str(args.key)
        report["key_matches"] = matches
        lines.append(f"key {args.key}: " + ("matches" if matches else "does NOT match"))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("\n".join(lines))
    return 1 if matches is False else 0


# --- verify -----------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        chain = certs.load_certificates(args.file)
        anchors = certs.load_certificates(args.ca)
        path = certs.verify(chain, anchors, args.name, ca_name=str(args.ca))
    except CertError as e:
        print(f"{args.file}: verification failed: {e}", file=sys.stderr)
        return 1
    print(f"{args.file}: OK" + (f" for {args.name}" if args.name else ""))
    print("  chain: " + " <- ".join(c.subject.rfc4514_string() for c in path))
    return 0
