"""The one exception configuration loading raises: where, which parameter, what, and the fix."""

from __future__ import annotations

import re

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def show(text: str, limit: int = 60) -> str:
    """Quote a configuration value for an error message: bounded and printable."""
    if len(text) > limit:
        text = text[:limit] + "..."
    text = _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()) & 0xFF:02x}", text)
    return f'"{text}"'


class ConfigError(Exception):
    """A configuration problem that stops the program from starting.

    ``str(e)`` reads ``FILE:LINE: PARAM: PROBLEM; FIX``; the line, the parameter and the
    fix are left out when unknown.
    """

    def __init__(
        self,
        file: str,
        line: int | None,
        param: str | None,
        problem: str,
        fix: str | None = None,
    ) -> None:
        self.file = str(file)
        self.line = line
        self.param = param
        self.problem = problem
        self.fix = fix
        super().__init__(self._text())

    def _text(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        what = self.problem if self.param is None else f"{self.param}: {self.problem}"
        return f"{where}: {what}" + (f"; {self.fix}" if self.fix else "")

    def __str__(self) -> str:
        return self._text()
