"""Fixtures for the interop tests: real peers from Debian's packages talking to smarthost.

A missing peer (or missing root, which Postfix needs) skips the test with a message saying
how to install it; with ``CI=true`` it fails instead, because CI must run the interop tests
(``require_peer``, ``require_root`` and ``unavailable`` live in ``peers``, whose module name is
unique: test modules import them from there, as ``conftest`` may name another directory's).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from peers import (  # noqa: E402
    PeerError,
    PostfixInstance,
    SmarthostInstance,
    free_port,
    make_shared_dir,
    require_peer,
    require_root,
    unavailable,
)

# What smarthost's stderr says while `smarthost run` does not exist yet.
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.interop)


@pytest.fixture(scope="module")
def interop_dir() -> Iterator[Path]:
    """A directory the ``postfix`` user can traverse, removed afterwards."""
    path = make_shared_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def start_smarthost(interop_dir: Path) -> Iterator[Callable[..., SmarthostInstance]]:
    """``start_smarthost(name, main_cf, master_cf, tls=False)`` → a running SmarthostInstance
    under ``interop_dir/name``; all of them are stopped when the module's tests are done."""
    started: list[SmarthostInstance] = []

    def start(name: str, main_cf: dict[str, str], master_cf: str, *, tls: bool = False) -> SmarthostInstance:
        instance = SmarthostInstance(interop_dir / name, main_cf, master_cf, tls=tls)
        started.append(instance)
        try:
            instance.start()
            return instance
        except PeerError as e:
            error = str(e)  # reported below, outside the except block, without a chained traceback
        pytest.fail(error, pytrace=False)

    yield start
    for instance in started:
        instance.stop()


@pytest.fixture(scope="module")
def start_postfix(interop_dir: Path) -> Iterator[Callable[..., PostfixInstance]]:
    """``start_postfix(name, main_cf_extra, master_cf_extra="")`` → a running private Postfix
    under ``interop_dir/name`` on a free port; always stopped afterwards."""
    started: list[PostfixInstance] = []

    def start(name: str, main_cf_extra: dict[str, str], master_cf_extra: str = "") -> PostfixInstance:
        require_root()
        for command in ("postfix", "sendmail", "script"):
            require_peer(command)
        (interop_dir / name).mkdir()
        (interop_dir / name).chmod(0o755)
        instance = PostfixInstance(interop_dir / name, free_port(), main_cf_extra, master_cf_extra)
        started.append(instance)
        try:
            instance.start()
            return instance
        except PeerError as e:
            error = str(e)
        pytest.fail(error, pytrace=False)

    yield start
    for instance in started:
        instance.stop()
