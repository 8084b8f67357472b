"""main.cf syntax: logical lines, ``name = value`` entries, and in-place editing.

The rules are Postfix's (postconf(5), "SYNTAX"):

- blank lines and lines whose first non-whitespace character is ``#`` are ignored;
- a logical line starts with non-whitespace text; a line that starts with whitespace
  continues it (comment lines in between are skipped);
- ``name = value``, the whitespace around ``=`` and at the ends of the value is dropped.

One difference, because howtos do it: ``value # comment`` drops the comment with a warning,
where Postfix would read ``# comment`` as part of the value.

This module only reads syntax; values are typed and checked in ``model``.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from smarthost.config.errors import ConfigError, show

MAX_FILE_BYTES = 1 << 20
MAX_LOGICAL_LINE = 64 << 10

WHITESPACE = " \t\r\v\f"
NAME_RE = re.compile(r"[A-Za-z0-9_]+")
_TRAILING_COMMENT_RE = re.compile(r"[ \t]#")
_UNDECODABLE_RE = re.compile(r"[\udc80-\udcff]")


@dataclass(frozen=True)
class LogicalLine:
    """One logical line: its physical lines' numbers and the text, comments removed."""

    first: int
    last: int
    pieces: tuple[str, ...]  # each physical line's text, trailing comment removed, stripped

    @property
    def text(self) -> str:
        return " ".join(p for p in self.pieces if p)


def decode(data: bytes, path: str) -> str:
    """Bytes of a configuration file to text; bounded. Bytes that are not UTF-8 survive
    in comments (as surrogates) and are refused where they would become a value."""
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(
            path, None, None, f"file is larger than 1 MiB ({len(data)} bytes)",
            "this is not a configuration file, or split it",
        )
    return data.decode("utf-8", "surrogateescape")


def physical_lines(text: str) -> list[str]:
    """Lines without their newline; a final newline does not start another line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def logical_lines(text: str, path: str, warnings: list[str]) -> Iterator[LogicalLine]:
    """Group physical lines into logical lines (see the module docstring)."""
    start = 0
    pieces: list[str] = []
    last = 0
    size = 0
    for number, line in enumerate(physical_lines(text), 1):
        stripped = line.strip(WHITESPACE)
        if not stripped or stripped.startswith("#"):
            continue
        continues = line[0] in WHITESPACE
        if continues and not pieces:
            raise ConfigError(
                path, number, None, "line starts with whitespace but there is nothing to continue",
                "remove the leading whitespace, or join the line to the setting it belongs to",
            )
        if not continues and pieces:
            yield LogicalLine(start, last, tuple(pieces))
            pieces, size = [], 0
        if not pieces:
            start = number
        size += len(line) + 1
        if size > MAX_LOGICAL_LINE:
            raise ConfigError(
                path, start, None, "logical line is longer than 64 KiB", "shorten it or move the data into a table"
            )
        if _UNDECODABLE_RE.search(stripped):
            raise ConfigError(path, number, None, "line is not valid UTF-8", "save the file as UTF-8")
        comment = _TRAILING_COMMENT_RE.search(stripped)
        if comment:
            stripped = stripped[: comment.start()].rstrip(WHITESPACE)
            warnings.append(
                f"{path}:{number}: text after \"#\" is a comment and is ignored "
                "(Postfix would read it as part of the value); put comments on their own line"
            )
        pieces.append(stripped)
        last = number
    if pieces:
        yield LogicalLine(start, last, tuple(pieces))


@dataclass(frozen=True)
class Entry:
    """One ``name = value`` setting and the physical lines it spans."""

    name: str
    value: str
    line: int
    end_line: int


@dataclass(frozen=True)
class MainCf:
    """A parsed main.cf: its settings in file order (repeats included) and syntax warnings."""

    path: str
    entries: tuple[Entry, ...]
    warnings: tuple[str, ...]

    def settings(self) -> dict[str, Entry]:
        """The effective entry per name: a later setting replaces an earlier one."""
        return {e.name: e for e in self.entries}


def split_setting(text: str, path: str, line: int) -> tuple[str, str]:
    """``name = value`` -> (name, value), as in main.cf and master.cf ``-o``."""
    name, eq, value = text.partition("=")
    name = name.strip(WHITESPACE)
    if not eq:
        raise ConfigError(path, line, None, f'missing "=" in {show(text)}', 'write "name = value"')
    if not NAME_RE.fullmatch(name):
        raise ConfigError(
            path, line, None, f"{show(name)} is not a parameter name", "parameter names are letters, digits and _"
        )
    return name, value.strip(WHITESPACE)


def parse(text: str, path: str) -> MainCf:
    """Parse main.cf text; ``path`` is used in messages. Raises ConfigError."""
    warnings: list[str] = []
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    for logical in logical_lines(text, path, warnings):
        name, value = split_setting(logical.text, path, logical.first)
        if name in seen:
            warnings.append(
                f"{path}:{logical.first}: {name} is set again; the setting at line {seen[name]} is ignored"
            )
        seen[name] = logical.first
        entries.append(Entry(name, value, logical.first, logical.last))
    return MainCf(path, tuple(entries), tuple(warnings))


def read(path: Path) -> MainCf:
    """Read and parse main.cf; a missing file is an empty one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return MainCf(str(path), (), ())
    except OSError as e:
        raise ConfigError(str(path), None, None, f"cannot read: {e.strerror}", "check the file's permissions") from None
    return parse(decode(data, str(path)), str(path))


def edit(text: str, path: str, updates: Mapping[str, str]) -> str:
    """Set each ``name = value`` in main.cf text, keeping every other line as it is.

    The last definition of a name (with its continuation lines) is replaced; comment lines
    inside it are kept after the new line. Names not yet set are appended.
    """
    lines = physical_lines(text)
    last = parse(text, path).settings()
    for name, value in sorted(updates.items(), key=lambda kv: -(last[kv[0]].line if kv[0] in last else 0)):
        new = f"{name} = {value}" if value else f"{name} ="
        if name in last:
            entry = last[name]
            inside = lines[entry.line : entry.end_line]
            kept = [ln for ln in inside if not ln.strip(WHITESPACE) or ln.strip(WHITESPACE).startswith("#")]
            lines[entry.line - 1 : entry.end_line] = [new, *kept]
        else:
            lines.append(new)
    return "".join(line + "\n" for line in lines)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: temp file, fsync, rename, directory fsync.

    The file keeps its mode (and owner, where permitted); a new file gets 0644. A symlinked
    main.cf is edited at its target.
    """
    target = Path(os.path.realpath(path))
    try:
        st = target.stat()
        mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
    except FileNotFoundError:
        mode, owner = 0o644, None
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if owner is not None:
                try:
                    os.fchown(f.fileno(), *owner)
                except PermissionError:
                    pass
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
