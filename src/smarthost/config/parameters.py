"""Every main.cf parameter smarthost knows: name, type, default and validation, in one table.

Names, syntax and most defaults are Postfix's (postconf(5)), so snippets from Postfix howtos
work unchanged. Where Postfix's default is unsafe ours is safe; those lines are marked
``SAFE:`` with the reason. Parameters that Postfix does not have are marked ``smarthost-only``.

A default is either text in main.cf syntax (it may use ``$name``) or a function of the other
parameters' expanded values, for defaults that Postfix computes at run time.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from smarthost.config.errors import show
from smarthost.netaddr import parse_network

Lookup = Callable[[str], str]
Default = str | Callable[[Lookup], str]


class Problem(ValueError):
    """A value that does not fit its parameter: what is wrong and how to fix it."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TIME_RE = re.compile(r"([0-9]+)([smhdw]?)", re.IGNORECASE)
_NUMBER_RE = re.compile(r"[0-9]+")
_LIST_SEPARATORS = " \t\r\n\v\f,"


def split_list(text: str) -> list[str]:
    """Split a list value on commas and whitespace, keeping ``{ ... }`` groups whole."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
        if depth == 0 and ch in _LIST_SEPARATORS:
            if current:
                items.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        items.append("".join(current))
    return items


@dataclass(frozen=True)
class Parameter:
    """One main.cf parameter. ``kind`` is str, bool, int, size, time, list or enum."""

    name: str
    kind: str
    default: Default
    minimum: int = 0
    maximum: int | None = None
    unit: str = "s"  # time: the unit of a bare number
    choices: tuple[str, ...] = ()  # enum
    aliases: Mapping[str, str] = field(default_factory=dict)  # enum: synonym -> value
    check: Callable[[Any], None] | None = None  # extra validation of the typed value

    def parse(self, text: str) -> Any:
        """Turn an expanded value into its typed value, or raise Problem."""
        value = _PARSERS[self.kind](self, text)
        if self.check is not None:
            self.check(value)
        return value

    def example(self, fallback: str) -> str:
        default = self.default if isinstance(self.default, str) else ""
        return default if default and "$" not in default else fallback


def _parse_str(p: Parameter, text: str) -> str:
    return text


def _parse_bool(p: Parameter, text: str) -> bool:
    word = text.strip().lower()
    if word in ("yes", "true"):
        return True
    if word in ("no", "false"):
        return False
    raise Problem(f"{show(text)} is not yes or no", "use yes or no")


def _in_range(p: Parameter, number: int, fix: str) -> int:
    if number < p.minimum or (p.maximum is not None and number > p.maximum):
        upper = f" to {p.maximum}" if p.maximum is not None else " or more"
        raise Problem(f"{number} is out of range", f"use a number from {p.minimum}{upper}")
    return number


def _parse_int(p: Parameter, text: str) -> int:
    word = text.strip()
    fix = f"use a whole number, e.g. {p.example(str(max(p.minimum, 1)))}"
    if not _NUMBER_RE.fullmatch(word):
        raise Problem(f"{show(text)} is not a number", fix)
    return _in_range(p, int(word), fix)


def _parse_size(p: Parameter, text: str) -> int:
    word = text.strip()
    fix = f"use a size in bytes, e.g. {p.example('10240000')}"
    if not _NUMBER_RE.fullmatch(word):
        raise Problem(f"{show(text)} is not a number", fix)
    return _in_range(p, int(word), fix)


def _parse_time(p: Parameter, text: str) -> float:
    m = _TIME_RE.fullmatch(text.strip())
    if not m:
        raise Problem(
            f"{show(text)} is not a time",
            f"use a number with an optional unit s, m, h, d or w, e.g. {p.example('300s')}",
        )
    number, unit = m.groups()
    return float(int(number) * _TIME_UNITS[(unit or p.unit).lower()])


def _parse_list(p: Parameter, text: str) -> list[str]:
    return split_list(text)


def _parse_enum(p: Parameter, text: str) -> str:
    word = text.strip().lower()
    word = p.aliases.get(word, word)
    if word not in p.choices:
        allowed = ", ".join(p.choices)
        raise Problem(f"{show(text)} is not a valid value", f"use one of {allowed}")
    return word


_PARSERS: dict[str, Callable[[Parameter, str], Any]] = {
    "str": _parse_str,
    "bool": _parse_bool,
    "int": _parse_int,
    "size": _parse_size,
    "time": _parse_time,
    "list": _parse_list,
    "enum": _parse_enum,
}


# --- checks for list values -------------------------------------------------------------

_TABLE_RE = re.compile(r"[a-z][a-z0-9_]*:", re.IGNORECASE)
_ADDRESSISH_RE = re.compile(r"[0-9.]+")


def check_networks(items: list[str]) -> None:
    """Each item is a network (netaddr's syntax), a ``type:table``, a ``/file`` or a host name."""
    for item in items:
        text = item[1:] if item.startswith("!") else item
        if text.startswith("/") or _TABLE_RE.match(text):
            continue
        try:
            parse_network(text)
        except ValueError as exc:
            if "/" in text or "[" in text or ":" in text or _ADDRESSISH_RE.fullmatch(text):
                problem, _, fix = str(exc).partition(": ")
                raise Problem(problem, fix or "use address/prefix, e.g. 192.168.1.0/24 or [2001:db8::]/32") from None


def _check_interfaces(items: list[str]) -> None:
    if len(items) > 1 and ("all" in items or "loopback-only" in items):
        raise Problem("all and loopback-only cannot be combined with addresses", "use one of them alone")
    for item in items:
        if item in ("all", "loopback-only"):
            continue
        address = item[1:-1] if item.startswith("[") and item.endswith("]") else item
        try:
            ipaddress.ip_address(address)
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9.-]+", address):
                raise Problem(
                    f"{show(item)} is not an address",
                    "use all, loopback-only, or IP addresses such as 127.0.0.1, [::1]",
                ) from None


def _check_protocols(items: list[str]) -> None:
    if not items or any(i not in ("all", "ipv4", "ipv6") for i in items) or (
        "all" in items and len(items) > 1
    ):
        raise Problem(f"{show(' '.join(items))} is not a valid value", "use all, ipv4, ipv6 or ipv4, ipv6")


_TLS_VERSION = r"(?:SSLv2|SSLv3|TLSv1|TLSv1\.1|TLSv1\.2|TLSv1\.3)"
_TLS_PROTOCOL_RE = re.compile(rf"(?:!?{_TLS_VERSION}|(?:>=|<=){_TLS_VERSION})", re.IGNORECASE)


def _check_tls_protocols(items: list[str]) -> None:
    for item in items:
        if not _TLS_PROTOCOL_RE.fullmatch(item):
            raise Problem(f"{show(item)} is not a TLS protocol", "use e.g. >=TLSv1.2, or !SSLv2, !SSLv3")


_SASL_OPTIONS = ("noanonymous", "noplaintext", "nodictionary", "noactive", "forward_secrecy", "mutual_auth")


def _check_sasl_options(items: list[str]) -> None:
    for item in items:
        if item.lower() not in _SASL_OPTIONS:
            raise Problem(f"{show(item)} is not a SASL security option", "use any of " + ", ".join(_SASL_OPTIONS))


# --- computed defaults ------------------------------------------------------------------


@functools.cache
def _fqdn() -> str:
    name = socket.getfqdn()
    return name if "." in name.strip(".") else "localhost.localdomain"


def _default_myhostname(get: Lookup) -> str:
    return _fqdn()


def _default_mydomain(get: Lookup) -> str:
    _, dot, rest = get("myhostname").partition(".")
    return rest if dot and rest else "localdomain"


def _default_smtpd_tls_security_level(get: Lookup) -> str:
    # Offer STARTTLS as soon as there is a certificate to offer; Postfix's default is none.
    return "may" if get("smtpd_tls_cert_file") or get("smtpd_tls_chain_files") else "none"


# --- the table --------------------------------------------------------------------------


def _str(name: str, default: Default = "") -> Parameter:
    return Parameter(name, "str", default)


def _bool(name: str, default: str) -> Parameter:
    return Parameter(name, "bool", default)


def _int(name: str, default: str, minimum: int = 0, maximum: int | None = None) -> Parameter:
    return Parameter(name, "int", default, minimum=minimum, maximum=maximum)


def _size(name: str, default: str) -> Parameter:
    return Parameter(name, "size", default)


def _time(name: str, default: str, unit: str = "s") -> Parameter:
    return Parameter(name, "time", default, unit=unit)


def _list(name: str, default: str = "", check: Callable[[Any], None] | None = None) -> Parameter:
    return Parameter(name, "list", default, check=check)


def _enum(name: str, default: Default, choices: str, aliases: Mapping[str, str] | None = None) -> Parameter:
    return Parameter(name, "enum", default, choices=tuple(choices.split()), aliases=aliases or {})


_TLS_CIPHER_GRADES = "export low medium high null"
_SMTP_TLS_LEVELS = "none may encrypt dane dane-only fingerprint verify secure"

_TABLE: tuple[Parameter, ...] = (
    # Identity and addresses.
    _str("myhostname", _default_myhostname),
    _str("mydomain", _default_mydomain),
    _str("myorigin", "$myhostname"),
    _list("mydestination", "$myhostname, localhost.$mydomain, localhost"),
    # Postfix's default (style "subnet") trusts every host on the local subnets. Ours trusts
    # loopback only whatever the style ("subnet" and "class" warn and act as "host").
    _list("mynetworks", "127.0.0.0/8 [::1]/128", check=check_networks),
    _enum("mynetworks_style", "host", "host subnet class"),
    # SAFE: Postfix before 3.x relayed to $mydestination too; we relay to nothing by default.
    _list("relay_domains", ""),
    _list("inet_interfaces", "all", check=_check_interfaces),
    _list("inet_protocols", "all", check=_check_protocols),
    # Files and processes.
    _str("config_directory", "/etc/smarthost"),
    _str("queue_directory", "/var/spool/smarthost"),
    _str("data_directory", "/var/lib/smarthost"),
    _str("maillog_file", ""),  # empty: the mail log goes to stderr
    _str("mail_name", "smarthost"),
    _str("mail_owner", "smarthost"),
    _str("syslog_name", "$mail_name"),
    _str("syslog_facility", "mail"),
    _str("compatibility_level", "3.6"),
    _str("readme_directory", "no"),
    _bool("biff", "no"),  # Postfix: yes; we never notify comsat
    _bool("append_dot_mydomain", "no"),
    _str("default_database_type", "hash"),  # hash, btree and lmdb all compile to LMDB here
    _int("default_process_limit", "100", minimum=1),
    # smarthost-only: SMTP worker processes sharing the listening sockets. Two measured best on
    # two cores shared with the load generator (bench/accept.py: +35% at 100 sessions, even at 20).
    _int("smtpd_worker_processes", "2", minimum=1, maximum=32),
    # Sizes.
    _size("message_size_limit", "10240000"),
    _size("mailbox_size_limit", "51200000"),
    # smarthost-only: message bodies larger than this are stored in their own files.
    _size("queue_large_body_threshold", "262144"),
    # SMTP server.
    _str("smtpd_banner", "$myhostname ESMTP $mail_name"),
    _list("smtpd_client_restrictions"),
    _list("smtpd_helo_restrictions"),
    _list("smtpd_sender_restrictions"),
    _list("smtpd_relay_restrictions", "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination"),
    _list("smtpd_recipient_restrictions"),
    _list("smtpd_data_restrictions"),
    _list("smtpd_end_of_data_restrictions"),
    _bool("smtpd_helo_required", "no"),
    _bool("smtpd_delay_reject", "yes"),
    _bool("smtpd_reject_unlisted_recipient", "yes"),
    _bool("strict_rfc821_envelopes", "no"),
    _int("smtpd_recipient_limit", "1000"),
    _time("smtpd_timeout", "300s"),
    _int("smtpd_hard_error_limit", "20"),
    _int("smtpd_soft_error_limit", "10"),
    _time("smtpd_error_sleep_time", "1s"),
    _int("smtpd_client_connection_count_limit", "50"),
    _list("smtpd_client_event_limit_exceptions", "$mynetworks", check=check_networks),
    _int("smtpd_client_auth_rate_limit", "0"),
    _time("anvil_rate_time_unit", "60s"),
    # smarthost-only: failed AUTH attempts in one session before 421 and disconnect.
    _int("smtpd_sasl_auth_failure_limit", "3", minimum=1),
    # As in Postfix 3.9, "yes" means "normalize".
    _enum("smtpd_forbid_bare_newline", "normalize", "normalize reject no", {"yes": "normalize"}),
    _list("smtpd_forbid_bare_newline_exclusions", "$mynetworks", check=check_networks),
    _bool("smtpd_forbid_unauth_pipelining", "yes"),
    # SAFE: Postfix answers VRFY by default, which lets anyone probe for valid addresses.
    _bool("disable_vrfy_command", "yes"),
    _list("smtpd_sender_login_maps"),
    # SMTP server TLS. An empty level means "none", as in Postfix.
    _enum("smtpd_tls_security_level", _default_smtpd_tls_security_level, "none may encrypt", {"": "none"}),
    _str("smtpd_tls_cert_file"),
    _str("smtpd_tls_key_file", "$smtpd_tls_cert_file"),
    _list("smtpd_tls_chain_files"),
    _str("smtpd_tls_CAfile"),
    _str("smtpd_tls_CApath"),
    _int("smtpd_tls_loglevel", "0", maximum=4),
    # SAFE: Postfix still allows TLSv1 and TLSv1.1 by default; both are broken (RFC 8996).
    _list("smtpd_tls_protocols", ">=TLSv1.2", check=_check_tls_protocols),
    _list("smtpd_tls_mandatory_protocols", ">=TLSv1.2", check=_check_tls_protocols),
    _enum("smtpd_tls_ciphers", "medium", _TLS_CIPHER_GRADES),
    _enum("smtpd_tls_mandatory_ciphers", "medium", _TLS_CIPHER_GRADES),
    _list("smtpd_tls_exclude_ciphers"),
    _list("smtpd_tls_mandatory_exclude_ciphers"),  # in addition, with mandatory TLS
    _bool("smtpd_tls_wrappermode", "no"),
    _bool("smtpd_tls_received_header", "no"),
    # SAFE: Postfix offers AUTH over plaintext by default; we offer it only after TLS.
    _bool("smtpd_tls_auth_only", "yes"),
    _bool("smtpd_tls_ask_ccert", "no"),
    _list("relay_clientcerts"),
    _enum("smtpd_tls_fingerprint_digest", "sha256", "sha256 sha1 md5"),
    _str("smtp_tls_cert_file"),
    _str("smtp_tls_key_file", "$smtp_tls_cert_file"),
    _bool("smtpd_tls_req_ccert", "no"),
    _str("smtpd_tls_session_cache_database"),
    _time("smtpd_tls_session_cache_timeout", "3600s"),
    _str("tls_random_source", "dev:/dev/urandom"),  # accepted; Python's ssl needs no seeding
    # SMTP server SASL.
    _bool("smtpd_sasl_auth_enable", "no"),
    _enum("smtpd_sasl_type", "cyrus", "cyrus dovecot"),
    _str("smtpd_sasl_path", "smtpd"),
    _str("smtpd_sasl_service", "smtp"),
    _list("smtpd_sasl_security_options", "noanonymous", check=_check_sasl_options),
    _list("smtpd_sasl_tls_security_options", "$smtpd_sasl_security_options", check=_check_sasl_options),
    _str("smtpd_sasl_local_domain"),
    _bool("smtpd_sasl_authenticated_header", "no"),
    _list("smtpd_sasl_exceptions_networks", "", check=check_networks),
    _list("smtpd_sasl_mechanism_filter", "!external, static:rest"),
    _int("smtpd_sasl_response_limit", "12288", minimum=1),
    _str("smtpd_sasl_application_name"),  # old name of smtpd_sasl_path, see RENAMED
    _bool("broken_sasl_auth_clients", "no"),
    _str("cyrus_sasl_config_path"),
    # SMTP client.
    _str("relayhost"),
    _list("smtp_fallback_relay"),
    _bool("smtp_sasl_auth_enable", "no"),
    _list("smtp_sasl_password_maps"),
    _list("smtp_sasl_security_options", "noplaintext, noanonymous", check=_check_sasl_options),
    _list("smtp_sasl_tls_security_options", "$smtp_sasl_security_options", check=_check_sasl_options),
    _list("smtp_sasl_mechanism_filter"),
    # SAFE: Postfix's client sends in plaintext unless told otherwise; ours uses TLS when
    # the peer offers it. An empty level means "none", as in Postfix.
    _enum("smtp_tls_security_level", "may", _SMTP_TLS_LEVELS, {"": "none"}),
    _str("smtp_tls_CAfile"),
    _str("smtp_tls_CApath"),
    _bool("smtp_tls_wrappermode", "no"),
    _list("smtp_tls_policy_maps"),
    _int("smtp_tls_loglevel", "0", maximum=4),
    _bool("smtp_tls_note_starttls_offer", "no"),
    _str("smtp_tls_session_cache_database"),
    _bool("smtp_sender_dependent_authentication", "no"),
    _list("sender_dependent_relayhost_maps"),
    _list("transport_maps"),
    _str("default_transport", "smtp"),
    _str("relay_transport", "relay"),
    _str("local_transport", "local:$myhostname"),
    _str("virtual_transport", "virtual"),
    _str("empty_address_relayhost_maps_lookup_key", "<>"),
    _int("smtp_line_length_limit", "998"),
    _enum("smtp_address_preference", "any", "ipv6 ipv4 any"),
    _int("smtp_mx_address_limit", "5"),
    _int("default_destination_concurrency_limit", "20"),
    _int("smtp_destination_concurrency_limit", "$default_destination_concurrency_limit"),
    _int("default_destination_recipient_limit", "50", minimum=1),
    _int("qmgr_message_active_limit", "20000", minimum=1),
    # The relay client (smtp(8)).
    _str("smtp_helo_name", "$myhostname"),
    _time("smtp_connect_timeout", "30s"),
    _time("smtp_helo_timeout", "300s"),
    _time("smtp_starttls_timeout", "300s"),
    _time("smtp_mail_timeout", "300s"),
    _time("smtp_rcpt_timeout", "300s"),
    _time("smtp_quit_timeout", "300s"),
    _time("smtp_data_init_timeout", "120s"),
    _time("smtp_data_xfer_timeout", "180s"),
    _time("smtp_data_done_timeout", "600s"),
    _time("smtp_rset_timeout", "20s"),
    _time("smtp_connection_cache_time_limit", "2s"),
    _list("smtp_tls_protocols", ">=TLSv1.2", check=_check_tls_protocols),  # SAFE: Postfix allows TLSv1
    _list("smtp_tls_mandatory_protocols", ">=TLSv1.2", check=_check_tls_protocols),
    _enum("smtp_tls_ciphers", "medium", _TLS_CIPHER_GRADES),
    _enum("smtp_tls_mandatory_ciphers", "medium", _TLS_CIPHER_GRADES),
    _list("smtp_tls_exclude_ciphers"),
    _list("smtp_tls_mandatory_exclude_ciphers"),  # in addition, at mandatory levels
    _list("smtp_tls_verify_cert_match", "hostname"),
    _list("smtp_tls_secure_cert_match", "nexthop, dot-nexthop"),
    # Bounces. Ours adds 2bounce to notify_classes: a failed bounce is never dropped silently.
    _list("notify_classes", "resource, software, 2bounce"),
    _str("2bounce_notice_recipient", "postmaster"),
    _str("double_bounce_sender", "double-bounce"),
    # Deprecated TLS switches, mapped onto the *_tls_security_level names (see DEPRECATED).
    _bool("smtpd_use_tls", "no"),
    _bool("smtpd_enforce_tls", "no"),
    _bool("smtp_use_tls", "no"),
    _bool("smtp_enforce_tls", "no"),
    # Local delivery and aliases.
    # Ours: empty (Postfix: hash:/etc/aliases). Nothing outside the config directory is read
    # unless main.cf names it; set alias_maps = hash:/etc/aliases and run smarthost postmap.
    _list("alias_maps", ""),
    _list("alias_database", "$alias_maps"),
    _list("virtual_alias_maps"),
    _list("virtual_mailbox_maps"),
    _str("virtual_mailbox_base"),
    _list("virtual_mailbox_domains", "$virtual_mailbox_maps"),
    _list("virtual_alias_domains", "$virtual_alias_maps"),
    # SAFE/ours: Maildir is the only local mailbox format we write (Postfix's empty default means mbox).
    _str("home_mailbox", "Maildir/"),
    _str("mailbox_command"),
    _list("local_recipient_maps", "proxy:unix:passwd.byname $alias_maps"),
    _list("virtual_uid_maps"),
    _list("virtual_gid_maps"),
    _int("virtual_minimum_uid", "100"),
    _size("bounce_size_limit", "50000"),
    _str("recipient_delimiter"),
    # Queue and retries.
    _time("minimal_backoff_time", "300s"),
    _time("maximal_backoff_time", "4000s"),
    _time("queue_run_delay", "300s"),
    _time("maximal_queue_lifetime", "5d", unit="d"),
    _time("bounce_queue_lifetime", "5d", unit="d"),
    _time("delay_warning_time", "0h", unit="h"),
)

PARAMETERS: Mapping[str, Parameter] = {p.name: p for p in _TABLE}


@dataclass(frozen=True)
class TlsSwitches:
    """Deprecated ``*_use_tls`` / ``*_enforce_tls`` booleans and the level they map to."""

    use: str
    enforce: str
    level: str


# yes/no switches from Postfix 2.2 that *_tls_security_level replaced; an explicit level wins.
DEPRECATED: tuple[TlsSwitches, ...] = (
    TlsSwitches("smtpd_use_tls", "smtpd_enforce_tls", "smtpd_tls_security_level"),
    TlsSwitches("smtp_use_tls", "smtp_enforce_tls", "smtp_tls_security_level"),
)

# Old name -> new name, same value; an explicit new name wins.
RENAMED: Mapping[str, str] = {"smtpd_sasl_application_name": "smtpd_sasl_path"}
