"""What ``sqlite:`` and ``pgsql:`` tables share (sqlite_table(5), pgsql_table(5)): the ``name = value``
configuration file, the ``query`` with its ``%`` expansions, ``result_format``, ``domain`` and
``expansion_limit``.

Query expansions: ``%%`` a percent sign; ``%s`` the key; ``%u`` the local part of a
``user@domain`` key (the whole key without ``@``); ``%d`` the domain; ``%1``..``%9`` the domain's
labels from the right (``user@mail.example.com``: ``%1`` = ``com``, ``%2`` = ``example``). Upper-case
``%S %U %D`` are the same in ``query``. When an expansion cannot be made (``%d`` without ``@``, an
empty local part for ``%u``, too few labels) the query is not run and the key is not found.

Postfix pastes SQL-quoted text into the query. We send bound parameters instead: an expansion
that fills a whole string literal (``'%s'``) becomes one parameter, one inside a longer literal
(``'%u@example.com'``) becomes a concatenation of parameters and literals, so results are the
same and nothing in a key can change the statement. Expansions inside a double-quoted identifier
are refused.

``result_format`` (default ``%s``) formats each non-NULL column of each row: lower-case
expansions apply to that value, upper-case ``%S %U %D`` to the key; an element whose expansion
cannot be made is left out. Elements are joined with commas. ``expansion_limit`` > 0 makes a
lookup with more elements fail (temporarily). ``domain``: only ``user@domain`` keys with a
non-empty local part and a domain in the list (names, ``/file`` lists, ``type:table``) are looked up.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from smarthost.tables import Table, TableError, open_table, read_list_file, split_list
from smarthost.tables.filetable import logical_lines

__all__ = ["COMMON_NAMES", "Common", "DomainFilter", "Query", "ResultFormat", "format_results", "parse_cf"]

#: Most result elements read from one lookup, whatever expansion_limit says.
MAX_RESULTS = 10_000
_CODES = "sudSUD123456789"


def parse_cf(text: str, path: Path, known: Iterable[str]) -> dict[str, tuple[int, str]]:
    """``name = value`` lines (main.cf syntax, continuation lines allowed) -> ``{name: (line, value)}``.
    Unknown names are refused; a later line wins. Values are never echoed (passwords)."""
    known = set(known)
    settings: dict[str, tuple[int, str]] = {}
    for lineno, line in logical_lines(text, path):
        name, eq, value = line.partition("=")
        name = name.strip()
        if not eq or not name:
            raise TableError(f'{path}:{lineno}: expected "name = value"')
        if name not in known:
            raise TableError(f'{path}:{lineno}: unknown parameter "{name[:60]}"; known: {", ".join(sorted(known))}')
        settings[name] = (lineno, value.strip())
    return settings


def _expansion(code: str, key: str) -> str | None:
    """One query expansion of ``key``; None suppresses the query."""
    code = code.lower()
    if code == "s":
        return key
    local, at, domain = key.rpartition("@")
    if code == "u":
        if not at:
            return key
        return local or None
    if not at or not domain:
        return None
    if code == "d":
        return domain
    labels = domain.split(".")
    n = int(code)
    return labels[-n] if n <= len(labels) else None


def _split_percent(text: str, where: str) -> list[str | tuple[str]]:
    """Literal text and ``(code,)`` expansions; ``%%`` becomes ``%``."""
    parts: list[str | tuple[str]] = []
    buf: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "%":
            buf.append(c)
            i += 1
            continue
        code = text[i + 1 : i + 2]
        if code == "%":
            buf.append("%")
        elif code and code in _CODES:
            parts += ["".join(buf), (code,)]
            buf = []
        else:
            raise ValueError(f'"%{code}" in {where}: write %s, %u, %d, %1..%9 or %% for a percent sign')
        i += 2
    parts.append("".join(buf))
    return [p for p in parts if p != ""]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class Query:
    """A compiled ``query``: SQL text pieces and parameters (expansion codes)."""

    pieces: tuple[str | tuple[str], ...]

    @classmethod
    def parse(cls, query: str) -> Query:
        """Raises ValueError for a bad expansion or an unterminated quote."""
        pieces: list[str | tuple[str]] = []
        i, n = 0, len(query)
        while i < n:
            c = query[i]
            if c in "'\"":
                j = i + 1
                while True:
                    j = query.find(c, j)
                    if j < 0:
                        raise ValueError(f"unterminated {c} in query")
                    if query[j + 1 : j + 2] != c:
                        break
                    j += 2  # a doubled quote inside
                body = query[i + 1 : j].replace(c * 2, c)
                parts = _split_percent(body, "query")
                if c == '"':
                    if any(isinstance(p, tuple) for p in parts):
                        raise ValueError("expansion inside a double-quoted identifier in query")
                    pieces.append('"' + "".join(parts).replace('"', '""') + '"')  # type: ignore[arg-type]
                elif not any(isinstance(p, tuple) for p in parts):
                    pieces.append(_quote("".join(parts)))  # type: ignore[arg-type]
                elif len(parts) == 1:
                    pieces.append(parts[0])
                else:
                    pieces.append("(")
                    for k, p in enumerate(parts):
                        if k:
                            pieces.append(" || ")
                        pieces += ["CAST(", p, " AS TEXT)"] if isinstance(p, tuple) else [_quote(p)]
                    pieces.append(")")
                i = j + 1
                continue
            j = i
            while j < n and query[j] not in "'\"":
                j += 1
            pieces += _split_percent(query[i:j], "query")
            i = j
        return cls(tuple(pieces))

    def sql(self, placeholder: str) -> str:
        """The statement with ``placeholder`` (``?`` for sqlite3, ``%s`` for psycopg, whose other
        ``%`` signs are then doubled)."""
        escape = placeholder == "%s"
        return "".join(
            placeholder if isinstance(p, tuple) else (p.replace("%", "%%") if escape else p) for p in self.pieces
        )

    def params(self, key: str) -> list[str] | None:
        """The parameter values for ``key``, or None when the query is suppressed."""
        values = []
        for p in self.pieces:
            if isinstance(p, tuple):
                value = _expansion(p[0], key)
                if value is None:
                    return None
                values.append(value)
        return values


@dataclass(frozen=True, slots=True)
class ResultFormat:
    parts: tuple[str | tuple[str], ...]

    @classmethod
    def parse(cls, fmt: str) -> ResultFormat:
        return cls(tuple(_split_percent(fmt, "result_format")))

    def format(self, value: str, key: str) -> str | None:
        out = []
        for p in self.parts:
            if isinstance(p, str):
                out.append(p)
                continue
            code = p[0]
            expanded = _expansion(code, key if code.isupper() else value)
            if expanded is None:
                return None
            out.append(expanded)
        return "".join(out)


class DomainFilter:
    """The ``domain`` setting: which ``user@domain`` keys are looked up at all."""

    def __init__(self, value: str, where: str, config_dir: Path | None) -> None:
        self._names: set[str] = set()
        self._tables: list[Table] = []
        try:
            items = split_list(value)
        except ValueError as e:
            raise TableError(f"{where}: domain: {e}") from None
        for item in items:
            if item.startswith("/"):
                self._names.update(d.lower() for _, d in read_list_file(Path(item)))
            elif ":" in item:
                self._tables.append(open_table(item, config_dir=config_dir))
            else:
                self._names.add(item.lower())

    def allows(self, key: str) -> bool:
        local, at, domain = key.rpartition("@")
        if not at or not local or not domain:
            return False
        domain = domain.lower()
        return domain in self._names or any(t.lookup(domain) is not None for t in self._tables)


def format_results(
    rows: Sequence[Sequence[object]], fmt: ResultFormat, key: str, limit: int, name: str
) -> str | None:
    """Format every non-NULL column of ``rows``; None when nothing is left."""
    results: list[str] = []
    for row in rows:
        for column in row:
            if column is None:
                continue
            text = column.decode(errors="replace") if isinstance(column, bytes) else str(column)
            formatted = fmt.format(text, key)
            if formatted is not None:
                results.append(formatted)
            if (limit and len(results) > limit) or len(results) > MAX_RESULTS:
                raise TableError(f"{name}: lookup returned more than {limit or MAX_RESULTS} results (expansion_limit)")
    return ",".join(results) if results else None


@dataclass(frozen=True, slots=True)
class Common:
    """The settings both SQL tables have."""

    query: Query
    result_format: ResultFormat
    domain: DomainFilter | None
    expansion_limit: int

    @classmethod
    def from_settings(cls, settings: dict[str, tuple[int, str]], path: Path, config_dir: Path | None) -> Common:
        if "query" not in settings:
            raise TableError(f'{path}: missing "query = SELECT ... WHERE ... = \'%s\'"')
        line, text = settings["query"]
        try:
            query = Query.parse(text)
        except ValueError as e:
            raise TableError(f"{path}:{line}: {e}") from None
        line, text = settings.get("result_format", (0, "%s"))
        try:
            fmt = ResultFormat.parse(text)
        except ValueError as e:
            raise TableError(f"{path}:{line}: {e}") from None
        domain = None
        if "domain" in settings and settings["domain"][1]:
            line, text = settings["domain"]
            domain = DomainFilter(text, f"{path}:{line}", config_dir)
        line, text = settings.get("expansion_limit", (0, "0"))
        if not text.isdigit():
            raise TableError(f"{path}:{line}: expansion_limit must be a number (0: no limit)")
        return cls(query, fmt, domain, int(text))

    def params(self, key: str) -> list[str] | None:
        """Query parameters for ``key``, or None when the key is not looked up."""
        if self.domain is not None and not self.domain.allows(key):
            return None
        try:
            key.encode()
        except UnicodeEncodeError:  # not text (a surrogate-escaped byte): in no table
            return None
        return self.query.params(key)


COMMON_NAMES = ("query", "result_format", "domain", "expansion_limit")
