"""Configuration in Postfix's syntax: main.cf and master.cf, read once into a typed Config.

    cfg = load(Path("/etc/smarthost"))      # raises ConfigError: "FILE:LINE: PARAM: PROBLEM; FIX"
    cfg.params["message_size_limit"]        # 10240000
    cfg.services                            # master.cf, each with its own params (main.cf + -o)
    cfg.warnings                            # "file:line: message", for the log
"""

from smarthost.config.errors import ConfigError
from smarthost.config.loader import load
from smarthost.config.mastercf import listen_addresses
from smarthost.config.model import Config, Params, Service, Setting
from smarthost.config.parameters import PARAMETERS, Parameter

__all__ = [
    "PARAMETERS",
    "Config",
    "ConfigError",
    "Parameter",
    "Params",
    "Service",
    "Setting",
    "listen_addresses",
    "load",
]
