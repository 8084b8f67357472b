"""``texthash:/path``: Postfix's plain-text table, a ``key value`` file read at open; no postmap step.

Keys are case-folded (lowercased) when read and when looked up, as Postfix does for its indexed
tables; values keep their case. A duplicate key keeps its first value and logs a warning (postmap's
behaviour). The file is re-read when it changes (see :mod:`smarthost.tables.filetable`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from smarthost.tables import TableError, resolve_path
from smarthost.tables.filetable import FileTable, logical_lines

log = logging.getLogger(__name__)


def parse_texthash(text: str, path: Path) -> dict[str, str]:
    data: dict[str, str] = {}
    for lineno, line in logical_lines(text, path):
        parts = line.split(None, 1)
        if len(parts) != 2:
            # The line is not echoed: in a credentials table it may be a password.
            raise TableError(f'{path}:{lineno}: expected "key whitespace value", found a key without a value')
        key, value = parts[0].lower(), parts[1]
        if key in data:
            log.warning('%s:%d: duplicate entry "%s" ignored; the first one is used', path, lineno, key)
            continue
        data[key] = value
    return data


class TexthashTable(FileTable[dict[str, str]]):
    def lookup(self, key: str) -> str | None:
        return self.current().get(key.lower())


def open_texthash(name: str, config_dir: Path | None) -> TexthashTable:
    return TexthashTable(f"texthash:{name}", resolve_path(name, config_dir), parse_texthash)
