"""Would the server start? ``master.build_runtime`` validates a configuration exactly as
``smarthost run`` does; a failure becomes an error finding, unless a more specific finding
already explains it. The warnings it would print at start (a chroot column it ignores, AUTH that
is never offered, ...) become warning findings at their file:line, except those the
configuration file check (the loader's own warnings) or a more specific finding already reports."""

from __future__ import annotations

import re

from smarthost.config import ConfigError
from smarthost.doctor.context import Context
from smarthost.doctor.findings import ERROR, WARNING
from smarthost.inbound.policy import PolicyError
from smarthost.master import StartError, build_runtime
from smarthost.tables import TableError
from smarthost.tls import TLSConfigError

# A check whose error already says what this start failure says, and words of that failure.
COVERED = {
    "tls.key-mode": ("readable by group or others",),
    "tls.key-mismatch": ("smtpd_tls_cert_file: cannot use",),
    "tls.certificate": ("smtpd_tls_cert_file:", "smtpd_tls_key_file:"),
    "tls.key": ("smtpd_tls_cert_file:", "smtpd_tls_key_file:"),
    "relay.no-guard": ("specify at least one of",),
    "tables.missing": ("run smarthost postmap", "cannot read", "does not exist"),
}
# A check that already reports what this start warning says, and words of that warning.
COVERED_WARNINGS = {
    "auth.no-tls": ("AUTH is never offered",),
    "auth.socket": ("Dovecot auth socket",),
}
_WHERE = re.compile(r"(?P<file>[^:]+):(?P<line>\d+): (?P<rest>.*)$", re.DOTALL)


def check(ctx: Context) -> None:
    try:
        runtime = build_runtime(ctx.cfg)
    except ConfigError as e:
        if not any(f.severity is ERROR and (f.file, f.line) == (e.file, e.line) for f in ctx.out):
            ctx.out.add(ERROR, (e.file, e.line), f"the server would not start: {e.param + ': ' if e.param else ''}"
                        f"{e.problem}", e.fix or "correct the line", "start")
    except (StartError, TLSConfigError, PolicyError, TableError, ValueError, OSError) as e:
        text = str(e)
        if any(f.severity is ERROR and any(w in text for w in COVERED.get(f.check, ())) for f in ctx.out):
            return
        m = _WHERE.match(text)
        where = (m["file"], int(m["line"])) if m else (ctx.master_cf, None)
        problem, _, fix = (m["rest"] if m else text).rpartition("; ")
        ctx.out.add(ERROR, where, f"the server would not start: {problem or text}",
                    fix if problem else "correct the setting named in the message", "start")
    else:
        _warnings(ctx, runtime.warnings)


def _warnings(ctx: Context, warnings: tuple[str, ...]) -> None:
    known = set(ctx.cfg.warnings)  # the configfile check reports these with a fix of its own
    for text in warnings:
        if text in known:
            continue
        m = _WHERE.match(text)
        where = (m["file"], int(m["line"])) if m else (ctx.main_cf, None)
        if m and where[0] != ctx.master_cf and any((f.file, f.line) == where for f in ctx.out):
            continue  # a finding at that very line already says it (a sasl/smtpd.conf warning)
        if any(any(w in text for w in COVERED_WARNINGS.get(f.check, ())) for f in ctx.out):
            continue
        fix = ("write n in the chroot column (the 5th) of this master.cf line, or keep y if the behaviour "
               "described is what you want" if "chroot" in text
               else "correct the setting named in the message, or accept the behaviour it describes")
        ctx.out.add(WARNING, where, f"smarthost run would warn: {m['rest'] if m else text}", fix, "start.warning")
