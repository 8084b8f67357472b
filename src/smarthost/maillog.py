"""The operator's mail log: one line per event, in Postfix's spirit.

Lines look like syslog's, so the greps admins know keep working::

    Nov 25 11:44:19 mx smarthost/smtpd[4711]: 0F3A9C2B1E7D: client=localhost[127.0.0.1]

The queue id comes first where there is one; ``NOQUEUE`` where a request was refused before
anything was queued. Message bodies and secrets never go here.

Writing is cheap on the hot path: once attached to an event loop, lines are collected and
written with one ``write`` per loop iteration; otherwise each line is written at once.
Developers' diagnostics use module loggers (``logging.getLogger(__name__)``) instead.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from typing import TextIO

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class MailLog:
    """A line-oriented log writer bound to a file (``maillog_file``) or stderr."""

    def __init__(self, path: str | None = None, *, hostname: str | None = None, program: str = "smarthost") -> None:
        self.path = path or None
        self.hostname = (hostname or socket.gethostname()).split(".")[0]
        self.program = program
        self._stream: TextIO | None = None
        self._pending: list[str] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stamp_second = -1
        self._stamp = ""
        self._prefix = ""
        self.set_process("master")
        self._open()

    def _open(self) -> None:
        if self.path:
            self._stream = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        else:
            self._stream = sys.stderr

    def reopen(self) -> None:
        """Reopen the file (after rotation, or in a child process)."""
        self.flush()
        if self.path and self._stream is not None:
            self._stream.close()
        self._open()

    def set_process(self, name: str) -> None:
        """Name the process in each line: ``smarthost/smtpd[pid]``."""
        self._prefix = f"{self.hostname} {self.program}/{name}[{os.getpid()}]: "

    def _timestamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._stamp_second:
            t = time.localtime(second)
            self._stamp = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} "
            self._stamp_second = second
        return self._stamp

    def attach(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Batch lines per iteration of ``loop`` (None: write each line at once)."""
        self.flush()
        self._loop = loop

    def log(self, message: str) -> None:
        line = self._timestamp() + self._prefix + message + "\n"
        loop = self._loop
        if loop is None or loop.is_closed():
            self._write(line)
            return
        self._pending.append(line)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self.flush)

    # Postfix's severities show as a word after the prefix.
    def warning(self, message: str) -> None:
        self.log("warning: " + message)

    def error(self, message: str) -> None:
        self.log("error: " + message)

    def fatal(self, message: str) -> None:
        self.log("fatal: " + message)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._pending:
            data = "".join(self._pending)
            self._pending.clear()
            self._write(data)

    def _write(self, data: str) -> None:
        stream = self._stream
        if stream is None:
            return
        try:
            stream.write(data)
            stream.flush()
        except (OSError, ValueError):
            pass  # a full disk must not take the mail service down with it

    def close(self) -> None:
        self.flush()
        if self.path and self._stream is not None:
            self._stream.close()
            self._stream = None


def client_label(name: str, address: str) -> str:
    """Postfix's ``name[address]`` form for a client."""
    return f"{name or 'unknown'}[{address}]"
