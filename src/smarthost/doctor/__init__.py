"""``smarthost check``: the config doctor for the classic mistakes of the Postfix + Cyrus SASL +
STARTTLS + relayhost recipe.

    findings = run_checks(Path("/etc/smarthost"))     # errors first; each with file:line and a fix
    report = sender_report(load(dir), "alice@example.com", "bob@example.net")

Each area has its module: ``configfile`` (the loader's warnings, old names), ``tls`` (the
server's certificate and key), ``auth`` (AUTH before TLS, mech_list, the auth socket),
``relay`` (open relay), ``tables`` (postmap), ``client`` (relayhost, credentials, client TLS),
``start`` (what ``smarthost run`` itself would refuse).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from smarthost.config import ConfigError, load
from smarthost.doctor import auth, client, configfile, relay, start, tables, tls
from smarthost.doctor.client import SenderReport, sender_report
from smarthost.doctor.context import Context
from smarthost.doctor.findings import (
    ERROR,
    HINT,
    WARNING,
    Finding,
    Severity,
    format_human,
    format_json,
    ordered,
)

__all__ = [
    "ERROR",
    "HINT",
    "WARNING",
    "Finding",
    "SenderReport",
    "Severity",
    "format_human",
    "format_json",
    "run_checks",
    "sender_report",
]

CHECKS = (configfile, tls, auth, relay, tables, client, start)


def run_checks(config_dir: Path, *, now: dt.datetime | None = None, interfaces: tuple | None = None) -> list[Finding]:
    """Every finding for the configuration in ``config_dir``, errors first. A configuration
    that does not load at all gives that one error. ``interfaces``: this machine's networks
    (default: read from the system)."""
    try:
        cfg = load(Path(config_dir))
    except ConfigError as e:
        problem = f"{e.param}: {e.problem}" if e.param else e.problem
        return [Finding(ERROR, e.file, e.line, problem, e.fix or "correct the line", "config.error")]
    ctx = Context(cfg, now or dt.datetime.now(dt.timezone.utc), interfaces=interfaces)
    for module in CHECKS:
        module.check(ctx)
    return ordered(ctx.out)
