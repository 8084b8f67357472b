"""What every check reads: the loaded configuration, the time, and small helpers for
pointing at the line that set a parameter."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import cached_property

from smarthost.config import Config, Params, Service
from smarthost.doctor.findings import Findings, split_origin


@dataclass
class Context:
    cfg: Config
    now: dt.datetime
    out: Findings = field(default_factory=Findings)
    #: This machine's networks (ipaddress networks); None: read them (doctor.relay.local_networks).
    interfaces: tuple | None = None

    @property
    def main_cf(self) -> str:
        return str(self.cfg.config_dir / "main.cf")

    @property
    def master_cf(self) -> str:
        return str(self.cfg.config_dir / "master.cf")

    def where(self, params: Params, name: str) -> tuple[str, int | None]:
        """The file and line that set ``name`` (main.cf or a master.cf ``-o``); main.cf for a default."""
        return split_origin(params.origin(name), self.main_cf)

    @cached_property
    def smtpd_services(self) -> tuple[Service, ...]:
        """The SMTP server services (``inet`` with command ``smtpd``), as the master starts them."""
        return tuple(s for s in self.cfg.services if s.type == "inet" and s.command == "smtpd")


def service_where(service: Service) -> tuple[str, int | None]:
    return service.file, service.line
