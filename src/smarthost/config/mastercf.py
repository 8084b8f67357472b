"""master.cf: services, their columns and ``-o`` overrides, and where inet services listen.

Syntax as in master(5): logical lines as in main.cf; columns ``service type private unpriv
chroot wakeup maxproc command [args]``; ``-`` in a column means the default; ``{ ... }``
groups an argument that contains whitespace (Postfix 3.0), e.g. ``-o { name = a b }``.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from smarthost.config.errors import ConfigError, show
from smarthost.config.maincf import WHITESPACE, decode, logical_lines, split_setting
from smarthost.config.model import Params, Service

INET_PORTS = {"smtp": 25, "submission": 587, "smtps": 465, "submissions": 465}
TYPES = ("inet", "unix", "unix-dgram", "fifo", "pass")
DEFAULT_MASTER_CF = "smtp inet n - n - - smtpd\nqmgr unix n - n 300 1 qmgr\n"
BUILT_IN = "(built-in master.cf)"

_COLUMNS = "service type private unpriv chroot wakeup maxproc command"
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def tokens(text: str, path: str, line: int) -> list[str]:
    """Split on whitespace; a token starting with ``{`` runs to the matching ``}``
    and stands for its inside, stripped."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] in WHITESPACE:
            i += 1
        elif text[i] == "{":
            depth, j = 0, i
            while j < n:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    break
                j += 1
            if j == n:
                raise ConfigError(
                    path, line, None, f'missing "}}" after {show(text[i:i + 30])}', 'close the "{ ... }" group'
                )
            out.append(text[i + 1 : j].strip(WHITESPACE))
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in WHITESPACE:
                j += 1
            out.append(text[i:j])
            i = j
    return out


def _flag(value: str, default: bool, column: str, path: str, line: int) -> bool:
    if value not in ("y", "n", "-"):
        raise ConfigError(path, line, column, f"{show(value)} is not y, n or -", "use y, n or - (the default)")
    return default if value == "-" else value == "y"


def _count(value: str, default: int, column: str, path: str, line: int) -> int:
    if value == "-":
        return default
    m = re.fullmatch(r"([0-9]{1,9})(\??)", value) if column == "wakeup" else re.fullmatch(r"([0-9]{1,9})()", value)
    if not m:
        raise ConfigError(path, line, column, f"{show(value)} is not a number", "use a number or - (the default)")
    return int(m.group(1))


def inet_address(name: str, path: str, line: int) -> tuple[str | None, int]:
    """A service name as (host or None, port): ``smtp``, ``2525``, ``127.0.0.1:2525``, ``[::1]:25``."""
    m = re.fullmatch(r"\[([^\]]*)\]:(.*)", name)
    if m:
        host, port = m.groups()
        try:
            ipaddress.ip_address(host)
        except ValueError:
            problem = f"{show(host)} is not an IP address"
            raise ConfigError(path, line, None, problem, "write [IPv6-address]:port") from None
    elif ":" in name:
        host, _, port = name.rpartition(":")
        if ":" in host:
            raise ConfigError(path, line, None, f"IPv6 address {show(host)} needs brackets", f"write [{host}]:{port}")
        if not _HOSTNAME_RE.fullmatch(host):
            raise ConfigError(path, line, None, f"{show(host)} is not a host", "write host:port, e.g. 127.0.0.1:2525")
    else:
        host, port = None, name
    if port.isascii() and port.isdigit():
        number = int(port)
        if not 1 <= number <= 65535:
            raise ConfigError(path, line, None, f"port {number} is out of range", "use a port from 1 to 65535")
        return host, number
    if port in INET_PORTS:
        return host, INET_PORTS[port]
    raise ConfigError(
        path, line, None, f"unknown service name {show(port)}",
        "use a port number (e.g. 2525) or one of " + ", ".join(INET_PORTS),
    )


def _options(args: list[str], path: str, line: int) -> tuple[tuple[str, ...], dict[str, str]]:
    """Split command arguments into ``-o name=value`` overrides and the rest.

    Like getopt(3) in Postfix's daemons, options end at the first argument that does not
    start with ``-`` (so ``argv=... -o x`` of pipe(8) stays an argument), or after ``--``.
    """
    kept: list[str] = []
    overrides: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg == "-":
            break
        if arg == "--":
            kept.append(arg)
            i += 1
            break
        if arg.startswith("-o"):
            setting = arg[2:]
            if not setting:
                i += 1
                if i == len(args):
                    raise ConfigError(path, line, None, "-o needs name=value", "write -o name=value")
                setting = args[i]
            name, value = split_setting(setting, path, line)
            overrides[name] = value
        else:
            kept.append(arg)
        i += 1
    return (*kept, *args[i:]), overrides


def parse(text: str, path: str, main: Params) -> tuple[tuple[Service, ...], list[str]]:
    """Services from master.cf text, each with its parameters (main.cf plus ``-o``)."""
    warnings: list[str] = []
    services: dict[tuple[str, str], Service] = {}
    for logical in logical_lines(text, path, warnings):
        line = logical.first
        fields = tokens(logical.text, path, line)
        if len(fields) < 8:
            raise ConfigError(
                path, line, None, f"expected 8 columns ({_COLUMNS}), found {len(fields)}",
                'fill every column; "-" means the default',
            )
        name, kind, private, unpriv, chroot, wakeup, maxproc, command = fields[:8]
        if kind not in TYPES:
            raise ConfigError(path, line, "type", f"{show(kind)} is not a service type", "use " + ", ".join(TYPES))
        is_inet = kind == "inet"
        private_flag = _flag(private, not is_inet, "private", path, line)
        if is_inet and private_flag:
            warnings.append(f"{path}:{line}: inet services cannot be private; {name} is treated as private = n")
            private_flag = False
        host, port = inet_address(name, path, line) if is_inet else (None, 0)
        args, overrides = _options(fields[8:], path, line)
        origin = f"{path}:{line}"
        params = main.with_overrides(overrides, origin, defaults={"service_name": name}) if overrides else main
        if (name, kind) in services:
            first = services.pop((name, kind))
            warnings.append(
                f"{origin}: service {name}/{kind} is defined again; the one at line {first.line} is ignored"
            )
        services[(name, kind)] = Service(
            name=name,
            type=kind,
            private=private_flag,
            unpriv=_flag(unpriv, True, "unpriv", path, line),
            chroot=_flag(chroot, False, "chroot", path, line),
            wakeup=_count(wakeup, 0, "wakeup", path, line),
            maxproc=_count(maxproc, main["default_process_limit"], "maxproc", path, line),
            command=command,
            args=args,
            overrides=overrides,
            host=host,
            port=port,
            params=params,
            file=path,
            line=line,
        )
        warnings.extend(params.warnings if params is not main else ())
    _check_ports(services.values())
    return tuple(services.values()), warnings


def _check_ports(services) -> None:
    """Two inet services on one address would fail to bind at start; say so now."""
    seen: dict[tuple[str | None, int], Service] = {}
    for s in services:
        if s.type != "inet":
            continue
        other = seen.setdefault((s.host, s.port), s)
        if other is not s:
            raise ConfigError(
                s.file, s.line, None, f"{s.name} listens on port {s.port} like {other.name} at line {other.line}",
                "remove one of them or give one another port",
            )


def read(path: Path, main: Params) -> tuple[tuple[Service, ...], list[str]]:
    """Read master.cf; when missing, one service: ``smtp inet n - n - - smtpd``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return parse(DEFAULT_MASTER_CF, BUILT_IN, main)
    except OSError as e:
        raise ConfigError(str(path), None, None, f"cannot read: {e.strerror}", "check the file's permissions") from None
    return parse(decode(data, str(path)), str(path), main)


def listen_addresses(service: Service, params: Params) -> list[tuple[str | None, int]]:
    """The (host, port) pairs an inet service binds; host None means every address.

    A service without a host listens on ``inet_interfaces``: ``all`` is None (or 0.0.0.0 /
    :: when ``inet_protocols`` allows one family), ``loopback-only`` is 127.0.0.1 and ::1,
    otherwise each listed address.
    """
    if service.type != "inet":
        return []
    if service.host is not None:
        return [(service.host, service.port)]
    protocols = params["inet_protocols"]
    want4 = "all" in protocols or "ipv4" in protocols
    want6 = "all" in protocols or "ipv6" in protocols
    interfaces = params["inet_interfaces"]
    if interfaces == ["all"]:
        host = None if want4 and want6 else "0.0.0.0" if want4 else "::"
        return [(host, service.port)]
    if interfaces == ["loopback-only"]:
        hosts = [h for h, wanted in (("127.0.0.1", want4), ("::1", want6)) if wanted]
    else:
        hosts = [h[1:-1] if h.startswith("[") and h.endswith("]") else h for h in interfaces]
    return [(h, service.port) for h in hosts]
