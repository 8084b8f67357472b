"""``smarthost run | start | stop | reload | status`` and ``smarthost demo``.

``run`` serves in the foreground (logging to stderr unless ``maillog_file`` is set); ``start``
runs the same in the background and returns once it listens; ``stop`` / ``reload`` signal the
master named by the pid file in ``data_directory``; ``status`` says whether it runs.

``demo`` is the README's one command: it writes a complete configuration for loopback into a
directory (``--dir``, else ``-c DIR``, else ``./demo``; once), with a fresh self-signed
certificate and the ports of ``--ports``, prints how to send a test message (naming the ports
the directory's master.cf serves) and then runs the server in the foreground.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from smarthost.config import ConfigError, load


def register(sub) -> None:
    p = sub.add_parser("run", help="run the mail system in the foreground")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("start", help="start the mail system in the background")
    p.add_argument("--wait", type=float, default=15.0, help="seconds to wait for it to listen")
    p.set_defaults(func=cmd_start)
    p = sub.add_parser("stop", help="stop the running mail system (SIGTERM: drain)")
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("reload", help="reread the configuration and certificates (SIGHUP)")
    p.set_defaults(func=cmd_signal, signal=signal.SIGHUP)
    p = sub.add_parser("status", help="say whether the mail system runs")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("demo", help="write a loopback demo configuration (once) and run it")
    p.add_argument("--dir", help="where the demo configuration lives (default: -c DIR if given, else ./demo)")
    p.add_argument("--ports", type=_ports, metavar="SMTP,SUBMISSION,SMTPS",
                   help="loopback ports of a new demo's three services (default 2525,2587,2465)")
    p.set_defaults(func=cmd_demo)


def _ports(text: str):
    from smarthost.demo import Ports

    try:
        ports = [int(p) for p in text.split(",")]
    except ValueError:
        ports = []
    if len(ports) != 3 or not all(0 < p < 65536 for p in ports) or len(set(ports)) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three different ports, e.g. 2525,2587,2465")
    return Ports(*ports)


def _fail(message: str) -> int:
    print(f"smarthost: fatal: {message}", file=sys.stderr)
    return 1


def cmd_run(args) -> int:
    from smarthost.master import Master, StartError

    try:
        return Master(Path(args.config_dir)).run()
    except (ConfigError, StartError) as exc:
        return _fail(str(exc))


def _data_directory(args) -> Path:
    return Path(load(Path(args.config_dir)).params["data_directory"])


def cmd_start(args) -> int:
    from smarthost.master import read_pid

    try:
        data_dir = _data_directory(args)
    except ConfigError as exc:
        return _fail(str(exc))
    if read_pid(data_dir):
        return _fail(f"the mail system is already running (pid {read_pid(data_dir)})")
    log = data_dir / "smarthost.out"
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(log, "ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "smarthost", "-c", args.config_dir, "run"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        if child.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            return _fail("did not start:\n" + "\n".join(tail))
        if read_pid(data_dir) == child.pid:
            print(f"smarthost: started (pid {child.pid})")
            return 0
        time.sleep(0.05)
    return _fail(f"no pid file after {args.wait:g}s; see {log}")


def _running(args) -> tuple[Path, int | None]:
    """The data directory and the running master's pid (None: not running); ConfigError."""
    from smarthost.master import read_pid

    data_dir = _data_directory(args)
    return data_dir, read_pid(data_dir)


def cmd_stop(args) -> int:
    from smarthost.master import read_pid

    try:
        data_dir, pid = _running(args)
    except ConfigError as exc:
        return _fail(str(exc))
    if pid is None:
        return _fail("the mail system is not running")
    os.kill(pid, signal.SIGTERM)
    for _ in range(400):
        if read_pid(data_dir) is None:
            print("smarthost: stopped")
            return 0
        time.sleep(0.05)
    return _fail(f"pid {pid} did not stop within 20s")


def cmd_signal(args) -> int:
    try:
        _, pid = _running(args)
    except ConfigError as exc:
        return _fail(str(exc))
    if pid is None:
        return _fail("the mail system is not running")
    os.kill(pid, args.signal)
    print(f"smarthost: signalled pid {pid}")
    return 0


def cmd_status(args) -> int:
    try:
        _, pid = _running(args)
    except ConfigError as exc:
        return _fail(str(exc))
    if pid is None:
        print("smarthost: the mail system is not running")
        return 1
    print(f"smarthost: the mail system is running: PID: {pid}")
    return 0


def cmd_demo(args) -> int:
    from smarthost.demo import Ports, ensure_demo, instructions, served_ports

    directory = Path(args.dir or (args.config_dir if getattr(args, "config_dir_given", False) else "demo")).resolve()
    created = ensure_demo(directory, args.ports or Ports())
    try:
        ports = served_ports(directory)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.ports and ports != args.ports:
        print(f"smarthost: note: --ports applies to a new demo; {directory}/master.cf says otherwise", file=sys.stderr)
    print(instructions(directory, created, ports), flush=True)
    args.config_dir = str(directory)
    return cmd_run(args)
