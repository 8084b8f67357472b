"""Certificates and keys (with ``cryptography``): every step of the openssl recipe.

- Keys: ECDSA P-256 by default, RSA (2048, 3072, 4096 bits) on request; written as unencrypted
  PKCS#8 PEM (Postfix reads its key at start, without a passphrase), mode 0600 from the start.
- Certificates: a self-signed server certificate (``selfsigned``), a small CA (``ca_init``), a
  CSR (``request``) and the CA signing it with a server or a client profile (``sign``).
- Inspection (``describe``: names, validity, SHA-256 fingerprints in the form Postfix's
  ``relay_clientcerts`` / ``check_ccert_access`` tables use) and verification (``verify``: the
  chain against trust anchors, RFC 5280, and a host name, RFC 6125, through cryptography's
  verifier, with plain reasons for the usual failures).

No output file is written over an existing one unless ``force`` is set, and every output is
checked before the first one is written. Problems raise ``CertError`` with a message naming the
file and what to do; the messages never contain key material.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

RSA_SIZES = (2048, 3072, 4096)
#: ``--rsa`` without a size: NIST SP 800-57 deems 2048 bits adequate only until 2030.
DEFAULT_RSA_BITS = 3072
SELFSIGNED_DAYS, CA_DAYS, SIGN_DAYS = 825, 3650, 730
#: Largest PEM file read (a long chain is a few tens of KB).
MAX_PEM_BYTES = 1024 * 1024
#: Backdating of notBefore, for peers whose clocks are a little behind.
CLOCK_SKEW = dt.timedelta(minutes=5)

_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_EKU_NAMES = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}


class CertError(Exception):
    """A certificate or key operation that cannot be done; the message says why and what to do."""


# --- names ------------------------------------------------------------------------------


def parse_name(name: str) -> x509.GeneralName:
    """A subjectAltName entry for a host name (``DNS:``, ``*.`` allowed as the whole first
    label) or an IPv4/IPv6 address (``IP:``). Host names are lower-cased, a final dot dropped."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        pass
    host = name.lower().removesuffix(".")
    labels = host.split(".")
    if labels[0] == "*" and len(labels) > 2:  # RFC 6125 §6.4.3: the wildcard is a whole left label
        labels = labels[1:]
    if not host.isascii():
        raise CertError(f"{name!r}: write an internationalized host name as its A-label (xn--...)")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise CertError(f"{name!r} is neither a host name nor an IP address")
    return x509.DNSName(host)


def name_text(entry: x509.GeneralName) -> str:
    """``DNS:name``, ``IP:address``, ... as openssl prints subjectAltName entries."""
    if isinstance(entry, x509.DNSName):
        return f"DNS:{entry.value}"
    if isinstance(entry, x509.IPAddress):
        return f"IP:{entry.value}"
    if isinstance(entry, x509.RFC822Name):
        return f"email:{entry.value}"
    if isinstance(entry, x509.UniformResourceIdentifier):
        return f"URI:{entry.value}"
    return f"{type(entry).__name__}:{entry.value}"


def _alt_names(cn: str, sans: Sequence[str], *, cn_required: bool) -> list[x509.GeneralName]:
    """The CN (when it is a host name) first, then the SANs, without duplicates."""
    names = [parse_name(s) for s in sans]
    try:
        names.insert(0, parse_name(cn))
    except CertError:
        if cn_required:
            raise
    return list(dict.fromkeys(names))


def _matches(pattern: x509.GeneralName, name: x509.GeneralName) -> bool:
    """RFC 6125 §6.4: exact (case-insensitive) match, or a ``*.`` wildcard for exactly one label."""
    if isinstance(name, x509.IPAddress):
        return isinstance(pattern, x509.IPAddress) and pattern.value == name.value
    if not isinstance(pattern, x509.DNSName):
        return False
    want, have = name.value.lower(), pattern.value.lower().removesuffix(".")
    if have.startswith("*."):
        head, _, rest = want.partition(".")
        return bool(head) and rest == have[2:]
    return want == have


def subject_alt_names(obj: x509.Certificate | x509.CertificateSigningRequest) -> list[x509.GeneralName]:
    try:
        return list(obj.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def common_name(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


# --- keys -------------------------------------------------------------------------------


def generate_key(rsa_bits: int | None = None) -> PrivateKey:
    """ECDSA P-256, or RSA with ``rsa_bits`` (one of ``RSA_SIZES``)."""
    if rsa_bits is None:
        return ec.generate_private_key(ec.SECP256R1())
    if rsa_bits not in RSA_SIZES:
        raise CertError(f"RSA keys are made with {', '.join(map(str, RSA_SIZES))} bits, not {rsa_bits}")
    return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)


def key_description(key: PublicKey | PrivateKey) -> str:
    """``ECDSA P-256``, ``RSA 3072``, ..."""
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return f"ECDSA {_CURVE_NAMES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return f"RSA {key.key_size}"
    return type(key).__name__


def _check_public_key(key: object, where: str | Path) -> PublicKey:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise CertError(f"{where}: an RSA key of {key.key_size} bits is too weak; make one of 2048 bits or more")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _CURVE_NAMES:
        return key
    raise CertError(f"{where}: unsupported key type {type(key).__name__}; use ECDSA (P-256/384/521) or RSA")


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _spki(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_matches(public_key: PublicKey, private_key: PrivateKey) -> bool:
    """Whether ``private_key`` is the private half of ``public_key``."""
    return _spki(public_key) == _spki(private_key.public_key())


# --- files ------------------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as e:
        raise CertError(f"cannot read {what} {path}: {e.strerror}") from None
    if len(data) > MAX_PEM_BYTES:
        raise CertError(f"{path} is larger than {MAX_PEM_BYTES} bytes; is it really a {what}?")
    return data


def load_private_key(path: Path) -> PrivateKey:
    """An unencrypted PEM private key (PKCS#8, or the traditional RSA/EC forms)."""
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertError(f"{path} is encrypted; Postfix and smarthost need it without a passphrase: "
                        f"openssl pkey -in {path} -out DECRYPTED (then keep DECRYPTED mode 0600)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertError(f"{path} does not hold a PEM private key (-----BEGIN PRIVATE KEY-----)") from None
    _check_public_key(key.public_key(), path)
    return key


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file, in order (the leaf first in a chain file)."""
    data = _read(path, "certificate")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise CertError(f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return certs


def load_csr(path: Path) -> x509.CertificateSigningRequest:
    data = _read(path, "certificate request")
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError:
        raise CertError(f"{path} holds no PEM certificate request (-----BEGIN CERTIFICATE REQUEST-----)") from None


def refuse_existing(paths: Sequence[Path], force: bool) -> None:
    """Raise CertError if any of ``paths`` exists (also a dangling symlink) and not ``force``."""
    if force:
        return
    for path in paths:
        if os.path.lexists(path):
            raise CertError(f"{path} exists; use --force to replace it")


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Create ``path`` with ``mode`` from the start. Without ``force`` the file must not exist
    (O_EXCL, so a file or symlink appearing meanwhile is not followed); with ``force`` a temporary
    file in the same directory replaces it atomically (a symlink there is replaced, not followed)."""
    path = Path(path)
    try:
        if force:
            fd, written = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
        else:
            fd, written = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), str(path)
    except FileExistsError:
        raise CertError(f"{path} exists; use --force to replace it") from None
    except OSError as e:
        raise CertError(f"cannot create {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(written, path)
    except OSError as e:
        Path(written).unlink(missing_ok=True)
        raise CertError(f"cannot write {path}: {e.strerror}") from None


def write_private(path: Path, data: bytes, *, force: bool = False) -> None:
    """Write a secret file created 0600 from the start (never briefly readable by others)."""
    _write(path, data, 0o600, force)


def write_public(path: Path, data: bytes, *, force: bool = False) -> None:
    """Write a certificate or request, mode 0644, never over an existing file unless ``force``."""
    _write(path, data, 0o644, force)


def pem(obj: x509.Certificate | x509.CertificateSigningRequest) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


# --- building (pure: keys and the time are passed in) ------------------------------------


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.timezone.utc)


def _leaf_key_usage(key: PublicKey) -> x509.KeyUsage:
    """digitalSignature; RSA also keyEncipherment (RSA key exchange of TLS 1.2 clients)."""
    rsa_key = isinstance(key, rsa.RSAPublicKey)
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=rsa_key,
                         data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                         encipher_only=False, decipher_only=False)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: PublicKey, not_before: dt.datetime,
             not_after: dt.datetime) -> x509.CertificateBuilder:
    # RFC 5280 §4.1.2.2: positive serial, at most 20 octets; random_serial_number gives 159 bits.
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def _cn(cn: str) -> x509.Name:
    if not cn or len(cn) > 64:  # RFC 5280 Appendix A: ub-common-name 64
        raise CertError(f"the common name must have 1 to 64 characters, not {len(cn)}")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def build_selfsigned(key: PrivateKey, cn: str, sans: Sequence[str], *, days: int = SELFSIGNED_DAYS,
                     now: dt.datetime | None = None) -> x509.Certificate:
    """A self-signed server certificate (not a CA) for host ``cn`` and ``sans``."""
    start = _now(now)
    name = _cn(cn)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        _builder(name, name, key.public_key(), start - CLOCK_SKEW, start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(key.public_key()), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_alt_names(cn, sans, cn_required=True)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )


def build_ca(key: PrivateKey, cn: str, *, days: int = CA_DAYS, now: dt.datetime | None = None) -> x509.Certificate:
    """A root CA: basicConstraints CA:TRUE with pathlen 0 (it signs end-entity certificates
    only), keyCertSign and cRLSign (RFC 5280 §4.2.1.3, §4.2.1.9)."""
    start = _now(now)
    name = _cn(cn)
    ca_usage = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                             encipher_only=False, decipher_only=False)
    return (
        _builder(name, name, key.public_key(), start - CLOCK_SKEW, start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ca_usage, critical=True)
        .sign(key, hashes.SHA256())
    )


def build_csr(key: PrivateKey, cn: str, sans: Sequence[str]) -> x509.CertificateSigningRequest:
    """A CSR (PKCS#10, RFC 2986) for ``cn``; its SANs are the CN when that is a host name, then
    ``sans``. A CN that is no host name (a person's or a client's name) is kept out of the SANs."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(_cn(cn))
    names = _alt_names(cn, sans, cn_required=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256())


def issue(csr: x509.CertificateSigningRequest, ca_cert: x509.Certificate, ca_key: PrivateKey, *,
          days: int = SIGN_DAYS, client: bool = False, now: dt.datetime | None = None,
          csr_name: str = "the request", ca_name: str = "the CA certificate") -> x509.Certificate:
    """The CA signs ``csr``: server profile (serverAuth) or client profile (clientAuth).

    Only the subject, the public key and the subjectAltNames are taken from the request; every
    other requested extension (a basicConstraints CA:TRUE, say) is ignored. A request without
    SANs gets its CN as the SAN (RFC 6125 §6.4.4: clients ignore the CN when SANs exist, and
    modern ones ignore it always); a client certificate may name its holder by CN alone. The
    validity ends no later than the CA's. ``csr_name``/``ca_name`` name the inputs in errors."""
    if not csr.is_signature_valid:
        raise CertError(f"{csr_name}: the request's signature does not verify; make the request again")
    public_key = _check_public_key(csr.public_key(), csr_name)
    if not key_matches(ca_cert.public_key(), ca_key):
        raise CertError(f"the CA key does not belong to {ca_name}; check --ca-cert and --ca-key")
    try:
        is_ca = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CertError(f"{ca_name} is not a CA certificate (no basicConstraints CA:TRUE); "
                        "make a CA with: smarthost cert ca init")
    start = _now(now)
    if ca_cert.not_valid_after_utc <= start:
        raise CertError(f"{ca_name} expired on {ca_cert.not_valid_after_utc:%Y-%m-%d}; "
                        "make a new CA with: smarthost cert ca init")
    names = subject_alt_names(csr)
    cn = common_name(csr.subject)
    if not names and cn is not None:
        try:
            names = [parse_name(cn)]
        except CertError:
            if not client:
                raise CertError(f"{csr_name}: no subjectAltName, and its CN {cn!r} is not a host name; "
                                "make the request with --san HOST") from None
    if not names and (not client or cn is None):
        raise CertError(f"{csr_name}: the request names no host (no CN, no subjectAltName); "
                        "make the request with --cn HOST")
    not_after = min(start + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    try:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    purpose = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        _builder(csr.subject, ca_cert.subject, public_key, start - CLOCK_SKEW, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(public_key), critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(aki, critical=False)
    )
    if names:
        # RFC 5280 §4.2.1.6: critical only when the subject is empty.
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=len(csr.subject) == 0)
    return builder.sign(ca_key, hashes.SHA256())


# --- the recipe's steps, on files ---------------------------------------------------------


def selfsigned(cn: str, sans: list[str], cert_path: Path, key_path: Path, *, days: int = SELFSIGNED_DAYS,
               force: bool = False, rsa_bits: int | None = None) -> x509.Certificate:
    """Make a key (ECDSA P-256, or RSA ``rsa_bits``) and a self-signed server certificate for
    ``cn`` and ``sans``; write the key 0600 to ``key_path`` and the certificate to ``cert_path``."""
    refuse_existing([cert_path, key_path], force)
    key = generate_key(rsa_bits)
    cert = build_selfsigned(key, cn, sans, days=days)
    write_private(key_path, key_pem(key), force=force)
    write_public(cert_path, pem(cert), force=force)
    return cert


def ca_init(cn: str, cert_path: Path, key_path: Path, *, days: int = CA_DAYS, force: bool = False,
            rsa_bits: int | None = None) -> x509.Certificate:
    """Make a CA key (0600) and its self-signed CA certificate."""
    refuse_existing([cert_path, key_path], force)
    key = generate_key(rsa_bits)
    cert = build_ca(key, cn, days=days)
    write_private(key_path, key_pem(key), force=force)
    write_public(cert_path, pem(cert), force=force)
    return cert


def request(cn: str, sans: list[str], key_path: Path, csr_path: Path, *, reuse_key: bool = False,
            force: bool = False, rsa_bits: int | None = None) -> x509.CertificateSigningRequest:
    """Write a CSR for ``cn`` and ``sans``. The key at ``key_path`` is made (0600), or with
    ``reuse_key`` the existing one is used (renewing a certificate without changing the key,
    so public-key fingerprints stay valid)."""
    if reuse_key:
        if rsa_bits is not None:
            raise CertError("--rsa makes a new key; it cannot be combined with --reuse-key")
        refuse_existing([csr_path], force)
        key = load_private_key(key_path)
    else:
        if os.path.lexists(key_path) and not force:
            raise CertError(f"{key_path} exists; use --reuse-key to make a request for that key, "
                            "or --force to replace it with a new one")
        refuse_existing([csr_path], force)
        key = generate_key(rsa_bits)
    csr = build_csr(key, cn, sans)
    if not reuse_key:
        write_private(key_path, key_pem(key), force=force)
    write_public(csr_path, pem(csr), force=force)
    return csr


def sign(ca_cert_path: Path, ca_key_path: Path, csr_path: Path, out_path: Path, *, days: int = SIGN_DAYS,
         client: bool = False, force: bool = False) -> x509.Certificate:
    """The CA (certificate + key files) signs the CSR file; the certificate goes to ``out_path``."""
    refuse_existing([out_path], force)
    ca_cert = load_certificates(ca_cert_path)[0]
    ca_key = load_private_key(ca_key_path)
    csr = load_csr(csr_path)
    cert = issue(csr, ca_cert, ca_key, days=days, client=client, csr_name=str(csr_path), ca_name=str(ca_cert_path))
    write_public(out_path, pem(cert), force=force)
    return cert


# --- inspection ---------------------------------------------------------------------------


def _colon_hex(data: bytes) -> str:
    return ":".join(f"{b:02X}" for b in data)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate as colon-separated upper-case hex: the key form of
    ``relay_clientcerts`` and ``check_ccert_access`` with ``smtpd_tls_fingerprint_digest = sha256``
    (postconf(5); the default from compatibility_level 3.6), and of ``openssl x509 -fingerprint``."""
    return _colon_hex(cert.fingerprint(hashes.SHA256()))


def pubkey_fingerprint(key: PublicKey) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo (postconf(5), ``smtp_tls_fingerprint_digest``:
    Postfix 2.9+ accepts it wherever a certificate fingerprint goes); it survives a renewal that
    keeps the key."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(_spki(key))
    return _colon_hex(digest.finalize())


@dataclass(frozen=True)
class CertInfo:
    """What ``smarthost cert show`` prints about one certificate."""

    subject: str
    issuer: str
    names: tuple[str, ...]
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    key: str
    is_ca: bool
    usage: tuple[str, ...]
    self_signed: bool
    fingerprint: str
    pubkey_fingerprint: str

    def days_left(self, now: dt.datetime | None = None) -> int:
        """Whole days until notAfter; negative once expired."""
        return (self.not_after - _now(now)) // dt.timedelta(days=1)


def describe(cert: x509.Certificate) -> CertInfo:
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = basic.ca
    except x509.ExtensionNotFound:
        is_ca = False
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        usage = tuple(_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku)
    except x509.ExtensionNotFound:
        usage = ()
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        names=tuple(name_text(n) for n in subject_alt_names(cert)),
        serial=_colon_hex(cert.serial_number.to_bytes((cert.serial_number.bit_length() + 7) // 8 or 1, "big")),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key=key_description(cert.public_key()),
        is_ca=is_ca,
        usage=usage,
        self_signed=cert.issuer == cert.subject,
        fingerprint=fingerprint(cert),
        pubkey_fingerprint=pubkey_fingerprint(cert.public_key()),
    )


# --- verification -------------------------------------------------------------------------


def _usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier] | None:
    try:
        return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return None


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify(chain: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate], name: str | None = None, *,
           now: dt.datetime | None = None, ca_name: str = "the CA file") -> list[x509.Certificate]:
    """Verify ``chain`` (the leaf, then any intermediates) up to one of ``anchors`` at ``now``
    (RFC 5280 path validation with the Web PKI profile, by cryptography's verifier) and, when
    given, ``name`` against the leaf's subjectAltNames (RFC 6125 §6.4). A leaf for clients only
    (clientAuth, no serverAuth) is checked as a client certificate. Returns the path found,
    leaf first; raises CertError with the reason (``ca_name`` names the anchors' file there)."""
    when = _now(now)
    leaf, intermediates = chain[0], list(chain[1:])
    if leaf.not_valid_before_utc > when:
        raise CertError(f"the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
    if leaf.not_valid_after_utc < when:
        days = (when - leaf.not_valid_after_utc) // dt.timedelta(days=1)
        raise CertError(f"the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC "
                        f"({days} days ago)")
    names = subject_alt_names(leaf)
    wanted = parse_name(name) if name is not None else None
    if wanted is not None and not any(_matches(n, wanted) for n in names):
        have = ", ".join(name_text(n) for n in names) or "none"
        raise CertError(f"{name} is not a name of the certificate (its subjectAltNames: {have})")
    issuers = [c for c in [*intermediates, *anchors] if c.subject == leaf.issuer]
    if not issuers:
        raise CertError(f"no certificate in {ca_name} issued it (its issuer: {leaf.issuer.rfc4514_string()})")
    if not any(_signed_by(leaf, c) for c in issuers):
        raise CertError(f"the CA certificate named {leaf.issuer.rfc4514_string()} did not sign it: another key "
                        "has the same name (was the CA made again?)")
    usages = _usages(leaf)
    client_only = usages is not None and ExtendedKeyUsageOID.CLIENT_AUTH in usages and \
        ExtendedKeyUsageOID.SERVER_AUTH not in usages
    builder = verification.PolicyBuilder().store(verification.Store(list(anchors))).time(when)
    try:
        if client_only:
            return builder.build_client_verifier().verify(leaf, intermediates).chain
        if wanted is None:
            dns_or_ip = [n for n in names if isinstance(n, (x509.DNSName, x509.IPAddress))]
            if not dns_or_ip:
                raise CertError("the certificate has no subjectAltName; TLS clients need the host name there")
            wanted = dns_or_ip[0]
            if isinstance(wanted, x509.DNSName) and wanted.value.startswith("*."):
                wanted = x509.DNSName("x" + wanted.value[1:])
        subject: verification.Subject = (
            verification.IPAddress(wanted.value) if isinstance(wanted, x509.IPAddress)
            else verification.DNSName(wanted.value))
        return builder.build_server_verifier(subject).verify(leaf, intermediates)
    except verification.VerificationError as e:
        reason = re.sub(r"^validation failed: ", "", str(e))
        raise CertError(re.sub(r" \(encountered processing <Certificate\(.*$", "", reason)) from None
