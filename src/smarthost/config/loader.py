"""Reading a configuration directory into one checked ``Config``.

``load`` reads ``DIR/main.cf`` and ``DIR/master.cf``, expands and checks every value and
returns the whole, or raises ConfigError: nothing is ever half-configured. Warnings
(unknown or deprecated names, comments after values, ...) are collected in
``Config.warnings`` for the caller to log.
"""

from __future__ import annotations

from pathlib import Path

from smarthost.config import mastercf
from smarthost.config.errors import ConfigError
from smarthost.config.maincf import MainCf, read
from smarthost.config.model import Config, Params, Setting, map_deprecated, references
from smarthost.config.parameters import PARAMETERS


def load(config_dir: Path) -> Config:
    """Read and check ``config_dir``; a missing main.cf means all defaults."""
    config_dir = Path(config_dir)
    if not config_dir.is_dir():
        raise ConfigError(
            str(config_dir), None, None, "configuration directory does not exist",
            "create it, or name another one with -c DIR or MAIL_CONFIG",
        )
    return load_with_main(config_dir, read(config_dir / "main.cf"))


def main_params(config_dir: Path, main: MainCf) -> tuple[Params, list[str]]:
    """main.cf's settings over the defaults, with deprecation warnings."""
    written = {name: Setting(e.value, main.path, e.line) for name, e in main.settings().items()}
    mapped, warnings = map_deprecated(written, {})
    params = Params(mapped, main_file=main.path, defaults={"config_directory": str(config_dir)})
    return params, warnings


def load_with_main(config_dir: Path, main: MainCf) -> Config:
    """``load`` with main.cf already parsed (``postconf -e`` checks an edit before writing)."""
    params, warnings = main_params(config_dir, main)
    services, master_warnings = mastercf.read(config_dir / "master.cf", params)

    # Unknown names are worth a warning unless something refers to them: howtos define
    # e.g. mua_client_restrictions in main.cf for use as $mua_client_restrictions in master.cf.
    used: set[str] = set()
    for entry in main.entries:
        used |= references(entry.value)
    for service in services:
        for value in service.overrides.values():
            used |= references(value)
    unknown = [
        f"{main.path}:{e.line}: unknown parameter {name}"
        for name, e in main.settings().items()
        if name not in PARAMETERS and name not in used
    ]

    style = params["mynetworks_style"]
    if style != "host" and params.is_default("mynetworks"):
        warnings.append(
            f"{params.origin('mynetworks_style')}: mynetworks_style = {style} is treated as host: "
            "only loopback is trusted; list your networks in mynetworks"
        )

    everything = [*main.warnings, *unknown, *warnings, *params.warnings, *master_warnings]
    return Config(
        config_dir=config_dir,
        params=params,
        services=services,
        warnings=tuple(dict.fromkeys(everything)),
    )
