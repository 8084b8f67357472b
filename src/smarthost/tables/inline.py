"""``inline:{ key=value, { key = text with spaces, or commas } }``: a small table written in main.cf.

Items are separated by whitespace or commas; an item in braces may hold both, and whitespace
around its ``=`` is dropped. Keys are case-folded like texthash keys. Values may be secrets
(relay passwords), so the table's name and errors show the keys only.
"""

from __future__ import annotations

from pathlib import Path

from smarthost.tables import TableError, split_list

_EXAMPLE = "inline:{ key=value, { key = text with spaces } }"


def strip_braces(text: str) -> str | None:
    """``{ text }`` -> ``text`` (stripped); ``None`` when ``text`` is not in braces."""
    text = text.strip()
    if len(text) >= 2 and text[0] == "{" and text[-1] == "}":
        return text[1:-1].strip()
    return None


class InlineTable:
    def __init__(self, name: str, data: dict[str, str]) -> None:
        self.name = name
        self._data = data

    def lookup(self, key: str) -> str | None:
        return self._data.get(key.lower())

    def __repr__(self) -> str:
        return f"<InlineTable {len(self._data)} entries>"


def open_inline(name: str, config_dir: Path | None) -> InlineTable:
    body = strip_braces(name)
    if body is None:
        raise TableError(f"an inline table is written {_EXAMPLE}")
    try:
        items = split_list(body)
    except ValueError as e:
        raise TableError(f"inline table: {e}; write {_EXAMPLE}") from None
    data: dict[str, str] = {}
    for n, item in enumerate(items, 1):
        inner = strip_braces(item)
        key, eq, value = (inner if inner is not None else item).partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq or not key:
            raise TableError(f"inline table: item {n} is not key=value; write {_EXAMPLE}")
        data.setdefault(key, value)
    return InlineTable("inline:{ " + ", ".join(data) + " }", data)
