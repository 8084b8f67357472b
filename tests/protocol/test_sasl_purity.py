"""The SASL package stays sans-I/O (DESIGN.md principle 1), like smtp/."""

from pathlib import Path

import smarthost.sasl
from test_purity import FORBIDDEN, imported_modules

PACKAGE = Path(smarthost.sasl.__file__).parent


def test_the_package_has_the_expected_modules():
    assert {"mechanisms.py", "client.py", "policy.py", "scram.py"} <= {p.name for p in PACKAGE.glob("*.py")}


def test_no_io_imports():
    offenders = {
        path.name: sorted(imported_modules(path) & (FORBIDDEN | {"__import__", "secrets"}))
        for path in sorted(PACKAGE.glob("*.py"))
    }
    assert {name: bad for name, bad in offenders.items() if bad} == {}
