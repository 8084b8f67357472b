"""``static:value`` (or ``static:{ value with spaces }``): every lookup finds ``value``.

The value may be a secret (``static:user:password`` as relay credentials), so the table's name
does not show it."""

from __future__ import annotations

from pathlib import Path

from smarthost.tables.inline import strip_braces


class StaticTable:
    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self._value = value

    def lookup(self, key: str) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "<StaticTable>"


def open_static(name: str, config_dir: Path | None) -> StaticTable:
    inner = strip_braces(name)
    return StaticTable("static:{...}", inner if inner is not None else name)
