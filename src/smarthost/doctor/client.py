"""The relay client: ``relayhost`` without credentials in ``smtp_sasl_password_maps`` (with the
keys tried, the keys there are and the one needed), port 465 without wrapper mode, SASL without
TLS; and ``smarthost check --sender ADDR``: which relay and which credentials a message would use.

Only key names and user names are shown, never a password (DESIGN.md principle 9)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from dataclasses import replace as _replace
from functools import partial

from smarthost.config import Config, Params
from smarthost.doctor.context import Context
from smarthost.doctor.findings import ERROR, HINT, WARNING
from smarthost.inbound.policy import Policy, PolicyError, PolicySettings
from smarthost.outbound.credentials import candidate_keys, lookup_credentials
from smarthost.outbound.routing import NextHop, NextHopError, RoutingParams, RoutingTables, parse_nexthops, route
from smarthost.tables import Table, TableError, open_table
from smarthost.tables.lmdbtable import LmdbTable
from smarthost.tables.texthash import TexthashTable

IMPLICIT_TLS_PORT = 465
MAX_KEYS_SHOWN = 20
SMTP_TRANSPORTS = ("smtp", "relay")  # served with main.cf's settings, as the queue manager does


def check(ctx: Context) -> None:
    p = ctx.cfg.params
    _tls(ctx, p)
    relayhost = p["relayhost"]
    if not relayhost:
        return
    try:
        hops = parse_nexthops(relayhost)
    except NextHopError as e:
        ctx.out.add(ERROR, ctx.where(p, "relayhost"), f"relayhost: {e}", "relayhost = [mail.example.com]:587",
                    "client.relayhost")
        return
    for hop in hops:
        _port(ctx, p, hop)
        if p["smtp_sasl_auth_enable"]:
            _credentials(ctx, p, hop)


def _tls(ctx: Context, p: Params) -> None:
    level = p["smtp_tls_security_level"]
    if p["smtp_tls_wrappermode"] and level == "none":
        ctx.out.add(ERROR, ctx.where(p, "smtp_tls_security_level"),
                    "smtp_tls_wrappermode = yes with smtp_tls_security_level = none: every delivery is deferred",
                    "smtp_tls_security_level = encrypt", "client.tls")
    if not p["smtp_sasl_auth_enable"]:
        return
    if level == "none":
        ctx.out.add(ERROR, ctx.where(p, "smtp_tls_security_level"),
                    "smtp_sasl_auth_enable = yes with smtp_tls_security_level = none: the relay password would "
                    "cross the network in clear", "smtp_tls_security_level = encrypt", "client.sasl-without-tls")
    elif level == "may":
        ctx.out.add(HINT, ctx.where(p, "smtp_tls_security_level"),
                    "smtp_tls_security_level = may with SASL: an attacker who strips STARTTLS gets the login "
                    "in clear, or makes it fail", "smtp_tls_security_level = encrypt", "client.sasl-without-tls")


def _port(ctx: Context, p: Params, hop: NextHop) -> None:
    wrapper = p["smtp_tls_wrappermode"]
    if hop.port == IMPLICIT_TLS_PORT and not wrapper:
        ctx.out.add(ERROR, ctx.where(p, "relayhost"),
                    f"relayhost {hop.text}: port 465 speaks TLS from the first byte, but smtp_tls_wrappermode is "
                    "not set: the client waits for a greeting that never comes and the mail is deferred",
                    "smtp_tls_wrappermode = yes\nsmtp_tls_security_level = encrypt", "client.465-without-wrappermode")
    elif wrapper and hop.port != IMPLICIT_TLS_PORT:
        ctx.out.add(WARNING, ctx.where(p, "smtp_tls_wrappermode"),
                    f"smtp_tls_wrappermode = yes, but relayhost {hop.text} uses port {hop.port}, which starts "
                    "in plaintext (STARTTLS)", f"smtp_tls_wrappermode = no, or relayhost = [{hop.host}]:465",
                    "client.465-without-wrappermode")


def open_maps(cfg: Config, p: Params) -> tuple[list[Table], list[str]]:
    """The password tables that open, and the errors of those that do not."""
    tables, errors = [], []
    for spec in p["smtp_sasl_password_maps"]:
        try:
            tables.append(open_table(spec, config_dir=cfg.config_dir))
        except TableError as e:
            errors.append(str(e))
    return tables, errors


def table_keys(table: Table) -> list[str] | None:
    """The keys of a table that can list them (indexed and texthash); None otherwise."""
    try:
        if isinstance(table, LmdbTable):
            return [key for key, _ in table.items()]
        if isinstance(table, TexthashTable):
            return list(table.current())
    except (TableError, OSError):
        return None
    return None


def _credentials(ctx: Context, p: Params, hop: NextHop) -> None:
    where = ctx.where(p, "relayhost")
    if not p["smtp_sasl_password_maps"]:
        ctx.out.add(ERROR, ctx.where(p, "smtp_sasl_auth_enable"),
                    "smtp_sasl_auth_enable = yes, but smtp_sasl_password_maps is empty: the client never logs in",
                    f"smtp_sasl_password_maps = hash:{ctx.cfg.config_dir}/sasl_passwd\n"
                    f"with the line: {hop.text} USER:PASSWORD  (then: smarthost postmap "
                    f"hash:{ctx.cfg.config_dir}/sasl_passwd)", "client.credentials")
        return
    tables, errors = open_maps(ctx.cfg, p)
    if errors:
        return  # the table check says what to do
    if lookup_credentials(tables, sender="", host=hop.host, nexthop=hop.text) is not None:
        return
    tried = candidate_keys(sender="", host=hop.host, nexthop=hop.text, sender_dependent=False)
    existing = [k for t in tables for k in (table_keys(t) or [])]
    shown = ", ".join(existing[:MAX_KEYS_SHOWN]) + (" ..." if len(existing) > MAX_KEYS_SHOWN else "")
    near = [k for k in existing if _host_of(k) == hop.host.lower()]
    spec = p["smtp_sasl_password_maps"][0]
    source = spec.partition(":")[2]
    postmap = f"smarthost postmap {spec}" if spec.split(":")[0].lower() in ("hash", "btree", "lmdb") else ""
    if near:
        fix = f"in {source}, change the key {near[0]} to {hop.text} (the relayhost exactly as written)"
    else:
        fix = f"add to {source} the line: {hop.text} USER:PASSWORD"
    if postmap:
        fix += f"\nthen run: {postmap}"
    message = (f"relayhost {hop.text}: no credentials in smtp_sasl_password_maps, so the client does not log in; "
               f"looked up: {', '.join(tried)}; the table has: {shown or 'no keys (or keys it cannot list)'}")
    ctx.out.add(ERROR, where, message, fix, "client.credentials")


def _host_of(key: str) -> str:
    """``[mail.example.com]:587`` -> ``mail.example.com``."""
    key = key.lower()
    if key.startswith("["):
        return key[1:].partition("]")[0]
    return key.partition(":")[0]


# --- check --sender ------------------------------------------------------------------------


@dataclass(frozen=True)
class SenderReport:
    """Where a message from ``sender`` to ``recipient`` goes and how the client logs in there."""

    sender: str
    recipient: str
    transport: str = ""
    nexthop: str | None = None
    host: str | None = None
    port: int | None = None
    mx_lookup: bool = False
    tls_level: str | None = None
    wrappermode: bool = False
    sasl: bool = False
    keys_tried: tuple[str, ...] = ()
    key: str | None = None
    table: str | None = None
    username: str | None = None
    notes: tuple[str, ...] = field(default=())
    errors: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def human(self) -> str:
        lines = [f"message from <{self.sender}> to <{self.recipient}>:"]
        if self.transport:
            lines.append(f"  transport: {self.transport}")
        if self.nexthop is not None:
            how = "MX lookup" if self.mx_lookup else "no MX lookup"
            lines.append(f"  relay: {self.nexthop} (host {self.host}, port {self.port}, {how})")
            tls = "implicit TLS (wrapper mode)" if self.wrappermode else f"smtp_tls_security_level = {self.tls_level}"
            lines.append(f"  TLS: {tls}")
        if self.sasl:
            lines.append(f"  credentials: keys tried in order: {', '.join(self.keys_tried)}")
            if self.key is not None:
                lines.append(f"  credentials: key {self.key} in {self.table} matched; user name {self.username}")
            else:
                lines.append("  credentials: none found: the client does not log in")
        elif self.nexthop is not None:
            lines.append("  credentials: not used (smtp_sasl_auth_enable = no)")
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  error: {e}" for e in self.errors]
        return "\n".join(lines) + "\n"


def sender_report(cfg: Config, sender: str, recipient: str) -> SenderReport:
    """Route ``recipient`` for a message from ``sender`` and look up the relay credentials,
    honouring sender_dependent_relayhost_maps and smtp_sender_dependent_authentication."""
    p = cfg.params
    opener = partial(open_table, config_dir=cfg.config_dir)
    try:
        domains = Policy.build(PolicySettings(
            mydestination=p["mydestination"], relay_domains=p["relay_domains"], myhostname=p["myhostname"],
            inet_addresses_for_ip_literals=("127.0.0.1", "::1"), recipient_delimiter=p["recipient_delimiter"],
        ), open_table=opener)
        tables = RoutingTables(
            domains=domains,
            transport_maps=tuple(opener(s) for s in p["transport_maps"]),
            sender_dependent_relayhost_maps=tuple(opener(s) for s in p["sender_dependent_relayhost_maps"]),
        )
        where = route(recipient, sender, RoutingParams.from_params(p), tables)
    except (TableError, PolicyError) as e:
        return SenderReport(sender, recipient, errors=(str(e),))
    report = SenderReport(sender, recipient, transport=where.transport)
    client = _transport_params(cfg, where.transport)
    if client is None or where.nexthop is None:
        note = f"delivered by the {where.transport} transport, not relayed over SMTP"
        return _replace(report, notes=(note,))
    try:
        hop = parse_nexthops(where.nexthop)[0]
    except (NextHopError, IndexError) as e:
        return _replace(report, nexthop=where.nexthop, errors=(f"next hop {where.nexthop!r}: {e}",))
    report = _replace(report, nexthop=hop.text, host=hop.host, port=hop.port, mx_lookup=hop.mx_lookup,
                      tls_level=client["smtp_tls_security_level"], wrappermode=client["smtp_tls_wrappermode"])
    notes = []
    if hop.mx_lookup:
        notes.append(f"{hop.host} is looked up in DNS (MX); the MX host names found are tried as keys too")
    if not client["smtp_sasl_auth_enable"]:
        return _replace(report, notes=tuple(notes))
    sender_dependent = client["smtp_sender_dependent_authentication"]
    tried = candidate_keys(sender=sender, host=hop.host, nexthop=hop.text, sender_dependent=sender_dependent)
    maps, errors = open_maps(cfg, client)
    try:
        found = lookup_credentials(maps, sender=sender, host=hop.host, nexthop=hop.text,
                                   sender_dependent=sender_dependent)
    except TableError as e:
        found, errors = None, [*errors, str(e)]
    if found is None:
        return _replace(report, sasl=True, keys_tried=tuple(tried), notes=tuple(notes), errors=tuple(errors))
    return _replace(report, sasl=True, keys_tried=tuple(tried), key=found.key, table=found.table,
                    username=found.username, notes=tuple(notes), errors=tuple(errors))


def _transport_params(cfg: Config, transport: str) -> Params | None:
    if transport in SMTP_TRANSPORTS:
        return cfg.params
    for service in cfg.services:
        if service.type == "unix" and service.command == "smtp" and service.name == transport:
            return service.params
    return None

