"""End-to-end relay: satellite → server → sink, smarthost against Postfix, in one invocation.

Two chains of the classic recipe, each ending in its own ``smtp-sink`` (Postfix's test server;
one file per message under /dev/shm, so the sink's disk writes cost the same for both chains and
next to nothing):

- **satellite**: accepts from loopback (``mynetworks``) and relays everything through
  ``relayhost = [127.0.0.1]:SERVER_PORT`` with ``smtp_sasl_auth_enable = yes``,
  ``smtp_sasl_password_maps = hash:DIR/sasl_passwd`` (compiled by the chain's own ``postmap``),
  ``smtp_sasl_security_options = noanonymous``, ``smtp_tls_security_level = encrypt``;
- **server**: the recipe's server (bench/common.py): STARTTLS, AUTH only after TLS, relaying
  only for authenticated clients (loopback is not in ``mynetworks``); Postfix with a Cyrus
  ``saslauthd -a sasldb -c``, smarthost with ``smarthost authd -c``; it relays to the sink with
  ``relayhost`` (no TLS: smtp-sink has none).

smarthost's roles run their queue managers (a ``qmgr`` line in master.cf). Each run injects
``--messages`` messages of ``--size`` bytes into the satellite with ``smtp-source`` (one
connection per message, ``--sessions`` at once) and measures the time until the last one reached
the sink (the newest sink file's modification time), msgs/s, and the CPU of each chain (satellite
+ server + auth daemon process trees, from /proc), of the sink and of smtp-source. A run passes
only when the sink got exactly the messages sent and both queues are empty again.

Run as root on Debian with the peers installed, from the repository:
``.venv/bin/python bench/relay.py [--messages 2000] [--runs 3] [--sessions 20] [--size 4096]``.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import pwd
import resource
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from common import (
    ROOT,
    SMARTHOST,
    CyrusSaslauthd,
    SmarthostAuthd,
    TLSFiles,
    make_tls_files,
    median_of,
    postfix_auth_server,
    smarthost_auth_server,
    versions,
    wait_for_time_wait_below,
    write_results,
)
from peers import (
    PeerError,
    PostfixInstance,
    SmarthostInstance,
    free_port,
    make_shared_dir,
    peer_command,
    tail,
    tree_cpu_seconds,
    wait_for_port,
)

SENDER = "app@satellite.example"
RECIPIENT = "rcpt@remote.example"  # a foreign domain: both hops relay it onward
LOGIN = "satellite"
DRAIN_TIMEOUT = 20.0  # seconds for the queues to empty once the sink has everything
QMGR_LINE = "qmgr unix n - n 300 1 qmgr\n"
TLSPROXY_LINE = "tlsproxy unix - - n - 0 tlsproxy\n"
CHAINS = ("postfix", "postfix-reuse", "smarthost")


class Sink:
    """``smtp-sink`` on a free loopback port, one file per message under a tmpfs directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.dir.mkdir(mode=0o755)
        postfix = pwd.getpwnam("postfix")
        os.chown(self.dir, postfix.pw_uid, postfix.pw_gid)  # smtp-sink writes as postfix (-u)
        # -a: no AUTH offered (the servers do not log in to their next hop); 256: listen backlog.
        self.process = subprocess.Popen(
            [peer_command("smtp-sink") or "smtp-sink", "-u", "postfix", "-a", "-d", f"{self.dir}/%H%M%S.",
             f"127.0.0.1:{self.port}", "256"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, alive=lambda: self.process.poll() is None)

    def files(self) -> list[os.DirEntry]:
        return [entry for entry in os.scandir(self.dir) if entry.is_file()]

    def count(self) -> int:
        return len(self.files())

    def newest_mtime(self) -> float:
        return max((entry.stat().st_mtime for entry in self.files()), default=0.0)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Chain:
    name: str
    port: int  # the satellite's SMTP port
    roles: Callable[[], dict[str, int]]  # root pid of each process tree: satellite, server, auth daemon
    queued: Callable[[], int]  # messages in both queues
    sink: Sink
    logs: Callable[[], str]  # the tails of the chain's logs, for error messages


@dataclass
class Run:
    chain: str
    sessions: int
    wall_s: float  # injection start → the last message in the sink
    inject_s: float  # smtp-source's own run time (the satellite's accept)
    msgs_per_s: float
    chain_cpu_us_per_msg: float
    sink_cpu_us_per_msg: float
    client_cpu_us_per_msg: float
    role_cpu_us_per_msg: dict[str, float]


def one_run(chain: Chain, smtp_source: str, messages: int, size: int, sessions: int, timeout: float) -> Run:
    wait_for_time_wait_below()
    before = chain.sink.count()
    command = [smtp_source, "-m", str(messages), "-l", str(size), "-s", str(sessions),
               "-f", SENDER, "-t", RECIPIENT, f"inet:127.0.0.1:{chain.port}"]
    roles = chain.roles()
    roles_before = {role: tree_cpu_seconds(pid) for role, pid in roles.items()}
    sink_before = tree_cpu_seconds(chain.sink.pid)
    client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    inject = time.time() - start
    client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise PeerError(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    deadline = time.monotonic() + timeout
    while (arrived := chain.sink.count() - before) < messages and time.monotonic() < deadline:
        time.sleep(0.05)
    if arrived < messages:
        raise PeerError(f"{chain.name}: {arrived} of {messages} messages reached the sink after {timeout:.0f}s\n"
                        f"{chain.logs()}")
    last = chain.sink.newest_mtime()
    role_cpu = {role: tree_cpu_seconds(pid) - roles_before[role] for role, pid in roles.items()}
    sink_cpu = tree_cpu_seconds(chain.sink.pid) - sink_before
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while (queued := chain.queued()) and time.monotonic() < deadline:
        time.sleep(0.1)
    arrived = chain.sink.count() - before
    if queued or arrived != messages:
        raise PeerError(f"{chain.name}: sent {messages}, the sink got {arrived}, {queued} still queued\n{chain.logs()}")
    client_cpu = (client_after.ru_utime + client_after.ru_stime) - (client_before.ru_utime + client_before.ru_stime)
    wall = last - start
    return Run(chain.name, sessions, wall, inject, messages / wall, sum(role_cpu.values()) / messages * 1e6,
               sink_cpu / messages * 1e6, client_cpu / messages * 1e6,
               {role: cpu / messages * 1e6 for role, cpu in role_cpu.items()})


# --- the chains ------------------------------------------------------------------------------


def start_postfix_chain(name: str, workdir: Path, shm: Path, tls: TLSFiles, password: str, started: list) -> Chain:
    """``postfix``: the recipe as howtos write it. ``postfix-reuse``: the satellite also keeps its
    TLS connections to the server open for the next messages, which Postfix (3.4 and later) does
    only with ``smtp_tls_connection_reuse = yes`` and a ``tlsproxy`` service; without it every
    message to the server costs a TLS handshake and an AUTH."""
    cyrus = CyrusSaslauthd(workdir / f"{name}-cyrus", {LOGIN: password})
    started.append(cyrus)
    cyrus.start()
    sink = Sink(shm / name)
    started.append(sink)
    sink.start()
    server = postfix_auth_server(workdir / f"{name}-server", tls, cyrus, {
        "myhostname": "server.postfix.bench.example",
        "relayhost": f"[127.0.0.1]:{sink.port}",
        "smtp_tls_security_level": "none",
    })
    started.append(server)
    server.start()
    nexthop = f"[127.0.0.1]:{server.port}"
    satellite_dir = workdir / f"{name}-satellite"
    satellite_dir.mkdir(mode=0o755)
    reuse = {"smtp_tls_connection_reuse": "yes"} if name == "postfix-reuse" else {}
    satellite = PostfixInstance(satellite_dir, free_port(), {
        "myhostname": "satellite.postfix.bench.example",
        "relayhost": nexthop,
        "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_password_maps": f"hash:{satellite_dir / 'etc' / 'sasl_passwd'}",
        "smtp_sasl_security_options": "noanonymous",
        "smtp_tls_security_level": "encrypt",
        "smtp_tls_CAfile": str(tls.ca),
        "smtpd_client_event_limit_exceptions": "127.0.0.0/8",
        **reuse,
    }, TLSPROXY_LINE if reuse else "")
    started.append(satellite)
    satellite.start()
    sasl_passwd = satellite.config_dir / "sasl_passwd"
    sasl_passwd.write_text(f"{nexthop} {LOGIN}:{password}\n")
    sasl_passwd.chmod(0o600)
    postmap = subprocess.run([peer_command("postmap") or "postmap", "-c", str(satellite.config_dir), f"hash:{sasl_passwd}"],
                             capture_output=True, text=True)
    if postmap.returncode != 0:
        raise PeerError(f"postmap hash:{sasl_passwd}: {postmap.stderr}")

    def roles() -> dict[str, int]:
        pids = {"satellite": satellite.master_pid(), "server": server.master_pid(), "saslauthd": cyrus.pid}
        if None in pids.values():
            raise PeerError(f"a Postfix master process is gone; see {satellite.maillog} and {server.maillog}")
        return pids

    def logs() -> str:
        return (f"--- {satellite.maillog}:\n{tail(satellite.maillog, 15)}\n"
                f"--- {server.maillog}:\n{tail(server.maillog, 15)}")

    return Chain(name, satellite.port, roles, lambda: satellite.queued_count() + server.queued_count(), sink, logs)


def start_smarthost_chain(workdir: Path, shm: Path, tls: TLSFiles, password: str, workers: int | None,
                          started: list) -> Chain:
    authd = SmarthostAuthd(workdir / "smarthost-authd", {LOGIN: password})
    started.append(authd)
    authd.start()
    sink = Sink(shm / "smarthost")
    started.append(sink)
    sink.start()
    server = smarthost_auth_server(
        workdir / "smarthost-server", tls,
        f"pwcheck_method: saslauthd\nmech_list: PLAIN LOGIN\nsaslauthd_path: {authd.socket_path}\n",
        {"myhostname": "server.smarthost.bench.example", "relayhost": f"[127.0.0.1]:{sink.port}",
         "smtp_tls_security_level": "none"},
        master_extra=QMGR_LINE, workers=workers)
    started.append(server)
    server.start()
    nexthop = f"[127.0.0.1]:{server.ports[0]}"
    satellite_dir = workdir / "smarthost-satellite"
    main_cf = {
        "myhostname": "satellite.smarthost.bench.example",
        "mynetworks": "127.0.0.0/8",
        "mydestination": "",
        "relayhost": nexthop,
        "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_password_maps": f"hash:{satellite_dir / 'etc' / 'sasl_passwd'}",
        "smtp_sasl_security_options": "noanonymous",
        "smtp_tls_security_level": "encrypt",
        "smtp_tls_CAfile": str(tls.ca),
        "smtpd_client_event_limit_exceptions": "127.0.0.0/8",
    }
    if workers is not None:
        main_cf["smtpd_worker_processes"] = str(workers)
    satellite = SmarthostInstance(satellite_dir, main_cf,
                                  f"127.0.0.1:{free_port()} inet n - n - - smtpd\n" + QMGR_LINE)
    started.append(satellite)
    satellite.write_config()
    sasl_passwd = satellite.config_dir / "sasl_passwd"
    sasl_passwd.write_text(f"{nexthop} {LOGIN}:{password}\n")
    sasl_passwd.chmod(0o600)
    postmap = subprocess.run([*SMARTHOST, "-c", str(satellite.config_dir), "postmap", f"hash:{sasl_passwd}"],
                             capture_output=True, text=True)
    if postmap.returncode != 0:
        raise PeerError(f"smarthost postmap hash:{sasl_passwd}: {postmap.stderr}")
    satellite.start()

    def logs() -> str:
        return (f"--- satellite:\n{satellite.describe()}\n--- server:\n{server.describe()}\n"
                f"--- authd {authd.log}:\n{tail(authd.log, 10)}")

    return Chain("smarthost", satellite.ports[0], lambda: {"satellite": satellite.pid, "server": server.pid, "authd": authd.pid},
                 lambda: satellite.queued_count() + server.queued_count(), sink, logs)


# --- summary ---------------------------------------------------------------------------------

COLUMNS = ("msgs_per_s", "wall_s", "inject_s", "chain_cpu_us_per_msg", "sink_cpu_us_per_msg", "client_cpu_us_per_msg")


def summarize(runs: list[Run], chains: list[str], shapes: list[int]) -> dict:
    summary: dict = {}
    for sessions in shapes:
        row: dict = {}
        for name in chains:
            mine = [asdict(r) for r in runs if r.chain == name and r.sessions == sessions]
            row[name] = {key: median_of(mine, key) for key in COLUMNS}
            row[name]["role_cpu_us_per_msg"] = {role: median_of([r["role_cpu_us_per_msg"] for r in mine], role)
                                                for role in mine[0]["role_cpu_us_per_msg"]}
        if "smarthost" in row:
            for base in ("postfix", "postfix-reuse"):
                if base in row:
                    row[f"ratio_smarthost_{base}"] = {
                        "msgs_per_s": row["smarthost"]["msgs_per_s"] / row[base]["msgs_per_s"],
                        "chain_cpu_per_msg": row["smarthost"]["chain_cpu_us_per_msg"] / row[base]["chain_cpu_us_per_msg"],
                    }
        summary[f"{sessions} sessions"] = row
    return summary


def print_summary(summary: dict, chains: list[str], args: argparse.Namespace) -> None:
    print(f"\nmedians of {args.runs} runs, {args.messages} messages x {args.size} bytes, "
          "satellite -> server (STARTTLS + AUTH) -> sink")
    print(f"{'shape':<14}{'chain':<15}{'msgs/s':>8}{'last in sink s':>16}{'injected s':>12}"
          f"{'chain CPU us/msg':>18}{'sink us/msg':>13}{'source us/msg':>15}")
    for shape, row in summary.items():
        for name in chains:
            r = row[name]
            print(f"{shape:<14}{name:<15}{r['msgs_per_s']:>8.0f}{r['wall_s']:>16.2f}{r['inject_s']:>12.2f}"
                  f"{r['chain_cpu_us_per_msg']:>18.0f}{r['sink_cpu_us_per_msg']:>13.0f}{r['client_cpu_us_per_msg']:>15.0f}")
        for base in ("postfix", "postfix-reuse"):
            if f"ratio_smarthost_{base}" in row:
                ratio = row[f"ratio_smarthost_{base}"]
                print(f"{shape:<14}{'smarthost / ' + base:<29}{ratio['msgs_per_s']:>5.2f}x msgs/s, "
                      f"{ratio['chain_cpu_per_msg']:.2f}x chain CPU per message")


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=2000, help="messages per run (default 2000)")
    p.add_argument("--runs", type=int, default=3, help="runs per chain and shape (default 3)")
    p.add_argument("--sessions", default="20", help="comma-separated smtp-source session counts (default 20)")
    p.add_argument("--size", type=int, default=4096, help="message size in bytes (default 4096)")
    p.add_argument("--chains", default=",".join(CHAINS), help=f"which chains (default {','.join(CHAINS)})")
    p.add_argument("--workers", type=int, help="smtpd_worker_processes for both smarthost roles (default: its own)")
    p.add_argument("--warmup", type=int, default=200, help="messages through each chain before the runs (default 200)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the sink per run (default 180)")
    p.add_argument("--dir", help="parent directory for the queues (default: a fresh one in /var/tmp)")
    p.add_argument("--keep", action="store_true", help="keep the queues, logs and sink files afterwards")
    p.add_argument("--results", default=str(ROOT / "bench" / "results"), help="where the JSON goes")
    args = p.parse_args(argv)
    args.shapes = [int(s) for s in args.sessions.split(",")]
    args.chain_names = [c.strip() for c in args.chains.split(",")]
    unknown = set(args.chain_names) - set(CHAINS)
    if unknown:
        p.error(f"unknown chain(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    needed = ("smtp-source", "smtp-sink", "postfix", "postmap", "saslauthd", "saslpasswd2", "unshare", "script")
    missing = [c for c in needed if peer_command(c) is None]
    if os.geteuid() != 0 or missing:
        print(f"relay.py: needs root and {', '.join(missing) or 'the peers'}: run scripts/install-peers.sh as root",
              file=sys.stderr)
        return 2
    smtp_source = peer_command("smtp-source")
    workdir = make_shared_dir(args.dir or "/var/tmp", prefix="smarthost-bench-relay-")
    shm = make_shared_dir("/dev/shm", prefix="smarthost-bench-sink-")  # tmpfs: the sinks' files cost ~nothing
    started: list = []  # everything to stop, in start order
    chains: list[Chain] = []
    try:
        tls = make_tls_files(workdir / "tls", "mail.bench.example")
        password = secrets.token_urlsafe(12)
        for name in args.chain_names:
            if name.startswith("postfix"):
                chains.append(start_postfix_chain(name, workdir, shm, tls, password, started))
            else:
                chains.append(start_smarthost_chain(workdir, shm, tls, password, args.workers, started))
        print(f"queues under {workdir}; "
              + ", ".join(f"{c.name}: satellite on port {c.port}, sink in {c.sink.dir}" for c in chains))

        for chain in chains:  # unmeasured: auth caches filled, process pools and connections up
            one_run(chain, smtp_source, args.warmup, args.size, args.shapes[0], args.timeout)

        runs: list[Run] = []
        for sessions in args.shapes:
            for i in range(args.runs):
                for chain in chains if i % 2 == 0 else chains[::-1]:
                    run = one_run(chain, smtp_source, args.messages, args.size, sessions, args.timeout)
                    runs.append(run)
                    print(f"{sessions:>4} sessions  run {i + 1}  {chain.name:<14}{run.msgs_per_s:>7.0f} msgs/s"
                          f"  last in sink {run.wall_s:>6.2f} s (injected in {run.inject_s:.2f} s)"
                          f"  chain {run.chain_cpu_us_per_msg:>6.0f} us/msg ("
                          + ", ".join(f"{role} {us:.0f}" for role, us in run.role_cpu_us_per_msg.items())
                          + f")  sink {run.sink_cpu_us_per_msg:>4.0f} us/msg",
                          flush=True)
    except PeerError as e:
        print(f"relay.py: {e}", file=sys.stderr)
        return 1
    finally:
        for thing in reversed(started):
            thing.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(shm, ignore_errors=True)

    names = [c.name for c in chains]
    summary = summarize(runs, names, args.shapes)
    print_summary(summary, names, args)
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    out = write_results(args.results, "relay", stamp, {
        "parameters": {"messages": args.messages, "size": args.size, "runs": args.runs,
                       "sessions": args.shapes, "smarthost_workers": args.workers},
        "versions": versions(),
        "runs": [asdict(r) for r in runs],
        "summary": summary,
    })
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
