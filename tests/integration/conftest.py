"""Fixtures for the integration tests: the real ``smarthost run`` on loopback ports."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "interop"))

from peers import SmarthostInstance, free_port  # noqa: E402


@pytest.fixture
def smarthost(tmp_path: Path) -> Iterator[Callable[..., SmarthostInstance]]:
    """``smarthost(main_cf={...}, services=N, extra_master="", tls=False)`` → a running server.

    ``instance.ports`` lists its plain ``host:port`` services in order; ``extra_master``
    is appended verbatim (use ``{port}`` placeholders from ``free_port()`` yourself).
    """
    started: list[SmarthostInstance] = []

    def start(main_cf: dict[str, str] | None = None, *, master_cf: str | None = None, tls: bool = False,
              start: bool = True) -> SmarthostInstance:
        if master_cf is None:
            master_cf = f"127.0.0.1:{free_port()} inet n - n - - smtpd\n"
        # local_recipient_maps empty: any local part of example.test is accepted (Postfix's
        # meaning); test_unknown_local_recipient_is_refused_at_rcpt checks the default.
        cfg = {"mydestination": "$myhostname, example.test", "mynetworks": "127.0.0.0/8",
               "smtpd_tls_loglevel": "1", "local_recipient_maps": ""}
        cfg.update(main_cf or {})
        instance = SmarthostInstance(tmp_path / f"s{len(started)}", cfg, master_cf, tls=tls)
        started.append(instance)
        if start:
            instance.start()
        return instance

    yield start
    for instance in started:
        instance.stop()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A config directory (``site/etc``) with only a queue and a data directory, for the queue tools."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "main.cf").write_text(
        f"queue_directory = {tmp_path / 'queue'}\ndata_directory = {tmp_path / 'data'}\n")
    (tmp_path / "data").mkdir()
    return tmp_path
