"""``smarthost queue flush | delete | hold | release | requeue | show``: Postfix's postqueue/postsuper/postcat.

* ``flush``: every deferred message becomes due now, and the running master is told with
  SIGUSR2 (``postqueue -f``). Without a running master it says so; the messages go out
  when it starts.
* ``delete ID... | ALL`` (``postsuper -d``), ``hold`` (``-h``), ``release`` (``-H``: back
  to deferred, due now), ``requeue`` (``-r``: through the queue manager again, deferred
  recipients retried). ``-`` reads ids from standard input, one per line. ``ALL`` skips
  corrupt entries except for ``delete``; hold/requeue refuse a corrupt entry by id.
* ``show ID`` (``postcat -q``): the envelope, then the message exactly as stored.

Output as postsuper's: one ``ID: removed`` (placed on hold, released from hold, requeued)
line per message, then ``Deleted: N messages``, on standard output; problems go to standard
error. Exit status 0, or 1 when an id was invalid or not found, or the queue is unusable.
The queue store is opened directly; the daemon does not have to run.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from smarthost.config import ConfigError, load
from smarthost.queue import NoSuchEntry, QueueError, QueueState, QueueStore
from smarthost.queue.ids import is_queue_id

# action -> ("ID: <text>" per message, summary word)
_ACTIONS = {
    "delete": ("removed", "Deleted"),
    "hold": ("placed on hold", "Placed on hold"),
    "release": ("released from hold", "Released from hold"),
    "requeue": ("requeued", "Requeued"),
}


def register(sub) -> None:
    p = sub.add_parser("queue", help="control the mail queue (flush, delete, hold, release, requeue, show)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("flush", help="retry deferred mail now")
    a.set_defaults(func=cmd_flush)
    for name, help_text in (("delete", "delete messages"), ("hold", "put messages on hold"),
                            ("release", "release messages from hold"),
                            ("requeue", "send messages through the queue manager again")):
        a = actions.add_parser(name, help=f"{help_text} (IDs, ALL, or - to read IDs from stdin)")
        a.add_argument("ids", nargs="+", metavar="ID")
        a.set_defaults(func=cmd_change)
    a = actions.add_parser("show", help="print a message's envelope and content")
    a.add_argument("id", metavar="ID")
    a.set_defaults(func=cmd_show)


def _fail(message: str) -> int:
    print(f"smarthost: fatal: {message}", file=sys.stderr)
    return 1


def _open(args) -> tuple[QueueStore | None, Path]:
    """The store, or None when there is no queue yet (nothing to act on)."""
    cfg = load(Path(args.config_dir))
    queue_dir = Path(cfg.params["queue_directory"])
    if not (queue_dir / "queue.db").exists():
        return None, Path(cfg.params["data_directory"])
    return QueueStore(queue_dir), Path(cfg.params["data_directory"])


def cmd_flush(args) -> int:
    from smarthost.master import read_pid

    try:
        store, data_dir = _open(args)
    except (ConfigError, QueueError) as exc:
        return _fail(str(exc))
    count = 0
    if store is not None:
        try:
            count = store.flush(time.time())
        except QueueError as exc:
            return _fail(str(exc))
        finally:
            store.close()
    pid = read_pid(data_dir)
    if pid is None:
        print(f"smarthost: warning: the mail system is not running; {count} deferred"
              f" message{'' if count == 1 else 's'} will be tried when it starts", file=sys.stderr)
        return 0
    try:
        os.kill(pid, signal.SIGUSR2)
    except OSError as exc:
        return _fail(f"cannot signal the master (pid {pid}): {exc.strerror}")
    return 0


def _ids(words: list[str]) -> list[str]:
    out: list[str] = []
    for word in words:
        if word == "-":
            out += [line.strip() for line in sys.stdin if line.strip()]
        else:
            out.append(word)
    return out


def cmd_change(args) -> int:
    done_text, summary = _ACTIONS[args.action]
    try:
        store, _ = _open(args)
    except (ConfigError, QueueError) as exc:
        return _fail(str(exc))
    status = 0
    done = 0
    try:
        wanted = _ids(args.ids)
        if any(word.upper() == "ALL" for word in wanted):
            entries = store.list() if store is not None else []
            if args.action != "delete":
                entries = [e for e in entries if e.state is not QueueState.CORRUPT]
            if args.action == "release":
                entries = [e for e in entries if e.state is QueueState.HOLD]
            elif args.action == "hold":
                entries = [e for e in entries if e.state is not QueueState.HOLD]
            wanted = [e.id for e in entries]
            if args.action == "delete" and store is not None:
                wanted += [e.id for e in store.list(QueueState.CORRUPT)]
        for queue_id in dict.fromkeys(wanted):
            if not is_queue_id(queue_id):
                print(f"smarthost: warning: invalid mail queue id: {queue_id[:40]}", file=sys.stderr)
                status = 1
                continue
            try:
                if store is None:
                    raise NoSuchEntry(queue_id)
                ok = _apply(store, args.action, queue_id)
            except NoSuchEntry:
                print(f"smarthost: {queue_id}: no such message in the queue", file=sys.stderr)
                status = 1
                continue
            if not ok:
                why = "not on hold" if args.action == "release" else "corrupt; only delete works on it"
                print(f"smarthost: {queue_id}: {why}", file=sys.stderr)
                status = 1
                continue
            print(f"smarthost: {queue_id}: {done_text}")
            done += 1
    except QueueError as exc:
        return _fail(str(exc))
    finally:
        if store is not None:
            store.close()
    print(f"smarthost: {summary}: {done} message{'' if done == 1 else 's'}")
    return status


def _apply(store: QueueStore, action: str, queue_id: str) -> bool:
    if action == "delete":
        store.delete(queue_id)
        return True
    if action == "hold":
        return store.hold(queue_id)
    if action == "release":
        return store.release(queue_id, time.time())
    return store.requeue(queue_id, time.time())


def cmd_show(args) -> int:
    try:
        store, _ = _open(args)
    except (ConfigError, QueueError) as exc:
        return _fail(str(exc))
    queue_id = args.id
    if store is None or not is_queue_id(queue_id):
        return _fail(f"{queue_id[:40]}: no such message in the queue")
    try:
        entry = store.get(queue_id)
        if entry is None:
            return _fail(f"{queue_id}: no such message in the queue")
        statuses = store.recipient_statuses(queue_id)
        body = store.read_body(queue_id)
    except QueueError as exc:
        return _fail(str(exc))
    finally:
        store.close()
    out = sys.stdout.buffer
    lines = [
        f"*** ENVELOPE RECORDS {queue_id} ***",
        f"state: {entry.state}",
        f"message_size: {entry.size}",
        f"arrival_time: {time.strftime('%a %b %d %H:%M:%S %Y', time.localtime(entry.arrival))}",
        f"next_attempt: {time.strftime('%a %b %d %H:%M:%S %Y', time.localtime(entry.next_attempt))}",
        f"attempts: {entry.attempts}",
    ]
    env = entry.envelope
    if env is not None:
        lines.append(f"sender: {env.sender}")
        for name in ("client_address", "client_name", "helo", "protocol", "sasl_username",
                     "body_type", "envid", "ret"):
            value = getattr(env, name)
            if value:
                lines.append(f"{name}: {value}")
        for rcpt, (_, state, reply) in zip(env.recipients, statuses):
            extra = "".join(f" {k}={v}" for k, v in (("orcpt", rcpt.orcpt),
                            ("notify", ",".join(rcpt.notify) if rcpt.notify else None)) if v)
            result = f" ({state}: {reply})" if state else ""
            lines.append(f"recipient: {rcpt.address}{extra}{result}")
    lines.append(f"*** MESSAGE CONTENTS {queue_id} ***")
    out.write(("\n".join(lines) + "\n").encode("utf-8", "replace"))
    out.write(body)
    if not body.endswith(b"\n"):
        out.write(b"\n")
    out.write(f"*** END OF MESSAGE {queue_id} ***\n".encode())
    out.flush()
    return 0
