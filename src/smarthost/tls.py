"""TLS policy: the one place where ``SSLContext`` objects are made from configuration.

The Postfix parameters map as follows:

- ``smtpd_tls_cert_file`` / ``smtpd_tls_key_file`` (and ``smtpd_tls_chain_files``): the server's
  certificate and key; a key file readable by group or others is refused with a fix.
- ``smtpd_tls_protocols`` (opportunistic TLS) and ``smtpd_tls_mandatory_protocols`` (mandatory:
  ``smtpd_tls_security_level = encrypt`` and wrapper mode) in either Postfix syntax:
  ``>=TLSv1.2`` or the exclusion list ``!SSLv2, !SSLv3, !TLSv1, !TLSv1.1``. Our default is
  ``>=TLSv1.2`` for both (Postfix allows TLSv1 for opportunistic TLS).
- ``smtpd_tls_ciphers`` / ``smtpd_tls_mandatory_ciphers`` grades (TLS 1.2 and below; OpenSSL 3
  has no MEDIUM ciphers left, so ``high`` and ``medium`` offer the same suites there), minus
  ``smtpd_tls_exclude_ciphers`` (every level) and ``smtpd_tls_mandatory_exclude_ciphers``
  (mandatory TLS only).
- ``smtpd_tls_CAfile`` / ``smtpd_tls_CApath``: trust anchors for client certificates, asked for
  with ``smtpd_tls_ask_ccert``.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import stat
from dataclasses import dataclass

_VERSIONS = {
    "SSLv2": None,
    "SSLv3": ssl.TLSVersion.SSLv3,
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
_ORDER = ["SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]

# Cipher grades as OpenSSL cipher strings (TLS 1.2 and below; TLS 1.3 suites are always strong).
_GRADES = {
    "high": "HIGH:!aNULL:!eNULL:!MD5:!RC4:!3DES",
    "medium": "HIGH:MEDIUM:!aNULL:!eNULL:!MD5:!RC4:!3DES:!EXPORT",
    "low": "HIGH:MEDIUM:LOW:!aNULL:!eNULL:!EXPORT",
    "export": "ALL:!eNULL",
    "null": "eNULL:!aNULL",
}


class TLSConfigError(ValueError):
    """A TLS setting that cannot be used; the message names the parameter and a fix."""


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """Facts about an established TLS session, for the log and the Received header.

    ``peer_fingerprint``: the client certificate's digest (``smtpd_tls_fingerprint_digest``,
    colon-separated upper-case hex, the key form of ``relay_clientcerts``); the server asks for
    a certificate only with ``smtpd_tls_ask_ccert``, and one that does not verify against
    ``smtpd_tls_CAfile`` fails the handshake, so a fingerprint here belongs to a verified one.
    """

    version: str
    cipher: str
    bits: int
    peer_fingerprint: str | None = None
    peer_subject: str | None = None

    @classmethod
    def from_object(cls, obj: ssl.SSLObject | ssl.SSLSocket | None, digest: str = "sha256") -> TLSInfo | None:
        if obj is None:
            return None
        cipher = obj.cipher()
        if not cipher:
            return None
        name, version, bits = cipher
        fingerprint = subject = None
        der = obj.getpeercert(binary_form=True)
        if der:
            fingerprint = ":".join(f"{b:02X}" for b in hashlib.new(digest, der).digest())
            for rdn in (obj.getpeercert() or {}).get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        subject = value
        return cls(version=obj.version() or version, cipher=name, bits=int(bits or 0),
                   peer_fingerprint=fingerprint, peer_subject=subject)

    def describe(self) -> str:
        return f"{self.version} with cipher {self.cipher} ({self.bits}/{self.bits} bits)"


def protocol_range(spec: str, param: str) -> tuple[ssl.TLSVersion, ssl.TLSVersion | None]:
    """Parse a Postfix protocol list into (minimum, maximum) TLS versions.

    ``>=TLSv1.2``, ``<=TLSv1.3``, ``TLSv1.2 TLSv1.3`` and ``!SSLv2, !TLSv1`` are understood.
    """
    items = [t for t in spec.replace(",", " ").replace(":", " ").split() if t]
    allowed = set(_ORDER)
    included: set[str] = set()
    for item in items:
        if item.startswith(">="):
            name = item[2:]
            _check_version(name, param)
            allowed &= set(_ORDER[_ORDER.index(name):])
        elif item.startswith("<="):
            name = item[2:]
            _check_version(name, param)
            allowed &= set(_ORDER[: _ORDER.index(name) + 1])
        elif item.startswith("!"):
            _check_version(item[1:], param)
            allowed.discard(item[1:])
        else:
            _check_version(item, param)
            included.add(item)
    if included:
        allowed &= included
    allowed.discard("SSLv2")
    if not allowed:
        raise TLSConfigError(f"{param}: {spec!r} excludes every protocol; use e.g. >=TLSv1.2")
    names = [n for n in _ORDER if n in allowed]
    low = _VERSIONS[names[0]]
    high = _VERSIONS[names[-1]]
    assert low is not None
    return low, (None if names[-1] == "TLSv1.3" else high)


def _check_version(name: str, param: str) -> None:
    if name not in _VERSIONS:
        raise TLSConfigError(
            f"{param}: unknown protocol {name!r}; use one of {', '.join(_ORDER[1:])} (e.g. >=TLSv1.2)"
        )


def _check_key_mode(path: str) -> None:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise TLSConfigError(f"smtpd_tls_key_file: cannot read {path}: {exc.strerror}; check the path") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TLSConfigError(
            f"smtpd_tls_key_file: {path} is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o});"
            f" run chmod 600 {path}"
        )


def configure(ctx: ssl.SSLContext, *, protocols: str, ciphers: str, exclude: list[str], prefix: str) -> None:
    """Protocol range, cipher grade and exclusions (``{prefix}_protocols`` / ``_ciphers``), shared
    by the server's and the relay client's contexts."""
    low, high = protocol_range(protocols, f"{prefix}_protocols")
    ctx.minimum_version = low
    if high is not None:
        ctx.maximum_version = high
    grade = (ciphers or "medium").lower()
    cipher_string = _GRADES.get(grade)
    if cipher_string is None:
        raise TLSConfigError(f"{prefix}_ciphers: unknown grade {grade!r}; use high, medium or low")
    for excluded in exclude:
        cipher_string += ":!" + excluded
    try:
        ctx.set_ciphers(cipher_string)
    except ssl.SSLError:
        exclusions = prefix.replace("_mandatory", "") + "_exclude_ciphers"
        raise TLSConfigError(f"{exclusions}: leaves no usable cipher; remove some exclusions") from None
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


def server_context(params, *, mandatory: bool) -> ssl.SSLContext | None:
    """Build the server context for one service, or None when no certificate is configured.

    ``params`` is the service's effective parameter mapping. ``mandatory`` selects the
    ``*_mandatory_*`` protocol and cipher settings (security level ``encrypt`` or wrapper mode).
    """
    cert = params.raw("smtpd_tls_cert_file")
    chain_files = params["smtpd_tls_chain_files"]
    if not cert and not chain_files:
        return None
    key = params.raw("smtpd_tls_key_file") or cert
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    prefix = "smtpd_tls_mandatory" if mandatory else "smtpd_tls"
    exclude = list(params["smtpd_tls_exclude_ciphers"])
    if mandatory:
        exclude += params["smtpd_tls_mandatory_exclude_ciphers"]
    configure(ctx, protocols=params.raw(f"{prefix}_protocols"), ciphers=params.raw(f"{prefix}_ciphers"),
              exclude=exclude, prefix=prefix)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    # TLS 1.3 session tickets (RFC 8446 §4.6.1): one per full handshake, not OpenSSL's two. An
    # SMTP client keeps one session per server (Postfix's smtp_tls_session_cache, msmtp), and
    # each ticket costs the server about as much as a sixth of the handshake. The context is
    # made before the workers fork, so they share its ticket key until a reload.
    ctx.num_tickets = 1
    pairs = [(cert, key)] if cert else []
    for chain in chain_files:  # each file holds a key followed by its certificate chain
        pairs.append((chain, chain))
    for cert_file, key_file in pairs:
        _check_key_mode(key_file)
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except FileNotFoundError as exc:
            raise TLSConfigError(
                f"smtpd_tls_cert_file: {exc.filename or cert_file} does not exist;"
                " create it (smarthost cert selfsigned) or fix the path"
            ) from None
        except ssl.SSLError as exc:
            raise TLSConfigError(
                f"smtpd_tls_cert_file: cannot use {cert_file} with key {key_file} ({exc.reason or exc});"
                " check that the key belongs to the certificate and both are PEM"
            ) from None
    cafile = params.raw("smtpd_tls_CAfile") or None
    capath = params.raw("smtpd_tls_CApath") or None
    if params["smtpd_tls_ask_ccert"] or params["smtpd_tls_req_ccert"]:
        if cafile or capath:
            ctx.load_verify_locations(cafile=cafile, capath=capath)
        ctx.verify_mode = ssl.CERT_REQUIRED if params["smtpd_tls_req_ccert"] else ssl.CERT_OPTIONAL
    return ctx
