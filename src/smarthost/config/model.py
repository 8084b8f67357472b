"""The typed configuration: parameter values with ``$name`` expansion, services, the whole.

``Params`` holds settings (from main.cf, plus master.cf ``-o`` overrides) over the table
of defaults in ``parameters``. Building one expands and checks every parameter, so a
``Params`` that exists is valid; reading a value is a dictionary lookup.

Expansion follows postconf(5): ``$name``, ``${name}``, ``$(name)``, ``$$`` for a dollar,
``${name?value}`` (value if $name is non-empty), ``${name:value}`` (value if $name is
empty) and ``${name?{value1}:{value2}}``. Values are expanded against the final settings,
so a later definition wins wherever it is used, as in Postfix.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smarthost.config.errors import ConfigError, show
from smarthost.config.parameters import DEPRECATED, PARAMETERS, RENAMED, Parameter, Problem

MAX_NESTING = 100  # $ references within references
MAX_EXPANDED = 1 << 20  # characters in one expanded value

_NAME_RE = re.compile(r"[A-Za-z0-9_]+")
_REFERENCE_RE = re.compile(r"\$[{(]?([A-Za-z0-9_]+)")


def references(value: str) -> set[str]:
    """Names a value refers to with ``$name``, ``${name...}`` or ``$(name...)``."""
    return set(_REFERENCE_RE.findall(value.replace("$$", "")))


@dataclass(frozen=True)
class Setting:
    """A value as written, and where: main.cf line or master.cf ``-o``."""

    value: str
    file: str
    line: int

    @property
    def origin(self) -> str:
        return f"{self.file}:{self.line}"


def _parse_origin(origin: str) -> tuple[str, int]:
    file, _, line = origin.rpartition(":")
    return (file, int(line)) if file and line.isdigit() else (origin, 0)


def map_deprecated(
    layer: Mapping[str, Setting], below: Mapping[str, Setting]
) -> tuple[dict[str, Setting], list[str]]:
    """Translate old names set in ``layer`` into their replacements, with warnings.

    ``below`` holds the settings ``layer`` is applied on (main.cf under master.cf ``-o``).
    A replacement set explicitly in the same layer wins over the old name.
    """
    result = dict(layer)
    warnings: list[str] = []
    merged = {**below, **layer}
    for switches in DEPRECATED:
        present = [n for n in (switches.use, switches.enforce) if n in layer]
        if not present:
            continue
        origin = layer[present[-1]].origin
        if switches.level in layer:
            warnings.append(
                f"{origin}: {', '.join(present)} is deprecated and ignored because "
                f"{switches.level} is set at {layer[switches.level].origin}"
            )
            continue
        enforce = _switch(merged, switches.enforce)
        level = "encrypt" if enforce else "may" if _switch(merged, switches.use) else "none"
        result[switches.level] = Setting(level, *_parse_origin(origin))
        warnings.append(f"{origin}: {', '.join(present)} is deprecated; use {switches.level} = {level} instead")
    for old, new in RENAMED.items():
        if old not in layer:
            continue
        if new in layer:
            warnings.append(f"{layer[old].origin}: {old} is an old name of {new}, which is also set; {old} is ignored")
            continue
        result[new] = Setting(layer[old].value, layer[old].file, layer[old].line)
        warnings.append(f"{layer[old].origin}: {old} is an old name; use {new} instead")
    return result, warnings


def _switch(settings: Mapping[str, Setting], name: str) -> bool:
    setting = settings.get(name)
    if setting is None:
        return False
    try:
        return bool(PARAMETERS[name].parse(setting.value))
    except Problem as p:
        raise ConfigError(setting.file, setting.line, name, p.problem, p.fix) from None


class Params:
    """Parameter values: settings over defaults, ``$``-expanded and typed.

    ``params[name]`` is the typed value (int, bool, float seconds, list[str], str);
    parameters unknown to smarthost but set in main.cf are strings.
    """

    def __init__(
        self,
        settings: Mapping[str, Setting] | None = None,
        *,
        main_file: str = "main.cf",
        defaults: Mapping[str, str] | None = None,
    ) -> None:
        """Expand and check everything; raise ConfigError on the first bad value.

        ``defaults`` replaces table defaults (e.g. config_directory = the directory read).
        """
        self._settings: dict[str, Setting] = dict(settings or {})
        self._main_file = main_file
        self._defaults: dict[str, str] = dict(defaults or {})
        self._raw: dict[str, str] = {}
        self._refs: dict[str, set[str]] = {}
        self._typed: dict[str, Any] = {}
        self._warnings: list[str] = []
        # Check the lines someone wrote first (in file order), so errors name them.
        written = sorted(self._settings, key=lambda n: (self._settings[n].file, self._settings[n].line))
        for name in [*written, *PARAMETERS]:
            if name not in self._typed:
                self._typed[name] = self._check(name)
        self.warnings: tuple[str, ...] = tuple(dict.fromkeys(self._warnings))

    def __repr__(self) -> str:
        return f"<Params: {len(self._settings)} set, {len(self._typed)} total>"

    # --- reading ---

    def __getitem__(self, name: str) -> Any:
        return self._typed[name]

    def __contains__(self, name: object) -> bool:
        return name in self._typed

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._typed))

    def names(self) -> list[str]:
        """Every parameter: the known ones and those set in main.cf, sorted."""
        return sorted(self._typed)

    def raw(self, name: str) -> str:
        """The expanded value as a string."""
        self._require(name)
        return self._raw[name]

    def unexpanded(self, name: str) -> str:
        """The value as written (or defaulted), before ``$`` expansion."""
        self._require(name)
        return self._written(name)

    def _written(self, name: str) -> str:
        if name in self._settings:
            return self._settings[name].value
        if name in self._defaults:
            return self._defaults[name]
        default = PARAMETERS[name].default
        return default if isinstance(default, str) else self._raw[name]

    def is_default(self, name: str) -> bool:
        self._require(name)
        return name not in self._settings

    def origin(self, name: str) -> str | None:
        """``file:line`` of the setting in effect, or None for a default."""
        self._require(name)
        setting = self._settings.get(name)
        return setting.origin if setting else None

    def with_overrides(
        self, overrides: Mapping[str, str], origin: str, *, defaults: Mapping[str, str] | None = None
    ) -> Params:
        """These values layered on top (master.cf ``-o``), checked and re-expanded.

        Errors and warnings name ``origin`` (``file:line``); ``warnings`` holds this layer's.
        Deprecated names are mapped as in main.cf; a deprecated switch here overrides a
        main.cf level, since ``-o`` is more specific. ``defaults`` adds per-service
        defaults such as ``service_name``.
        """
        file, line = _parse_origin(origin)
        layer = {name: Setting(value, file, line) for name, value in overrides.items()}
        mapped, warnings = map_deprecated(layer, self._settings)
        warnings += [f"{origin}: unknown parameter {name}" for name in layer if name not in PARAMETERS]
        params = Params(
            {**self._settings, **mapped},
            main_file=self._main_file,
            defaults={**self._defaults, **(defaults or {})},
        )
        new = [w for w in params.warnings if w not in self.warnings]
        params.warnings = tuple(dict.fromkeys([*warnings, *new]))
        return params

    def _require(self, name: str) -> None:
        if name not in self._typed:
            raise KeyError(name)

    # --- building ---

    def _check(self, name: str) -> Any:
        value = self._value(name, ())
        decl = PARAMETERS.get(name)
        if decl is None or value is None:
            return value
        try:
            return decl.parse(value)
        except Problem as p:
            file, line = self._blame(name)
            written = self._written(name)
            problem = p.problem if value == written else f"{p.problem} (expanded from {show(written)})"
            raise ConfigError(file, line, name, problem, p.fix) from None

    def _blame(self, name: str) -> tuple[str, int | None]:
        """Where to point for a bad value: its own line, else a line it refers to."""
        seen: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop(0)
            if current in seen:
                continue
            seen.add(current)
            if current in self._settings:
                setting = self._settings[current]
                return setting.file, setting.line
            todo.extend(sorted(self._refs.get(current, ())))
        return self._main_file, None

    def _value(self, name: str, stack: tuple[str, ...]) -> str | None:
        """The expanded value of ``name``; None when it is neither set nor known."""
        if name in self._raw:
            return self._raw[name]
        if name in stack:
            cycle = stack[stack.index(name) :] + (name,)
            file, line = self._blame(cycle[0])
            raise ConfigError(
                file, line, cycle[0], "circular reference " + " -> ".join(f"${n}" for n in cycle),
                "remove one of these $ references",
            )
        if len(stack) >= MAX_NESTING:
            file, line = self._blame(stack[0])
            raise ConfigError(file, line, stack[0], "$ references nest too deeply", "simplify the references")
        stack = (*stack, name)
        decl: Parameter | None = PARAMETERS.get(name)
        if name in self._settings:
            value = self._expand(self._settings[name].value, name, stack)
        elif name in self._defaults:
            value = self._expand(self._defaults[name], name, stack)
        elif decl is None:
            return None
        elif isinstance(decl.default, str):
            value = self._expand(decl.default, name, stack)
        else:
            value = decl.default(lambda other: self._reference(other, name, stack, warn=False))
        self._raw[name] = value
        return value

    def _reference(self, name: str, owner: str, stack: tuple[str, ...], *, warn: bool) -> str:
        self._refs.setdefault(owner, set()).add(name)
        value = self._value(name, stack)
        if value is None:
            if warn:
                where = self._settings[owner].origin if owner in self._settings else self._main_file
                self._warnings.append(f"{where}: {owner}: ${name} is not set; it expands to nothing")
            return ""
        return value

    def _error(self, owner: str, problem: str, fix: str) -> ConfigError:
        file, line = self._blame(owner)
        return ConfigError(file, line, owner, problem, fix)

    def _expand(self, text: str, owner: str, stack: tuple[str, ...]) -> str:
        out: list[str] = []
        size = 0
        i = 0
        while i < len(text):
            j = text.find("$", i)
            if j < 0:
                piece, i = text[i:], len(text)
            elif text.startswith("$$", j):
                piece, i = text[i:j] + "$", j + 2
            elif j + 1 < len(text) and text[j + 1] in "{(":
                end = _matching(text, j + 1)
                if end < 0:
                    close = "}" if text[j + 1] == "{" else ")"
                    raise self._error(owner, f'missing "{close}" after {show(text[j:j + 30])}', f'add the "{close}"')
                piece, i = text[i:j] + self._macro(text[j + 2 : end], owner, stack), end + 1
            else:
                m = _NAME_RE.match(text, j + 1)
                if m:
                    piece, i = text[i:j] + self._reference(m.group(), owner, stack, warn=True), m.end()
                else:  # a lone "$" stays as it is
                    piece, i = text[i : j + 1], j + 1
            size += len(piece)
            if size > MAX_EXPANDED:
                raise self._error(owner, "value is longer than 1 MiB after $ expansion", "simplify the $ references")
            out.append(piece)
        return "".join(out)

    def _macro(self, inner: str, owner: str, stack: tuple[str, ...]) -> str:
        """The inside of ``${...}``: a name, optionally followed by ``?value`` or ``:value``."""
        m = _NAME_RE.match(inner)
        rest = inner[m.end() :] if m else ""
        if not m or (rest and rest[0] not in "?:"):
            problem = f"bad $ reference {show('${' + inner + '}')}"
            raise self._error(owner, problem, "use ${name}, ${name?value} or ${name:value}")
        if not rest:
            return self._reference(m.group(), owner, stack, warn=True)
        op, body = rest[0], rest[1:]
        when_set, when_empty = _branches(op, body)
        if when_set is None or when_empty is None:
            raise self._error(owner, f"bad conditional {show('${' + inner + '}')}", "use ${name?{value1}:{value2}}")
        chosen = when_set if self._reference(m.group(), owner, stack, warn=False) else when_empty
        return self._expand(chosen, owner, stack)


def _matching(text: str, open_at: int) -> int:
    """Index of the bracket closing the one at ``open_at``, or -1."""
    opener = text[open_at]
    closer = "}" if opener == "{" else ")"
    depth = 0
    for k in range(open_at, len(text)):
        if text[k] == opener:
            depth += 1
        elif text[k] == closer:
            depth -= 1
            if depth == 0:
                return k
    return -1


def _branches(op: str, body: str) -> tuple[str | None, str | None]:
    """(value if set, value if empty) of ``?body`` or ``:body``; None for bad syntax."""
    stripped = body.strip()
    if not stripped.startswith("{"):
        return (body, "") if op == "?" else ("", body)
    end = _matching(stripped, 0)
    if end < 0:
        return None, None
    first, tail = stripped[1:end], stripped[end + 1 :].strip()
    if not tail:
        return (first, "") if op == "?" else ("", first)
    if op == "?" and tail.startswith(":"):
        tail = tail[1:].strip()
        end = _matching(tail, 0) if tail.startswith("{") else -1
        if end == len(tail) - 1:
            return first, tail[1:end]
    return None, None


@dataclass(frozen=True)
class Service:
    """One master.cf service. '-' columns hold Postfix's defaults for that column."""

    name: str
    type: str
    private: bool
    unpriv: bool
    chroot: bool
    wakeup: int
    maxproc: int
    command: str
    args: tuple[str, ...]
    overrides: dict[str, str]
    host: str | None
    port: int
    params: Params
    file: str
    line: int


@dataclass(frozen=True)
class Config:
    """Everything read from a configuration directory."""

    config_dir: Path
    params: Params
    services: tuple[Service, ...]
    warnings: tuple[str, ...]

    def inet_services(self) -> tuple[Service, ...]:
        return tuple(s for s in self.services if s.type == "inet")
