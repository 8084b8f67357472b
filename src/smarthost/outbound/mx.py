"""Mail exchangers for a next hop, with an injected DNS resolver (dnspython's async one in production).

* MX records by preference; hosts of equal preference in random order, from
  the injected random source (RFC 5321 §5.1).
* No MX records: the domain itself is the implicit MX (RFC 5321 §5.1).
* Null MX (``0 .``, RFC 7505): the domain accepts no mail, a permanent
  failure with 5.1.10 (RFC 7505 §4.1).  A ``.`` exchange next to other MX
  records is a broken domain (§3 forbids it); we treat it as null MX too.
* NXDOMAIN: permanent, 5.1.2 (RFC 3463: bad destination system address).
* SERVFAIL, timeouts, any other resolver error: temporary, 4.4.3 (directory
  server failure), so that a DNS outage defers mail and never bounces it.

The resolver is anything with dnspython's ``async resolve(qname, rdtype)``;
tests pass a fake, never a real DNS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import dns.exception
import dns.name
import dns.resolver

from smarthost.outbound.routing import NextHop
from smarthost.smtp.client import Outcome, Status


class Resolver(Protocol):
    async def resolve(self, qname: str, rdtype: str) -> Iterable[Any]: ...


class Shuffler(Protocol):
    def shuffle(self, x: list[Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class MxHost:
    name: str  # host name without the final dot (ASCII form), or an IP address
    preference: int


class DnsError(Exception):
    """A lookup that failed; ``permanent`` failures bounce, the rest defer."""

    def __init__(self, permanent: bool, enhanced: str, text: str) -> None:
        super().__init__(text)
        self.permanent = permanent
        self.enhanced = enhanced
        self.text = text

    def outcome(self) -> Outcome:
        return Outcome(Status.BOUNCED if self.permanent else Status.DEFERRED, self.enhanced, self.text)


_BAD_NAME = (dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.BadEscape)
_FAMILIES = {"ipv6": "AAAA", "ipv4": "A"}


async def mx_hosts(domain: str, resolver: Resolver, rng: Shuffler | None = None) -> list[MxHost]:
    """The hosts to try for ``domain``, best first.  Raises :class:`DnsError`."""
    try:
        answer = list(await resolver.resolve(_absolute(domain), "MX"))
    except dns.resolver.NoAnswer:
        return [MxHost(domain.rstrip("."), 0)]  # RFC 5321 §5.1: the implicit MX
    except dns.resolver.NXDOMAIN:
        raise DnsError(True, "5.1.2", f"Host or domain name not found: {domain}: no such domain") from None
    except _BAD_NAME:
        raise DnsError(True, "5.1.2", f"Host or domain name not found: {domain}: bad domain name") from None
    except dns.exception.DNSException as exc:
        raise _temporary(domain, "MX", exc) from None
    if not answer:
        return [MxHost(domain.rstrip("."), 0)]
    if any(str(rr.exchange) == "." for rr in answer):
        raise DnsError(True, "5.1.10", f"Domain {domain} does not accept mail (null MX)")
    by_preference: dict[int, list[MxHost]] = {}
    for rr in answer:
        preference = int(rr.preference)
        by_preference.setdefault(preference, []).append(MxHost(str(rr.exchange).rstrip("."), preference))
    rng = rng or random.SystemRandom()
    hosts: list[MxHost] = []
    for preference in sorted(by_preference):
        group = by_preference[preference]
        rng.shuffle(group)
        hosts += group
    return hosts


async def host_addresses(host: str, resolver: Resolver, families: Sequence[str] = ("ipv6", "ipv4")) -> list[str]:
    """IP addresses of ``host`` (AAAA and A, in ``families`` order).  Raises :class:`DnsError`.

    Addresses of one family are enough: a failure of the other is ignored.
    """
    if _is_ip(host):
        return [host]
    rdtypes = [_FAMILIES[family] for family in families]
    results = await asyncio.gather(
        *(resolver.resolve(_absolute(host), rdtype) for rdtype in rdtypes), return_exceptions=True
    )
    addresses: list[str] = []
    temporary: DnsError | None = None
    for rdtype, result in zip(rdtypes, results):
        if isinstance(result, (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN, *_BAD_NAME)):
            continue
        if isinstance(result, dns.exception.DNSException):
            temporary = temporary or _temporary(host, rdtype, result)
        elif isinstance(result, BaseException):
            raise result
        else:
            addresses += [str(rr.address) for rr in result]
    if addresses:
        return addresses
    if temporary is not None:
        raise temporary
    raise DnsError(True, "5.4.4", f"Host or domain name not found: {host}: no address records")


async def destinations(nexthop: NextHop, resolver: Resolver, rng: Shuffler | None = None) -> list[MxHost]:
    """The hosts for a next hop: ``[host]`` as it is, ``host`` through its MX records."""
    if not nexthop.mx_lookup:
        return [MxHost(nexthop.host, 0)]
    return await mx_hosts(nexthop.host, resolver, rng)


def _temporary(name: str, rdtype: str, exc: BaseException) -> DnsError:
    if isinstance(exc, dns.exception.Timeout):
        why = "timeout"
    elif isinstance(exc, dns.resolver.NoNameservers):
        why = "server failure"
    else:
        why = type(exc).__name__
    return DnsError(False, "4.4.3", f"Name service error for name={name} type={rdtype}: {why}")


def _absolute(name: str) -> str:
    return name if name.endswith(".") else name + "."


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
