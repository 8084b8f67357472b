"""What file-backed tables share: reading Postfix's table file format and re-reading a changed file.

The format (postmap(1) input, also used by cidr_table(5)): ``#`` at the start of a line (after
optional whitespace) makes a comment line; blank and comment lines are skipped; a line that starts
with whitespace continues the previous logical line.

A running daemon notices a changed table: before a lookup, at most once a second, the file's
inode, size and mtime are compared with those it was read at, and a changed file is read again.
If the new file cannot be read or parsed, lookups fail with :class:`TableError` (the caller defers
mail) until the file is fixed: the operator changed the table, so the old contents are not
what they want either.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

from smarthost.tables import TableError, read_text_file

log = logging.getLogger(__name__)

#: Longest logical line (a key, its value and continuation lines).
MAX_LINE_CHARS = 64 * 1024
#: Changed files are noticed within this many seconds.
RECHECK_SECONDS = 1.0

Data = TypeVar("Data")


def logical_lines(text: str, path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(first line number, logical line)``, joining continuation lines with a space."""
    start = 0
    parts: list[str] = []
    for lineno, line in enumerate(text.split("\n"), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace():
            if not parts:
                raise TableError(f"{path}:{lineno}: continuation line (it starts with whitespace) without a line before it")
            parts.append(stripped)
        else:
            if parts:
                yield start, " ".join(parts)
            start, parts = lineno, [stripped]
        if sum(len(p) + 1 for p in parts) > MAX_LINE_CHARS:
            raise TableError(f"{path}:{start}: logical line longer than {MAX_LINE_CHARS} characters")
    if parts:
        yield start, " ".join(parts)


def stamp(st: os.stat_result) -> tuple[int, int, int]:
    """What says a file changed: inode (replaced), size and modification time."""
    return st.st_ino, st.st_size, st.st_mtime_ns


class WatchedFile(Generic[Data]):
    """Data loaded from one file (``self.watched``) and loaded again when that file changes.

    Subclasses set ``watched`` and implement ``_load() -> (data, stamp)``; :meth:`current` gives
    the data, checking the file at most once every ``RECHECK_SECONDS``.
    """

    name: str
    watched: Path

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._error: TableError | None = None
        self._data, self._stamp = self._load()
        self._checked = clock()

    def _load(self) -> tuple[Data, tuple[int, int, int]]:
        raise NotImplementedError

    def current(self) -> Data:
        """The loaded data, loaded again first if the file changed. Raises TableError while
        the file is missing or broken."""
        now = self._clock()
        if now - self._checked >= RECHECK_SECONDS:
            self._checked = now
            self._recheck()
        if self._error is not None:
            raise self._error
        return self._data

    def _recheck(self) -> None:
        try:
            st = os.stat(self.watched)
        except OSError as e:
            if self._error is None:
                log.error("%s: cannot stat %s: %s", self.name, self.watched, e.strerror)
            self._error = TableError(f"{self.name}: cannot read {self.watched}: {e.strerror}")
            self._stamp = (0, 0, 0)
            return
        if stamp(st) == self._stamp:
            return
        try:
            self._data, self._stamp = self._load()
        except TableError as e:
            log.error("%s: changed file not loaded: %s", self.name, e)
            self._error = e
            self._stamp = stamp(st)
            return
        self._error = None
        log.info("%s: reloaded %s", self.name, self.watched)


class FileTable(WatchedFile[Data]):
    """A table read from one file and parsed by ``parse(text, path)``; re-read when it changes."""

    def __init__(
        self,
        name: str,
        path: Path,
        parse: Callable[[str, Path], Data],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.path = self.watched = path
        self._parse = parse
        super().__init__(clock)

    def _load(self) -> tuple[Data, tuple[int, int, int]]:
        text, st = read_text_file(self.path, self.name)
        return self._parse(text, self.path), stamp(st)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
