"""``smarthost mailq``: list the queue, Postfix's ``mailq`` / ``postqueue -p`` format.

One block per message: the queue id (``*`` after it while active, ``!`` while on hold), size,
arrival time and sender, then the recipients. Ends with a summary line, or says the queue is
empty. The store is read directly; no daemon needs to run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from smarthost.config import ConfigError, load

_MARK = {"active": "*", "hold": "!"}


def register(sub) -> None:
    p = sub.add_parser("mailq", help="list the mail queue")
    p.set_defaults(func=cmd_mailq)


def cmd_mailq(args) -> int:
    from smarthost.queue import QueueStore

    try:
        cfg = load(Path(args.config_dir))
    except ConfigError as exc:
        print(f"smarthost: fatal: {exc}", file=sys.stderr)
        return 1
    queue_dir = Path(cfg.params["queue_directory"])
    if not (queue_dir / "queue.db").exists():
        print("Mail queue is empty")
        return 0
    store = QueueStore(queue_dir)
    try:
        entries = store.list()
    finally:
        store.close()
    if not entries:
        print("Mail queue is empty")
        return 0
    print("-Queue ID-      --Size-- ----Arrival Time---- -Sender/Recipient-------")
    total = 0
    for e in entries:
        total += e.size
        when = time.strftime("%a %b %d %H:%M:%S", time.localtime(e.arrival))
        mark = _MARK.get(str(e.state), " ")
        print(f"{e.id}{mark:<1} {e.size:>8} {when}  {e.envelope.sender or 'MAILER-DAEMON'}")
        if str(e.state) == "corrupt":
            print(f"{'':>46}(corrupt: unreadable entry)")
        for r in e.envelope.recipients:
            print(f"{'':>46}{r.address}")
        print()
    kb = (total + 1023) // 1024
    print(f"-- {kb} Kbytes in {len(entries)} Request{'s' if len(entries) != 1 else ''}.")
    return 0
