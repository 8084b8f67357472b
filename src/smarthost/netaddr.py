"""IP network lists in Postfix's syntax (``mynetworks`` and friends), matched once per connection.

Entries: ``127.0.0.0/8``, ``[::1]/128``, ``::1/128``, ``[2001:db8::]/32``, bare addresses (``192.0.2.1``,
``[::1]``), ``!entry`` (a match on a negated entry means "not in the list"), ``/file/name`` (the file's
entries in its place) and ``type:table`` (the client address is looked up; found means match).
The first matching entry decides, as in Postfix's match lists.

An IPv4-mapped IPv6 client (``::ffff:192.0.2.1``) is also matched as the IPv4 address it carries,
and an IPv4 client also as its mapped form, so ``[::ffff:127.0.0.0]/104`` and ``127.0.0.0/8``
both work whichever way the socket reports the peer.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from smarthost.tables import Table, TableError, read_list_file

__all__ = ["NetworkList", "address_ints", "client_address", "parse_network"]

_MAPPED_PREFIX = 0xFFFF << 32  # ::ffff:0:0/96, RFC 4291 §2.5.5.2
_MAX_FILE_DEPTH = 4
_CACHE_SIZE = 4096
_TABLE_RE = re.compile(r"[a-z][a-z0-9_]*:[^:]", re.IGNORECASE)  # type:name, not an IPv6 address

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str) -> IPNetwork:
    """One network or address: ``192.0.2.0/24``, ``[2001:db8::]/32``, ``2001:db8::/32``,
    ``192.0.2.1``, ``[::1]``. Raises ValueError naming the entry and how to fix it."""
    s = text.strip()
    if s.startswith("["):
        close = s.find("]")
        rest = s[close + 1 :] if close > 0 else ""
        if close < 0 or (rest and not rest.startswith("/")):
            raise ValueError(f'"{text}" is not a network: write [address] or [address]/prefix, e.g. [2001:db8::]/32')
        s = s[1:close] + rest
    addr_text, slash, prefix_text = s.partition("/")
    try:
        addr = ipaddress.ip_address(addr_text)
    except ValueError:
        raise ValueError(
            f'"{text}" is not an IP address or network: write e.g. 192.0.2.0/24, 192.0.2.1 or [2001:db8::]/32'
        ) from None
    if not slash:
        return ipaddress.ip_network(addr)
    if not prefix_text.isdigit() or int(prefix_text) > addr.max_prefixlen:
        raise ValueError(
            f'bad prefix length in "{text}": write a number from 0 to {addr.max_prefixlen} after the "/"'
        )
    net = ipaddress.ip_network(f"{addr}/{int(prefix_text)}", strict=False)
    if net.network_address != addr:
        shown = f"[{net.network_address}]" if net.version == 6 else str(net.network_address)
        raise ValueError(
            f'non-null host address bits in "{text}", perhaps you should use "{shown}/{net.prefixlen}" instead'
        )
    return net


def client_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address as we compare it: brackets and ``%scope`` dropped, an IPv4-mapped
    IPv6 address turned into the IPv4 address it carries. ``None`` when ``ip`` is not an address."""
    s = ip.strip()
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    if s[:5].lower() == "ipv6:":  # RFC 5321 §4.1.3 address literal form
        s = s[5:]
    s = s.partition("%")[0]
    try:
        addr = ipaddress.ip_address(s)
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def address_ints(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int | None, int]:
    """``(IPv4 value or None, IPv6 value)`` of an address from :func:`client_address`; an IPv4
    address's IPv6 value is its mapped form ``::ffff:a.b.c.d``."""
    if addr.version == 4:
        return int(addr), _MAPPED_PREFIX | int(addr)
    return None, int(addr)


@dataclass(frozen=True, slots=True)
class _Net:
    negate: bool
    version: int
    network: int
    mask: int


@dataclass(frozen=True, slots=True)
class _TableEntry:
    negate: bool
    table: Table


class NetworkList:
    """An ordered list of networks; :meth:`contains` answers "is this client in the list?"."""

    def __init__(self, entries: Iterable[_Net | _TableEntry], text: str = "") -> None:
        self._entries = tuple(entries)
        self._has_tables = any(isinstance(e, _TableEntry) for e in self._entries)
        self._cache: dict[str, bool] = {}
        self._text = text

    @classmethod
    def parse(
        cls,
        items: Iterable[str],
        *,
        open_table: Callable[[str], Table] | None = None,
    ) -> NetworkList:
        """Parse mynetworks-style entries. ``open_table`` opens ``type:name`` entries; without it
        they are refused. Raises ValueError naming the entry (and file:line for entries read from
        a file)."""
        items = list(items)
        entries: list[_Net | _TableEntry] = []
        for item in items:
            cls._parse_item(item, False, entries, open_table, 0)
        return cls(entries, " ".join(items))

    @classmethod
    def _parse_item(cls, item, negate, entries, open_table, depth) -> None:
        text = item.strip()
        while text.startswith("!"):
            negate = not negate
            text = text[1:].strip()
        if not text:
            raise ValueError(f'empty network list entry "{item}": write a network after the "!", e.g. !192.0.2.0/24')
        if text.startswith("/"):
            if depth >= _MAX_FILE_DEPTH:
                raise ValueError(f'"{text}": files nested more than {_MAX_FILE_DEPTH} deep; list the networks directly')
            try:
                lines = read_list_file(Path(text))
            except TableError as e:
                raise ValueError(str(e)) from None
            for lineno, sub in lines:
                try:
                    cls._parse_item(sub, negate, entries, open_table, depth + 1)
                except ValueError as e:
                    raise ValueError(f"{text}:{lineno}: {e}") from None
            return
        try:
            net = parse_network(text)
        except ValueError:
            if not _TABLE_RE.match(text):
                raise
        else:
            entries.append(_Net(negate, net.version, int(net.network_address), int(net.netmask)))
            return
        if open_table is None:
            raise ValueError(f'"{text}": tables are not supported in this list; list the networks directly')
        try:
            entries.append(_TableEntry(negate, open_table(text)))
        except TableError as e:
            raise ValueError(f'"{text}": {e}') from None

    def contains(self, ip: str) -> bool:
        """Whether client address ``ip`` is in the list. An unparsable ``ip`` is in no list.
        May raise TableError when a ``type:table`` entry cannot be read."""
        if self._has_tables:
            return self._match(ip)
        hit = self._cache.get(ip)
        if hit is None:
            hit = self._match(ip)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[ip] = hit
        return hit

    def _match(self, ip: str) -> bool:
        addr = client_address(ip)
        if addr is None:
            return False
        v4, v6 = address_ints(addr)
        for e in self._entries:
            if isinstance(e, _Net):
                key = v4 if e.version == 4 else v6
                if key is not None and key & e.mask == e.network:
                    return not e.negate
            elif e.table.lookup(str(addr)) is not None:
                return not e.negate
        return False

    def __repr__(self) -> str:
        return f"NetworkList({self._text!r})"
