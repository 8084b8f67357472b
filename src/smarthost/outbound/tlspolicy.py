"""Client-side TLS for the relay client: the security level per next hop and its SSLContext.

Levels (postconf(5) ``smtp_tls_security_level``, TLS_README "Client TLS security levels"):

==========  ==================================================================================
``none``    no TLS, even when offered
``may``     STARTTLS when offered; the certificate is not checked (opportunistic; our default)
``encrypt`` TLS is required; the certificate is not checked
``verify``  TLS is required and the certificate must chain to a trusted CA and name the
            server: by default the host name connected to (the MX host, or the host of
            ``[host]``), ``smtp_tls_verify_cert_match = hostname``
``secure``  as ``verify``, but the name must match ``smtp_tls_secure_cert_match``, by default
            ``nexthop, dot-nexthop``: the next-hop domain or one of its subdomains (so a
            forged MX record cannot redirect the mail to a host with a valid certificate)
==========  ==================================================================================

``dane`` is taken as ``may`` (there is no DNSSEC validation here; Postfix also falls back to
opportunistic TLS when no usable TLSA records exist). ``dane-only`` and ``fingerprint`` are
not supported: :class:`~smarthost.tls.TLSConfigError` at start.

``smtp_tls_policy_maps`` override the level per destination. Keys (TLS_README "TLS policy
table"): the next hop exactly as written when it has brackets or a port (``[host]:587``),
otherwise the domain, then its parent domains as ``.parent``. Values: a level followed by
optional attributes ``match=name1:name2``, ``protocols=...``, ``ciphers=grade`` and
``exclude=cipher1:cipher2`` (at a mandatory level, in place of
``smtp_tls_mandatory_exclude_ciphers``).

Names in a match list: ``hostname`` (the host connected to), ``nexthop`` (the next-hop
domain), ``dot-nexthop`` (its subdomains), a literal name, or ``.domain`` (its subdomains).
Certificate names are the DNS and IP subjectAltNames (the subject CN only when there are
no DNS names, RFC 6125 §6.4.4); a ``*`` wildcard stands for exactly one leftmost label.

Mandatory levels (encrypt, verify, secure) use ``smtp_tls_mandatory_protocols`` and
``smtp_tls_mandatory_ciphers``; ``may`` uses ``smtp_tls_protocols`` and ``smtp_tls_ciphers``.
``smtp_tls_exclude_ciphers`` applies at every level, ``smtp_tls_mandatory_exclude_ciphers`` in
addition at the mandatory ones (postconf(5)).
"""

from __future__ import annotations

import enum
import ipaddress
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from smarthost.outbound.routing import NextHop
from smarthost.tables import Table
from smarthost.tls import TLSConfigError, configure


class Level(enum.Enum):
    NONE = "none"
    MAY = "may"
    ENCRYPT = "encrypt"
    VERIFY = "verify"
    SECURE = "secure"

    @property
    def mandatory(self) -> bool:
        return self in (Level.ENCRYPT, Level.VERIFY, Level.SECURE)

    @property
    def verifies(self) -> bool:
        return self in (Level.VERIFY, Level.SECURE)


_LEVEL_ALIASES = {"": Level.NONE, "dane": Level.MAY}
_UNSUPPORTED = {"dane-only", "fingerprint"}


def parse_level(text: str, where: str) -> Level:
    word = text.strip().lower()
    if word in _LEVEL_ALIASES:
        return _LEVEL_ALIASES[word]
    if word in _UNSUPPORTED:
        raise TLSConfigError(f"{where}: TLS level {word} is not supported; use verify or secure")
    try:
        return Level(word)
    except ValueError:
        raise TLSConfigError(
            f"{where}: unknown TLS level {text.strip()!r}; use none, may, encrypt, verify or secure"
        ) from None


@dataclass(frozen=True, slots=True)
class ClientTLSSettings:
    """The main.cf side of client TLS (parameters not declared yet fall back to Postfix's defaults)."""

    level: Level = Level.MAY
    cafile: str | None = None
    capath: str | None = None
    wrappermode: bool = False
    protocols: str = ">=TLSv1.2"
    mandatory_protocols: str = ">=TLSv1.2"
    ciphers: str = "medium"
    mandatory_ciphers: str = "medium"
    exclude_ciphers: tuple[str, ...] = ()
    mandatory_exclude_ciphers: tuple[str, ...] = ()  # in addition, at mandatory levels
    verify_cert_match: tuple[str, ...] = ("hostname",)
    secure_cert_match: tuple[str, ...] = ("nexthop", "dot-nexthop")
    loglevel: int = 0
    cert_file: str | None = None  # smtp_tls_cert_file: our client certificate (permit_tls_clientcerts)
    key_file: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ClientTLSSettings:
        def get(name: str, default: Any) -> Any:
            return params[name] if name in params else default

        def listed(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
            value = get(name, default)
            if isinstance(value, str):
                value = value.replace(",", " ").split()
            return tuple(value)

        def text(name: str, default: str) -> str:
            value = get(name, default)
            return " ".join(value) if isinstance(value, (list, tuple)) else str(value)

        return cls(
            level=parse_level(text("smtp_tls_security_level", "may"), "smtp_tls_security_level"),
            cafile=get("smtp_tls_CAfile", "") or None,
            capath=get("smtp_tls_CApath", "") or None,
            wrappermode=bool(get("smtp_tls_wrappermode", False)),
            protocols=text("smtp_tls_protocols", ">=TLSv1.2"),
            mandatory_protocols=text("smtp_tls_mandatory_protocols", ">=TLSv1.2"),
            ciphers=text("smtp_tls_ciphers", "medium"),
            mandatory_ciphers=text("smtp_tls_mandatory_ciphers", "medium"),
            exclude_ciphers=listed("smtp_tls_exclude_ciphers", ()),
            mandatory_exclude_ciphers=listed("smtp_tls_mandatory_exclude_ciphers", ()),
            verify_cert_match=listed("smtp_tls_verify_cert_match", ("hostname",)),
            secure_cert_match=listed("smtp_tls_secure_cert_match", ("nexthop", "dot-nexthop")),
            loglevel=int(get("smtp_tls_loglevel", 0)),
            cert_file=get("smtp_tls_cert_file", "") or None,
            key_file=get("smtp_tls_key_file", "") or None,
        )


@dataclass(frozen=True, slots=True)
class TLSPolicy:
    """What to do for one next hop; ``context`` is None at level none."""

    level: Level
    match: tuple[str, ...]  # name patterns for verify/secure (see module docstring)
    context: ssl.SSLContext | None
    source: str = "smtp_tls_security_level"  # where the level came from, for log lines

    def names_for(self, hostname: str, nexthop_domain: str) -> list[str]:
        """The match list with ``hostname`` / ``nexthop`` / ``dot-nexthop`` filled in."""
        names = []
        for item in self.match:
            word = item.lower()
            if word == "hostname":
                names.append(hostname)
            elif word == "nexthop":
                names.append(nexthop_domain)
            elif word == "dot-nexthop":
                names.append("." + nexthop_domain)
            else:
                names.append(item)
        return [n.lower().rstrip(".") for n in names if n]


def make_context(
    settings: ClientTLSSettings, level: Level, protocols: str | None = None, ciphers: str | None = None,
    exclude: tuple[str, ...] | None = None,
) -> ssl.SSLContext | None:
    """An SSLContext for ``level``; chain verification on at verify/secure (names are checked
    by :func:`certificate_matches` after the handshake, since several names may be allowed).
    ``exclude`` (a policy map's ``exclude=``) replaces ``smtp_tls_mandatory_exclude_ciphers``."""
    if level is Level.NONE:
        return None
    prefix = "smtp_tls_mandatory" if level.mandatory else "smtp_tls"
    if protocols is None:
        protocols = settings.mandatory_protocols if level.mandatory else settings.protocols
    if ciphers is None:
        ciphers = settings.mandatory_ciphers if level.mandatory else settings.ciphers
    excluded = list(settings.exclude_ciphers)
    if level.mandatory:
        excluded += settings.mandatory_exclude_ciphers if exclude is None else exclude
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    configure(ctx, protocols=protocols, ciphers=ciphers, exclude=excluded, prefix=prefix)
    if level.verifies:
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            if settings.cafile or settings.capath:
                ctx.load_verify_locations(cafile=settings.cafile, capath=settings.capath)
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(
                f"smtp_tls_CAfile/smtp_tls_CApath: cannot load trust anchors ({exc}); fix the path"
            ) from None
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if settings.cert_file:
        try:
            ctx.load_cert_chain(settings.cert_file, settings.key_file or settings.cert_file)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(
                f"smtp_tls_cert_file: cannot use {settings.cert_file} with key"
                f" {settings.key_file or settings.cert_file} ({exc}); check both paths and that the key"
                " belongs to the certificate"
            ) from None
    return ctx


class TLSPolicies:
    """The TLS policy of every next hop: main.cf's level, overridden by ``smtp_tls_policy_maps``.
    Contexts are built once per distinct policy. Lookups may raise TableError (defer)."""

    def __init__(self, settings: ClientTLSSettings, policy_maps: Sequence[Table] = ()) -> None:
        self.settings = settings
        self._maps = tuple(policy_maps)
        self._contexts: dict[tuple[Level, str | None, str | None, tuple[str, ...] | None], ssl.SSLContext | None] = {}
        self._default = self._build(settings.level, "smtp_tls_security_level", {})

    def _context(
        self, level: Level, protocols: str | None, ciphers: str | None, exclude: tuple[str, ...] | None
    ) -> ssl.SSLContext | None:
        key = (level, protocols, ciphers, exclude)
        if key not in self._contexts:
            self._contexts[key] = make_context(self.settings, level, protocols, ciphers, exclude)
        return self._contexts[key]

    def _build(self, level: Level, source: str, attributes: Mapping[str, str]) -> TLSPolicy:
        match = attributes.get("match")
        if match is not None:
            names = tuple(n for n in match.split(":") if n)
        elif level is Level.SECURE:
            names = self.settings.secure_cert_match
        else:
            names = self.settings.verify_cert_match
        exclude = attributes.get("exclude")
        context = self._context(level, attributes.get("protocols"), attributes.get("ciphers"),
                                None if exclude is None else tuple(c for c in exclude.split(":") if c))
        return TLSPolicy(level, names, context, source)

    def for_nexthop(self, nexthop: NextHop) -> TLSPolicy:
        if not self._maps:
            return self._default
        for key in policy_keys(nexthop):
            for table in self._maps:
                value = table.lookup(key)
                if value is not None:
                    return self._parse(value, f"{table.name}: {key}")
        return self._default

    def _parse(self, value: str, where: str) -> TLSPolicy:
        words = value.split()
        if not words:
            raise TLSConfigError(f"{where}: empty TLS policy")
        level = parse_level(words[0], where)
        attributes: dict[str, str] = {}
        for word in words[1:]:
            name, eq, attr = word.partition("=")
            if not eq or name.lower() not in ("match", "protocols", "ciphers", "exclude"):
                raise TLSConfigError(
                    f"{where}: unsupported attribute {word!r}; use match=, protocols=, ciphers= or exclude="
                )
            attributes[name.lower()] = attr
        return self._build(level, where, attributes)


def policy_keys(nexthop: NextHop) -> list[str]:
    """smtp_tls_policy_maps keys for a next hop (TLS_README "TLS policy table")."""
    written = nexthop.text
    if written.startswith("[") or ":" in written:
        return [written]
    domain = nexthop.host.lower().rstrip(".")
    labels = domain.split(".")
    return [domain] + ["." + ".".join(labels[i:]) for i in range(1, len(labels))]


def certificate_names(cert: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) of a certificate as ``SSLSocket.getpeercert()`` gives it."""
    dns: list[str] = []
    ips: list[str] = []
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "DNS":
            dns.append(value.lower().rstrip("."))
        elif kind == "IP Address":
            ips.append(value.strip())
    if not dns:  # RFC 6125 §6.4.4: the CN only when there is no DNS-ID
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    dns.append(value.lower().rstrip("."))
    return dns, ips


def _name_matches(cert_name: str, pattern: str) -> bool:
    wildcard = cert_name.startswith("*.")
    base = cert_name[2:] if wildcard else cert_name
    if "*" in base:  # only a whole leftmost label may be a wildcard
        return False
    if pattern.startswith("."):  # any subdomain of pattern
        parent = pattern[1:]
        if wildcard:
            return base == parent or base.endswith(pattern)
        return cert_name.endswith(pattern)
    if not wildcard:
        return cert_name == pattern
    _, dot, rest = pattern.partition(".")
    return bool(dot) and rest == base


def certificate_matches(cert: Mapping[str, Any], names: Sequence[str]) -> bool:
    """Whether the (chain-verified) certificate names one of ``names`` (see the module docstring)."""
    dns, ips = certificate_names(cert)
    for pattern in names:
        try:
            address = ipaddress.ip_address(pattern)
        except ValueError:
            if any(_name_matches(name, pattern) for name in dns):
                return True
        else:
            if any(_same_ip(address, ip) for ip in ips):
                return True
    return False


def _same_ip(address: ipaddress.IPv4Address | ipaddress.IPv6Address, text: str) -> bool:
    try:
        return ipaddress.ip_address(text) == address
    except ValueError:
        return False

