"""Queue ids: short, unique across processes and restarts, sortable by time.

Format: 15 characters of base62 (``0-9A-Za-z``, in ASCII order, so a plain
string sort is a numeric sort)::

    TTTTTTTTT PPPP CC
    │         │    └─ 2 chars: per-process sequence within one microsecond (0..3843)
    │         └────── 4 chars: process id (Linux pid_max is at most 2**22 < 62**4)
    └──────────────── 9 chars: time of creation in microseconds since the epoch
                              (62**9 µs reaches the year 2398)

Example: ``0XXmLkTEa03Dl00``. Only letters and digits, so an id is safe in file
names, log lines and shell commands.

Uniqueness: within one process the (time, sequence) pair strictly increases,
even when the wall clock steps back, because a time lower than the last one
issued is replaced by the last one. Two processes alive at the same moment have
different pids. A restarted process gets a later time (unless the clock was
stepped back by more than the restart took *and* the pid was reused); the
queue's primary key refuses a duplicate rather than overwrite a message.
"""

from __future__ import annotations

import os
import re
import threading
import time

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BASE = len(ALPHABET)
_TIME_CHARS, _PID_CHARS, _SEQ_CHARS = 9, 4, 2
ID_LENGTH = _TIME_CHARS + _PID_CHARS + _SEQ_CHARS
_SEQ_LIMIT = _BASE**_SEQ_CHARS

_lock = threading.Lock()
_last_us = 0
_seq = 0
_pid_part = ""


def _encode(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, _BASE)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


def _reset_after_fork() -> None:
    global _last_us, _seq, _pid_part, _lock
    _lock = threading.Lock()
    _last_us = 0
    _seq = 0
    _pid_part = _encode(os.getpid() % _BASE**_PID_CHARS, _PID_CHARS)


_reset_after_fork()
os.register_at_fork(after_in_child=_reset_after_fork)
_SEQ_TEXT = [_encode(n, _SEQ_CHARS) for n in range(_SEQ_LIMIT)]  # the text of any number below 62**2
# The time's leading 7 characters change only every 62**2 µs (3.8 ms): kept, not encoded per id.
_HIGH_CHARS = _TIME_CHARS - _SEQ_CHARS
_high: tuple[int, str] = (-1, "")
_ID_SHAPE = re.compile(f"[{ALPHABET}]+")


def new_queue_id() -> str:
    """Return a new queue id (thread-safe)."""
    global _last_us, _seq, _high
    now = time.time_ns() // 1000
    with _lock:
        if now > _last_us:
            _last_us, _seq = now, 0
        else:
            _seq += 1
            if _seq == _SEQ_LIMIT:
                _last_us, _seq = _last_us + 1, 0
        stamp, seq = _last_us, _seq
    high, low = divmod(stamp, _SEQ_LIMIT)
    cached = _high
    if cached[0] != high:
        cached = _high = (high, _encode(high, _HIGH_CHARS))
    return cached[1] + _SEQ_TEXT[low] + _pid_part + _SEQ_TEXT[seq]


def is_queue_id(text: str) -> bool:
    """True if ``text`` has the shape of a queue id (length and alphabet)."""
    return len(text) == ID_LENGTH and _ID_SHAPE.fullmatch(text) is not None


def queue_id_time(queue_id: str) -> float:
    """The creation time (epoch seconds) encoded in ``queue_id``."""
    if not is_queue_id(queue_id):
        raise ValueError(f"not a queue id: {queue_id[:40]!r}")
    value = 0
    for c in queue_id[:_TIME_CHARS]:
        value = value * _BASE + ALPHABET.index(c)
    return value / 1e6
