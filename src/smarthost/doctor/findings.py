"""What the doctor reports: a ``Finding`` (severity, where, what is wrong, the exact fix),
a ``Findings`` collector that drops repeats, and the two output forms (human and JSON)."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass


class Severity(str, enum.Enum):
    """``error``: mail is lost, refused, exposed or the server does not start; ``warning``: it
    works, but not as the configuration says or not safely; ``hint``: a better way exists."""

    ERROR = "error"
    WARNING = "warning"
    HINT = "hint"


ERROR, WARNING, HINT = Severity.ERROR, Severity.WARNING, Severity.HINT


@dataclass(frozen=True)
class Finding:
    """One problem. ``file``/``line`` point at the setting to change (``line`` None when the
    problem is a default or a whole file); ``fix`` is a command to run or a line to write.
    ``check`` is a stable identifier (``tls.key-mismatch``) for scripts and tests."""

    severity: Severity
    file: str
    line: int | None
    message: str
    fix: str
    check: str

    @property
    def where(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"

    def human(self) -> str:
        """``file:line: error: text`` and an indented ``fix:`` line (continuation lines indented too)."""
        fix = self.fix.replace("\n", "\n       ")
        return f"{self.where}: {self.severity.value}: {self.message}\n  fix: {fix}"

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["severity"] = self.severity.value
        return data


def split_origin(origin: str | None, default_file: str) -> tuple[str, int | None]:
    """``"main.cf:12"`` -> ("main.cf", 12); None (a default) -> (default_file, None)."""
    if not origin:
        return default_file, None
    file, _, line = origin.rpartition(":")
    return (file, int(line)) if file and line.isdigit() else (origin, None)


class Findings:
    """Findings in the order found, each reported once (several services share main.cf)."""

    def __init__(self) -> None:
        self._items: dict[tuple, Finding] = {}

    def add(self, severity: Severity, where: tuple[str, int | None], message: str, fix: str, check: str) -> None:
        finding = Finding(severity, where[0], where[1], message, fix, check)
        self._items.setdefault((finding.check, finding.file, finding.line, finding.message), finding)

    def __iter__(self) -> Iterator[Finding]:
        return iter(self._items.values())


_ORDER = {ERROR: 0, WARNING: 1, HINT: 2}


def ordered(findings: Iterable[Finding]) -> list[Finding]:
    """Errors first, then warnings, then hints; by file and line within each."""
    return sorted(findings, key=lambda f: (_ORDER[f.severity], f.file, f.line or 0))


def counts(findings: Iterable[Finding]) -> dict[str, int]:
    result = {"errors": 0, "warnings": 0, "hints": 0}
    for f in findings:
        result[f.severity.value + "s"] += 1
    return result


def format_human(findings: Iterable[Finding]) -> str:
    findings = ordered(findings)
    c = counts(findings)
    lines = [f.human() for f in findings]
    lines.append(f"{c['errors']} error(s), {c['warnings']} warning(s), {c['hints']} hint(s)")
    return "\n".join(lines) + "\n"


def format_json(findings: Iterable[Finding]) -> str:
    findings = ordered(findings)
    return json.dumps({"findings": [f.as_dict() for f in findings], **counts(findings)}, indent=2) + "\n"
