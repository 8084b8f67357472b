"""Accept throughput: how fast smarthost and a comparably configured Postfix take mail into
their queues, driven by Postfix's own load generator ``smtp-source`` on loopback.

Both servers run in the same invocation, with their queues on the same disk under one parent
directory, logging to a file, relay restrictions at their defaults (loopback is in
``mynetworks``). For each shape (messages × size × sessions) every target gets ``--runs``
runs, alternating which goes first; each run measures wall time (→ msgs/s) and the CPU time
of the server's whole process tree from /proc (→ CPU µs per message), then checks that the
queue grew by exactly the number of messages sent: a run that loses mail is an error.

The targets ``ceiling`` and ``ceiling-nosync`` are ``bench/ceiling_sink.py``: an SMTP sink in
Python that answers every command with a canned reply and (``ceiling``) answers 250 only after
one ``fdatasync`` per batch. Its ratio to Postfix is the highest a durable Python server can reach
on this machine under this load; smarthost's ratio is to be read against it.

Run as root on Debian with the peers installed (scripts/install-peers.sh), from the repository:
``.venv/bin/python bench/accept.py [--messages 2000] [--runs 5] [--sessions 20,100] [--size 4096]``.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Callable

import ceiling_sink
from common import ROOT, TIME_WAIT_LIMIT, versions, wait_for_time_wait_below, write_results
from peers import (  # tests/interop, on sys.path through common
    PeerError,
    PostfixInstance,
    SmarthostInstance,
    free_port,
    make_shared_dir,
    peer_command,
    tree_cpu_seconds,
)

SENDER = "bench@sender.example"
RECIPIENT = "rcpt@remote.example"  # a foreign domain: accepted because loopback is in mynetworks
QUEUE_SETTLE = 15.0  # seconds to wait for the queue count to reach what was sent
TARGETS = ("postfix", "smarthost", "ceiling", "ceiling-nosync")


@dataclass
class Target:
    name: str
    port: int
    pid: Callable[[], int]  # root of the server's process tree
    queued: Callable[[], int]  # messages in its queue now


@dataclass
class Run:
    target: str
    sessions: int
    wall_s: float
    msgs_per_s: float
    server_cpu_us_per_msg: float
    client_cpu_us_per_msg: float


def wait_for_count(target: Target, expected: int) -> int:
    deadline = time.monotonic() + QUEUE_SETTLE
    while (count := target.queued()) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return count


def one_run(target: Target, smtp_source: str, messages: int, size: int, sessions: int) -> Run:
    wait_for_time_wait_below(TIME_WAIT_LIMIT)
    before_count = target.queued()
    command = [smtp_source, "-m", str(messages), "-l", str(size), "-s", str(sessions),
               "-f", SENDER, "-t", RECIPIENT, f"inet:127.0.0.1:{target.port}"]
    client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before = tree_cpu_seconds(target.pid())
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    cpu = tree_cpu_seconds(target.pid()) - cpu_before
    client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise PeerError(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    count = wait_for_count(target, before_count + messages)
    if count != before_count + messages:
        raise PeerError(f"{target.name} lost mail: sent {messages}, queue grew by {count - before_count}")
    client_cpu = (client_after.ru_utime + client_after.ru_stime) - (client_before.ru_utime + client_before.ru_stime)
    return Run(target.name, sessions, wall, messages / wall, cpu / messages * 1e6, client_cpu / messages * 1e6)


def start_postfix(workdir: Path) -> PostfixInstance:
    (workdir / "postfix").mkdir()
    (workdir / "postfix").chmod(0o755)
    postfix = PostfixInstance(workdir / "postfix", free_port(), {
        "myhostname": "postfix.bench.example",
        # Held on arrival, so nothing is delivered (smarthost has no queue manager running here
        # either); a release would meet a closed port, never the network.
        "smtpd_data_restrictions": "check_client_access inline:{ 127.0.0.1=HOLD }",
        "relayhost": f"[127.0.0.1]:{free_port()}",
        # No arrival-rate throttling: held mail never returns flow-control tokens to cleanup.
        "in_flow_delay": "0",
        # 100 sessions from one address exceed anvil's default limits.
        "smtpd_client_event_limit_exceptions": "127.0.0.0/8",
    })
    postfix.start()
    return postfix


def postfix_pid(postfix: PostfixInstance) -> int:
    pid = postfix.master_pid()
    if pid is None:
        raise PeerError(f"Postfix's master process is gone; see {postfix.maillog}")
    return pid


def start_smarthost(workdir: Path, workers: int | None) -> SmarthostInstance:
    main_cf = {
        "myhostname": "smarthost.bench.example",
        "mynetworks": "127.0.0.0/8",
        "mydestination": "",
        "relayhost": f"[127.0.0.1]:{free_port()}",
    }
    if workers is not None:
        main_cf["smtpd_worker_processes"] = str(workers)
    smarthost = SmarthostInstance(workdir / "smarthost", main_cf, f"127.0.0.1:{free_port()} inet n - n - - smtpd\n")
    smarthost.start()
    return smarthost


def summarize(runs: list[Run], targets: list[str], shapes: list[int]) -> dict:
    summary: dict = {}
    for sessions in shapes:
        row = {}
        for name in targets:
            mine = [r for r in runs if r.target == name and r.sessions == sessions]
            row[name] = {
                "msgs_per_s": statistics.median(r.msgs_per_s for r in mine),
                "server_cpu_us_per_msg": statistics.median(r.server_cpu_us_per_msg for r in mine),
                "client_cpu_us_per_msg": statistics.median(r.client_cpu_us_per_msg for r in mine),
            }
        if "postfix" in row:
            for name in targets:
                if name != "postfix":
                    row[name]["ratio_msgs_per_s"] = row[name]["msgs_per_s"] / row["postfix"]["msgs_per_s"]
                    row[name]["ratio_cpu_per_msg"] = (row[name]["server_cpu_us_per_msg"]
                                                      / row["postfix"]["server_cpu_us_per_msg"])
        summary[f"{sessions} sessions"] = row
    return summary


def print_summary(summary: dict, args: argparse.Namespace) -> None:
    print(f"\nmedians of {args.runs} runs, {args.messages} messages x {args.size} bytes each")
    print(f"{'shape':<14}{'target':<15}{'msgs/s':>9}{'server CPU us/msg':>19}{'client CPU us/msg':>19}"
          f"{'msgs/s ratio':>14}{'CPU ratio':>11}")
    for shape, row in summary.items():
        for name in TARGETS:
            if name in row:
                r = row[name]
                ratios = (f"{r['ratio_msgs_per_s']:>13.2f}x{r['ratio_cpu_per_msg']:>10.2f}x"
                          if "ratio_msgs_per_s" in r else "")
                print(f"{shape:<14}{name:<15}{r['msgs_per_s']:>9.0f}{r['server_cpu_us_per_msg']:>19.0f}"
                      f"{r['client_cpu_us_per_msg']:>19.0f}{ratios}")
    if any("postfix" in row for row in summary.values()):
        print("(ratios: target / Postfix; ceiling = bench/ceiling_sink.py, the most a durable Python"
              " server can reach here)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=2000, help="messages per run (default 2000)")
    p.add_argument("--runs", type=int, default=5, help="runs per target and shape (default 5)")
    p.add_argument("--sessions", default="20,100", help="comma-separated session counts (default 20,100)")
    p.add_argument("--size", type=int, default=4096, help="message size in bytes (default 4096)")
    p.add_argument("--targets", default="postfix,smarthost,ceiling",
                   help=f"which servers, of {', '.join(TARGETS)} (default postfix,smarthost,ceiling)")
    p.add_argument("--workers", type=int, help="smtpd_worker_processes for smarthost (default: its own)")
    p.add_argument("--dir", help="parent directory for both queues (default: a fresh one in /var/tmp)")
    p.add_argument("--keep", action="store_true", help="keep the queues and logs afterwards")
    p.add_argument("--results", default=str(ROOT / "bench" / "results"), help="where the JSON goes")
    args = p.parse_args(argv)
    args.shapes = [int(s) for s in args.sessions.split(",")]
    args.target_names = [t.strip() for t in args.targets.split(",")]
    unknown = set(args.target_names) - set(TARGETS)
    if unknown:
        p.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    smtp_source = peer_command("smtp-source")
    if smtp_source is None or ("postfix" in args.target_names and os.geteuid() != 0):
        print("accept.py: needs smtp-source (and root for Postfix): run scripts/install-peers.sh as root",
              file=sys.stderr)
        return 2
    workdir = make_shared_dir(args.dir or "/var/tmp", prefix="smarthost-bench-")
    servers: list[PostfixInstance | SmarthostInstance | ceiling_sink.Sink] = []
    targets: list[Target] = []
    try:
        if "postfix" in args.target_names:
            postfix = start_postfix(workdir)
            servers.append(postfix)
            targets.append(Target("postfix", postfix.port, partial(postfix_pid, postfix), postfix.queued_count))
        if "smarthost" in args.target_names:
            smarthost = start_smarthost(workdir, args.workers)
            servers.append(smarthost)
            targets.append(Target("smarthost", smarthost.ports[0], lambda: smarthost.pid, smarthost.queued_count))
        for name in ("ceiling", "ceiling-nosync"):
            if name in args.target_names:
                sink = ceiling_sink.Sink(workdir / name, sync=name == "ceiling", workers=args.workers)
                servers.append(sink)
                targets.append(Target(name, sink.port, lambda sink=sink: sink.pid, sink.queued))
        print(f"queues under {workdir}; {', '.join(f'{t.name} on port {t.port}' for t in targets)}")

        runs: list[Run] = []
        for sessions in args.shapes:
            for target in targets:  # unmeasured: Postfix spawns its smtpd processes for this concurrency
                one_run(target, smtp_source, 2 * sessions, args.size, sessions)
            for i in range(args.runs):
                for target in targets if i % 2 == 0 else targets[::-1]:
                    run = one_run(target, smtp_source, args.messages, args.size, sessions)
                    runs.append(run)
                    print(f"{sessions:>4} sessions  run {i + 1}  {target.name:<10} {run.msgs_per_s:>7.0f} msgs/s"
                          f"  server {run.server_cpu_us_per_msg:>6.0f} us/msg"
                          f"  client {run.client_cpu_us_per_msg:>5.0f} us/msg",
                          flush=True)
    except PeerError as e:
        print(f"accept.py: {e}", file=sys.stderr)
        return 1
    finally:
        for server in servers:
            server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    summary = summarize(runs, [t.name for t in targets], args.shapes)
    print_summary(summary, args)
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    out = write_results(args.results, "accept", stamp, {
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
