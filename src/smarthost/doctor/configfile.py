"""The configuration files themselves: the loader's warnings (comments after values, unknown,
deprecated and repeated parameters, ...) as findings with a fix, and old names the loader
does not know (Postfix's renamed parameters and restrictions) with their modern form."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from smarthost.config import PARAMETERS
from smarthost.config.maincf import MAX_FILE_BYTES
from smarthost.doctor.context import Context
from smarthost.doctor.findings import WARNING, Findings

# Parameters Postfix renamed or replaced (postconf(5)); the loader would call them unknown.
OLD_PARAMETERS = {
    "virtual_maps": "virtual_alias_maps = (the same value)",
    "smtpd_tls_cipherlist": "smtpd_tls_mandatory_ciphers = high",
    "smtp_tls_cipherlist": "smtp_tls_mandatory_ciphers = high",
    "smtp_tls_enforce_peername": "smtp_tls_security_level = verify",
    "smtpd_sasl_application_name": "smtpd_sasl_path = smtpd",
}

# Restrictions Postfix renamed or replaced (postconf(5), "Obsolete" notes).
OLD_RESTRICTIONS = {
    "check_relay_domains": "reject_unauth_destination",
    "reject_maps_rbl": "reject_rbl_client zen.spamhaus.org (name the DNSBL)",
    "permit_naked_ip_address": "permit_mynetworks (or permit_sasl_authenticated)",
    "reject_unknown_hostname": "reject_unknown_helo_hostname",
    "reject_unknown_client": "reject_unknown_reverse_client_hostname",
}

RESTRICTION_LISTS = (
    "smtpd_client_restrictions", "smtpd_helo_restrictions", "smtpd_sender_restrictions",
    "smtpd_relay_restrictions", "smtpd_recipient_restrictions", "smtpd_data_restrictions",
)

_WHERE = r"(?P<file>.+?):(?P<line>\d+): "
_PATTERNS = [
    ("comment", re.compile(_WHERE + r'text after "#" is a comment')),
    ("unknown", re.compile(_WHERE + r"unknown parameter (?P<name>\w+)$")),
    ("deprecated", re.compile(_WHERE + r"(?P<old>[\w, ]+) is deprecated; use (?P<new>\w+ = \w+) instead$")),
    ("deprecated-ignored",
     re.compile(_WHERE + r"(?P<old>[\w, ]+) is deprecated and ignored because (?P<new>\w+) is set")),
    ("renamed", re.compile(_WHERE + r"(?P<old>\w+) is an old name; use (?P<new>\w+) instead$")),
    ("renamed-ignored", re.compile(_WHERE + r"(?P<old>\w+) is an old name of (?P<new>\w+), which is also set")),
    ("repeated", re.compile(_WHERE + r"(?P<name>\w+) is set again; the setting at line (?P<first>\d+) is ignored")),
    ("style", re.compile(_WHERE + r"mynetworks_style = (?P<style>\w+) is treated as host")),
    ("unset-reference", re.compile(_WHERE + r"(?P<owner>\w+): \$(?P<name>\w+) is not set")),
    ("service-again", re.compile(_WHERE + r"service (?P<name>\S+) is defined again; the one at line (?P<first>\d+)")),
]
_ANY_WHERE = re.compile(_WHERE + r"(?P<text>.*)$")


def check(ctx: Context) -> None:
    lines = _FileLines()
    for warning in ctx.cfg.warnings:
        _warning(ctx, warning, lines)
    _old_restrictions(ctx)


def _warning(ctx: Context, text: str, lines: _FileLines) -> None:
    out = ctx.out
    for kind, pattern in _PATTERNS:
        m = pattern.match(text)
        if m:
            break
    else:
        m = _ANY_WHERE.match(text)
        where = (m["file"], int(m["line"])) if m else (ctx.main_cf, None)
        out.add(WARNING, where, m["text"] if m else text, "correct or remove this line", "config.warning")
        return
    where = (m["file"], int(m["line"]))
    if kind == "comment":
        _comment(out, where, lines.get(*where))
    elif kind == "unknown":
        _unknown(out, where, m["name"], lines.get(*where))
    elif kind == "deprecated":
        out.add(WARNING, where, f"{m['old']}: deprecated parameter (Postfix 2.2)", f"replace it with: {m['new']}",
                "config.deprecated")
    elif kind == "deprecated-ignored":
        out.add(WARNING, where, f"{m['old']}: deprecated and ignored, because {m['new']} is set",
                "remove the line", "config.deprecated")
    elif kind == "renamed":
        value = _value_of(lines.get(*where))
        out.add(WARNING, where, f"{m['old']} is an old name of {m['new']}",
                f"rename it: {m['new']} = {value}", "config.deprecated")
    elif kind == "renamed-ignored":
        out.add(WARNING, where, f"{m['old']} is an old name of {m['new']}, which is also set; this line is ignored",
                "remove the line", "config.deprecated")
    elif kind == "repeated":
        out.add(WARNING, where, f"{m['name']} is set again; the setting at line {m['first']} is ignored",
                f"remove one of the two settings (lines {m['first']} and {where[1]})", "config.repeated")
    elif kind == "style":
        out.add(WARNING, where,
                f"mynetworks_style = {m['style']}: Postfix would trust every host on this machine's "
                f"{m['style']}; smarthost trusts loopback only (mynetworks_style works as host)",
                "list the networks to trust and remove mynetworks_style, e.g.:\n"
                "mynetworks = 127.0.0.0/8 [::1]/128 192.168.1.0/24", "relay.mynetworks-style")
    elif kind == "unset-reference":
        out.add(WARNING, where, f"{m['owner']}: ${m['name']} is not set; it expands to nothing",
                f"set {m['name']} in main.cf, or remove the reference", "config.unset-reference")
    elif kind == "service-again":
        out.add(WARNING, where, f"service {m['name']} is defined again; the one at line {m['first']} is ignored",
                f"remove one of the two lines ({m['first']} and {where[1]})", "config.repeated")


def _comment(out: Findings, where: tuple[str, int], line: str | None) -> None:
    fix = "put the comment on a line of its own, starting with #"
    if line is not None:
        cut = re.search(r"[ \t]#", line)
        if cut:
            fix = f"write it as two lines:\n{line[cut.start():].strip()}\n{line[:cut.start()].rstrip()}"
    out.add(WARNING, where,
            'text after "#" is ignored here, but Postfix would read it as part of the value',
            fix, "config.trailing-comment")


def _unknown(out: Findings, where: tuple[str, int], name: str, line: str | None) -> None:
    if name in OLD_PARAMETERS:
        out.add(WARNING, where, f"{name} is an obsolete Postfix parameter and is ignored",
                f"replace it with: {OLD_PARAMETERS[name]}", "config.deprecated")
        return
    close = difflib.get_close_matches(name, list(PARAMETERS), n=1, cutoff=0.8)
    if close and line is not None and line.startswith(name):  # a main.cf line: show it corrected
        fix = f"did you mean {close[0]}? write: {close[0]} = {_value_of(line)}"
    elif close:  # a master.cf -o
        fix = f"did you mean {close[0]}?"
    else:
        fix = "remove the line (smarthost ignores it), or check its spelling with: smarthost postconf -d"
    out.add(WARNING, where, f"unknown parameter {name}; it has no effect", fix, "config.unknown")


def _value_of(line: str | None) -> str:
    if line is None or "=" not in line:
        return "..."
    return re.split(r"[ \t]#", line.partition("=")[2], maxsplit=1)[0].strip() or "..."


def _old_restrictions(ctx: Context) -> None:
    for service in ctx.smtpd_services:
        p = service.params
        for param in RESTRICTION_LISTS:
            for item in p[param]:
                new = OLD_RESTRICTIONS.get(item.lower())
                if new:
                    ctx.out.add(WARNING, ctx.where(p, param), f"{param}: {item} is an obsolete Postfix restriction",
                                f"replace {item} with {new}", "config.deprecated-restriction")


class _FileLines:
    """Physical lines of configuration files, read once each (bounded like the loader)."""

    def __init__(self) -> None:
        self._files: dict[str, list[str] | None] = {}

    def get(self, file: str, line: int | None) -> str | None:
        if file not in self._files:
            try:
                with open(file, "rb") as f:
                    data = f.read(MAX_FILE_BYTES + 1)
                self._files[file] = data.decode("utf-8", "replace").split("\n")
            except OSError:
                self._files[file] = None
        lines = self._files[file]
        if lines is None or line is None or not 1 <= line <= len(lines):
            return None
        return lines[line - 1].rstrip("\r")


def sasl_where(path: Path, key: str) -> tuple[str, int | None]:
    """The line of ``key:`` in a Cyrus ``smtpd.conf`` (the last one wins there), or the file."""
    lines = _FileLines()
    found = None
    number = 1
    while (text := lines.get(str(path), number)) is not None:
        if text.strip().partition(":")[0].strip() == key:
            found = number
        number += 1
    return str(path), found

