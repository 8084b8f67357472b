"""``smarthost sendmail``: the sendmail(1) command that programs (cron, mail(1), PHP, git) call.

The message is read from standard input and written into the maildrop directory
(:mod:`smarthost.queue.maildrop`), so it works while the daemon is down; the command exits 0
once the file is on disk, and the daemon's pickup queues it.

Options (parsed like Postfix's sendmail, with getopt; flags may be combined as in ``-ti``):

``-t``            recipients also from the To:, Cc: and Bcc: headers (Resent-To/-Cc/-Bcc when
                  any Resent- header is present); Bcc: headers are removed
``-i``, ``-oi``   a line with only ``.`` does not end the input
``-f SENDER``     envelope sender (``-f '<>'`` for the null sender); ``-r`` is the old name
``-F NAME``       full name for the From: header that is added when missing
``-N DSN``        NOTIFY: ``never`` or a list of ``success``, ``delay``, ``failure``
``-R RET``, ``-V ENVID``  DSN RET (``full``, ``hdrs``) and envelope id
``-bm``           read a message from standard input (the default)
``-bs``           speak SMTP on standard input and output (the SMTP server core, no TLS/AUTH)
``-C DIR``        configuration directory (same as ``smarthost -c DIR``)
``-oX...``, ``-odb``, ``-v``, ``-m``, ``-n``, ``-U``, ``-G``, ``-I``, ``-x``, ``-c``,
``-B``, ``-h``, ``-L``, ``-O``, ``-X``, ``-p``, ``-e``: accepted and ignored.

What the message gets: lines ending in LF are converted to CRLF; ``From:``, ``Date:`` and
``Message-ID:`` are added at the end of the header section when missing (From: is the sender,
with the -F name or the user's GECOS name). Unqualified addresses get ``@$myorigin``; the
default sender is ``LOGIN@$myorigin``. Any user may set ``-f`` (as with Postfix's default); the
pickup records the submitting uid in a ``Received:`` header.

Exit codes (sysexits.h): 0 done, 64 usage, 65 bad message or address, 75 temporary failure
(maildrop not writable), 78 configuration error.

Installing as ``/usr/sbin/sendmail`` and ``/usr/bin/mailq``: two wrapper scripts (not one:
``sendmail -bp`` is refused here with a pointer to ``smarthost mailq``), so that
``MAIL_CONFIG`` or the default ``/etc/smarthost`` applies. ``/usr/sbin/sendmail``::

    #!/bin/sh
    exec /opt/smarthost/.venv/bin/python -m smarthost sendmail "$@"

and ``/usr/bin/mailq`` (it takes no options)::

    #!/bin/sh
    exec /opt/smarthost/.venv/bin/python -m smarthost mailq

(``chmod 755`` both; ``ln -s /usr/sbin/sendmail /usr/lib/sendmail`` for programs that look
there; put ``-c /etc/smarthost`` before the subcommand for another directory). The
maildrop must exist with mode 1733, which ``smarthost run`` (as root) sets up.
"""

from __future__ import annotations

import email.utils
import getopt
import os
import pwd
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from smarthost.config import ConfigError, load
from smarthost.queue.ids import new_queue_id
from smarthost.queue.maildrop import MAILDROP_DIR, ensure_maildrop, write
from smarthost.queue.store import Envelope, Recipient
from smarthost.smtp import server
from smarthost.smtp.replies import Reply

EX_OK, EX_USAGE, EX_DATAERR, EX_SOFTWARE, EX_TEMPFAIL, EX_CONFIG = 0, 64, 65, 70, 75, 78
_OPTSTRING = "B:C:F:GIL:N:O:R:UV:X:b:ce:f:h:imno:p:r:q:tvx"  # Postfix sendmail's getopt string
_HEADER = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")  # RFC 5322 §2.2 field name
_NOTIFY = {"SUCCESS", "DELAY", "FAILURE"}


class UsageError(Exception):
    def __init__(self, message: str, code: int = EX_USAGE) -> None:
        super().__init__(message)
        self.code = code


def register(sub) -> None:
    # prefix_chars="+": sendmail's own options (-t -i -f ...) reach our getopt untouched.
    p = sub.add_parser("sendmail", prefix_chars="+", add_help=False,
                       help="submit a message like sendmail(1) (-t, -i, -f, -F, -bs, ...)")
    p.add_argument("argv", nargs="*")
    p.set_defaults(func=cmd_sendmail)


@dataclass
class Options:
    mode: str = "m"  # "m": message on stdin, "s": SMTP on stdin/stdout
    extract: bool = False  # -t
    dots_end_input: bool = True  # cleared by -i / -oi
    sender: str | None = None  # -f / -r; "" = null sender
    fullname: str | None = None
    recipients: list[str] = field(default_factory=list)
    notify: tuple[str, ...] | None = None
    ret: str | None = None
    envid: str | None = None
    config_dir: str | None = None


def parse_options(argv: list[str]) -> Options:
    try:
        pairs, rest = getopt.gnu_getopt(argv, _OPTSTRING)
    except getopt.GetoptError as exc:
        raise UsageError(str(exc)) from None
    opts = Options(recipients=list(rest))
    for flag, value in pairs:
        if flag == "-t":
            opts.extract = True
        elif flag == "-i" or (flag == "-o" and value == "i"):
            opts.dots_end_input = False
        elif flag in ("-f", "-r"):
            opts.sender = "" if value.strip() in ("", "<>") else value.strip().strip("<>")
        elif flag == "-F":
            opts.fullname = value
        elif flag == "-C":
            opts.config_dir = value
        elif flag == "-N":
            words = {w.strip().upper() for w in value.split(",") if w.strip()}
            if words == {"NEVER"}:
                opts.notify = ("NEVER",)
            elif words and words <= _NOTIFY:
                opts.notify = tuple(sorted(words))
            else:
                raise UsageError(f'-N "{value}": write never, or a list of success, delay, failure')
        elif flag == "-R":
            if value.upper() not in ("FULL", "HDRS"):
                raise UsageError(f'-R "{value}": write full or hdrs')
            opts.ret = value.upper()
        elif flag == "-V":
            opts.envid = value
        elif flag == "-b":
            if value not in ("m", "s"):
                hint = {"p": "smarthost mailq", "d": "smarthost run", "i": "smarthost postmap",
                        "v": "", "a": ""}.get(value, "")
                raise UsageError(f"-b{value} is not supported" + (f"; use {hint}" if hint else ""))
            opts.mode = value
        elif flag == "-q":
            raise UsageError("-q is not supported; use smarthost queue flush")
        # Every other option is accepted and ignored (-o..., -odb, -v, -m, -n, -U, -G, -I, ...).
    return opts


@dataclass(frozen=True)
class Site:
    """What sendmail needs from main.cf."""

    myhostname: str
    myorigin: str
    queue_directory: Path
    message_size_limit: int


def cmd_sendmail(args) -> int:
    try:
        opts = parse_options(args.argv)
        config_dir = opts.config_dir or args.config_dir
        try:
            cfg = load(Path(config_dir))
        except ConfigError as exc:
            raise UsageError(str(exc), EX_CONFIG) from None
        site = Site(cfg.params["myhostname"], cfg.params["myorigin"], Path(cfg.params["queue_directory"]),
                    cfg.params["message_size_limit"])
        if opts.mode == "s":
            return run_smtp(site, opts, sys.stdin.buffer, sys.stdout.buffer)
        return submit_message(site, opts, sys.stdin.buffer)
    except UsageError as exc:
        print(f"smarthost sendmail: fatal: {exc}", file=sys.stderr)
        return exc.code


# -- the message ---------------------------------------------------------------------------


def _login() -> tuple[str, str]:
    try:
        pw = pwd.getpwuid(os.getuid())
    except KeyError:
        return f"uid{os.getuid()}", ""
    return pw.pw_name, pw.pw_gecos.split(",")[0]


def qualify(address: str, myorigin: str) -> str:
    """``user`` -> ``user@myorigin``; refuse what cannot be an envelope address."""
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    if not address or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in address) or len(address) > 254:
        raise UsageError(f'bad address syntax: "{address[:80]}"', EX_DATAERR)
    return address if "@" in address else f"{address}@{myorigin}"


def read_message(stream, *, dots_end_input: bool, max_size: int) -> list[bytes]:
    """Lines of the message without their line ends; stops at a lone "." unless -i."""
    lines: list[bytes] = []
    total = 0
    for raw in stream:
        total += len(raw) + 1
        if max_size and total > max_size:
            raise UsageError(f"message too large: the limit is {max_size} bytes", EX_DATAERR)
        line = raw[:-1] if raw.endswith(b"\n") else raw
        if line.endswith(b"\r"):
            line = line[:-1]
        if dots_end_input and line == b".":
            break
        lines.append(line)
    return lines


def _split_header(lines: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """(header lines, body lines); a first non-header line starts the body (a blank line is
    inserted before it when the message has none)."""
    count = 0
    for line in lines:
        if _HEADER.match(line) or (count and line[:1] in (b" ", b"\t")):
            count += 1
        else:
            break
    body = lines[count:]
    if body and body[0] == b"":
        body = body[1:]
    return lines[:count], body


def _fields(header: list[bytes]) -> list[list[bytes]]:
    """Header lines grouped into fields (a field and its continuation lines)."""
    fields: list[list[bytes]] = []
    for line in header:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    return fields


def _name(field_lines: list[bytes]) -> str:
    return field_lines[0].split(b":", 1)[0].strip().decode("ascii", "replace").lower()


def _value(field_lines: list[bytes]) -> str:
    text = b" ".join([field_lines[0].split(b":", 1)[1], *field_lines[1:]])
    return text.decode("utf-8", "replace")


def header_recipients(fields: list[list[bytes]]) -> list[str]:
    """-t: addresses in To/Cc/Bcc, or in Resent-To/-Cc/-Bcc when there is any Resent- header."""
    resent = any(_name(f).startswith("resent-") for f in fields)
    wanted = {"resent-to", "resent-cc", "resent-bcc"} if resent else {"to", "cc", "bcc"}
    values = [_value(f) for f in fields if _name(f) in wanted]
    return [address for _, address in email.utils.getaddresses(values) if address]


def complete_headers(fields: list[list[bytes]], *, sender: str, fullname: str, myhostname: str,
                     message_id: str, now: float) -> list[list[bytes]]:
    """Add From:, Date: and Message-ID: when missing (RFC 5322 §3.6 requires From and Date)."""
    names = {_name(f) for f in fields}
    added = []
    if "from" not in names:
        added.append(b"From: " + email.utils.formataddr((fullname, sender), charset="utf-8").encode("utf-8"))
    if "date" not in names:
        added.append(b"Date: " + email.utils.formatdate(now, localtime=True).encode("ascii"))
    if "message-id" not in names:
        added.append(f"Message-ID: <{message_id}@{myhostname}>".encode("utf-8"))
    return fields + [[line] for line in added]


def build(lines: list[bytes], opts: Options, site: Site, *, now: float, message_id: str,
          login: tuple[str, str]) -> tuple[str, list[str], bytes]:
    """(sender, recipients, message bytes with CRLF line ends)."""
    user, gecos = login
    sender = qualify(opts.sender, site.myorigin) if opts.sender else ("" if opts.sender == "" else f"{user}@{site.myorigin}")
    header, body = _split_header(lines)
    fields = _fields(header)
    recipients = list(opts.recipients)
    if opts.extract:
        recipients += header_recipients(fields)
        fields = [f for f in fields if _name(f) not in ("bcc", "resent-bcc")]
    recipients = list(dict.fromkeys(qualify(r, site.myorigin) for r in recipients))
    if not recipients:
        raise UsageError("no recipients: name them on the command line or use -t with To:/Cc:/Bcc: headers"
                         if not opts.extract else "no recipient addresses found in the message headers")
    fullname = opts.fullname if opts.fullname is not None else gecos
    fields = complete_headers(fields, sender=sender or f"{user}@{site.myorigin}", fullname=fullname,
                              myhostname=site.myhostname, message_id=message_id, now=now)
    out = [line for f in fields for line in f] + [b""] + body
    return sender, recipients, b"".join(line + b"\r\n" for line in out)


def _envelope(sender: str, recipients: list[Recipient], message: bytes, *, envid: str | None,
              ret: str | None) -> Envelope:
    utf8 = not sender.isascii() or any(not r.address.isascii() for r in recipients)
    return Envelope(
        sender=sender,
        recipients=tuple(recipients),
        protocol="local",
        body_type=None if message.isascii() else "8BITMIME",
        smtputf8=utf8,
        envid=envid,
        ret=ret,
    )


def _drop(site: Site, envelope: Envelope, message: bytes) -> str:
    directory = site.queue_directory / MAILDROP_DIR
    try:
        if not directory.is_dir() and os.geteuid() == 0:
            ensure_maildrop(site.queue_directory)
        return write(directory, envelope, message)
    except OSError as exc:
        hint = ""
        if isinstance(exc, (PermissionError, FileNotFoundError)):
            hint = (f"; {directory} must exist with mode 1733 and {site.queue_directory} must be searchable"
                    " (mode 711): run smarthost once as root")
        raise UsageError(f"cannot write to the maildrop {directory}: {exc.strerror or exc}{hint}", EX_TEMPFAIL) from None


def submit_message(site: Site, opts: Options, stream) -> int:
    lines = read_message(stream, dots_end_input=opts.dots_end_input, max_size=site.message_size_limit)
    sender, recipients, message = build(lines, opts, site, now=time.time(), message_id=new_queue_id(),
                                        login=_login())
    rcpts = [Recipient(r, None, opts.notify) for r in recipients]
    _drop(site, _envelope(sender, rcpts, message, envid=opts.envid, ret=opts.ret), message)
    return EX_OK


# -- sendmail -bs --------------------------------------------------------------------------


def run_smtp(site: Site, opts: Options, stdin, stdout) -> int:
    """SMTP on stdin/stdout with the server core; each accepted message goes to the maildrop."""
    settings = server.ServerSettings(hostname=site.myhostname, max_message_size=site.message_size_limit,
                                     starttls_available=False, forbid_unauth_pipelining=False,
                                     banner=f"{site.myhostname} ESMTP smarthost (sendmail -bs)")
    conn = server.ServerConnection(settings)
    conn.greet()
    user, gecos = _login()
    fd = stdin.fileno()
    while True:
        event = conn.next_event()
        if event is server.NEED_DATA or event is server.PAUSED:
            stdout.write(conn.data_to_send())
            stdout.flush()
            if conn.closed:
                return EX_OK
            conn.receive_data(os.read(fd, 65536))
        elif isinstance(event, (server.Helo, server.MailFrom, server.RcptTo, server.DataCommand)):
            conn.accept()
        elif isinstance(event, server.MessageReceived):
            session = conn.session
            sender = str(session.sender or "")
            params = session.mail_params
            lines = event.data.split(b"\r\n")
            if lines and lines[-1] == b"":
                lines.pop()
            header, body = _split_header(lines)
            fields = complete_headers(_fields(header), sender=sender or f"{user}@{site.myorigin}",
                                      fullname=gecos, myhostname=site.myhostname,
                                      message_id=new_queue_id(), now=time.time())
            message = b"".join(line + b"\r\n" for line in [*(x for f in fields for x in f), b"", *body])
            rcpts = [Recipient(qualify(str(r.address), site.myorigin), r.params.orcpt, r.params.notify)
                     for r in session.recipients]
            envelope = _envelope(sender, rcpts, message, envid=params.envid, ret=params.ret)
            try:
                name = _drop(site, envelope, message)
            except UsageError as exc:
                print(f"smarthost sendmail: {exc}", file=sys.stderr)
                conn.reject(Reply(451, "4.3.0", "Error: queue file write error"))
            else:
                conn.accept(Reply(250, "2.0.0", f"Ok: queued as {name}"))
        elif isinstance(event, (server.Quit, server.Closing)):
            stdout.write(conn.data_to_send())
            stdout.flush()
            return EX_OK
        elif isinstance(event, server.ProtocolError):
            continue
        else:  # AUTH and STARTTLS are not offered; anything else is a bug in this loop
            raise RuntimeError(f"unexpected SMTP event {event!r}")

