"""``regexp:`` and ``pcre:`` tables (regexp_table(5), pcre_table(5)): patterns tried in file order
against the whole lookup key; the first match gives the result.

    /pattern/flags result       the result when the pattern matches ($1, ${1}, $(1): groups; $$: "$")
    !/pattern/flags result      the result when it does not match (no $n: nothing was matched)
    if /pattern/flags           the rules up to the matching endif apply only when the pattern
    if !/pattern/flags          matches (or does not); if..endif nests
    endif

The delimiter is any character but a letter, digit, whitespace or backslash; a backslash in the
pattern escapes the next character (so ``\\/`` keeps a ``/`` inside ``/.../``). Matching is
case-insensitive by default; flags toggle. Keys are not case-folded (postmap(1) ``-f``).

Both types run on Python's ``re`` module; there is no POSIX or PCRE library underneath.

``regexp:`` patterns are POSIX extended regular expressions, translated: ``[[:alpha:]]`` and the
other POSIX classes (ASCII, as in the C locale), a backslash inside brackets is literal, ``\\<`` and
``\\>`` become word boundaries, ``\\`` before a letter other than ``wWsSbB`` is that letter (POSIX:
``\\d`` is ``d``), ``$`` is the end of the key and ``.`` matches a newline unless flag ``m`` is on.
Flags: ``i`` (case, default on), ``m`` (multi-line). ``x`` would select basic regular expressions,
which are not supported and refused. Differences that remain: alternation takes the first
alternative that matches, not the longest (this can change what ``$n`` captures); collating
elements ``[.x.]`` and ``[=x=]`` are refused; Python extensions such as ``(?:...)`` are accepted.

``pcre:`` patterns go to ``re`` as written. Flags: ``i`` (default on), ``m``, ``s``, ``x``, ``A``
(anchored at the start), ``u`` (no effect: ``re`` is Unicode-aware), ``X`` (no effect: ``re``
already refuses unknown letter escapes). ``E`` (dollar-endonly) and ``U`` (ungreedy) have no ``re``
equivalent and are refused. Not in ``re``: ``\\Q...\\E``, ``\\K``, ``\\R``, ``\\h``, ``\\p{...}``,
recursion and callouts; ``\\Z`` is PCRE's ``\\z``; named groups are ``(?P<name>...)``.

Like Postfix's, these engines backtrack: a pathological pattern can be slow on a long key.
Errors name ``file:line``; the file is re-read when it changes.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from smarthost.tables import TableError, resolve_path, split_list
from smarthost.tables.filetable import FileTable, logical_lines
from smarthost.tables.inline import strip_braces

__all__ = ["InlineRegexpTable", "RegexpTable", "open_pcre", "open_regexp", "parse_pcre", "parse_regexp"]

#: Deepest if..endif nesting accepted.
MAX_NESTING = 64

_POSIX_CLASSES = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "a-zA-Z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "space": r" \t\n\r\f\v",
    "blank": r" \t",
    "punct": re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    "xdigit": "0-9A-Fa-f",
    "cntrl": r"\x00-\x1f\x7f",
    "print": r"\x20-\x7e",
    "graph": r"\x21-\x7e",
}


@dataclass(frozen=True, slots=True)
class _Rule:
    regex: re.Pattern[str]
    negate: bool
    anchored: bool
    #: The result as literal text and group numbers; None for an ``if`` block.
    result: tuple[str | int, ...] | None
    #: The rules inside an ``if`` block.
    block: tuple[_Rule, ...] = ()


def _posix_to_python(pattern: str, multiline: bool) -> str:
    """A POSIX extended regular expression in ``re`` syntax (see the module docstring)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise ValueError("trailing backslash")
            nxt = pattern[i + 1]
            if nxt in "<>":
                out.append(r"\b")
            elif nxt.isdigit() or nxt in "wWsSbB" or not nxt.isalnum():
                out.append("\\" + nxt)
            else:
                out.append(re.escape(nxt))
            i += 2
        elif c == "[":
            i = _bracket(pattern, i, out)
        elif c == "$" and not multiline:
            out.append(r"\Z")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _bracket(pattern: str, i: int, out: list[str]) -> int:
    """Translate the bracket expression starting at ``pattern[i] == "["``; returns the index after it."""
    n = len(pattern)
    j = i + 1
    out.append("[")
    if j < n and pattern[j] == "^":
        out.append("^")
        j += 1
    if j < n and pattern[j] == "]":
        out.append(r"\]")
        j += 1
    while j < n and pattern[j] != "]":
        c = pattern[j]
        if c == "[" and j + 1 < n and pattern[j + 1] in ":.=":
            kind = pattern[j + 1]
            end = pattern.find(kind + "]", j + 2)
            if end < 0:
                raise ValueError(f'unterminated "[{kind}" in a bracket expression')
            name = pattern[j + 2 : end]
            if kind != ":":
                raise ValueError(f'collating element "[{kind}{name}{kind}]" is not supported')
            if name not in _POSIX_CLASSES:
                raise ValueError(f'unknown character class "[:{name}:]"')
            out.append(_POSIX_CLASSES[name])
            j = end + 2
        else:
            out.append("\\" + c if c in "\\[&~|" else c)
            j += 1
    if j >= n:
        raise ValueError('missing "]"')
    out.append("]")
    return j + 1


def _compile(pattern: str, flags: str, pcre: bool) -> tuple[re.Pattern[str], bool]:
    """``(compiled, anchored)`` for a pattern and its flag letters; ValueError/re.error if bad."""
    ignore_case, multiline, dotall, verbose, anchored = True, False, False, False, False
    for f in flags:
        if f == "i":
            ignore_case = not ignore_case
        elif f == "m":
            multiline = not multiline
        elif pcre and f == "s":
            dotall = not dotall
        elif pcre and f == "x":
            verbose = not verbose
        elif pcre and f == "A":
            anchored = not anchored
        elif pcre and f in "uX":
            pass
        elif pcre and f in "EU":
            raise ValueError(f'flag "{f}" is not supported (Python\'s re has no equivalent)')
        elif not pcre and f == "x":
            raise ValueError('flag "x" (basic regular expressions) is not supported; write an extended expression')
        else:
            raise ValueError(f'unknown flag "{f}"; {"i m s x A u X" if pcre else "i m"} are known')
    re_flags = (re.IGNORECASE if ignore_case else 0) | (re.MULTILINE if multiline else 0)
    if pcre:
        re_flags |= (re.DOTALL if dotall else 0) | (re.VERBOSE if verbose else 0)
    else:
        re_flags |= 0 if multiline else re.DOTALL
        pattern = _posix_to_python(pattern, multiline)
    with warnings.catch_warnings():  # re's FutureWarnings about PCRE-valid sets like "[[a]"
        warnings.simplefilter("ignore")
        return re.compile(pattern, re_flags), anchored


def _split_pattern(text: str) -> tuple[bool, str, str, str]:
    """``!/pat/flags rest`` -> ``(negate, pattern, flags, rest)``; ValueError when malformed."""
    negate = text.startswith("!")
    if negate:
        text = text[1:].lstrip()
    if not text or text[0].isalnum() or text[0].isspace() or text[0] == "\\":
        raise ValueError('expected a pattern in delimiters, e.g. "/pattern/ result"')
    delim, i = text[0], 1
    while i < len(text) and text[i] != delim:
        i += 2 if text[i] == "\\" else 1
    if i >= len(text):
        raise ValueError(f'missing closing "{delim}" after the pattern')
    end = i + 1
    while end < len(text) and not text[end].isspace():
        end += 1
    return negate, text[1:i], text[i + 1 : end], text[end:].strip()


_SUBST_RE = re.compile(r"\$(?:\$|(\d+)|\{(\d+)\}|\((\d+)\))")


def _parse_result(text: str, groups: int, negate: bool) -> tuple[str | int, ...]:
    parts: list[str | int] = []
    pos = 0
    for m in _SUBST_RE.finditer(text):
        if "$" in text[pos : m.start()]:
            break
        parts.append(text[pos : m.start()])
        if m.group(0) == "$$":
            parts.append("$")
        else:
            n = int(m.group(1) or m.group(2) or m.group(3))
            if negate:
                raise ValueError(f"${n} in the result of a negated pattern: nothing was matched to substitute")
            if not 1 <= n <= groups:
                raise ValueError(f"${n} in the result, but the pattern has {groups} group(s)")
            parts.append(n)
        pos = m.end()
    if "$" in text[pos:]:
        raise ValueError('"$" in the result must be $1..$99, ${n}, $(n) or $$')
    parts.append(text[pos:])
    return tuple(p for p in parts if p != "")


def _parse(text: str, path: Path, pcre: bool) -> tuple[_Rule, ...]:
    # Open blocks: (line of the "if", its rule without children yet, the rules collected inside).
    stack: list[tuple[int, _Rule, list[_Rule]]] = []
    top: list[_Rule] = []
    for lineno, line in logical_lines(text, path):
        rules = stack[-1][2] if stack else top
        word = line.split(None, 1)[0].lower()
        try:
            if word == "endif":
                if line.lower() != "endif":
                    raise ValueError('text after "endif"')
                if not stack:
                    raise ValueError('"endif" without "if"')
                _, rule, inside = stack.pop()
                (stack[-1][2] if stack else top).append(_Rule(rule.regex, rule.negate, rule.anchored, None, tuple(inside)))
                continue
            is_if = word == "if" and len(line) > 2 and line[2].isspace()
            negate, pattern, flags, rest = _split_pattern(line[2:].lstrip() if is_if else line)
            regex, anchored = _compile(pattern, flags, pcre)
            if is_if:
                if rest:
                    raise ValueError('text after the pattern of "if"')
                if len(stack) >= MAX_NESTING:
                    raise ValueError(f"if..endif nested deeper than {MAX_NESTING}")
                stack.append((lineno, _Rule(regex, negate, anchored, None), []))
                continue
            if not rest:
                raise ValueError("missing result after the pattern")
            rules.append(_Rule(regex, negate, anchored, _parse_result(rest, regex.groups, negate)))
        except (ValueError, re.error, OverflowError, RecursionError) as e:
            detail = e.msg if isinstance(e, re.error) else str(e) or type(e).__name__
            raise TableError(f"{path}:{lineno}: {detail}") from None
    if stack:
        raise TableError(f'{path}:{stack[-1][0]}: "if" without "endif"')
    return tuple(top)


def parse_regexp(text: str, path: Path) -> tuple[_Rule, ...]:
    return _parse(text, path, pcre=False)


def parse_pcre(text: str, path: Path) -> tuple[_Rule, ...]:
    return _parse(text, path, pcre=True)


def _search(rules: tuple[_Rule, ...], key: str) -> str | None:
    for rule in rules:
        m = rule.regex.match(key) if rule.anchored else rule.regex.search(key)
        if (m is None) != rule.negate:
            continue
        if rule.result is None:
            found = _search(rule.block, key)
            if found is not None:
                return found
            continue
        # A negated rule's result has no group numbers (refused when parsed), so m is not used.
        return "".join(p if isinstance(p, str) else (m.group(p) or "") for p in rule.result)
    return None


class RegexpTable(FileTable[tuple[_Rule, ...]]):
    def lookup(self, key: str) -> str | None:
        return _search(self.current(), key)


class InlineRegexpTable:
    """``regexp:{ {rule}, {rule} }`` (Postfix 3.7): the rules written in main.cf."""

    def __init__(self, name: str, rules: tuple[_Rule, ...]) -> None:
        self.name = name
        self._rules = rules

    def lookup(self, key: str) -> str | None:
        return _search(self._rules, key)

    def __repr__(self) -> str:
        return f"<InlineRegexpTable {self.name}>"


def _open(type_name: str, name: str, config_dir: Path | None) -> RegexpTable | InlineRegexpTable:
    parse = parse_pcre if type_name == "pcre" else parse_regexp
    body = strip_braces(name)
    if body is None:
        return RegexpTable(f"{type_name}:{name}", resolve_path(name, config_dir), parse)
    try:
        items = split_list(body)
    except ValueError as e:
        raise TableError(f"{type_name}:{{...}}: {e}") from None
    lines = []
    for item in items:
        inner = strip_braces(item)
        if inner is None:
            raise TableError(f'{type_name}:{{...}}: write each rule in braces: {type_name}:{{ {{ /a/ b }}, {{ /c/ d }} }}')
        lines.append(inner)
    return InlineRegexpTable(f"{type_name}:{name}", parse("\n".join(lines), Path(f"{type_name}:{{...}}")))


open_regexp = partial(_open, "regexp")
open_pcre = partial(_open, "pcre")
