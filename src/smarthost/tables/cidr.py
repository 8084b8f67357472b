"""``cidr:/path``: a file of ``network/prefix  result`` lines (cidr_table(5)); the first match in
file order wins.

A pattern is an address or ``address/prefix`` (IPv6 optionally in brackets); ``!pattern`` matches
every address the pattern does not. Lookup keys are client IP addresses; other keys find nothing.
An IPv4-mapped IPv6 key is matched as its IPv4 address. Postfix's ``if``/``endif`` blocks are not
supported yet and are refused with a clear error. The file is re-read when it changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from smarthost.netaddr import address_ints, client_address, parse_network
from smarthost.tables import TableError, resolve_path
from smarthost.tables.filetable import FileTable, logical_lines


@dataclass(frozen=True, slots=True)
class _Rule:
    negate: bool
    version: int
    network: int
    mask: int
    value: str


def parse_cidr(text: str, path: Path) -> list[_Rule]:
    rules: list[_Rule] = []
    for lineno, line in logical_lines(text, path):
        parts = line.split(None, 1)
        pattern = parts[0]
        if pattern.lower() in ("if", "endif"):
            raise TableError(f"{path}:{lineno}: if/endif blocks are not supported yet; write one network per line")
        if len(parts) != 2:
            raise TableError(f'{path}:{lineno}: expected "network/prefix whitespace result", found only "{pattern[:80]}"')
        negate = pattern.startswith("!")
        try:
            net = parse_network(pattern[1:] if negate else pattern)
        except ValueError as e:
            raise TableError(f"{path}:{lineno}: {e}") from None
        rules.append(_Rule(negate, net.version, int(net.network_address), int(net.netmask), parts[1]))
    return rules


class CidrTable(FileTable[list[_Rule]]):
    def lookup(self, key: str) -> str | None:
        rules = self.current()
        addr = client_address(key)
        if addr is None:
            return None
        v4, v6 = address_ints(addr)
        for r in rules:
            k = v4 if r.version == 4 else v6
            if (k is not None and k & r.mask == r.network) != r.negate:
                return r.value
        return None


def open_cidr(name: str, config_dir: Path | None) -> CidrTable:
    return CidrTable(f"cidr:{name}", resolve_path(name, config_dir), parse_cidr)
