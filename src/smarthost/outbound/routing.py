"""Routing: which transport and next hop a recipient goes to, the way Postfix decides it.

:func:`route` follows trivial-rewrite(8) and transport(5):

1. The recipient domain's address class picks the default transport and next hop:

   * local (``mydestination``, an address literal of this host): ``local_transport``
     (default ``local:$myhostname``);
   * ``relay_domains``: ``relay_transport``; the next hop is, in decreasing
     precedence, the one in ``relay_transport``, ``sender_dependent_relayhost_maps``,
     ``relayhost``, the recipient domain;
   * anything else: ``default_transport``; next hop from ``default_transport``,
     ``sender_dependent_relayhost_maps``, ``relayhost``, the recipient domain.

2. ``transport_maps`` then override it, searched with ``user+ext@domain``,
   ``user@domain``, ``domain``, ``.parent`` domains, ``*``.  A result
   ``transport:nexthop`` sets both; ``transport:`` (or ``transport``) sets the
   transport and resets the next hop to the recipient domain; ``:nexthop``
   keeps the transport; ``:`` changes nothing.

``sender_dependent_relayhost_maps`` is searched with the sender address, then
``@domain`` (the null sender as ``<>``); ``DUNNO`` stops the search.

:func:`parse_nexthop` reads the SMTP next-hop syntax: ``[host]`` and
``[host]:port`` mean no MX lookup, ``host`` and ``host:port`` an MX lookup;
IPv6 as ``[ipv6:2001:db8::1]``; the port defaults to 25 (also with
``smtp_tls_wrappermode``: write ``:465``).

Lookups may raise :class:`smarthost.tables.TableError`: a temporary failure for the caller.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from smarthost.tables import Table, split_list

DEFAULT_PORT = 25  # the "smtp" service
# The few service names next hops use; Postfix asks getservbyname(3), we need no file for these.
_SERVICES = {"smtp": 25, "submission": 587, "submissions": 465, "smtps": 465, "lmtp": 24}
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"  # RFC 1123 §2.1, "_" tolerated as Postfix does
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")
# Transports whose "next hop" is a message, not a destination (error(8)).
_MESSAGE_TRANSPORTS = frozenset({"error", "retry"})


class NextHopError(ValueError):
    """A next hop that cannot be used; the message says what is wrong and how to write it."""


@dataclass(frozen=True, slots=True)
class NextHop:
    host: str  # a host name or an IP address, without brackets or "ipv6:"
    port: int
    mx_lookup: bool
    text: str  # as written; smtp_sasl_password_maps are searched with it

    @property
    def is_address(self) -> bool:
        return _is_ip(self.host)


def parse_nexthop(text: str) -> NextHop:
    """``[mail.example.com]:587`` -> NextHop("mail.example.com", 587, mx_lookup=False, ...)."""
    written = text
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise NextHopError(f'"{written}": missing "]"; write [host] or [host]:port')
        host, rest = text[1:close], text[close + 1 :]
        mx_lookup = False
        tagged = host[:5].lower() == "ipv6:"
        if tagged:
            host = host[5:]
        if tagged or ":" in host:
            _check_ipv6(host, written)
        elif not _HOSTNAME.fullmatch(host) or (_numeric(host) and not _is_ipv4(host)):
            raise NextHopError(f'"{written}": "{host}" is not a host name or IP address')
    else:
        host, colon, port_text = text.partition(":")
        if ":" in port_text:
            raise NextHopError(f'"{written}": write an IPv6 address as [ipv6:address]')
        rest = colon + port_text
        mx_lookup = True
        if _numeric(host):
            raise NextHopError(f'"{written}": an IP address needs brackets, e.g. [{host}]')
        if not _HOSTNAME.fullmatch(host):
            raise NextHopError(f'"{written}": "{host}" is not a host name')
    port = DEFAULT_PORT
    if rest:
        if not rest.startswith(":") or len(rest) == 1:
            raise NextHopError(f'"{written}": write host:port, e.g. [{host}]:587')
        port = _port(rest[1:], written)
    return NextHop(host.rstrip("."), port, mx_lookup, written.strip())


def parse_nexthops(text: str) -> list[NextHop]:
    """A list of next hops separated by commas or spaces (Postfix 3.5 and later)."""
    return [parse_nexthop(item) for item in split_list(text)]


def _port(text: str, written: str) -> int:
    if text.isascii() and text.isdigit():
        port = int(text)
        if 1 <= port <= 65535:
            return port
    elif text.lower() in _SERVICES:
        return _SERVICES[text.lower()]
    raise NextHopError(f'"{written}": "{text}" is not a port; use a number from 1 to 65535')


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _numeric(host: str) -> bool:
    return all(label.isdigit() for label in host.rstrip(".").split("."))


def _check_ipv6(text: str, written: str) -> None:
    try:
        ipaddress.IPv6Address(text)
        if "%" in text:  # a zone index is meaningless to another host
            raise ValueError
    except ValueError:
        raise NextHopError(f'"{written}": "{text}" is not an IPv6 address') from None


# Routing -------------------------------------------------------------------------------


class Domains(Protocol):
    """Address classes; smarthost.inbound.policy.Policy provides both."""

    def is_local_domain(self, domain: str) -> bool: ...

    def is_relay_domain(self, domain: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class RoutingParams:
    myhostname: str
    relayhost: str = ""
    default_transport: str = "smtp"
    relay_transport: str = "relay"
    local_transport: str = ""  # "" = Postfix's default, local:$myhostname
    recipient_delimiter: str = ""
    empty_address_relayhost_maps_lookup_key: str = "<>"

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> RoutingParams:
        def get(name: str, default: str) -> str:
            return str(params[name]) if name in params else default

        return cls(
            myhostname=params["myhostname"],
            relayhost=get("relayhost", ""),
            default_transport=get("default_transport", "smtp"),
            relay_transport=get("relay_transport", "relay"),
            local_transport=get("local_transport", ""),
            recipient_delimiter=get("recipient_delimiter", ""),
            empty_address_relayhost_maps_lookup_key=get("empty_address_relayhost_maps_lookup_key", "<>"),
        )


@dataclass(frozen=True, slots=True)
class RoutingTables:
    domains: Domains
    transport_maps: Sequence[Table] = ()
    sender_dependent_relayhost_maps: Sequence[Table] = ()


@dataclass(frozen=True, slots=True)
class Route:
    transport: str  # a master.cf service name: smtp, relay, local, error, ...
    nexthop: str | None  # as written (parse SMTP ones with parse_nexthops); None for error/retry
    error_text: str | None = None  # error:/retry: text, e.g. "5.1.1 mail for x is not accepted"


def route(recipient: str, sender: str, params: RoutingParams, tables: RoutingTables) -> Route:
    """Where ``recipient`` (``user@domain``) goes for a message from ``sender`` ("" = ``<>``)."""
    local, at, domain = recipient.rpartition("@")
    if not at:
        local, domain = recipient, ""
    domain = domain.rstrip(".").lower()
    if not domain or tables.domains.is_local_domain(domain):
        transport, nexthop = _split(params.local_transport or f"local:{params.myhostname}")
        nexthop = nexthop or params.myhostname
    else:
        relay = tables.domains.is_relay_domain(domain)
        transport, nexthop = _split(params.relay_transport if relay else params.default_transport)
        if not nexthop:
            nexthop = _sender_relayhost(sender, params, tables) or params.relayhost or domain
    override = _transport_lookup(local, domain, params, tables)
    if override is not None:
        new_transport, new_nexthop = _split(override)
        if new_transport:
            transport, nexthop = new_transport, new_nexthop or domain or params.myhostname
        elif new_nexthop:
            nexthop = new_nexthop
    if transport.lower() in _MESSAGE_TRANSPORTS:
        return Route(transport, None, nexthop)
    return Route(transport, nexthop)


def _split(value: str) -> tuple[str, str]:
    """``smtp:[host]:587`` -> ("smtp", "[host]:587"); the next hop keeps any further colons."""
    transport, _, nexthop = value.strip().partition(":")
    return transport.strip(), nexthop.strip()


def _first(tables: Sequence[Table], keys: Sequence[str]) -> str | None:
    """The first hit, key by key, each key in every table in order (Postfix's maps_find)."""
    for key in keys:
        for table in tables:
            value = table.lookup(key)
            if value is not None:
                return value
    return None


def _transport_lookup(local: str, domain: str, params: RoutingParams, tables: RoutingTables) -> str | None:
    """transport(5) TABLE SEARCH ORDER."""
    if not tables.transport_maps:
        return None
    keys: list[str] = []
    if domain:
        address = f"{local}@{domain}".lower()
        keys.append(address)
        delimiter = params.recipient_delimiter
        if delimiter:
            user = _strip_extension(local, delimiter)
            if user != local:
                keys.append(f"{user}@{domain}".lower())
        keys.append(domain)
        labels = domain.split(".")
        keys += ["." + ".".join(labels[i:]) for i in range(1, len(labels))]
    keys.append("*")
    return _first(tables.transport_maps, keys)


def _strip_extension(local: str, delimiters: str) -> str:
    """``user+ext`` -> ``user`` (recipient_delimiter; each character is a delimiter)."""
    cut = min((i for i, ch in enumerate(local) if ch in delimiters and i > 0), default=-1)
    return local[:cut] if cut > 0 else local


def _sender_relayhost(sender: str, params: RoutingParams, tables: RoutingTables) -> str | None:
    """sender_dependent_relayhost_maps: the sender, then @domain; DUNNO ends the search."""
    if not tables.sender_dependent_relayhost_maps:
        return None
    if not sender:
        keys = [params.empty_address_relayhost_maps_lookup_key]
    else:
        keys = [sender.lower()]
        _, at, domain = sender.rpartition("@")
        if at and domain:
            keys.append("@" + domain.lower())
    value = _first(tables.sender_dependent_relayhost_maps, keys)
    if value is None or value.strip().upper() == "DUNNO":
        return None
    return value.strip() or None
