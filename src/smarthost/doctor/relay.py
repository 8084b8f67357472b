"""Open relay: restriction lists without a relay guard or with a ``permit`` before it, a
stranger actually allowed to relay (the service's real restrictions are evaluated for an
unauthenticated client from a documentation address and a recipient in ``.invalid``),
``mynetworks`` wider than local networks and ``relay_domains`` entries that match too much."""

from __future__ import annotations

import ipaddress
from functools import partial
from pathlib import Path

from smarthost.config import Params, Service
from smarthost.doctor.context import Context
from smarthost.doctor.findings import ERROR, HINT, WARNING
from smarthost.inbound.policy import ClientFacts, Policy, PolicyError, PolicySettings
from smarthost.netaddr import NetworkList, parse_network
from smarthost.tables import TableError, open_table, read_list_file

GUARDS = ("reject_unauth_destination", "defer_unauth_destination", "reject", "defer")
LISTS = ("smtpd_relay_restrictions", "smtpd_recipient_restrictions")
# RFC 5737 / RFC 3849 documentation addresses and an RFC 2606 domain: nobody's real clients.
STRANGERS = ("203.0.113.45", "2001:db8::45")
PROBE_SENDER = "probe@relay-test.invalid"
PROBE_RECIPIENT = "victim@relay-test.invalid"
SAFE_RELAY = "smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"


def check(ctx: Context) -> None:
    for service in ctx.smtpd_services:
        p = service.params
        if _has_guard(ctx, p) and not _probe(ctx, service):
            _permit_before_guard(ctx, p)
        _mynetworks(ctx, p)
        _relay_domains(ctx, p)
    main = ctx.cfg.params
    if not main.is_default("mynetworks_style") and not main.is_default("mynetworks"):
        ctx.out.add(HINT, ctx.where(main, "mynetworks_style"), "mynetworks_style is ignored because mynetworks is set",
                    "remove the mynetworks_style line", "relay.mynetworks-style")


def items(tokens: list[str]) -> list[str]:
    """Restriction list tokens grouped into items: ``check_client_access hash:/x`` stays one."""
    grouped: list[str] = []
    for token in tokens:
        if grouped and ":" in token and grouped[-1].lower().startswith("check_") and " " not in grouped[-1]:
            grouped[-1] += " " + token
        else:
            grouped.append(token)
    return grouped


def _name(item: str) -> str:
    return item.split()[0].lower()


def _has_guard(ctx: Context, p: Params) -> bool:
    if any(_name(i) in GUARDS for param in LISTS for i in items(p[param])):
        return True
    # Point at the list someone wrote; relay restrictions first (that is where the guard belongs).
    param = next((n for n in LISTS if not p.is_default(n)), LISTS[0])
    ctx.out.add(ERROR, ctx.where(p, param),
                "neither smtpd_relay_restrictions nor smtpd_recipient_restrictions has reject_unauth_destination "
                "(or defer_unauth_destination): this would be an open relay, so the server refuses to start",
                SAFE_RELAY, "relay.no-guard")
    return False


def _policy(ctx: Context, p: Params) -> Policy | None:
    tables = partial(open_table, config_dir=ctx.cfg.config_dir)
    try:
        mynetworks = NetworkList.parse(p["mynetworks"], open_table=tables)
        return Policy.build(PolicySettings(
            client_restrictions=p["smtpd_client_restrictions"],
            helo_restrictions=p["smtpd_helo_restrictions"],
            sender_restrictions=p["smtpd_sender_restrictions"],
            relay_restrictions=p["smtpd_relay_restrictions"],
            recipient_restrictions=p["smtpd_recipient_restrictions"],
            data_restrictions=p["smtpd_data_restrictions"],
            mynetworks=mynetworks,
            mydestination=p["mydestination"],
            relay_domains=p["relay_domains"],
            myhostname=p["myhostname"],
            recipient_delimiter=p["recipient_delimiter"],
            sender_login_maps=p["smtpd_sender_login_maps"],
            myorigin=p["myorigin"],
            sasl_auth_enable=p["smtpd_sasl_auth_enable"],
        ), open_table=tables)
    except (ValueError, TableError, PolicyError):
        return None  # the start check reports why the server would not start


def _probe(ctx: Context, service: Service) -> bool:
    """Let a stranger try to relay through this service's restrictions; True if it may."""
    p = service.params
    policy = _policy(ctx, p)
    if policy is None:
        return False
    for address in STRANGERS:
        facts = ClientFacts(address=address, name="unknown", helo="relay-test.invalid", tls=True)
        decision = policy.check_recipient(facts, PROBE_SENDER, PROBE_RECIPIENT)
        if decision.action != "permit":
            continue
        param = decision.stage.value if decision.stage else LISTS[1]
        who = decision.restriction or "the end of the lists"
        message = (f"open relay: a client at {address} that did not log in may send to any domain "
                   f"(tested with <{PROBE_RECIPIENT}>): {who} in {param} lets it through")
        if decision.restriction == "permit_mynetworks":
            fix = ("list only your own networks in mynetworks, e.g.\nmynetworks = 127.0.0.0/8 [::1]/128 "
                   f"(now: mynetworks = {' '.join(p['mynetworks'])})")
        else:
            fix = f"{param} = {', '.join(_guard_before(items(p[param]), decision.restriction))}"
        ctx.out.add(ERROR, ctx.where(p, param), message, fix, "relay.open-relay")
        return True
    return False


def _guard_before(listed: list[str], restriction: str) -> list[str]:
    """The list with reject_unauth_destination moved right before the first ``restriction``."""
    rest = [i for i in listed if _name(i) != "reject_unauth_destination"]
    at = next((n for n, i in enumerate(rest) if _name(i) == restriction), len(rest))
    return [*rest[:at], "reject_unauth_destination", *rest[at:]]


def _permit_before_guard(ctx: Context, p: Params) -> None:
    for param in LISTS:
        listed = items(p[param])
        guard = next((n for n, i in enumerate(listed) if _name(i) in GUARDS), None)
        if guard is None:
            continue
        if any(_name(i) == "permit" for i in listed[:guard]):
            ctx.out.add(WARNING, ctx.where(p, param),
                        f"permit comes before {listed[guard]} in {param}: every recipient passes this list, "
                        "so only the other list keeps this server from being an open relay",
                        f"{param} = {', '.join(_guard_before(listed, 'permit'))}", "relay.permit-before-guard")


def too_wide(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[str, str] | None:
    """(severity, why) when a mynetworks entry trusts more than local networks; None when fine."""
    if net.version == 6 and net.prefixlen >= 96 and net.subnet_of(ipaddress.ip_network("::ffff:0:0/96")):
        v4 = ipaddress.IPv4Address(int(net.network_address) & 0xFFFFFFFF)
        return too_wide(ipaddress.ip_network(f"{v4}/{net.prefixlen - 96}"))
    if net.prefixlen == 0:
        return "error", "it is every address on the Internet"
    if net.is_private or net.is_loopback or net.is_link_local:
        return None
    if net.version == 4:
        if net.prefixlen <= 8:
            return "error", f"it holds {net.num_addresses:,} public addresses that are not yours"
        if net.prefixlen < 24:
            return "warning", f"it holds {net.num_addresses:,} public addresses; are they all your hosts?"
    else:
        if net.prefixlen < 32:
            return "error", "it is larger than any one site's IPv6 allocation"
        if net.prefixlen < 48:
            return "warning", "it is larger than one site's IPv6 prefix (/48); are they all your hosts?"
    return None


def _mynetworks(ctx: Context, p: Params) -> None:
    where = ctx.where(p, "mynetworks")
    entries: list[tuple[str, tuple[str, int | None]]] = []
    for item in p["mynetworks"]:
        if item.startswith("!"):
            continue
        if item.startswith("/"):
            try:
                entries += [(sub, (item, line)) for line, sub in read_list_file(Path(item)) if not sub.startswith("!")]
            except TableError:
                continue  # reported by the start check
        else:
            entries.append((item, where))
    for text, origin in entries:
        try:
            net = parse_network(text)
        except ValueError:
            continue  # a host name or a table
        verdict = too_wide(net)
        if verdict is None:
            continue
        severity, why = verdict
        ctx.out.add(ERROR if severity == "error" else WARNING, origin,
                    f"mynetworks trusts {text} to relay without logging in: {why}",
                    "list only your own networks, e.g. mynetworks = 127.0.0.0/8 [::1]/128 192.168.1.0/24; "
                    "remote users should log in (permit_sasl_authenticated) instead", "relay.mynetworks")


def _relay_domains(ctx: Context, p: Params) -> None:
    where = ctx.where(p, "relay_domains")
    for item in p["relay_domains"]:
        text = item.lower().lstrip("!")
        if text.startswith("static:"):
            why = "a static: table matches every domain"
        elif "*" in text:
            why = '"*" is no wildcard here; relaying for every domain would make this an open relay'
        elif text.startswith("/") or ":" in text:
            continue
        elif "." not in text.strip(".") and text.strip(".") != "localhost":
            why = f"it matches every domain under .{text.strip('.')}" if text.strip(".") else "it matches every domain"
        else:
            continue
        ctx.out.add(ERROR, where, f"relay_domains entry {item}: {why}",
                    "list the domains you relay for by name, e.g. relay_domains = example.com, example.org",
                    "relay.relay-domains")
