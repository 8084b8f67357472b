"""Cyrus SASL's application file (``sasl/smtpd.conf``): how AUTH verifies passwords and what it offers.

With ``smtpd_sasl_type = cyrus`` (the default) the file is
``$cyrus_sasl_config_path/$smtpd_sasl_path.conf``.  ``cyrus_sasl_config_path``
is a colon-separated search path (relative entries are relative to the
configuration directory); when it is empty, ``DIR/sasl`` is searched.  The
syntax is Cyrus's: ``key: value`` lines, ``#`` comment lines.  Keys:

=================  ===============================================================
``pwcheck_method``  ``saslauthd``, ``auxprop``, or both (tried in the order given)
``mech_list``       mechanisms to offer, separated by spaces (or commas)
``saslauthd_path``  the saslauthd socket; default ``/var/run/saslauthd/mux``
                    (Cyrus's compiled-in default on Debian)
``auxprop_plugin``  only ``sasldb``: smarthost's own user database
``sasldb_path``     that database; default ``DIR/sasldb`` (relative: to DIR)
``log_level``       accepted for compatibility
=================  ===============================================================

A missing file means Cyrus's defaults: ``pwcheck_method: auxprop`` with the
user database.  Mechanisms are offered only where the method can verify
them: saslauthd checks plaintext passwords, so it allows PLAIN and LOGIN;
the user database stores SCRAM verifiers (not plaintext), so it allows
PLAIN, LOGIN, SCRAM-SHA-256 and SCRAM-SHA-1 — and CRAM-MD5 when
``mech_list`` names it (off by default): it works for users given a CRAM-MD5
secret (``smarthost users add --cram``), every other user gets 535 as for a
wrong password.  A ``mech_list`` asking for more loads with a warning naming
the line; a ``mech_list`` leaving nothing is an error.

With ``smtpd_sasl_type = dovecot`` no file is read: ``smtpd_sasl_path`` is
the Dovecot auth socket and the mechanisms are the ones the daemon announces.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from smarthost.config.errors import ConfigError, show
from smarthost.sasl.mechanisms import SERVER_MECHANISMS
from smarthost.sasl.policy import meets

DEFAULT_SASLAUTHD_PATH = "/var/run/saslauthd/mux"
MAX_FILE_SIZE = 1 << 16
PWCHECK_METHODS = ("saslauthd", "auxprop")
VERIFIABLE = {
    "saslauthd": ("PLAIN", "LOGIN"),
    "auxprop": ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "LOGIN"),
}
# Verifiable, but offered only when mech_list asks (users need ``users add --cram``).
ON_REQUEST = {"auxprop": ("CRAM-MD5",)}
_UNVERIFIABLE_REASON = {
    "saslauthd": "saslauthd can verify plaintext passwords only",
    "auxprop": "the user database stores SCRAM verifiers and CRAM-MD5 secrets, not plaintext passwords",
}
# Mechanisms that need a shared secret on the server: a password method may or may not serve them.
_SECRET_MECHANISMS = frozenset({"CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"})
_USED_KEYS = frozenset({"pwcheck_method", "mech_list", "saslauthd_path", "auxprop_plugin", "sasldb_path", "log_level"})
_KEY = re.compile(r"[A-Za-z0-9_.-]+")
_APP_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class ParamsLike(Protocol):
    def __getitem__(self, name: str) -> Any: ...

    def origin(self, name: str) -> str | None: ...


@dataclass(frozen=True)
class SaslConf:
    """What AUTH needs from the SASL configuration.  ``warnings`` are ``file:line: text`` lines to log."""

    type: str  # "cyrus" or "dovecot"
    path: Path | None = None  # the file read; None for dovecot or when there was none
    pwcheck_methods: tuple[str, ...] = ("auxprop",)
    mech_list: tuple[str, ...] | None = None  # None: everything the methods can verify
    saslauthd_path: str = DEFAULT_SASLAUTHD_PATH
    sasldb_path: Path | None = None
    log_level: int = 0
    dovecot_path: str = ""  # the Dovecot auth socket (smtpd_sasl_path), as configured
    warnings: tuple[str, ...] = ()

    def verifiable(self) -> tuple[str, ...]:
        """Mechanisms the password methods can verify, strongest first."""
        return verifiable_by(self.pwcheck_methods)

    def mechanisms(self, security_options: Iterable[str], available: Iterable[str] | None = None) -> tuple[str, ...]:
        """The mechanisms to advertise, given ``smtpd_sasl_security_options`` (or the TLS variant).

        ``available`` limits the result to what an auth source offers (required
        for Dovecot: the daemon's mechanism list).
        """
        options = list(security_options)
        if self.type == "dovecot":
            names = tuple(name.upper() for name in available or ())
        else:
            names = self.mech_list if self.mech_list is not None else self.verifiable()
            if available is not None:
                offered = {name.upper() for name in available}
                names = tuple(name for name in names if name in offered)
        return tuple(name for name in names if meets(name, options))


def verifiable_by(methods: Iterable[str]) -> tuple[str, ...]:
    """Mechanisms some of ``methods`` can verify, strongest first."""
    names = {name for method in methods for name in VERIFIABLE[method]}
    return tuple(name for name in VERIFIABLE["auxprop"] if name in names)


def load_sasl_conf(config_dir: Path, params: ParamsLike) -> SaslConf:
    """Read the SASL configuration selected by ``smtpd_sasl_type`` / ``smtpd_sasl_path``.

    Raises ConfigError naming the file and line, with a fix.
    """
    config_dir = Path(config_dir)
    if params["smtpd_sasl_type"] == "dovecot":
        return SaslConf(type="dovecot", pwcheck_methods=(), dovecot_path=params["smtpd_sasl_path"])
    app = params["smtpd_sasl_path"]
    if not _APP_NAME.fullmatch(app):
        file, line = _origin(params, "smtpd_sasl_path")
        raise ConfigError(
            file, line, "smtpd_sasl_path", f"{show(app)} is not a Cyrus application name",
            "with smtpd_sasl_type = cyrus use a name such as smtpd (it selects sasl/smtpd.conf)",
        )
    search = [part for part in params["cyrus_sasl_config_path"].split(":") if part] or ["sasl"]
    candidates = [config_dir / directory / f"{app}.conf" for directory in search]
    path = next((candidate for candidate in candidates if candidate.is_file()), None)
    if path is None:
        sasldb = config_dir / "sasldb"
        return SaslConf(
            type="cyrus",
            sasldb_path=sasldb,
            warnings=(
                f"{candidates[0]}: not found; using pwcheck_method: auxprop with the user database {sasldb}",
            ),
        )
    return _parse(path, _read(path), config_dir)


def _origin(params: ParamsLike, name: str) -> tuple[str, int | None]:
    origin = params.origin(name) or "main.cf"
    file, _, line = origin.rpartition(":")
    return (file, int(line)) if file and line.isdigit() else (origin, None)


def _read(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), None, None, f"cannot read: {exc.strerror}", "check the file's permissions") from None
    if len(data) > MAX_FILE_SIZE:
        raise ConfigError(str(path), None, None, f"larger than {MAX_FILE_SIZE} bytes", "is this the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(str(path), None, None, "not UTF-8 text", "save the file as UTF-8") from None


def _parse(path: Path, text: str, config_dir: Path) -> SaslConf:
    file = str(path)
    warnings: list[str] = []
    entries: dict[str, tuple[str, int]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, colon, value = line.partition(":")
        key = key.strip()
        if not colon or not _KEY.fullmatch(key):
            raise ConfigError(
                file, number, None, f"expected 'key: value', found {show(line)}",
                "write one option per line as 'name: value', e.g. 'pwcheck_method: saslauthd'",
            )
        if key in entries:
            warnings.append(f"{file}:{number}: {key} is also set on line {entries[key][1]}; this line wins")
        if key not in _USED_KEYS:
            warnings.append(f"{file}:{number}: {key} is not used by smarthost; ignored")
        entries[key] = (value.strip(), number)

    methods = _pwcheck_methods(file, entries)
    if "auxprop" in methods:
        _check_auxprop_plugin(file, entries)
    saslauthd, number = entries.get("saslauthd_path", (DEFAULT_SASLAUTHD_PATH, 0))
    if not saslauthd:
        raise ConfigError(
            file, number, "saslauthd_path", "empty value",
            f"name the saslauthd socket, e.g. saslauthd_path: {DEFAULT_SASLAUTHD_PATH}",
        )
    sasldb = entries.get("sasldb_path", ("", 0))[0] or "sasldb"
    return SaslConf(
        type="cyrus",
        path=path,
        pwcheck_methods=methods,
        mech_list=_mech_list(file, entries, methods, warnings),
        saslauthd_path=saslauthd,
        sasldb_path=config_dir / sasldb,  # an absolute sasldb_path stays as it is
        log_level=_log_level(file, entries),
        warnings=tuple(warnings),
    )


def _pwcheck_methods(file: str, entries: dict[str, tuple[str, int]]) -> tuple[str, ...]:
    if "pwcheck_method" not in entries:
        return ("auxprop",)  # Cyrus's default
    value, number = entries["pwcheck_method"]
    methods = tuple(dict.fromkeys(value.replace(",", " ").split()))
    unknown = [method for method in methods if method not in PWCHECK_METHODS]
    if not methods or unknown:
        what = f"unsupported method {show(unknown[0])}" if unknown else "empty value"
        raise ConfigError(
            file, number, "pwcheck_method", what,
            "use saslauthd (a saslauthd or 'smarthost authd' socket), auxprop (smarthost's user database) "
            "or both: 'saslauthd auxprop'",
        )
    return methods


def _check_auxprop_plugin(file: str, entries: dict[str, tuple[str, int]]) -> None:
    value, number = entries.get("auxprop_plugin", ("sasldb", 0))
    plugins = value.replace(",", " ").split() or ["sasldb"]
    other = [plugin for plugin in plugins if plugin != "sasldb"]
    if other:
        raise ConfigError(
            file, number, "auxprop_plugin", f"plugin {show(other[0])} is not supported",
            "use auxprop_plugin: sasldb (smarthost's user database, managed with 'smarthost users'), "
            "or pwcheck_method: saslauthd with an auth daemon that reaches your user store",
        )


def _mech_list(
    file: str, entries: dict[str, tuple[str, int]], methods: tuple[str, ...], warnings: list[str]
) -> tuple[str, ...] | None:
    if "mech_list" not in entries:
        return None
    value, number = entries["mech_list"]
    verifiable = set(verifiable_by(methods)) | {"EXTERNAL"}  # EXTERNAL is verified by TLS, not a password method
    verifiable.update(name for method in methods for name in ON_REQUEST.get(method, ()))
    kept: list[str] = []
    for name in dict.fromkeys(value.upper().replace(",", " ").split()):
        if name in verifiable:
            kept.append(name)
            continue
        if name in _SECRET_MECHANISMS:
            reason = _UNVERIFIABLE_REASON[methods[-1]]
        elif name not in SERVER_MECHANISMS:
            reason = "smarthost does not implement it"
        else:
            reason = "no password method can verify it"
        warnings.append(f"{file}:{number}: mech_list: {reason}; removing {name} from mech_list")
    if not kept:
        raise ConfigError(
            file, number, "mech_list", f"{show(value)} leaves no mechanism that can be verified",
            f"list some of: {' '.join(verifiable_by(methods))}",
        )
    return tuple(kept)


def _log_level(file: str, entries: dict[str, tuple[str, int]]) -> int:
    value, number = entries.get("log_level", ("0", 0))
    if not value.isdigit() or not value.isascii():
        raise ConfigError(file, number, "log_level", f"{show(value)} is not a number", "use a number such as 0 or 3")
    return int(value)

