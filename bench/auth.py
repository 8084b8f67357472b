"""Authenticated submission: STARTTLS + AUTH PLAIN into smarthost and into Postfix + Cyrus
saslauthd, both configured the way the classic recipe configures the server, in one invocation.

Targets (``--targets``):

- ``postfix``: a private Postfix 3.7 with ``smtpd_sasl_auth_enable = yes``, STARTTLS, AUTH only
  after TLS, and a Cyrus ``sasl/smtpd.conf`` saying ``pwcheck_method: saslauthd`` /
  ``mech_list: PLAIN LOGIN``, checked by a real Cyrus ``saslauthd -a sasldb -c`` (private sasldb,
  own mount namespace);
- ``smarthost``: the same files for smarthost, ``saslauthd_path`` pointing at ``smarthost authd
  -c`` (its user database: argon2id hashes);
- ``smarthost-auxprop`` (not run by default): ``pwcheck_method: auxprop``, the SMTP workers check
  the user database themselves: one argon2id verification (~0.1 s of CPU) per AUTH, no cache;
- ``smarthost-cyrus`` (not run by default): smarthost against the same Cyrus saslauthd as Postfix;
- ``ceiling``: ``bench/ceiling_sink.py`` with STARTTLS and AUTH PLAIN (the users checked in
  memory), canned replies, 250 after one ``fdatasync`` per batch: the most a durable Python server
  can reach on this machine under this load, to read smarthost's ratio against.

Loopback is not in ``mynetworks``, so every message is relayed because its client
authenticated. Messages stay queued (Postfix: held on arrival; smarthost: no queue manager), as
in accept.py. The load comes from ``bench/authload.c``, a small C client on OpenSSL that is
single-threaded and event-driven like ``smtp-source``: one process, one thread, non-blocking
sockets and non-blocking TLS on epoll, a state machine per connection. (A thread per client
made every reply of the server wake a blocked thread, often on the other core, and on two
cores those wake-ups cost both sides more CPU than the work they measure; see bench/README.md.)
This script compiles it into its work directory at start (Debian packages ``gcc libc6-dev
libssl-dev``) and runs it as its own process, once per run: for each shape (concurrent clients
× messages per connection) every target gets ``--runs`` runs, alternating which target goes
first. Each run measures msgs/s, per-message latency (p50/p99), the server's CPU (its process
tree plus its auth daemon's) and the client's own CPU, and checks that every message got its
250 and that the queue grew by exactly that many.

Run as root on Debian with the peers installed, from the repository:
``.venv/bin/python bench/auth.py [--messages 2000] [--runs 5] [--shapes 20x10,100x10,20x1,100x1]``.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import ceiling_sink
from common import (
    BENCH_DOMAIN,
    ROOT,
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
    tree_cpu_seconds,
)

TARGETS = ("postfix", "smarthost", "smarthost-auxprop", "smarthost-cyrus", "ceiling")
SENDER = "submitter@" + BENCH_DOMAIN
RECIPIENT = "rcpt@remote.example"  # a foreign domain: relayed only because the client authenticated
QUEUE_SETTLE = 15.0  # seconds to wait for the queue count to reach what was sent
LOAD_CLIENT_SOURCE = Path(__file__).resolve().parent / "authload.c"
LOAD_CLIENT_PACKAGES = "gcc libc6-dev libssl-dev"  # Debian's, for compiling it


@dataclass
class Target:
    name: str
    port: int
    roots: Callable[[], list[int]]  # the server's process tree(s): SMTP side and auth daemon
    queued: Callable[[], int]  # messages in its queue now


@dataclass(frozen=True)
class Shape:
    clients: int
    per_conn: int

    def __str__(self) -> str:
        return f"{self.clients} clients x {self.per_conn}/conn"


@dataclass
class Run:
    target: str
    shape: str
    wall_s: float
    msgs_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    transaction_p99_ms: float
    setup_p99_ms: float
    server_cpu_us_per_msg: float
    client_cpu_us_per_msg: float
    sessions: int
    tls: str


# --- the load client ---------------------------------------------------------------------


def build_client(workdir: Path) -> Path:
    """Compile ``bench/authload.c`` into ``workdir``; PeerError naming the packages if it cannot."""
    binary = workdir / "authload"
    hint = (f"the load client {LOAD_CLIENT_SOURCE.name} needs a C compiler and OpenSSL's headers: "
            f"apt-get install {LOAD_CLIENT_PACKAGES} (scripts/install-peers.sh installs them)")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise PeerError(f"no C compiler (cc): {hint}")
    argv = [compiler, "-O2", "-Wall", "-o", str(binary), str(LOAD_CLIENT_SOURCE), "-lssl", "-lcrypto"]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0 or not binary.exists():
        raise PeerError(f"{' '.join(argv)} failed:\n{result.stderr[:2000]}\n{hint}")
    return binary


def write_users_file(workdir: Path, users: dict[str, str]) -> Path:
    """``login<TAB>password`` lines for the load client, mode 0600 (not on its command line)."""
    path = workdir / "authload-users"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{login}\t{password}\n" for login, password in users.items())
    return path


# spec key -> the load client's option
CLIENT_OPTIONS = {"host": "--host", "port": "--port", "clients": "--clients", "messages": "--messages",
                  "per_conn": "--per-conn", "size": "--size", "cafile": "--cafile", "server_name": "--server-name",
                  "sender": "--sender", "recipient": "--recipient", "users_file": "--users"}


def run_client(client: Path, spec: dict) -> dict:
    """Run the load client with ``spec`` as its options; its JSON result."""
    argv = [str(client)]
    for key, option in CLIENT_OPTIONS.items():
        if key in spec:
            argv += [option, str(spec[key])]
    if spec.get("warmup"):
        argv.append("--warmup")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise PeerError(f"{client.name} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)


def cpu_seconds(target: Target) -> float:
    return sum(tree_cpu_seconds(pid) for pid in target.roots())


def wait_for_count(target: Target, expected: int) -> int:
    deadline = time.monotonic() + QUEUE_SETTLE
    while (count := target.queued()) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return count


def one_run(client: Path, target: Target, base_spec: dict, messages: int, shape: Shape) -> Run:
    wait_for_time_wait_below()
    before_count = target.queued()
    spec = {**base_spec, "port": target.port, "messages": messages, "clients": shape.clients,
            "per_conn": shape.per_conn}
    cpu_before = cpu_seconds(target)
    result = run_client(client, spec)
    cpu = cpu_seconds(target) - cpu_before
    if result["error_count"] or result["ok"] != messages:
        raise PeerError(f"{target.name}, {shape}: {result['ok']} of {messages} messages accepted, "
                        f"{result['error_count']} failed; first errors: {result['errors']}")
    count = wait_for_count(target, before_count + messages)
    if count != before_count + messages:
        raise PeerError(f"{target.name} lost mail: 250 for {messages}, queue grew by {count - before_count}")
    return Run(target.name, str(shape), result["wall_s"], result["msgs_per_s"], result["latency_ms"]["p50"],
               result["latency_ms"]["p99"], result["transaction_ms"]["p99"], result["setup_ms"]["p99"],
               cpu / messages * 1e6,
               result["client_cpu_s"] / messages * 1e6, result["sessions"], result["tls"])


# --- the targets ---------------------------------------------------------------------------


HOLD_EVERYTHING = {
    # Held on arrival, so nothing is delivered (the smarthost targets run no queue manager
    # either); a release would meet a closed port, never the network.
    "smtpd_data_restrictions": "check_client_access inline:{ 127.0.0.1=HOLD }",
    # No arrival-rate throttling: held mail never returns flow-control tokens to cleanup.
    "in_flow_delay": "0",
}


def start_postfix(workdir: Path, tls: TLSFiles, cyrus: CyrusSaslauthd) -> tuple[PostfixInstance, Target]:
    postfix = postfix_auth_server(workdir / "postfix", tls, cyrus, {
        "myhostname": "postfix.bench.example",
        "relayhost": f"[127.0.0.1]:{free_port()}",
        **HOLD_EVERYTHING,
    })
    postfix.start()

    def roots() -> list[int]:
        pid = postfix.master_pid()
        if pid is None:
            raise PeerError(f"Postfix's master process is gone; see {postfix.maillog}")
        return [pid, cyrus.pid]

    return postfix, Target("postfix", postfix.port, roots, postfix.queued_count)


def start_smarthost(name: str, workdir: Path, tls: TLSFiles, smtpd_conf: str, daemon_pids: list[int],
                    workers: int | None, extra: dict[str, str] | None = None) -> tuple[SmarthostInstance, Target]:
    smarthost = smarthost_auth_server(workdir / name, tls, smtpd_conf,
                                      {"relayhost": f"[127.0.0.1]:{free_port()}", **(extra or {})}, workers=workers)
    smarthost.start()
    return smarthost, Target(name, smarthost.ports[0], lambda: [smarthost.pid, *daemon_pids], smarthost.queued_count)


def smtpd_conf(method: str, **keys: str) -> str:
    return f"pwcheck_method: {method}\nmech_list: PLAIN LOGIN\n" + "".join(f"{k}: {v}\n" for k, v in keys.items())


# --- summary ---------------------------------------------------------------------------------

COLUMNS = ("msgs_per_s", "latency_p50_ms", "latency_p99_ms", "transaction_p99_ms", "setup_p99_ms",
           "server_cpu_us_per_msg", "client_cpu_us_per_msg")


def summarize(runs: list[Run], targets: list[str], shapes: list[Shape]) -> dict:
    summary: dict = {}
    for shape in shapes:
        row: dict = {}
        for name in targets:
            mine = [asdict(r) for r in runs if r.target == name and r.shape == str(shape)]
            row[name] = {key: median_of(mine, key) for key in COLUMNS}
        if "postfix" in row:
            for name in targets:
                if name != "postfix":
                    row[f"ratio_{name}"] = {
                        "msgs_per_s": row[name]["msgs_per_s"] / row["postfix"]["msgs_per_s"],
                        "server_cpu_per_msg": row[name]["server_cpu_us_per_msg"] / row["postfix"]["server_cpu_us_per_msg"],
                    }
        summary[str(shape)] = row
    return summary


def print_summary(summary: dict, targets: list[str], args: argparse.Namespace) -> None:
    print(f"\nmedians of {args.runs} runs, {args.messages} messages x {args.size} bytes, STARTTLS + AUTH PLAIN")
    print("latency: per message, from when the client started on it (connecting, for a session's first) to its 250;"
          "\n         txn: MAIL FROM to 250; setup: connect to 235 (all in ms)")
    print(f"{'shape':<23}{'target':<18}{'msgs/s':>8}{'p50':>7}{'p99':>7}{'txn p99':>9}{'setup p99':>10}"
          f"{'server us/msg':>15}{'client us/msg':>15}")
    for shape, row in summary.items():
        for name in targets:
            r = row[name]
            print(f"{shape:<23}{name:<18}{r['msgs_per_s']:>8.0f}{r['latency_p50_ms']:>7.1f}{r['latency_p99_ms']:>7.1f}"
                  f"{r['transaction_p99_ms']:>9.1f}{r['setup_p99_ms']:>10.1f}{r['server_cpu_us_per_msg']:>15.0f}"
                  f"{r['client_cpu_us_per_msg']:>15.0f}")
        for name in targets:
            if f"ratio_{name}" in row:
                ratio = row[f"ratio_{name}"]
                print(f"{shape:<23}{name + ' / postfix':<26}{ratio['msgs_per_s']:>6.2f}x msgs/s, "
                      f"{ratio['server_cpu_per_msg']:.2f}x server CPU per message")


# --- main ------------------------------------------------------------------------------------


def parse_shapes(text: str) -> list[Shape]:
    shapes = []
    for part in text.split(","):
        clients, _, per_conn = part.strip().partition("x")
        shapes.append(Shape(int(clients), int(per_conn or 1)))
    return shapes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=2000, help="messages per run (default 2000)")
    p.add_argument("--runs", type=int, default=5, help="runs per target and shape (default 5)")
    p.add_argument("--shapes", default="20x10,100x10,20x1,100x1",
                   help="CLIENTSxMESSAGES_PER_CONNECTION, comma-separated (default 20x10,100x10,20x1,100x1)")
    p.add_argument("--size", type=int, default=4096, help="message size in bytes (default 4096)")
    p.add_argument("--users", type=int, default=10, help="distinct SASL users, client i logs in as user i %% N (default 10)")
    p.add_argument("--targets", default="postfix,smarthost,ceiling",
                   help=f"comma-separated, from {', '.join(TARGETS)} (default postfix,smarthost,ceiling)")
    p.add_argument("--workers", type=int, help="smtpd_worker_processes for smarthost (default: its own)")
    p.add_argument("--dir", help="parent directory for the queues (default: a fresh one in /var/tmp)")
    p.add_argument("--keep", action="store_true", help="keep the queues and logs afterwards")
    p.add_argument("--results", default=str(ROOT / "bench" / "results"), help="where the JSON goes")
    args = p.parse_args(argv)
    args.shape_list = parse_shapes(args.shapes)
    args.target_names = [t.strip() for t in args.targets.split(",")]
    unknown = set(args.target_names) - set(TARGETS)
    if unknown:
        p.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [c for c in ("postfix", "saslauthd", "saslpasswd2", "unshare", "script") if peer_command(c) is None]
    if os.geteuid() != 0 or missing:
        print(f"auth.py: needs root and {', '.join(missing) or 'the peers'}: run scripts/install-peers.sh as root",
              file=sys.stderr)
        return 2
    workdir = make_shared_dir(args.dir or "/var/tmp", prefix="smarthost-bench-auth-")
    password = secrets.token_urlsafe(12)
    users = {f"user{i}": password for i in range(args.users)}
    daemons: list[CyrusSaslauthd | SmarthostAuthd] = []
    servers: list[PostfixInstance | SmarthostInstance | ceiling_sink.Sink] = []
    targets: list[Target] = []
    try:
        client = build_client(workdir)
        tls = make_tls_files(workdir / "tls", "mail.bench.example")
        cyrus = authd = None
        if {"postfix", "smarthost-cyrus"} & set(args.target_names):
            cyrus = CyrusSaslauthd(workdir / "cyrus", users)
            daemons.append(cyrus)
            cyrus.start()
        if {"smarthost", "smarthost-auxprop"} & set(args.target_names):
            authd = SmarthostAuthd(workdir / "authd", users)
            daemons.append(authd)
            authd.start()
        users_file = write_users_file(workdir, users)
        for name in args.target_names:
            if name == "ceiling":
                server = ceiling_sink.Sink(workdir / name, workers=args.workers, tls_cert=tls.cert,
                                           tls_key=tls.key, users=users_file)
                target = Target(name, server.port, lambda server=server: [server.pid], server.queued)
            elif name == "postfix":
                server, target = start_postfix(workdir, tls, cyrus)
            elif name == "smarthost":
                conf = smtpd_conf("saslauthd", saslauthd_path=str(authd.socket_path))
                server, target = start_smarthost(name, workdir, tls, conf, [authd.pid], args.workers)
            elif name == "smarthost-auxprop":
                conf = smtpd_conf("auxprop", sasldb_path=str(authd.config_dir / "sasldb"))
                server, target = start_smarthost(name, workdir, tls, conf, [], args.workers)
            else:
                conf = smtpd_conf("saslauthd", saslauthd_path=str(cyrus.socket_path))
                server, target = start_smarthost(name, workdir, tls, conf, [cyrus.pid], args.workers,
                                                 {"smtpd_sasl_local_domain": BENCH_DOMAIN})
            servers.append(server)
            targets.append(target)
        print(f"queues under {workdir}; {', '.join(f'{t.name} on port {t.port}' for t in targets)}")

        base_spec = {"host": "127.0.0.1", "server_name": "localhost", "cafile": str(tls.ca), "size": args.size,
                     "sender": SENDER, "recipient": RECIPIENT, "users_file": str(users_file)}
        for target in targets:  # every user logs in once: the credential caches start warm
            warm = run_client(client, {**base_spec, "port": target.port, "warmup": True})
            if warm["error_count"]:
                raise PeerError(f"{target.name}: warm-up logins failed: {warm['errors']}")

        runs: list[Run] = []
        for shape in args.shape_list:
            for target in targets:  # unmeasured: Postfix spawns its smtpd processes for this concurrency
                one_run(client, target, base_spec, shape.clients * shape.per_conn, shape)
            for i in range(args.runs):
                for target in targets if i % 2 == 0 else targets[::-1]:
                    run = one_run(client, target, base_spec, args.messages, shape)
                    runs.append(run)
                    print(f"{str(shape):<23} run {i + 1}  {target.name:<18}{run.msgs_per_s:>7.0f} msgs/s"
                          f"  p50 {run.latency_p50_ms:>6.1f} ms  p99 {run.latency_p99_ms:>7.1f} ms"
                          f"  server {run.server_cpu_us_per_msg:>6.0f} us/msg  client {run.client_cpu_us_per_msg:>5.0f} us/msg",
                          flush=True)
    except PeerError as e:
        print(f"auth.py: {e}", file=sys.stderr)
        return 1
    finally:
        for server in servers:
            server.stop()
        for daemon in daemons:
            daemon.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    names = [t.name for t in targets]
    summary = summarize(runs, names, args.shape_list)
    print_summary(summary, names, args)
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    out = write_results(args.results, "auth", stamp, {
        "parameters": {"messages": args.messages, "size": args.size, "runs": args.runs, "users": args.users,
                       "shapes": [str(s) for s in args.shape_list], "smarthost_workers": args.workers,
                       "tls": sorted({r.tls for r in runs})},
        "versions": versions(),
        "runs": [asdict(r) for r in runs],
        "summary": summary,
    })
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
