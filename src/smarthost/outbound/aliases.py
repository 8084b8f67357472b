"""Address rewriting by table: ``virtual_alias_maps`` (virtual(5)) and ``alias_maps`` (aliases(5)).

Pure: the tables are passed in; lookups may raise :class:`smarthost.tables.TableError`, a
temporary failure for the caller.

virtual(5), applied by the queue manager to every recipient before routing:

* keys in virtual(5)'s search order (``user+ext@domain``, ``user@domain``, ``user+ext`` and
  ``user`` for local domains, ``@domain``); a result is looked up again, recursively;
* a result equal to the address itself stops the recursion there (``a@x  a@x, b@y`` keeps a
  copy for ``a@x``);
* ``@domain -> @other`` keeps the local part; a result without ``@`` gets ``@$myorigin``;
* an extension matched through the address without it is appended to the results
  (``propagate_unmatched_extensions = canonical, virtual``, Postfix's default);
* at most :data:`MAX_DEPTH` levels and :data:`MAX_ADDRESSES` results, else a permanent
  ``5.4.6`` error (a loop in the table).

aliases(5), applied by local delivery to local parts of ``mydestination`` domains:

* keys are local parts, lower-cased, ``user+ext`` then ``user``; both ``name value`` (postmap
  input) and ``name: value`` (the aliases(5) file format) lines work, so ``/etc/aliases``
  can be used as it is (``texthash:/etc/aliases`` or compiled with ``smarthost postmap``);
* values are comma-separated; double quotes protect commas and spaces;
* an alias that expands to itself (directly or through a cycle) is delivered to the mailbox
  of that name instead of being expanded again (local(8));
* ``|command``, ``/file`` and ``:include:`` targets are not supported: smarthost delivers only
  into Maildirs, and running commands or appending to files as the recipient is a large attack
  surface for a relay. Such a target is a permanent ``5.7.1`` error naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from smarthost.tables import Table
from smarthost.tables.keys import alias_keys, split_extension, virtual_keys

__all__ = [
    "MAX_ADDRESSES",
    "MAX_DEPTH",
    "AliasError",
    "AliasTarget",
    "expand_aliases",
    "expand_virtual_aliases",
    "lookup_first",
    "split_alias_value",
]

#: Nesting limit of alias and virtual alias lookups.
MAX_DEPTH = 100
#: Most addresses one recipient may expand to.
MAX_ADDRESSES = 1000
#: Longest alias value we parse (a table value is bounded already; this bounds the split).
MAX_VALUE_CHARS = 64 * 1024


class AliasError(Exception):
    """A permanent problem with an alias: ``enhanced`` status code and ``text`` for the DSN."""

    def __init__(self, enhanced: str, text: str) -> None:
        super().__init__(text)
        self.enhanced = enhanced
        self.text = text


def lookup_first(tables: Sequence[Table], keys: Sequence[str]) -> tuple[str, str] | None:
    """``(key, value)`` of the first hit, key by key, each key in every table in order."""
    for key in keys:
        for table in tables:
            value = table.lookup(key)
            if value is not None:
                return key, value
    return None


def split_alias_value(value: str) -> list[str]:
    """``'a, "|cmd x, y", b'`` -> ``['a', '|cmd x, y', 'b']`` (quotes removed, empties dropped)."""
    if len(value) > MAX_VALUE_CHARS:
        raise AliasError("5.3.5", f"alias value longer than {MAX_VALUE_CHARS} characters")
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    items.append("".join(current).strip())
    return [_unbracket(item) for item in items if item]


def _unbracket(item: str) -> str:
    return item[1:-1].strip() if item.startswith("<") and item.endswith(">") else item


def _split(address: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    return (local, domain) if at else (address, "")


# -- virtual(5) -------------------------------------------------------------------------


def expand_virtual_aliases(
    address: str,
    tables: Sequence[Table],
    *,
    is_local_domain: Callable[[str], bool],
    myorigin: str,
    recipient_delimiter: str = "",
) -> list[str]:
    """The addresses ``address`` is rewritten to (``[address]`` when no entry matches).

    Raises AliasError for a loop or too large an expansion, TableError when a table fails."""
    if not tables:
        return [address]
    results: list[str] = []
    _expand_virtual(address, tables, is_local_domain, myorigin, recipient_delimiter, 0, results)
    return list(dict.fromkeys(results))


def _expand_virtual(address, tables, is_local_domain, myorigin, delimiter, depth, results) -> None:
    if depth > MAX_DEPTH:
        raise AliasError("5.4.6", f"virtual alias table recursion limit exceeded for <{address}>")
    local, domain = _split(address)
    keys = virtual_keys(address, delimiter, local_domain=bool(domain) and is_local_domain(domain.lower()))
    hit = lookup_first(tables, keys)
    if hit is None:
        _append(results, address)
        return
    key, value = hit
    _, extension = split_extension(local, delimiter)
    # The extension did not take part in the match (key "user@domain", "user" or "@domain").
    propagate = extension is not None and key not in (address.lower(), local.lower())
    base = split_extension(local, delimiter)[0] if propagate else local
    for target in split_alias_value(value):
        if target.startswith("@"):
            target = base + target
        elif "@" not in target:
            target = f"{target}@{myorigin}"
        if propagate:
            t_local, t_domain = _split(target)
            target = f"{t_local}{extension}@{t_domain}"
        if target.lower() == address.lower():
            _append(results, address)  # virtual(5): a result equal to the input ends the recursion
        else:
            _expand_virtual(target, tables, is_local_domain, myorigin, delimiter, depth + 1, results)


def _append(results: list[str], address: str) -> None:
    if len(results) >= MAX_ADDRESSES:
        raise AliasError("5.4.6", f"virtual alias expansion limit ({MAX_ADDRESSES} addresses) exceeded")
    results.append(address)


# -- aliases(5) -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AliasTarget:
    """Where one local recipient ends up: ``mailbox`` (a local part to deliver to a user's
    Maildir) or ``forward`` (an address outside the local domains, to route again)."""

    kind: str  # "mailbox" | "forward"
    address: str  # the local part for "mailbox", a full address for "forward"


def expand_aliases(
    local: str,
    tables: Sequence[Table],
    *,
    is_local_domain: Callable[[str], bool],
    recipient_delimiter: str = "",
) -> list[AliasTarget]:
    """Expand a local part through ``alias_maps``; a name without an alias is a mailbox.

    Addresses in local domains are expanded again by their local part; others are forwarded.
    Raises AliasError (unsupported target, loop, too many addresses) or TableError."""
    targets: list[AliasTarget] = []
    _expand_local(local.lower(), tables, is_local_domain, recipient_delimiter, set(), 0, targets)
    return list(dict.fromkeys(targets))


def _alias_lookup(tables: Sequence[Table], name: str, delimiter: str) -> str | None:
    for key in alias_keys(name, delimiter):
        hit = lookup_first(tables, [key, key + ":"])  # "name value" or aliases(5) "name: value"
        if hit is not None:
            return hit[1]
    return None


def _expand_local(name, tables, is_local_domain, delimiter, seen, depth, targets) -> None:
    if depth > MAX_DEPTH:
        raise AliasError("5.4.6", f"alias expansion loop for {name}")
    value = None if name in seen or not tables else _alias_lookup(tables, name, delimiter)
    if value is None:
        _add_target(targets, AliasTarget("mailbox", name))
        return
    seen = seen | {name}
    for target in split_alias_value(value):
        if target.startswith("|"):
            raise AliasError("5.7.1", f'alias {name}: delivery to a command ("{target[:60]}") is not supported')
        if target.startswith("/"):
            raise AliasError("5.7.1", f'alias {name}: delivery to a file ("{target[:60]}") is not supported')
        if target.lower().startswith(":include:"):
            raise AliasError("5.7.1", f"alias {name}: :include: lists are not supported")
        t_local, t_domain = _split(target)
        if not t_local:
            raise AliasError("5.1.3", f'alias {name}: bad address "{target[:60]}"')
        if t_domain and not is_local_domain(t_domain.lower().rstrip(".")):
            _add_target(targets, AliasTarget("forward", target))
        else:
            _expand_local(t_local.lower(), tables, is_local_domain, delimiter, seen, depth + 1, targets)


def _add_target(targets: list[AliasTarget], target: AliasTarget) -> None:
    if len(targets) >= MAX_ADDRESSES:
        raise AliasError("5.4.6", f"alias expansion limit ({MAX_ADDRESSES} addresses) exceeded")
    targets.append(target)
