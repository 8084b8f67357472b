"""The maildrop directory: local submission (``smarthost sendmail``) that works while the daemon is down.

``sendmail`` writes one file per message into ``$queue_directory/maildrop/`` and exits 0 once
the file is durable; the daemon's pickup moves each file into the queue store
(:meth:`QueueStore.submit_sync`) and then removes it. A crash between the two may queue a
message twice (at-least-once, DESIGN.md principle 4), never lose it.

Permissions. Postfix makes maildrop mode 1730, group postdrop, written through a setgid
``postdrop`` program. A Python program cannot be setgid, so smarthost makes maildrop
**mode 1733, owned by root**: every local user can create files there, nobody but root can
list it, and the sticky bit stops users from removing or renaming each other's files. Files
are mode 0600 and owned by their writer; the pickup runs as root (as the master does). Local
users can only reach maildrop if ``queue_directory`` is searchable (mode 0711 or 0755): the
queue database itself must then be mode 0600. The owner of a file is the submitting user; the
pickup records it in the ``Received:`` header it adds (Postfix's "from userid N").

File format, version 1::

    smarthost-maildrop 1\\n
    {"sender": ..., "recipients": [{"address": ..., "orcpt": ..., "notify": [...]}, ...],
     "size": <body octets>, "body_type": ..., "smtputf8": ..., "envid": ..., "ret": ...}\\n
    <the message: exactly "size" octets, CRLF line endings>

(the JSON is on one line). A file is written as ``.<name>.tmp``, fsync'd, renamed to a
queue-id-like name and the directory is fsync'd. The pickup skips dot files (writes in
progress) younger than a day. It opens files with ``O_NOFOLLOW`` and accepts only regular
files with one link (so a user cannot make root read another file through a link). Anything
it cannot read or parse goes to ``$queue_directory/corrupt-maildrop/`` with a log line:
never deleted.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import stat
import time
from pathlib import Path

from smarthost.queue.ids import new_queue_id
from smarthost.queue.store import Envelope, QueueError, QueueStore, Recipient

__all__ = [
    "CORRUPT_DIR",
    "MAILDROP_DIR",
    "MaildropError",
    "ensure_maildrop",
    "pickup",
    "read",
    "write",
]

log = logging.getLogger(__name__)

MAILDROP_DIR = "maildrop"
CORRUPT_DIR = "corrupt-maildrop"
MAGIC = b"smarthost-maildrop 1\n"
MAX_ENVELOPE_BYTES = 1 << 20
DEFAULT_MAX_SIZE = 10240000  # message_size_limit's default
STALE_TEMP_SECONDS = 86400
MAILDROP_MODE = 0o1733

_OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {
    "body_type": (str, type(None)),
    "smtputf8": (bool,),
    "envid": (str, type(None)),
    "ret": (str, type(None)),
}


class MaildropError(Exception):
    """A maildrop file that cannot be used (the message says why, without its contents)."""


def ensure_maildrop(queue_directory: Path | str) -> Path:
    """Create ``maildrop/`` (mode 1733) if it is missing; return its path. A missing
    ``queue_directory`` is created mode 0711 (searchable, not listable); an existing one
    keeps its mode."""
    path = Path(queue_directory) / MAILDROP_DIR
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, mode=0o711)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return path
    os.chmod(path, MAILDROP_MODE)  # after mkdir: the umask would clear the group/other bits
    _fsync_directory(path.parent)
    return path


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode(envelope: Envelope, body: bytes) -> bytes:
    header = {
        "sender": envelope.sender,
        "recipients": [
            {"address": r.address, "orcpt": r.orcpt, "notify": None if r.notify is None else list(r.notify)}
            for r in envelope.recipients
        ],
        "size": len(body),
        **{name: getattr(envelope, name) for name in _OPTIONAL_FIELDS},
    }
    line = json.dumps(header, separators=(",", ":")).encode("ascii")  # ensure_ascii: one line
    if len(line) >= MAX_ENVELOPE_BYTES:
        raise ValueError("too many or too long recipient addresses for one message")
    return MAGIC + line + b"\n"


def write(directory: Path | str, envelope: Envelope, body: bytes) -> str:
    """Write a message into the maildrop ``directory``; return its file name once durable."""
    if not envelope.recipients:
        raise ValueError("an envelope needs at least one recipient")
    data = _encode(envelope, body) + body
    directory = Path(directory)
    name = new_queue_id()
    tmp = directory / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, directory / name)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    return name


def read(path: Path | str, *, max_size: int = DEFAULT_MAX_SIZE) -> tuple[Envelope, bytes, int]:
    """Parse one maildrop file: ``(envelope, body, owner uid)``. Raises MaildropError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise MaildropError(f"cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MaildropError("not a regular file")
        if st.st_nlink != 1:
            raise MaildropError(f"has {st.st_nlink} hard links")
        limit = len(MAGIC) + MAX_ENVELOPE_BYTES + max_size if max_size else st.st_size  # 0: no limit
        if st.st_size > limit:
            raise MaildropError(f"larger than {limit} bytes")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise MaildropError(f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    return (*_decode(data, max_size), st.st_uid)


def _decode(data: bytes, max_size: int) -> tuple[Envelope, bytes]:
    if not data.startswith(MAGIC):
        first = data[: data.find(b"\n")] if b"\n" in data[:64] else data[:32]
        raise MaildropError(f"not a version 1 maildrop file (first line {first[:40]!r})")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_ENVELOPE_BYTES)
    if end < 0:
        raise MaildropError("envelope line missing or too long")
    try:
        header = json.loads(data[len(MAGIC) : end])
    except ValueError:
        raise MaildropError("envelope line is not JSON") from None
    body = data[end + 1 :]
    if not isinstance(header, dict):
        raise MaildropError("envelope line is not a JSON object")
    sender, rcpts, size = header.get("sender"), header.get("recipients"), header.get("size")
    if not isinstance(sender, str) or not isinstance(rcpts, list) or not rcpts or type(size) is not int:
        raise MaildropError("envelope needs sender, recipients and size")
    if size != len(body):
        raise MaildropError(f"body has {len(body)} bytes, the envelope says {size}")
    if max_size and size > max_size:
        raise MaildropError(f"message of {size} bytes is larger than the limit of {max_size}")
    extra = {}
    for name, allowed in _OPTIONAL_FIELDS.items():
        value = header.get(name, False if name == "smtputf8" else None)
        if not isinstance(value, allowed):
            raise MaildropError(f"envelope field {name} has the wrong type")
        extra[name] = value
    recipients = []
    for item in rcpts:
        if not isinstance(item, dict) or not isinstance(item.get("address"), str) or not item["address"]:
            raise MaildropError("a recipient has no address")
        orcpt, notify = item.get("orcpt"), item.get("notify")
        if not isinstance(orcpt, (str, type(None))) or not (
            notify is None or (isinstance(notify, list) and all(isinstance(n, str) for n in notify))
        ):
            raise MaildropError("a recipient has a bad ORCPT or NOTIFY")
        recipients.append(Recipient(item["address"], orcpt, None if notify is None else tuple(notify)))
    for address in [sender, *(r.address for r in recipients)]:
        if any(ch in address for ch in "\r\n\0"):
            raise MaildropError("an address holds a line break or NUL")
    return Envelope(sender=sender, recipients=tuple(recipients), protocol="local", **extra), body


def _received(hostname: str, uid: int, queue_id: str, now: float) -> bytes:
    date = email.utils.formatdate(now, localtime=True)
    return f"Received: by {hostname} (smarthost, from userid {uid})\r\n\tid {queue_id}; {date}\r\n".encode("ascii")


def _to_corrupt(queue_directory: Path, path: Path, reason: str) -> None:
    corrupt = queue_directory / CORRUPT_DIR
    try:
        os.mkdir(corrupt, 0o700)
    except FileExistsError:
        pass
    target = corrupt / path.name.lstrip(".")
    if target.exists():
        target = corrupt / f"{target.name}.{new_queue_id()}"
    os.rename(path, target)
    log.error("maildrop file %s: %s; moved to %s", path.name, reason, target)


def pickup(
    store: QueueStore,
    *,
    directory: Path | str | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    received_by: str | None = None,
    clock=time.time,
) -> list[str]:
    """Queue every complete maildrop file and remove it; return the new queue ids in order.

    ``received_by`` (the host name) adds ``Received: by HOST (smarthost, from userid UID)``.
    A file the store refuses (QueueError) stays for the next pickup; the error is raised
    after the files before it have been handled."""
    queue_directory = store.directory
    maildrop = Path(directory) if directory is not None else queue_directory / MAILDROP_DIR
    try:
        names = sorted(e.name for e in os.scandir(maildrop) if not e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []
    queued: list[str] = []
    for name in names:
        path = maildrop / name
        if name.startswith("."):
            try:
                age = clock() - os.lstat(path).st_mtime
            except FileNotFoundError:
                continue
            if age > STALE_TEMP_SECONDS:
                _to_corrupt(queue_directory, path, "unfinished write, older than a day")
            continue
        try:
            envelope, body, uid = read(path, max_size=max_size)
        except MaildropError as exc:
            _to_corrupt(queue_directory, path, str(exc))
            continue
        queue_id = new_queue_id()
        if received_by:
            body = _received(received_by, uid, queue_id, clock()) + body
        try:
            store.submit_sync(envelope, body, queue_id=queue_id)
        except QueueError:
            log.error("maildrop file %s: the queue did not take it; kept for the next pickup", name)
            raise
        except ValueError as exc:  # the store refuses the envelope (e.g. not valid Unicode)
            _to_corrupt(queue_directory, path, str(exc))
            continue
        os.unlink(path)
        log.info("%s: uid=%d from=<%s> (maildrop %s)", queue_id, uid, envelope.sender, name)
        queued.append(queue_id)
    return queued
