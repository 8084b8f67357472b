"""``smarthost mailq``: list the queue in Postfix's ``mailq`` / ``postqueue -p`` layout.

::

    -Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------
    8Dsg87vrA01jB00*     312 Thu Dec  3 16:03:10  alice@example.org
                                             bob@example.net

    8Dsg87vrA01jC00      312 Thu Dec  3 16:03:11  alice@example.org
    (connect to mx.example.net[192.0.2.7]:25: Connection refused)
                                             carol@example.net

    -- 1 Kbytes in 2 Requests.

One block per message: the queue id (``*`` after it while active, ``!`` while on hold), size,
arrival time and sender (``MAILER-DAEMON`` for ``<>``), then the recipients still pending —
those already sent or bounced are left out. Deferred recipients are listed under the reason
of their last attempt, in parentheses on its own line. A corrupt entry is listed with
``(corrupt queue entry: ...)`` instead of being skipped. Messages that ``smarthost sendmail``
left in the maildrop directory and the daemon has not picked up yet come first, marked
``(maildrop queue, sender UID N)`` (only root can list that directory). Ends with the ``-- N Kbytes in M
Requests.`` summary, or ``Mail queue is empty``. The store is read directly; no daemon needs
to run.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path

from smarthost.config import ConfigError, load

_MARK = {"active": "*", "hold": "!"}
_RCPT_INDENT = " " * 41  # recipients line up under the header's Sender/Recipient column


def register(sub) -> None:
    p = sub.add_parser("mailq", help="list the mail queue")
    p.set_defaults(func=cmd_mailq)


def _reason(reply: str | None) -> str:
    """The text of a stored outcome, ``deferred (TEXT)`` -> ``TEXT``."""
    text = (reply or "").strip()
    status, sep, rest = text.partition(" (")
    if sep and rest.endswith(")") and status in ("deferred", "sent", "bounced"):
        return rest[:-1]
    return text or "deferred"


def _when(epoch: float) -> str:
    return time.strftime("%a %b %e %H:%M:%S", time.localtime(epoch))


def read_maildrop(queue_dir: Path) -> list[tuple[str, int, float, object, int | None]]:
    """``(file name, size, time, envelope or None, owner uid or None)`` of each maildrop file."""
    from smarthost.queue.maildrop import MAILDROP_DIR, MaildropError, read

    directory = queue_dir / MAILDROP_DIR
    try:
        names = sorted(n for n in os.listdir(directory) if not n.startswith("."))
    except OSError:  # none yet, or not ours to list (mode 1733)
        return []
    found = []
    for name in names:
        path = directory / name
        try:
            mtime = path.lstat().st_mtime
        except OSError:
            continue  # picked up meanwhile
        try:
            envelope, body, uid = read(path, max_size=0)
        except MaildropError:
            found.append((name, 0, mtime, None, None))
            continue
        found.append((name, len(body), mtime, envelope, uid))
    return found


def format_queue(entries: list, statuses: dict[str, list[tuple[str, str | None, str | None]]],
                 maildrop: list[tuple[str, int, float, object, int | None]] = ()) -> list[str]:
    """The listing's lines; ``statuses`` maps queue id to ``(address, status, reply)`` per
    recipient (:meth:`QueueStore.recipient_statuses`), ``maildrop`` is :func:`read_maildrop`."""
    if not entries and not maildrop:
        return ["Mail queue is empty"]
    lines = ["-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"]
    total = 0
    for name, size, mtime, envelope, uid in maildrop:
        total += size
        sender = "(unreadable)" if envelope is None else (envelope.sender or "MAILER-DAEMON")
        lines.append(f"{name:<10}  {size:>8} {_when(mtime):<20}  {sender}")
        lines.append("(maildrop queue" + (f", sender UID {uid})" if uid is not None else ", unreadable file)"))
        if envelope is not None:
            lines.extend(_RCPT_INDENT + r.address for r in envelope.recipients)
        lines.append("")
    for e in entries:
        total += e.size
        state = str(e.state)
        when = _when(e.arrival)
        if e.envelope is None:
            sender = "(sender unknown)"
        else:
            sender = e.envelope.sender or "MAILER-DAEMON"
        lines.append(f"{e.id:<10}{_MARK.get(state, ' ')} {e.size:>8} {when:<20}  {sender}")
        if state == "corrupt":
            lines.append("(corrupt queue entry: unreadable; not delivered)")
        pending: list[str] = []
        by_reason: dict[str, list[str]] = {}
        for address, status, reply in statuses.get(e.id, []):
            if status in ("sent", "bounced"):
                continue
            if status == "deferred":
                by_reason.setdefault(_reason(reply), []).append(address)
            else:
                pending.append(address)
        lines.extend(_RCPT_INDENT + a for a in pending)
        for reason, addresses in by_reason.items():
            lines.append(f"({reason})")
            lines.extend(_RCPT_INDENT + a for a in addresses)
        lines.append("")
    kb = (total + 1023) // 1024
    n = len(entries) + len(maildrop)
    lines.append(f"-- {kb} Kbytes in {n} Request{'s' if n != 1 else ''}.")
    return lines


def cmd_mailq(args) -> int:
    from smarthost.queue import QueueError, QueueStore

    try:
        cfg = load(Path(args.config_dir))
    except ConfigError as exc:
        print(f"smarthost: fatal: {exc}", file=sys.stderr)
        return 1
    queue_dir = Path(cfg.params["queue_directory"])
    maildrop = read_maildrop(queue_dir)
    if not (queue_dir / "queue.db").exists():
        print("\n".join(format_queue([], {}, maildrop)))
        return 0
    try:
        store = QueueStore(queue_dir)
        try:
            entries = store.list()
            statuses = {e.id: store.recipient_statuses(e.id) for e in entries}
        finally:
            store.close()
    except (QueueError, OSError, sqlite3.Error) as exc:
        print(f"smarthost: fatal: cannot read the queue in {queue_dir}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(format_queue(entries, statuses, maildrop)))
    return 0
