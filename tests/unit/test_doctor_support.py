"""Helpers for the doctor tests (no tests here): a configuration directory written the way a
user writes it, with a real certificate, and the findings ``smarthost check`` reports for it on a
machine whose interfaces are on ``INTERFACES``."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from smarthost import certs
from smarthost.doctor import Finding, run_checks

HOST = "mail.example.com"
#: The networks of the machine the doctor runs on, in these tests: a home LAN and an IPv6 ULA /64.
INTERFACES = tuple(ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128", "192.168.1.0/24", "fd00:1::/64",
                                                     "fe80::/64"))


class ConfDir:
    """``DIR/main.cf`` (``settings`` in order, or raw text), ``DIR/master.cf``, ``DIR/cert.pem``
    and ``DIR/key.pem`` (a self-signed certificate for HOST, key mode 0600)."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "etc"
        self.dir.mkdir()
        self.cert = self.dir / "cert.pem"
        self.key = self.dir / "key.pem"
        certs.selfsigned(HOST, [], self.cert, self.key)
        self.settings: dict[str, str] = {
            "myhostname": HOST,
            "mydestination": "$myhostname, example.com",
            "mynetworks": "127.0.0.0/8 [::1]/128",
            "smtpd_tls_cert_file": str(self.cert),
            "smtpd_tls_key_file": str(self.key),
        }
        self.master("127.0.0.1:2525 inet n - n - - smtpd\n")
        self.write()

    def set(self, **values: str) -> ConfDir:
        self.settings.update(values)
        return self.write()

    def unset(self, *names: str) -> ConfDir:
        for name in names:
            self.settings.pop(name, None)
        return self.write()

    def write(self) -> ConfDir:
        (self.dir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in self.settings.items()))
        return self

    def main_text(self, text: str) -> ConfDir:
        (self.dir / "main.cf").write_text(text)
        return self

    def master(self, text: str) -> ConfDir:
        (self.dir / "master.cf").write_text(text)
        return self

    def line_of(self, name: str) -> int:
        lines = (self.dir / "main.cf").read_text().splitlines()
        return next(n for n, line in enumerate(lines, 1) if line.split("=")[0].strip() == name)

    @property
    def main_cf(self) -> str:
        return str(self.dir / "main.cf")

    def findings(self, now: dt.datetime | None = None, interfaces: tuple = INTERFACES) -> list[Finding]:
        return run_checks(self.dir, now=now, interfaces=interfaces)


def by_check(findings: list[Finding], check: str) -> list[Finding]:
    return [f for f in findings if f.check == check]


def one(findings: list[Finding], check: str) -> Finding:
    found = by_check(findings, check)
    assert len(found) == 1, f"expected one {check} finding, got: {[f.human() for f in findings]}"
    return found[0]
