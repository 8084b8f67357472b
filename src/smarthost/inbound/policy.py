"""SMTP restrictions with Postfix 3.x semantics, as a pure object (DESIGN.md principle 7).

:meth:`Policy.build` parses the ``smtpd_*_restrictions`` lists once, opens their tables and
precomputes the network and domain lists; the ``check_*`` methods then only evaluate. The only
I/O is table lookups through the :class:`~smarthost.tables.Table` interface.

Evaluation follows Postfix: a list is evaluated left to right and stops at the first restriction
that decides; ``permit`` ends that list only and evaluation goes on with the next list; ``reject``
and ``defer`` end everything; a list that runs out permits. With ``smtpd_delay_reject = yes`` (the
default) the client, HELO and sender lists are evaluated at RCPT time, before the relay and
recipient lists, so that the reply names the recipient and the log has the whole story.

Reply texts are Postfix's (e.g. ``554 5.7.1 <bob@foreign.example>: Relay access denied``), so
log-watching tools written for Postfix keep working.

Sender login maps (postconf(5) ``smtpd_sender_login_maps`` and ``smtpd_sender_restrictions``): the
tables say which SASL login names own a MAIL FROM address; the ``reject_*sender_login_mismatch``
restrictions then refuse an authenticated client that uses an address it does not own (``553 5.7.1
<addr>: Sender address rejected: not owned by user alice``) and, while SASL is enabled, an
unauthenticated client that uses an address someone owns (``... not logged in``). The null sender
is never checked. Table keys are looked up one by one in every table in order, the first hit
decides: ``user+ext@domain``, ``user@domain``, then ``user+ext`` and ``user`` only when the domain is
$myorigin, in $mydestination or an address literal of this server, then ``@domain``. An address
without a domain is taken as ``user@$myorigin``. The owners are a comma/space list, compared with
the login case-insensitively. (Postfix asks regexp and CIDR tables for the full address only; here
every table is asked every key, as the Table interface does not say which kind a table is.)

Address extensions (postconf(5) ``recipient_delimiter``) are split as Postfix does, through
:mod:`smarthost.tables.keys`: at the first delimiter character of any kind, and not at all when it
starts the local part, for ``postmaster``, or (with ``-`` among the delimiters) for ``owner-*`` and
``*-request``.

Not implemented yet, and refused at build time with a clear message so that no one believes a
protection is active when it is not: restrictions that need DNS (``reject_unknown_*``,
``reject_rbl_client``, ...), recipient maps (``reject_unlisted_recipient``), policy services,
``smtpd_restriction_classes`` and the access table actions with side effects (``HOLD``,
``DISCARD``, ``REDIRECT``, ``FILTER``, ``BCC``, ``PREPEND``, ``WARN``, ``INFO``, ``DEFER_IF_*``),
which defer mail with "Server configuration error" when a table returns them.
"""

from __future__ import annotations

import difflib
import enum
import functools
import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from smarthost import tables
from smarthost.netaddr import NetworkList, client_address
from smarthost.tables import Table, TableError, read_list_file, split_list
from smarthost.tables.keys import NULL_SENDER_KEY, domain_keys, split_extension, virtual_keys

log = logging.getLogger(__name__)

__all__ = [
    "ClientFacts",
    "Decision",
    "Policy",
    "PolicyError",
    "PolicySettings",
    "Stage",
    "valid_hostname",
]


class PolicyError(Exception):
    """The restriction settings are unusable; the message names the parameter, the restriction
    and a fix (the config layer adds file:line)."""


class Stage(enum.Enum):
    """A restriction list, named by its Postfix parameter."""

    CLIENT = "smtpd_client_restrictions"
    HELO = "smtpd_helo_restrictions"
    SENDER = "smtpd_sender_restrictions"
    RELAY = "smtpd_relay_restrictions"
    RECIPIENT = "smtpd_recipient_restrictions"
    DATA = "smtpd_data_restrictions"


@dataclass(frozen=True, slots=True)
class ClientFacts:
    """What the session knows about the client. ``name`` is the verified hostname or
    ``"unknown"``; ``helo`` is ``""`` until HELO/EHLO."""

    address: str
    name: str = "unknown"
    helo: str = ""
    sasl_username: str | None = None
    tls: bool = False
    ccert_fingerprint: str | None = None  # the verified client certificate's, smtpd_tls_fingerprint_digest

    @property
    def label(self) -> str:
        """``name[address]``, how Postfix names a client in replies and logs."""
        return f"{self.name}[{self.address}]"


Action = Literal["permit", "reject", "defer", "dunno"]


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a check. For ``reject`` and ``defer`` the reply to send is ``code``,
    ``enhanced`` (RFC 3463) and ``text``; ``reason`` is the line for the log (the reply, plus the
    detail behind a generic "Server configuration error" or "Temporary lookup failure").
    ``restriction`` names what decided (``""`` when the lists ran out) and ``stage`` its list.
    The ``check_*`` methods return ``permit``, ``reject`` or ``defer``; ``dunno`` ("no opinion")
    only occurs inside an evaluation."""

    action: Action
    code: int = 0
    enhanced: str = ""
    text: str = ""
    reason: str = ""
    restriction: str = ""
    stage: Stage | None = None

    @property
    def rejected(self) -> bool:
        """True for ``reject`` and ``defer``: the command is refused (5xx or 4xx)."""
        return self.action in ("reject", "defer")

    @property
    def reply_line(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


def _default_mynetworks() -> NetworkList:
    return NetworkList.parse(["127.0.0.0/8", "[::1]/128"])


@dataclass(frozen=True)
class PolicySettings:
    """The parameters restrictions depend on; defaults are Postfix's, except ``mydestination``
    and ``relay_domains`` (empty: the config layer fills them in from main.cf).

    A restriction list item may hold several tokens (``"check_client_access texthash:/x"``).
    ``mydestination`` and ``relay_domains`` items are domains, ``.domain`` (subdomains),
    ``!domain``, ``/file/name`` or ``type:table``; ``relay_domains`` also matches subdomains of a
    plain ``domain`` (Postfix's ``parent_domain_matches_subdomains`` default), ``mydestination``
    does not. ``inet_addresses_for_ip_literals`` are the server's own addresses: ``user@[addr]``
    is local only for those. ``myorigin`` (empty: ``myhostname``, Postfix's default) completes a
    sender address without a domain for the sender login maps.

    ``sender_login_maps`` is ``smtpd_sender_login_maps``: ``type:name`` tables (a string of several,
    separated by commas or spaces, or a list), opened once at build time. ``sasl_auth_enable`` is
    ``smtpd_sasl_auth_enable`` for the service: with ``no`` the sender login restrictions do not
    refuse unauthenticated clients (Postfix: they apply "when SASL is enabled"). Its default here is
    ``True``, not Postfix's ``no``, so that a caller who forgets it errs on the side of refusing."""

    client_restrictions: Sequence[str] = ()
    helo_restrictions: Sequence[str] = ()
    sender_restrictions: Sequence[str] = ()
    relay_restrictions: Sequence[str] = ("permit_mynetworks", "permit_sasl_authenticated", "defer_unauth_destination")
    recipient_restrictions: Sequence[str] = ()
    data_restrictions: Sequence[str] = ()
    mynetworks: NetworkList = field(default_factory=_default_mynetworks)
    mydestination: Sequence[str] = ()
    relay_domains: Sequence[str] = ()
    virtual_domains: Sequence[str] = ()  # virtual_alias_domains + virtual_mailbox_domains: ours too
    myhostname: str = "localhost"
    inet_addresses_for_ip_literals: Sequence[str] = ()
    recipient_delimiter: str = ""
    delay_reject: bool = True
    myorigin: str = ""
    sender_login_maps: str | Sequence[str] = ()
    sasl_auth_enable: bool = True
    relay_clientcerts: str | Sequence[str] = ()  # fingerprints that permit_tls_clientcerts lets relay


# A compiled restriction: request in, decision out (None: no opinion, go on).
_Rule = Callable[["_Request"], "Decision | None"]


@dataclass(slots=True)
class _Request:
    facts: ClientFacts
    sender: str | None
    recipient: str | None


# Postfix's reply codes (postconf(5) defaults): reject_code, defer_code, relay_domains_reject_code,
# non_fqdn_reject_code, invalid_hostname_reject_code, access_map_reject_code, access_map_defer_code,
# plaintext_reject_code.
_REJECT_CODE = 554
_DEFER_CODE = 450
_RELAY_CODE = 554
_NON_FQDN_CODE = 504
_BAD_NAME_CODE = 501
_ACCESS_REJECT_CODE = 554
_ACCESS_DEFER_CODE = 450
_PLAINTEXT_CODE = 450
# Fixed in Postfix, not a parameter: the reply to a sender login mismatch.
_LOGIN_MISMATCH_CODE = 553

_CLASS_NAMES = {
    Stage.CLIENT: "Client host",
    Stage.HELO: "Helo command",
    Stage.SENDER: "Sender address",
    Stage.RELAY: "Recipient address",
    Stage.RECIPIENT: "Recipient address",
    Stage.DATA: "Data command",
}

# Postfix restrictions that smarthost does not implement yet (refused at build time).
_NOT_YET = frozenset(
    """
    reject_unknown_client_hostname reject_unknown_client reject_unknown_reverse_client_hostname
    reject_unknown_helo_hostname reject_unknown_hostname reject_unknown_sender_domain
    reject_unknown_recipient_domain reject_unlisted_recipient reject_unlisted_sender
    reject_unverified_sender reject_unverified_recipient reject_rbl_client reject_rhsbl_client
    reject_rhsbl_reverse_client reject_rhsbl_helo reject_rhsbl_sender reject_rhsbl_recipient
    permit_dnswl_client permit_rhswl_client check_policy_service reject_unauth_pipelining permit_tls_clientcerts
    permit_tls_all_clientcerts check_ccert_access check_sasl_access reject_multi_recipient_bounce
    permit_mx_backup check_relay_domains warn_if_reject defer_if_permit defer_if_reject sleep
    check_client_a_access check_client_mx_access check_client_ns_access
    check_reverse_client_hostname_access check_reverse_client_hostname_a_access
    check_reverse_client_hostname_mx_access check_reverse_client_hostname_ns_access
    check_helo_a_access check_helo_mx_access check_helo_ns_access check_sender_a_access
    check_sender_mx_access check_sender_ns_access check_recipient_a_access
    check_recipient_mx_access check_recipient_ns_access
    """.split()
)

# Access table actions (access(5)) with side effects that are not implemented yet.
_UNSUPPORTED_ACTIONS = frozenset(
    "HOLD DISCARD REDIRECT FILTER BCC PREPEND WARN INFO DEFER_IF_REJECT DEFER_IF_PERMIT HANGUP".split()
)

# Postfix refuses to start unless the relay or recipient list holds one of these (no open relay).
_RELAY_GUARDS = ("reject_unauth_destination", "defer_unauth_destination", "reject", "defer")

_ENHANCED_RE = re.compile(r"([245])\.(\d{1,3}\.\d{1,3})(?:\s+|$)")
_CODE_RE = re.compile(r"\d\d\d")
_PERMIT_FELL_THROUGH = Decision("permit")


def _printable(s: str) -> str:
    """Text from the client, made safe to put in a reply or a log line."""
    return s if s.isprintable() else "".join(c if c.isprintable() else "?" for c in s)


def _normalize_domain(domain: str) -> str:
    return domain.rstrip(".").lower()


def valid_hostname(name: str) -> bool:
    """A syntactically valid host name (RFC 1035 §2.3.1 letters, digits and hyphens, as relaxed by
    RFC 1123 §2.1 to allow a leading digit): labels of 1-63 characters, no hyphen at either end,
    at most 255 characters, not all-numeric. Like Postfix, underscores and (for SMTPUTF8) non-ASCII
    letters are tolerated. One trailing dot is allowed."""
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 255:
        return False
    numeric = True
    for label in name.split("."):
        if not label or len(label) > 63 or label[0] == "-" or label[-1] == "-":
            return False
        if not all(c.isalnum() or c in "-_" for c in label):
            return False
        numeric = numeric and label.isdigit()
    return not numeric


def _valid_address_literal(literal: str) -> bool:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 §4.1.3)."""
    inner = literal[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


def _is_literal(domain: str) -> bool:
    return len(domain) >= 2 and domain[0] == "[" and domain[-1] == "]"


def _fqdn_address(address: str) -> bool:
    """Whether ``address`` has a fully-qualified domain (or an address literal)."""
    _, at, domain = address.rpartition("@")
    if not at:
        return False
    if _is_literal(domain):
        return True
    return valid_hostname(domain) and "." in domain.rstrip(".")


class _DomainList:
    """mydestination / relay_domains: first matching entry decides, as Postfix's match lists."""

    def __init__(self, param: str, items: Iterable[str], parent_style: bool, open_table) -> None:
        self._parent_style = parent_style
        # Entries: ("set", negate, exact names, ".suffixes") for runs of plain patterns, or
        # ("table", negate, table).
        self._entries: list[tuple] = []
        for item in items:
            self._add(param, item, False, open_table, where=param)

    def _add(self, param, item, negate, open_table, where) -> None:
        text = item.strip()
        while text.startswith("!"):
            negate, text = not negate, text[1:].strip()
        if not text:
            raise PolicyError(f'{where}: empty entry "{item}": write a domain, e.g. example.com')
        if text.startswith("/"):
            try:
                lines = read_list_file(Path(text))
            except TableError as e:
                raise PolicyError(f"{where}: {e}") from None
            for lineno, sub in lines:
                self._add(param, sub, negate, open_table, where=f"{param}: {text}:{lineno}")
            return
        if ":" in text and not _is_literal(text):
            try:
                table = open_table(text)
            except TableError as e:
                raise PolicyError(f"{where}: {e}") from None
            self._entries.append(("table", negate, table))
            return
        domain = _normalize_domain(text)
        if not self._entries or self._entries[-1][0] != "set" or self._entries[-1][1] != negate:
            self._entries.append(("set", negate, set(), set()))
        _, _, exact, suffixes = self._entries[-1]
        (suffixes if domain.startswith(".") else exact).add(domain)

    def matches(self, domain: str) -> bool:
        """May raise TableError from a ``type:table`` entry."""
        if not self._entries:  # e.g. mydestination or relay_domains left empty: checked per RCPT
            return False
        domain = _normalize_domain(domain)
        parents = domain_keys(domain)
        for entry in self._entries:
            kind, negate = entry[0], entry[1]
            if kind == "set":
                exact, suffixes = entry[2], entry[3]
                if domain in exact:
                    return not negate
                for parent in parents[1:]:
                    if (self._parent_style and parent in exact) or "." + parent in suffixes:
                        return not negate
            else:
                table: Table = entry[2]
                if table.lookup(domain) is not None:
                    return not negate
                for parent in parents[1:]:
                    key = parent if self._parent_style else "." + parent
                    if table.lookup(key) is not None:
                        return not negate
        return False


class Policy:
    """Compiled restrictions; build with :meth:`build`."""

    def __init__(self, settings: PolicySettings, open_table: Callable[[str], Table]) -> None:
        self._settings = settings
        self._open_table = open_table
        self._tables: dict[str, Table] = {}
        self._mynetworks = settings.mynetworks
        self._mydestination = _DomainList("mydestination", _items("mydestination", settings.mydestination), False, open_table)
        self._relay_domains = _DomainList("relay_domains", _items("relay_domains", settings.relay_domains), True, open_table)
        self._virtual_domains = _DomainList(
            "virtual_mailbox_domains", _items("virtual_mailbox_domains", settings.virtual_domains), False, open_table
        )
        self._own_literals: set[str] = set()
        for addr in settings.inet_addresses_for_ip_literals:
            parsed = client_address(addr)
            if parsed is None:
                raise PolicyError(f'inet_interfaces: "{addr}" is not an IP address')
            self._own_literals.add(str(parsed))
        self._value_rules: dict[tuple[str, Stage], tuple[tuple[str, _Rule], ...] | str] = {}
        self._myorigin = _normalize_domain(settings.myorigin or settings.myhostname)
        self._login_maps = self._open_maps("smtpd_sender_login_maps", settings.sender_login_maps)
        self._clientcerts = self._open_maps("relay_clientcerts", settings.relay_clientcerts)
        lists = {
            Stage.CLIENT: settings.client_restrictions,
            Stage.HELO: settings.helo_restrictions,
            Stage.SENDER: settings.sender_restrictions,
            Stage.RELAY: settings.relay_restrictions,
            Stage.RECIPIENT: settings.recipient_restrictions,
            Stage.DATA: settings.data_restrictions,
        }
        names: dict[Stage, list[str]] = {}
        self._lists: dict[Stage, tuple[_Rule, ...]] = {}
        for stage, items in lists.items():
            names[stage], self._lists[stage] = self._compile_list(stage, items)
        if not any(n in _RELAY_GUARDS for n in names[Stage.RELAY] + names[Stage.RECIPIENT]):
            raise PolicyError(
                "smtpd_relay_restrictions, smtpd_recipient_restrictions: specify at least one of "
                f"{', '.join(_RELAY_GUARDS)}, or anyone can relay through this server; e.g. "
                "smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"
            )
        order = [Stage.CLIENT, Stage.HELO, Stage.SENDER] if settings.delay_reject else []
        order += [Stage.RELAY, Stage.RECIPIENT]
        self._rcpt_stages = tuple((s, self._lists[s]) for s in order if self._lists[s])

    @classmethod
    def build(cls, settings: PolicySettings, *, open_table: Callable[[str], Table] = tables.open_table) -> Policy:
        """Parse and check ``settings`` once. Raises PolicyError naming the parameter, the
        restriction and a fix."""
        return cls(settings, open_table)

    # --- public checks -------------------------------------------------------------------------

    def check_client(self, facts: ClientFacts) -> Decision:
        return self._evaluate(((Stage.CLIENT, self._lists[Stage.CLIENT]),), _Request(facts, None, None))

    def check_helo(self, facts: ClientFacts) -> Decision:
        return self._evaluate(((Stage.HELO, self._lists[Stage.HELO]),), _Request(facts, None, None))

    def check_sender(self, facts: ClientFacts, sender: str) -> Decision:
        return self._evaluate(((Stage.SENDER, self._lists[Stage.SENDER]),), _Request(facts, sender, None))

    def check_recipient(self, facts: ClientFacts, sender: str, recipient: str) -> Decision:
        """RCPT TO: with ``delay_reject`` the client, HELO and sender lists, then the relay and
        recipient lists (Postfix 3.x order)."""
        return self._evaluate(self._rcpt_stages, _Request(facts, sender, recipient))

    def check_data(self, facts: ClientFacts, sender: str, recipients: Sequence[str]) -> Decision:
        """DATA: the data list; recipient-based restrictions apply only with exactly one recipient."""
        rules = self._lists[Stage.DATA]
        if not rules:  # smtpd_data_restrictions is empty by default: nothing to evaluate
            return _PERMIT_FELL_THROUGH
        recipient = recipients[0] if len(recipients) == 1 else None
        return self._evaluate(((Stage.DATA, rules),), _Request(facts, sender, recipient))

    def is_local_domain(self, domain: str) -> bool:
        """Whether mail for ``domain`` is delivered here: mydestination, or an address literal
        of this server. May raise TableError."""
        if _is_literal(domain):
            addr = client_address(domain)
            return addr is not None and str(addr) in self._own_literals
        return self._mydestination.matches(domain)

    def is_relay_domain(self, domain: str) -> bool:
        """Whether ``domain`` (or a parent) is in relay_domains. May raise TableError."""
        return not _is_literal(domain) and self._relay_domains.matches(domain)

    def client_certificate_name(self, fingerprint: str) -> str | None:
        """The name ``relay_clientcerts`` gives a verified client certificate's fingerprint (the
        first word of the value: ``FINGERPRINT name``), or None. The SASL identity of AUTH
        EXTERNAL. May raise TableError."""
        for table in self._clientcerts:
            value = table.lookup(fingerprint)
            if value is not None:
                words = value.split()
                return words[0] if words else None
        return None

    def is_authorized_destination(self, recipient: str) -> bool:
        """Postfix's permit_auth_destination test with ``allow_untrusted_routing = no``: the domain
        is in mydestination, a virtual alias or mailbox domain, or relay_domains.

        A local part holding ``@``, ``%`` or ``!`` is sender-specified routing
        (``"user@foreign"@ours``, ``user%foreign@ours``, ``foreign!user@ours``): never authorized,
        whatever the domain. An address without a domain is ours (RFC 5321 §4.1.1.3 allows only
        ``postmaster`` so) unless it routes (``user%foreign``, ``foreign!user``)."""
        local, at, domain = recipient.rpartition("@")
        if not at:
            return "%" not in recipient and "!" not in recipient
        if "@" in local or "%" in local or "!" in local or not domain:
            return False
        return self.is_local_domain(domain) or self._virtual_domains.matches(domain) or self.is_relay_domain(domain)

    # --- evaluation ----------------------------------------------------------------------------

    def _evaluate(self, stages, req: _Request) -> Decision:
        last = _PERMIT_FELL_THROUGH
        for stage, rules in stages:
            decision = self._run(stage, rules, req)
            if decision is None:
                continue
            if decision.action != "permit":
                return decision
            last = decision
        return last

    def _run(self, stage: Stage, rules: Iterable[_Rule], req: _Request) -> Decision | None:
        try:
            for rule in rules:
                decision = rule(req)
                if decision is not None:
                    return decision
        except TableError as e:
            return self._lookup_failure(stage, req, "", e)
        except Exception:  # a bug must defer mail, never reject it (DESIGN.md principle 8)
            log.exception("restriction evaluation failed in %s", stage.value)
            return Decision("defer", 451, "4.3.0", "Temporary internal error, try again later",
                            "451 4.3.0 internal error (see the log)", "", stage)
        return None

    @staticmethod
    def _target(stage: Stage, req: _Request) -> tuple[str, str]:
        """(reply name, reply class) for replies made by list-level restrictions like ``reject``."""
        if stage is Stage.CLIENT:
            name = req.facts.label
        elif stage is Stage.HELO:
            name = req.facts.helo
        elif stage is Stage.SENDER:
            name = req.sender or ""
        elif stage is Stage.DATA:
            name = "DATA"
        else:
            name = req.recipient or ""
        return name, _CLASS_NAMES[stage]

    @staticmethod
    def _reply(action: Action, code: int, enhanced: str, text: str, name: str, stage: Stage, detail: str = "") -> Decision:
        text = _printable(text)
        line = f"{code} {enhanced} {text}"
        return Decision(action, code, enhanced, text, f"{line} ({_printable(detail)})" if detail else line, name, stage)

    def _lookup_failure(self, stage: Stage, req: _Request, target: str, error: TableError) -> Decision:
        target = target or self._target(stage, req)[0]
        log.error("%s: table lookup failed: %s", stage.value, error)
        return self._reply("defer", 451, "4.3.0", f"<{target}>: Temporary lookup failure", "", stage, str(error))

    def _config_error(self, stage: Stage, name: str, detail: str) -> Decision:
        log.error("%s: %s", stage.value, detail)
        return self._reply("defer", 451, "4.3.5", "Server configuration error", name, stage, detail)

    # --- compiling -----------------------------------------------------------------------------

    def _compile_list(self, stage: Stage, items: Sequence[str]) -> tuple[list[str], tuple[_Rule, ...]]:
        try:
            tokens = split_list(" ".join(items))
        except ValueError as e:
            raise PolicyError(f"{stage.value}: {e}") from None
        names: list[str] = []
        rules: list[_Rule] = []
        i = 0
        while i < len(tokens):
            name = tokens[i].lower()
            i += 1
            if name in self._TABLE_RESTRICTIONS:
                if i >= len(tokens) or ":" not in tokens[i]:
                    raise PolicyError(
                        f"{stage.value}: {name} needs a table argument, e.g. {name} texthash:/etc/smarthost/access"
                    )
                spec = tokens[i]
                i += 1
                rules.append(self._TABLE_RESTRICTIONS[name](self, stage, name, self._table(stage, name, spec)))
            else:
                rules.append(self._simple_rule(stage, name))
            names.append(name)
        return names, tuple(rules)

    def _open_maps(self, param: str, value: str | Sequence[str]) -> tuple[Table, ...]:
        maps = []
        for spec in _items(param, [value] if isinstance(value, str) else value):
            if ":" not in spec:
                raise PolicyError(
                    f'{param}: "{spec}" is not a table: write type:name, e.g. texthash:/etc/smarthost/{param}'
                )
            table = self._tables.get(spec)
            if table is None:
                try:
                    table = self._tables[spec] = self._open_table(spec)
                except TableError as e:
                    raise PolicyError(f"{param}: {spec}: {e}") from None
            maps.append(table)
        return tuple(maps)

    def _table(self, stage: Stage, name: str, spec: str) -> Table:
        table = self._tables.get(spec)
        if table is None:
            try:
                table = self._tables[spec] = self._open_table(spec)
            except TableError as e:
                raise PolicyError(f"{stage.value}: {name} {spec}: {e}") from None
        return table

    def _simple_rule(self, stage: Stage, name: str) -> _Rule:
        factory = self._SIMPLE_RESTRICTIONS.get(_ALIASES.get(name, name))
        if factory is not None:
            return factory(self, stage, name)
        if name in _NOT_YET:
            raise PolicyError(f"{stage.value}: {name} is not implemented in smarthost yet; remove it from the list")
        if name in self._TABLE_RESTRICTIONS:
            raise PolicyError(f"{stage.value}: {name} needs a table argument")
        if ":" in name:
            raise PolicyError(f'{stage.value}: table "{name}" without a check_*_access restriction before it')
        known = sorted(set(self._SIMPLE_RESTRICTIONS) | set(self._TABLE_RESTRICTIONS) | set(_ALIASES))
        close = difflib.get_close_matches(name, known, n=1)
        hint = f'did you mean "{close[0]}"?' if close else f"known restrictions: {', '.join(known)}"
        raise PolicyError(f'{stage.value}: unknown restriction "{name}"; {hint}')

    # Simple restrictions: factory(policy, stage, name) -> rule.

    def _r_permit(self, stage: Stage, name: str) -> _Rule:
        decision = Decision("permit", restriction=name, stage=stage)
        return lambda req: decision

    def _r_reject(self, stage: Stage, name: str) -> _Rule:
        def rule(req: _Request) -> Decision:
            target, cls = self._target(stage, req)
            return self._reply("reject", _REJECT_CODE, "5.7.1", f"<{target}>: {cls} rejected: Access denied", name, stage)

        return rule

    def _r_defer(self, stage: Stage, name: str) -> _Rule:
        def rule(req: _Request) -> Decision:
            target, cls = self._target(stage, req)
            return self._reply("defer", _DEFER_CODE, "4.7.1", f"<{target}>: {cls} rejected: Access denied", name, stage)

        return rule

    def _r_permit_mynetworks(self, stage: Stage, name: str) -> _Rule:
        decision = Decision("permit", restriction=name, stage=stage)
        contains = self._mynetworks.contains
        return lambda req: decision if contains(req.facts.address) else None

    def _r_permit_sasl_authenticated(self, stage: Stage, name: str) -> _Rule:
        decision = Decision("permit", restriction=name, stage=stage)
        return lambda req: decision if req.facts.sasl_username else None

    def _r_permit_tls_clientcerts(self, stage: Stage, name: str) -> _Rule:
        """postconf(5): permit when the client certificate's fingerprint is in relay_clientcerts.
        Only a certificate that verified against smtpd_tls_CAfile gets this far (tls.py)."""
        if not self._clientcerts:
            raise PolicyError(f"{stage.value}: {name} needs relay_clientcerts, the table of client certificate "
                              "fingerprints (smarthost cert show prints them); e.g. relay_clientcerts = "
                              "texthash:/etc/smarthost/relay_clientcerts")
        decision = Decision("permit", restriction=name, stage=stage)

        def rule(req: _Request) -> Decision | None:
            fingerprint = req.facts.ccert_fingerprint
            if not fingerprint:
                return None
            try:
                found = any(table.lookup(fingerprint) is not None for table in self._clientcerts)
            except TableError as e:
                return self._lookup_failure(stage, req, req.facts.label, e)
            return decision if found else None

        return rule

    def _r_sender_login_mismatch(self, stage: Stage, name: str, *, authenticated: Literal["all", "listed"] | None,
                                 unauthenticated: bool) -> _Rule:
        """postconf(5) smtpd_sender_restrictions. For an authenticated client, ``authenticated``
        says which senders its login must own: ``"all"`` (an unlisted sender is refused too),
        ``"listed"`` (only those in the maps), ``None`` (not checked). With ``unauthenticated``, and
        SASL enabled, a client that is not logged in may not use a listed sender."""
        if not self._login_maps:
            raise PolicyError(
                f"{stage.value}: {name} needs smtpd_sender_login_maps, the table of the SASL logins that own "
                "each sender address; e.g. smtpd_sender_login_maps = texthash:/etc/smarthost/sender_logins"
            )
        check_unauthenticated = unauthenticated and self._settings.sasl_auth_enable

        def rule(req: _Request) -> Decision | None:
            sender, login = req.sender, req.facts.sasl_username
            if not sender:  # no MAIL FROM yet, or the null sender <>: Postfix exempts both
                return None
            if not (authenticated if login else check_unauthenticated):
                return None
            try:
                owners = self._sender_owners(sender)
            except TableError as e:
                return self._lookup_failure(stage, req, sender, e)
            if not login:
                if owners is None:
                    return None
                text = f"<{sender}>: Sender address rejected: not logged in"
            else:
                if owners is None and authenticated == "listed":  # an unlisted sender is anyone's
                    return None
                if owners is not None and login.casefold() in owners:
                    return None
                text = f"<{sender}>: Sender address rejected: not owned by user {login}"
            return self._reply("reject", _LOGIN_MISMATCH_CODE, "5.7.1", text, name, stage)

        return rule

    def _sender_owners(self, sender: str) -> set[str] | None:
        """The case-folded SASL logins that own ``sender`` (``None``: not in the maps). Every key
        is tried in every table before the next key (the first hit decides, postconf(5)
        smtpd_sender_login_maps). May raise TableError."""
        local, at, domain = sender.rpartition("@")
        if not at:
            local, domain = sender, ""
        domain = _normalize_domain(domain) or self._myorigin  # "user" is looked up as user@$myorigin
        local_domain = domain == self._myorigin or self.is_local_domain(domain)
        for key in virtual_keys(f"{local}@{domain}", self._settings.recipient_delimiter, local_domain=local_domain):
            for table in self._login_maps:
                value = table.lookup(key)
                if value is not None:
                    return {owner.casefold() for owner in value.replace(",", " ").split()}
        return None

    def _r_permit_inet_interfaces(self, stage: Stage, name: str) -> _Rule:
        decision = Decision("permit", restriction=name, stage=stage)

        def rule(req: _Request) -> Decision | None:
            addr = client_address(req.facts.address)
            return decision if addr is not None and str(addr) in self._own_literals else None

        return rule

    def _r_permit_auth_destination(self, stage: Stage, name: str) -> _Rule:
        decision = Decision("permit", restriction=name, stage=stage)

        def rule(req: _Request) -> Decision | None:
            if req.recipient is not None and self.is_authorized_destination(req.recipient):
                return decision
            return None

        return rule

    def _unauth_destination(self, stage: Stage, name: str, action: Action) -> _Rule:
        # defer_unauth_destination turns relay_domains_reject_code 554 into 454, as Postfix does.
        code, enhanced = (_RELAY_CODE, "5.7.1") if action == "reject" else (_RELAY_CODE - 100, "4.7.1")

        def rule(req: _Request) -> Decision | None:
            if req.recipient is None or self.is_authorized_destination(req.recipient):
                return None
            return self._reply(action, code, enhanced, f"<{req.recipient}>: Relay access denied", name, stage)

        return rule

    def _r_reject_unauth_destination(self, stage: Stage, name: str) -> _Rule:
        return self._unauth_destination(stage, name, "reject")

    def _r_defer_unauth_destination(self, stage: Stage, name: str) -> _Rule:
        return self._unauth_destination(stage, name, "defer")

    def _r_reject_non_fqdn_sender(self, stage: Stage, name: str) -> _Rule:
        def rule(req: _Request) -> Decision | None:
            sender = req.sender
            if not sender or _fqdn_address(sender):  # the null sender <> is exempt
                return None
            text = f"<{sender}>: Sender address rejected: need fully-qualified address"
            return self._reply("reject", _NON_FQDN_CODE, "5.5.2", text, name, stage)

        return rule

    def _r_reject_non_fqdn_recipient(self, stage: Stage, name: str) -> _Rule:
        def rule(req: _Request) -> Decision | None:
            rcpt = req.recipient
            if not rcpt or _fqdn_address(rcpt):
                return None
            text = f"<{rcpt}>: Recipient address rejected: need fully-qualified address"
            return self._reply("reject", _NON_FQDN_CODE, "5.5.2", text, name, stage)

        return rule

    def _r_reject_non_fqdn_helo_hostname(self, stage: Stage, name: str) -> _Rule:
        def rule(req: _Request) -> Decision | None:
            helo = req.facts.helo
            if not helo or _is_literal(helo) or (valid_hostname(helo) and "." in helo.rstrip(".")):
                return None
            text = f"<{helo}>: Helo command rejected: need fully-qualified hostname"
            return self._reply("reject", _NON_FQDN_CODE, "5.5.2", text, name, stage)

        return rule

    def _r_reject_invalid_helo_hostname(self, stage: Stage, name: str) -> _Rule:
        def rule(req: _Request) -> Decision | None:
            helo = req.facts.helo
            if not helo:
                return None
            if _is_literal(helo):
                if _valid_address_literal(helo):
                    return None
                text = f"<{helo}>: Helo command rejected: invalid ip address"
            elif valid_hostname(helo):
                return None
            else:
                text = f"<{helo}>: Helo command rejected: Invalid name"
            return self._reply("reject", _BAD_NAME_CODE, "5.5.2", text, name, stage)

        return rule

    def _r_reject_plaintext_session(self, stage: Stage, name: str) -> _Rule:
        def rule(req: _Request) -> Decision | None:
            if req.facts.tls:
                return None
            return self._reply("defer", _PLAINTEXT_CODE, "4.7.1", "Session encryption is required", name, stage)

        return rule

    _SIMPLE_RESTRICTIONS: dict[str, Callable[[Policy, Stage, str], _Rule]] = {
        "permit": _r_permit,
        "reject": _r_reject,
        "defer": _r_defer,
        "permit_mynetworks": _r_permit_mynetworks,
        "permit_sasl_authenticated": _r_permit_sasl_authenticated,
        "permit_tls_clientcerts": _r_permit_tls_clientcerts,
        "permit_inet_interfaces": _r_permit_inet_interfaces,
        "permit_auth_destination": _r_permit_auth_destination,
        "reject_unauth_destination": _r_reject_unauth_destination,
        "defer_unauth_destination": _r_defer_unauth_destination,
        "reject_non_fqdn_sender": _r_reject_non_fqdn_sender,
        "reject_non_fqdn_recipient": _r_reject_non_fqdn_recipient,
        "reject_non_fqdn_helo_hostname": _r_reject_non_fqdn_helo_hostname,
        "reject_invalid_helo_hostname": _r_reject_invalid_helo_hostname,
        "reject_plaintext_session": _r_reject_plaintext_session,
        "reject_sender_login_mismatch": functools.partial(
            _r_sender_login_mismatch, authenticated="all", unauthenticated=True),
        "reject_authenticated_sender_login_mismatch": functools.partial(
            _r_sender_login_mismatch, authenticated="all", unauthenticated=False),
        "reject_unauthenticated_sender_login_mismatch": functools.partial(
            _r_sender_login_mismatch, authenticated=None, unauthenticated=True),
        "reject_known_sender_login_mismatch": functools.partial(
            _r_sender_login_mismatch, authenticated="listed", unauthenticated=True),
    }

    # Access tables (access(5)): factory(policy, stage, name, table) -> rule.

    def _access(self, stage: Stage, name: str, table: Table, keys: Iterable[str], req: _Request,
                target: str, cls: str) -> Decision | None:
        """Look ``keys`` up in order; the first one found decides (``DUNNO`` included)."""
        for key in keys:
            try:
                value = table.lookup(key)
            except TableError as e:
                return self._lookup_failure(stage, req, target, e)
            if value is not None:
                return self._access_result(stage, name, table, value, req, target, cls)
        return None

    def _access_result(self, stage: Stage, name: str, table: Table, value: str, req: _Request,
                       target: str, cls: str) -> Decision | None:
        parts = value.split(None, 1)
        if not parts:
            return self._config_error(stage, name, f"{table.name}: empty result")
        word, text = parts[0].upper(), (parts[1].strip() if len(parts) > 1 else "")
        if word == "OK" or (word.isascii() and word.isdigit() and not text):  # all-numerical means OK (access(5))
            return Decision("permit", restriction=name, stage=stage)
        if word == "DUNNO":
            return None
        if word in ("REJECT", "DEFER"):
            code = _ACCESS_REJECT_CODE if word == "REJECT" else _ACCESS_DEFER_CODE
            return self._table_reply(stage, name, code, text or "Access denied", target, cls)
        if _CODE_RE.fullmatch(word) and text:
            if word[0] not in "45":
                return self._config_error(stage, name, f'{table.name}: bad reply code "{word}": use 4xx or 5xx')
            return self._table_reply(stage, name, int(word), text, target, cls)
        if word in _UNSUPPORTED_ACTIONS:
            return self._config_error(stage, name, f'{table.name}: access action "{word}" is not supported yet')
        rules = self._value_rules_for(value, stage)
        if isinstance(rules, str):
            return self._config_error(stage, name, f'{table.name}: result "{value[:100]}": {rules}')
        for _, rule in rules:
            decision = rule(req)
            if decision is not None:
                return decision
        return None

    def _table_reply(self, stage: Stage, name: str, code: int, text: str, target: str, cls: str) -> Decision:
        default = "5.7.1" if code >= 500 else "4.7.1"
        m = _ENHANCED_RE.match(text)
        if m:  # RFC 3463 §3: the class must agree with the reply code
            enhanced, text = f"{code // 100}.{m.group(2)}", text[m.end():]
        else:
            enhanced = default
        action: Action = "reject" if code >= 500 else "defer"
        return self._reply(action, code, enhanced, f"<{target}>: {cls} rejected: {text}", name, stage)

    def _value_rules_for(self, value: str, stage: Stage) -> tuple[tuple[str, _Rule], ...] | str:
        """Restriction names returned by an access table (e.g. ``permit_mynetworks``), compiled
        once per value; only restrictions without a table argument. A string is an error text."""
        key = (value, stage)
        cached = self._value_rules.get(key)
        if cached is None:
            try:
                cached = tuple((t.lower(), self._simple_rule(stage, t.lower())) for t in split_list(value))
            except (PolicyError, ValueError) as e:
                cached = str(e)
            if len(self._value_rules) >= 1024:
                self._value_rules.clear()
            self._value_rules[key] = cached
        return cached

    def _address_keys(self, address: str) -> list[str]:
        """access(5) lookup order for an email address: ``user+ext@domain``, ``user@domain``,
        ``domain`` and its parents, ``user+ext@``, ``user@``. The null sender is ``<>``.

        Unlike :func:`~smarthost.tables.keys.access_address_keys`, the address keys keep the case
        the client sent (indexed tables fold case themselves; a case-sensitive regexp sees the
        address as sent), and an address without a domain is looked up as it is too."""
        if not address:
            return [NULL_SENDER_KEY]
        local, at, domain = address.rpartition("@")
        if not at:
            local, domain = address, ""
        base, extension = split_extension(local, self._settings.recipient_delimiter)
        keys = [address]
        if extension is not None and domain:
            keys.append(f"{base}@{domain}")
        keys += domain_keys(domain)
        keys.append(f"{local}@")
        if extension is not None:
            keys.append(f"{base}@")
        return keys

    @staticmethod
    def _client_keys(facts: ClientFacts) -> list[str]:
        """check_client_access order (Postfix): hostname and parent domains, then the address and
        its shorter prefixes (``192.0.2.7``, ``192.0.2``, ``192.0``, ``192``; IPv6 cut at ``:``)."""
        keys = []
        if facts.name and facts.name != "unknown":
            keys += domain_keys(facts.name)
        addr = client_address(facts.address)
        text = str(addr) if addr is not None else facts.address
        delim = ":" if ":" in text else "."
        while text:
            keys.append(text)
            text = text.rpartition(delim)[0]
        return keys

    def _t_client(self, stage: Stage, name: str, table: Table) -> _Rule:
        def rule(req: _Request) -> Decision | None:
            f = req.facts
            return self._access(stage, name, table, self._client_keys(f), req, f.label, "Client host")

        return rule

    def _t_helo(self, stage: Stage, name: str, table: Table) -> _Rule:
        def rule(req: _Request) -> Decision | None:
            helo = req.facts.helo
            if not helo:
                return None
            keys = domain_keys(helo)
            return self._access(stage, name, table, keys, req, helo, "Helo command")

        return rule

    def _t_sender(self, stage: Stage, name: str, table: Table) -> _Rule:
        def rule(req: _Request) -> Decision | None:
            if req.sender is None:
                return None
            keys = self._address_keys(req.sender)
            return self._access(stage, name, table, keys, req, req.sender, "Sender address")

        return rule

    def _t_recipient(self, stage: Stage, name: str, table: Table) -> _Rule:
        def rule(req: _Request) -> Decision | None:
            if req.recipient is None:
                return None
            keys = self._address_keys(req.recipient)
            return self._access(stage, name, table, keys, req, req.recipient, "Recipient address")

        return rule

    def _t_ccert(self, stage: Stage, name: str, table: Table) -> _Rule:
        def rule(req: _Request) -> Decision | None:
            fingerprint = req.facts.ccert_fingerprint
            if not fingerprint:
                return None
            return self._access(stage, name, table, (fingerprint,), req, req.facts.label, "Client certificate")

        return rule

    _TABLE_RESTRICTIONS: dict[str, Callable[[Policy, Stage, str, Table], _Rule]] = {
        "check_ccert_access": _t_ccert,
        "check_client_access": _t_client,
        "check_helo_access": _t_helo,
        "check_sender_access": _t_sender,
        "check_recipient_access": _t_recipient,
    }


# Names from Postfix before 2.3, still common in howtos.
_ALIASES = {
    "reject_invalid_hostname": "reject_invalid_helo_hostname",
    "reject_non_fqdn_hostname": "reject_non_fqdn_helo_hostname",
}


def _items(param: str, items: Sequence[str]) -> list[str]:
    try:
        return split_list(" ".join(items))
    except ValueError as e:
        raise PolicyError(f"{param}: {e}") from None
