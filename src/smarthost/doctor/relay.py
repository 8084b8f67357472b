"""Open relay: restriction lists without a relay guard or with a ``permit`` before it, a
stranger actually allowed to relay (the service's real restrictions are evaluated for an
unauthenticated client from a documentation address and a recipient in ``.invalid``),
``mynetworks`` wider than local networks and ``relay_domains`` entries that match too much.

"Local networks" are those of this machine's interfaces (:func:`local_networks`: the kernel's
routes without a gateway in ``/proc/net/route``, or ``ip -j addr``, and ``/proc/net/if_inet6``);
``Context.interfaces`` replaces them (tests). A public range is judged by its size, a private
one by whether it is one of the local networks (or inside one)."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from collections.abc import Sequence
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


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def check(ctx: Context) -> None:
    local = ctx.interfaces if ctx.interfaces is not None else local_networks()
    for service in ctx.smtpd_services:
        p = service.params
        if _has_guard(ctx, p) and not _probe(ctx, service):
            _permit_before_guard(ctx, p)
        _mynetworks(ctx, p, local)
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


# --- this machine's networks ----------------------------------------------------------------


def _proc_route(text: str) -> list[Network]:
    """IPv4 networks reached without a gateway (the interfaces' own subnets, device routes) from
    ``/proc/net/route``: hex fields in host (little-endian) order; the default route is left out."""
    nets: list[Network] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            dest, gateway, flags, mask = (int(fields[i], 16) for i in (1, 2, 3, 7))
        except ValueError:
            continue
        if gateway or not mask or not flags & 0x1:  # via a router, the default route, or down (RTF_UP)
            continue
        address = ipaddress.IPv4Address(dest.to_bytes(4, "little"))
        prefix = bin(mask).count("1")
        nets.append(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
    return nets


def _proc_inet6(text: str) -> list[Network]:
    """IPv6 networks of the interfaces' addresses from ``/proc/net/if_inet6`` (address in 32 hex
    digits, interface index, prefix length in hex, scope, flags, name)."""
    nets: list[Network] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or len(fields[0]) != 32:
            continue
        try:
            address = ipaddress.IPv6Address(int(fields[0], 16))
            nets.append(ipaddress.ip_network(f"{address}/{int(fields[2], 16)}", strict=False))
        except ValueError:
            continue
    return nets


def _ip_json(text: str) -> list[Network]:
    """The interfaces' networks from ``ip -j addr`` (iproute2)."""
    nets: list[Network] = []
    for interface in json.loads(text):
        for info in interface.get("addr_info", ()):
            if info.get("family") in ("inet", "inet6") and "local" in info:
                try:
                    nets.append(ipaddress.ip_network(f"{info['local']}/{info.get('prefixlen', 128)}", strict=False))
                except ValueError:
                    continue
    return nets


def local_networks(proc: Path = Path("/proc/net")) -> tuple[Network, ...]:
    """The networks of this machine's interfaces, loopback always first. IPv4 from the kernel's
    routes (``proc/route``), else from ``ip -j addr``; IPv6 from ``proc/if_inet6``. Only loopback
    when none of them can be read."""
    nets: list[Network] = list(LOOPBACK)
    v4: list[Network] | None = None
    try:
        v4 = _proc_route((proc / "route").read_text())
    except OSError:
        pass
    try:
        nets += _proc_inet6((proc / "if_inet6").read_text())
    except OSError:
        pass
    if v4 is None and shutil.which("ip"):
        try:
            result = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, timeout=5, check=True)
            v4 = _ip_json(result.stdout)
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    nets += v4 or []
    return tuple(dict.fromkeys(nets))


def _own(local: Sequence[Network], version: int) -> list[Network]:
    """The local networks that say where this machine is (not loopback, not link-local)."""
    return [n for n in local if n.version == version and not n.is_loopback and not n.is_link_local]


def network_text(net: Network) -> str:
    """As mynetworks writes it: ``192.168.1.0/24``, ``[fd00::]/64``."""
    return f"[{net.network_address}]/{net.prefixlen}" if net.version == 6 else str(net)


def suggested_mynetworks(local: Sequence[Network]) -> str:
    """``mynetworks = 127.0.0.0/8 [::1]/128`` and this machine's own networks."""
    own = sorted((n for n in _own(local, 4) + _own(local, 6) if n.is_private), key=lambda n: n.version)
    nets = [*LOOPBACK, *own]
    return "mynetworks = " + " ".join(network_text(n) for n in dict.fromkeys(nets))


# --- judging mynetworks ----------------------------------------------------------------------


def too_wide(net: Network, local: Sequence[Network] | None = None) -> tuple[str, str] | None:
    """(severity, why) when a mynetworks entry trusts more than local networks; None when fine.
    With ``local`` (this machine's networks) a private range must be one of them or inside one,
    unless it is no wider than they are and holds none of them (a remote office's subnet)."""
    if net.version == 6 and net.prefixlen >= 96 and net.subnet_of(ipaddress.ip_network("::ffff:0:0/96")):
        v4 = ipaddress.IPv4Address(int(net.network_address) & 0xFFFFFFFF)
        return too_wide(ipaddress.ip_network(f"{v4}/{net.prefixlen - 96}"), local)
    if net.prefixlen == 0:
        return "error", "it is every address on the Internet"
    if net.is_loopback or net.is_link_local:
        return None
    if net.is_private:
        own = _own(local or (), net.version)
        if not own or any(net.subnet_of(n) for n in own):  # type: ignore[arg-type]
            return None
        wider = net.prefixlen < min(n.prefixlen for n in own)
        if wider or any(n.subnet_of(net) for n in own):  # type: ignore[arg-type]
            return "warning", (f"it is wider than this machine's own networks "
                               f"({', '.join(network_text(n) for n in own)}): every host in it may relay")
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


def _mynetworks(ctx: Context, p: Params, local: Sequence[Network]) -> None:
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
        verdict = too_wide(net, local)
        if verdict is None:
            continue
        severity, why = verdict
        ctx.out.add(ERROR if severity == "error" else WARNING, origin,
                    f"mynetworks trusts {text} to relay without logging in: {why}",
                    f"list only your own networks: {suggested_mynetworks(local)}; "
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
