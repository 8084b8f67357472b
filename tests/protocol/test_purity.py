"""The protocol package stays sans-I/O (DESIGN.md principle 1): checked on the source's imports."""

import ast
from pathlib import Path

import smarthost.smtp

FORBIDDEN = {
    "asyncio", "socket", "ssl", "os", "time", "logging", "selectors", "threading",
    "subprocess", "multiprocessing", "io", "pathlib", "shutil", "signal", "sys",
    "uvloop", "sqlite3", "datetime", "random", "tempfile",
}
PACKAGE = Path(smarthost.smtp.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            names.add("__import__")
    return names


def test_the_package_has_the_expected_modules():
    modules = {p.name for p in PACKAGE.glob("*.py")}
    assert {"replies.py", "address.py", "commands.py", "data.py", "server.py"} <= modules


def test_no_io_imports():
    offenders = {
        path.name: sorted(imported_modules(path) & (FORBIDDEN | {"__import__"}))
        for path in sorted(PACKAGE.glob("*.py"))
    }
    assert {name: bad for name, bad in offenders.items() if bad} == {}


def test_the_checker_sees_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os.path\nfrom asyncio import sleep\nfrom . import sibling\n")
    assert imported_modules(sample) == {"os", "asyncio"}
