"""Local delivery into Maildirs: system users (local(8)) and virtual mailboxes (virtual(8)).

What the queue manager calls:

* :func:`deliver_local` for a recipient whose domain is in ``mydestination`` (or has no
  domain) or in ``virtual_mailbox_domains``; it returns a :class:`LocalDelivery` with the
  recipient's :class:`~smarthost.smtp.client.Outcome` and, after ``alias_maps`` expansion, the
  addresses outside the local domains to route again (:attr:`LocalDelivery.forward`).
* :func:`rewrite_virtual` for every recipient *before* routing (Postfix applies virtual(5)
  to all addresses), then routes each address it returns.
* :func:`check_recipient` (or :func:`local_recipient_exists`) from the SMTP server at RCPT time,
  so that unknown local users get ``550 5.1.1`` instead of a bounce later.

Rules, and where they come from:

* Local domains: the local part is lower-cased; ``alias_maps`` are applied (see aliases.py);
  a name left over is a system user (``getpwnam``) after removing a ``recipient_delimiter``
  extension (``user+ext`` -> ``user``). ``postmaster`` without an alias or user goes to root
  (RFC 5321 §4.5.1 requires the mailbox). An unknown user bounces with 5.1.1.
* Only Maildir: ``home_mailbox`` must end with ``/`` (``Maildir/``). An empty
  ``home_mailbox`` (mbox in /var/mail), an mbox file name or a ``mailbox_command`` is not
  supported: delivery is deferred with a message saying what to set, so nothing is lost
  while the operator fixes main.cf.
* Virtual mailboxes: ``virtual_mailbox_maps`` (virtual(5) key order) gives a path relative to
  ``virtual_mailbox_base``, which must end with ``/`` (Maildir) and must not contain ``..``;
  the owner comes from ``virtual_uid_maps`` / ``virtual_gid_maps`` (``static:5000``) and
  must be at least ``virtual_minimum_uid`` (Postfix's 100).
* Maildir (maildir(5)): the file is written to ``tmp/<unique>``, fsync'd, hard-linked into
  ``new/`` (renamed where the file system has no hard links), and ``new/`` is fsync'd before
  we report success. Unique names are ``<seconds>.M<microseconds>P<pid>Q<counter>.<host>``.
  ``tmp``, ``new`` and ``cur`` are created mode 0700 when missing.
* Privileges: the file is written by a child process that has switched to the mailbox
  owner's uid, gid and groups (``fork`` + ``setuid``), so a symlink planted in a user's
  Maildir cannot make root write anywhere; files are opened with ``O_NOFOLLOW | O_EXCL``.
  Without root, only mailboxes owned by our own uid can be written (others defer).
* Like local(8), the stored message starts with ``Return-Path: <sender>``,
  ``X-Original-To:`` (the recipient before alias expansion) and ``Delivered-To:`` (the
  address being delivered to); lines end in LF, as mail readers expect in a Maildir.
  A message that already carries ``Delivered-To:`` with that address is in a loop and
  bounces with 5.4.6 "mail forwarding loop". Forwarded copies get ``Delivered-To:`` too.
* Outcomes: disk full (4.3.1), quota (4.2.2) and every other I/O error defer; a lookup table
  that fails defers (4.3.0); unknown errors defer (DESIGN.md principle 8). A message larger
  than ``mailbox_size_limit`` (per Maildir file) bounces with 5.2.2.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import pwd
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from smarthost.outbound.aliases import AliasError, expand_aliases, expand_virtual_aliases, lookup_first
from smarthost.smtp.client import Outcome, Status
from smarthost.smtp.replies import Reply
from smarthost.tables import Table, TableError, split_list
from smarthost.tables.keys import split_extension, virtual_keys

__all__ = [
    "DEFAULT_LOCAL_RECIPIENT_MAPS",
    "LocalDelivery",
    "LocalSettings",
    "LocalTables",
    "PasswdTable",
    "SystemUser",
    "check_recipient",
    "deliver_local",
    "deliver_to_maildir",
    "delivered_to",
    "local_recipient_exists",
    "open_local_tables",
    "rewrite_virtual",
    "system_user",
]

log = logging.getLogger(__name__)

#: Postfix's default; ``proxy:`` is accepted and ignored (we read the tables directly).
DEFAULT_LOCAL_RECIPIENT_MAPS = "proxy:unix:passwd.byname $alias_maps"
_PASSWD_TABLE = "unix:passwd.byname"
_MAX_HEADER_BYTES = 1 << 20  # loop detection reads at most this much of the header section


# -- settings and collaborators -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SystemUser:
    name: str
    uid: int
    gid: int
    home: str


def system_user(name: str) -> SystemUser | None:
    """The passwd entry for ``name`` (None if there is none)."""
    try:
        pw = pwd.getpwnam(name)
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        return None
    return SystemUser(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


class PasswdTable:
    """``unix:passwd.byname`` as a table: a local part is found when it is a system user."""

    name = _PASSWD_TABLE

    def __init__(self, find_user: Callable[[str], SystemUser | None] = system_user) -> None:
        self._find_user = find_user

    def lookup(self, key: str) -> str | None:
        if "@" in key or not key:
            return None
        user = self._find_user(key)
        return None if user is None else user.name


def _never(domain: str) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class LocalSettings:
    myhostname: str
    myorigin: str = ""  # "" = myhostname
    recipient_delimiter: str = ""
    home_mailbox: str = "Maildir/"
    mailbox_command: str = ""
    virtual_mailbox_base: str = ""
    virtual_minimum_uid: int = 100
    mailbox_size_limit: int = 51200000  # 0 = none; applies to each Maildir file (as Postfix)
    check_local_recipients: bool = True  # False when local_recipient_maps is empty: accept all

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> LocalSettings:
        def get(name: str, default: Any) -> Any:
            return params[name] if name in params else default

        return cls(
            myhostname=params["myhostname"],
            myorigin=get("myorigin", ""),
            recipient_delimiter=get("recipient_delimiter", ""),
            home_mailbox=get("home_mailbox", ""),
            mailbox_command=get("mailbox_command", ""),
            virtual_mailbox_base=get("virtual_mailbox_base", ""),
            virtual_minimum_uid=int(get("virtual_minimum_uid", 100)),
            mailbox_size_limit=int(get("mailbox_size_limit", 51200000)),
            check_local_recipients=bool(_list_param(params, "local_recipient_maps")),
        )


@dataclass(frozen=True)
class LocalTables:
    """The tables and predicates local delivery consults (opened once, shared)."""

    is_local_domain: Callable[[str], bool]  # mydestination (e.g. Policy.is_local_domain)
    is_virtual_mailbox_domain: Callable[[str], bool] = _never
    alias_maps: Sequence[Table] = ()
    local_recipient_maps: Sequence[Table] = ()  # for the RCPT check; PasswdTable for unix:passwd.byname
    virtual_alias_maps: Sequence[Table] = ()
    virtual_mailbox_maps: Sequence[Table] = ()
    virtual_uid_maps: Sequence[Table] = ()
    virtual_gid_maps: Sequence[Table] = ()
    find_user: Callable[[str], SystemUser | None] = field(default=system_user)


def _list_param(params: Mapping[str, Any], name: str) -> list[str]:
    """A list parameter; ones main.cf may set but parameters.py does not declare come as text."""
    if name not in params:
        if name == "local_recipient_maps":
            return split_list(DEFAULT_LOCAL_RECIPIENT_MAPS.replace("$alias_maps", " ".join(_list_param(params, "alias_maps"))))
        return []
    value = params[name]
    return split_list(value) if isinstance(value, str) else list(value)


class _DomainList:
    """virtual_mailbox_domains: ``domain``, ``.domain`` (subdomains) or ``type:table`` (the
    domain is looked up as the key)."""

    def __init__(self, items: Sequence[str], open_table: Callable[[str], Table]) -> None:
        self._exact: set[str] = set()
        self._suffixes: list[str] = []
        self._tables: list[Table] = []
        for item in items:
            if ":" in item:
                self._tables.append(open_table(item))
            elif item.startswith("."):
                self._suffixes.append(item.lower())
            else:
                self._exact.add(item.lower().rstrip("."))

    def __call__(self, domain: str) -> bool:
        if not (self._exact or self._suffixes or self._tables):  # none configured: asked per RCPT
            return False
        domain = domain.lower().rstrip(".")
        if domain in self._exact or any(domain.endswith(s) for s in self._suffixes):
            return True
        return any(t.lookup(domain) is not None for t in self._tables)


def open_local_tables(
    params: Mapping[str, Any],
    open_table: Callable[[str], Table],
    *,
    is_local_domain: Callable[[str], bool],
    find_user: Callable[[str], SystemUser | None] = system_user,
) -> LocalTables:
    """Open the tables named in main.cf (each ``type:name`` once). Raises TableError."""
    opened: dict[str, Table] = {}

    def table(spec: str) -> Table:
        if spec.startswith("proxy:"):
            spec = spec[len("proxy:") :]
        if spec not in opened:
            opened[spec] = PasswdTable(find_user) if spec == _PASSWD_TABLE else open_table(spec)
        return opened[spec]

    def tables(name: str) -> tuple[Table, ...]:
        return tuple(table(spec) for spec in _list_param(params, name))

    return LocalTables(
        is_local_domain=is_local_domain,
        is_virtual_mailbox_domain=_DomainList(_list_param(params, "virtual_mailbox_domains"), table),
        alias_maps=tables("alias_maps"),
        local_recipient_maps=tables("local_recipient_maps"),
        virtual_alias_maps=tables("virtual_alias_maps"),
        virtual_mailbox_maps=tables("virtual_mailbox_maps"),
        virtual_uid_maps=tables("virtual_uid_maps"),
        virtual_gid_maps=tables("virtual_gid_maps"),
        find_user=find_user,
    )


# -- RCPT-time check -----------------------------------------------------------------------


def _split(address: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    return (local, domain.lower().rstrip(".")) if at else (address, "")


def local_recipient_exists(address: str, settings: LocalSettings, tables: LocalTables) -> bool:
    """False only for an address in a local or virtual mailbox domain that nobody receives.
    Raises TableError (answer 451 4.3.0)."""
    return check_recipient(address, settings, tables) is None


def check_recipient(address: str, settings: LocalSettings, tables: LocalTables) -> Reply | None:
    """The 550 reply for an unknown local/virtual recipient, or None when it may be accepted."""
    local, domain = _split(address)
    delimiter = settings.recipient_delimiter
    is_local = not domain or tables.is_local_domain(domain)
    if tables.virtual_alias_maps and lookup_first(
        tables.virtual_alias_maps, virtual_keys(address, delimiter, local_domain=is_local)
    ):
        return None
    if is_local:
        if not settings.check_local_recipients or local.lower() == "postmaster":  # RFC 5321 §4.5.1
            return None
        lower = local.lower()
        base = split_extension(lower, delimiter)[0]
        keys = [f"{lower}@{domain}", f"{base}@{domain}"] if domain else []
        keys += [lower, base, lower + ":", base + ":"]  # ":": aliases(5) file format in a texthash table
        if lookup_first(tables.local_recipient_maps, list(dict.fromkeys(keys))) is not None:
            return None
        return Reply(550, "5.1.1", f"<{address}>: Recipient address rejected: User unknown in local recipient table")
    if tables.is_virtual_mailbox_domain(domain):
        if lookup_first(tables.virtual_mailbox_maps, virtual_keys(address, delimiter)) is not None:
            return None
        return Reply(550, "5.1.1", f"<{address}>: Recipient address rejected: User unknown in virtual mailbox table")
    return None


# -- delivery ------------------------------------------------------------------------------


def rewrite_virtual(address: str, settings: LocalSettings, tables: LocalTables) -> list[str]:
    """``virtual_alias_maps`` applied to one recipient (the manager calls this before routing).
    Raises AliasError (a loop: bounce with its status) or TableError (defer)."""
    return expand_virtual_aliases(
        address, tables.virtual_alias_maps, is_local_domain=tables.is_local_domain,
        myorigin=settings.myorigin or settings.myhostname, recipient_delimiter=settings.recipient_delimiter,
    )


@dataclass(frozen=True, slots=True)
class LocalDelivery:
    """The result for one recipient. Whenever ``outcome`` is not deferred, the manager queues
    ``forward_message`` (same sender) for the ``forward`` addresses, which it routes again."""

    outcome: Outcome
    forward: tuple[str, ...] = ()
    forward_message: bytes | None = None
    maildirs: tuple[str, ...] = ()  # the files written, for the log


def delivered_to(message: bytes) -> set[str]:
    """The (lower-cased) addresses of the ``Delivered-To:`` headers of a message."""
    end = message.find(b"\r\n\r\n", 0, _MAX_HEADER_BYTES)
    head = message[: end if end >= 0 else _MAX_HEADER_BYTES].replace(b"\r\n", b"\n")
    head = head.replace(b"\n ", b" ").replace(b"\n\t", b" ")  # unfold (RFC 5322 §2.2.3)
    found = set()
    for line in head.split(b"\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"delivered-to":
            found.add(value.strip().decode("utf-8", "replace").lower())
    return found


def deliver_local(
    message: bytes,
    recipient: str,
    *,
    sender: str,
    settings: LocalSettings,
    tables: LocalTables,
    original_recipient: str | None = None,
) -> LocalDelivery:
    """Deliver ``message`` (the queued body, CRLF lines) to ``recipient``'s Maildir(s)."""
    try:
        return _deliver(message, recipient, sender, settings, tables, original_recipient or recipient)
    except AliasError as exc:
        return LocalDelivery(Outcome.bounced(exc.enhanced, exc.text))
    except TableError as exc:
        return LocalDelivery(Outcome.deferred("4.3.0", f"lookup table error: {exc}"))
    except Exception:  # a bug defers mail, never bounces it (DESIGN.md principle 8)
        log.exception("local delivery to %s failed", recipient)
        return LocalDelivery(Outcome.deferred("4.3.0", "internal error in local delivery"))


def _deliver(message, recipient, sender, settings, tables, original) -> LocalDelivery:
    local, domain = _split(recipient)
    loops = delivered_to(message)
    if recipient.lower() in loops:
        return LocalDelivery(Outcome.bounced("5.4.6", f"mail forwarding loop for {recipient}"))
    if not domain or tables.is_local_domain(domain):
        return _deliver_local_domain(message, local, domain or settings.myhostname, recipient, sender,
                                     settings, tables, original, loops)
    if tables.is_virtual_mailbox_domain(domain):
        return _deliver_virtual(message, recipient, sender, settings, tables, original)
    return LocalDelivery(Outcome.deferred("4.3.0", f"{domain} is neither a local nor a virtual mailbox domain"))


def _deliver_local_domain(message, local, domain, recipient, sender, settings, tables, original, loops):
    targets = expand_aliases(local, tables.alias_maps, is_local_domain=tables.is_local_domain,
                             recipient_delimiter=settings.recipient_delimiter)
    forward = tuple(t.address for t in targets if t.kind == "forward")
    outcomes: list[Outcome] = []
    files: list[str] = []
    for target in targets:
        if target.kind != "mailbox":
            continue
        address = f"{target.address}@{domain}"
        if address != recipient.lower() and address in loops:
            outcomes.append(Outcome.bounced("5.4.6", f"mail forwarding loop for {address}"))
            continue
        name = split_extension(target.address, settings.recipient_delimiter)[0]
        user = tables.find_user(name)
        if user is None and name == "postmaster":
            user = tables.find_user("root")
        if user is None:
            outcomes.append(Outcome.bounced("5.1.1", f'unknown user: "{name}"'))
            continue
        problem = _home_mailbox_problem(settings)
        if problem:
            outcomes.append(Outcome.deferred("4.3.0", problem))
            continue
        maildir = os.path.join(user.home, settings.home_mailbox)
        data = _mailbox_data(message, sender, original, address)
        outcome, path = _store(maildir, data, settings, user.uid, user.gid, user.name)
        outcomes.append(outcome)
        if path:
            files.append(path)
    deferred = [o for o in outcomes if o.status is Status.DEFERRED]
    if deferred:  # retried as a whole later: forward then, not now
        return LocalDelivery(deferred[0], maildirs=tuple(files))
    forward_message = b"Delivered-To: " + _header_text(recipient) + b"\r\n" + message if forward else None
    bounced = [o for o in outcomes if o.status is Status.BOUNCED]
    if bounced:
        return LocalDelivery(bounced[0], forward, forward_message, tuple(files))
    parts = []
    if files:
        parts.append("delivered to maildir" if len(files) == 1 else f"delivered to {len(files)} maildirs")
    if forward:
        shown = ", ".join(forward[:5]) + (", ..." if len(forward) > 5 else "")
        parts.append(f"forwarded to {shown}")
    return LocalDelivery(Outcome(Status.SENT, "2.0.0", "; ".join(parts) or "delivered"),
                         forward, forward_message, tuple(files))


def _home_mailbox_problem(settings: LocalSettings) -> str | None:
    if settings.mailbox_command:
        return ("mailbox_command is not supported: smarthost delivers only into Maildirs;"
                " remove mailbox_command and set home_mailbox = Maildir/")
    home_mailbox = settings.home_mailbox
    if not home_mailbox:
        return ("home_mailbox is empty, which means mbox files in /var/mail: smarthost delivers only"
                " into Maildirs; set home_mailbox = Maildir/")
    if not home_mailbox.endswith("/"):
        return f"home_mailbox = {home_mailbox} names an mbox file: smarthost delivers only into Maildirs; end it with /"
    if home_mailbox.startswith("/") or ".." in home_mailbox.split("/"):
        return f"home_mailbox = {home_mailbox} must be a path inside the home directory, e.g. Maildir/"
    return None


def _deliver_virtual(message, recipient, sender, settings, tables, original) -> LocalDelivery:
    keys = virtual_keys(recipient, settings.recipient_delimiter)
    hit = lookup_first(tables.virtual_mailbox_maps, keys)
    if hit is None:
        return LocalDelivery(Outcome.bounced("5.1.1", f'unknown user: "{recipient}"'))
    mailbox = hit[1].strip()
    base = settings.virtual_mailbox_base
    if not base.startswith("/"):
        return LocalDelivery(Outcome.deferred("4.3.0", "virtual_mailbox_base must be an absolute directory"))
    if mailbox.startswith("/") or ".." in mailbox.split("/") or not mailbox.strip("/"):
        return LocalDelivery(Outcome.deferred("4.3.0", f'virtual_mailbox_maps: "{mailbox}" must be a path below virtual_mailbox_base'))
    if not mailbox.endswith("/"):
        return LocalDelivery(Outcome.deferred(
            "4.3.0", f'virtual_mailbox_maps: "{mailbox}" is an mbox file: smarthost delivers only into Maildirs; end it with /'))
    uid = _number(tables.virtual_uid_maps, keys, "virtual_uid_maps")
    gid = _number(tables.virtual_gid_maps, keys, "virtual_gid_maps")
    if isinstance(uid, str) or isinstance(gid, str):
        return LocalDelivery(Outcome.deferred("4.3.0", uid if isinstance(uid, str) else gid))
    if uid < settings.virtual_minimum_uid:
        return LocalDelivery(Outcome.deferred(
            "4.3.0", f"virtual_uid_maps: uid {uid} is below virtual_minimum_uid ({settings.virtual_minimum_uid})"))
    data = _mailbox_data(message, sender, original, recipient)
    outcome, path = _store(os.path.join(base, mailbox), data, settings, uid, gid, None)
    return LocalDelivery(outcome, maildirs=(path,) if path else ())


def _number(tables: Sequence[Table], keys: list[str], param: str) -> int | str:
    """A uid/gid from ``tables``, or the text of the problem."""
    hit = lookup_first(tables, keys)
    if hit is None:
        return f"{param} has no entry for this recipient"
    try:
        value = int(hit[1].strip())
    except ValueError:
        return f"{param}: the value for {hit[0]} is not a number"
    return value if value >= 0 else f"{param}: negative id for {hit[0]}"


def _header_text(text: str) -> bytes:
    return text.replace("\r", "").replace("\n", "").encode("utf-8", "surrogateescape")


def _mailbox_data(message: bytes, sender: str, original: str, delivered: str) -> bytes:
    head = (b"Return-Path: <" + _header_text(sender) + b">\n"
            b"X-Original-To: " + _header_text(original) + b"\n"
            b"Delivered-To: " + _header_text(delivered) + b"\n")
    return head + message.replace(b"\r\n", b"\n")


def _store(maildir: str, data: bytes, settings: LocalSettings, uid: int, gid: int,
           user: str | None) -> tuple[Outcome, str | None]:
    if settings.mailbox_size_limit and len(data) > settings.mailbox_size_limit:
        return Outcome.bounced("5.2.2", "message file too big for mailbox_size_limit"), None
    try:
        path = deliver_to_maildir(maildir, data, uid=uid, gid=gid, user=user, hostname=settings.myhostname)
    except OSError as exc:
        enhanced = {errno.ENOSPC: "4.3.1", errno.EDQUOT: "4.2.2"}.get(exc.errno or 0, "4.2.0")
        return Outcome.deferred(enhanced, f"maildir delivery failed: {maildir}: {exc.strerror or exc}"), None
    return Outcome(Status.SENT, "2.0.0", "delivered to maildir"), path


# -- Maildir -------------------------------------------------------------------------------

_counter = itertools.count(1)


def _unique_name(hostname: str) -> str:
    """maildir(5): time, then M<usec>P<pid>Q<delivery counter>, then the host ("/" and ":" escaped)."""
    now = time.time_ns() // 1000
    host = hostname.replace("/", r"\057").replace(":", r"\072")
    return f"{now // 1_000_000}.M{now % 1_000_000}P{os.getpid()}Q{next(_counter)}.{host}"


def deliver_to_maildir(maildir: str, data: bytes, *, uid: int, gid: int, user: str | None = None,
                       hostname: str) -> str:
    """Write ``data`` as a new message in ``maildir`` as ``uid``/``gid`` (and ``user``'s groups);
    return the path in ``new/``. Raises OSError (with its errno) when it cannot."""
    name = _unique_name(hostname)
    if os.geteuid() == uid:
        return _write_maildir(maildir, data, name)
    if os.geteuid() != 0:
        raise PermissionError(errno.EPERM, f"cannot write as uid {uid} without root privileges")
    return _as_user(uid, gid, user, maildir, data, name)


def _as_user(uid: int, gid: int, user: str | None, maildir: str, data: bytes, name: str) -> str:
    """Run :func:`_write_maildir` in a child process that has become ``uid``/``gid``."""
    groups = os.getgrouplist(user, gid) if user is not None else [gid]  # NSS lookups stay in the parent
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only os calls, then _exit (no cleanup handlers, no logging)
        code = 2
        try:
            os.close(read_fd)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            path = _write_maildir(maildir, data, name)
            os.write(write_fd, b"ok " + path.encode("utf-8", "surrogateescape"))
            code = 0
        except OSError as exc:
            os.write(write_fd, f"{exc.errno or errno.EIO} {exc.strerror or exc}".encode("utf-8", "replace")[:4000])
            code = 1
        except BaseException:
            pass
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        answer = pipe.read(8192).decode("utf-8", "surrogateescape")
    _, status = os.waitpid(pid, 0)
    word, _, rest = answer.partition(" ")
    if os.waitstatus_to_exitcode(status) == 0 and word == "ok":
        return rest
    if word.isdigit():
        raise OSError(int(word), rest)
    raise OSError(errno.EIO, "the delivery process failed")


def _write_maildir(maildir: str, data: bytes, name: str) -> str:
    os.makedirs(maildir, 0o700, exist_ok=True)
    for sub in ("tmp", "new", "cur"):
        try:
            os.mkdir(os.path.join(maildir, sub), 0o700)
        except FileExistsError:
            pass
    tmp = os.path.join(maildir, "tmp", name)
    new = os.path.join(maildir, "new", name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.link(tmp, new)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            os.unlink(tmp)
            raise
        os.rename(tmp, new)  # file systems without hard links
    else:
        os.unlink(tmp)
    dir_fd = os.open(os.path.join(maildir, "new"), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return new
