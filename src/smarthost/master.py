"""The master process: binds the listeners, runs the worker processes, supervises them.

``smarthost run`` is this module. The master reads the configuration once, builds everything a
service needs (TLS contexts, restriction lists) so that a bad setting stops the start with a
clear error before anything listens, binds every ``inet`` service of ``master.cf`` and forks
``smtpd_worker_processes`` workers that share the listening sockets (the kernel spreads the
connections), and one queue manager (``qmgr``: delivery). It then waits for signals:

- ``SIGCHLD``: a worker or the queue manager that died is logged and restarted (throttled
  when it keeps dying);
- ``SIGUSR2``: passed to the queue manager (``smarthost queue flush``);
- ``SIGHUP``: reload. The configuration and certificates are read again; if they are good, a
  new generation of workers starts on the (kept or newly bound) sockets and the old generation
  stops accepting and finishes the sessions in progress (up to ``smtpd_timeout``). A bad new
  configuration is logged and the old one keeps serving.
- ``SIGTERM`` / ``SIGINT``: stop. Workers stop accepting, give sessions a few seconds to end,
  then close the rest with ``421``.

Workers are plain ``fork()`` children running one asyncio loop each (uvloop where installed).
The master and so every process it forks (and their threads) run under Linux's ``SCHED_BATCH``
policy: a woken SMTP worker, committer thread or queue manager does not preempt the task that
woke it, so each wake-up finds more work done (see ``_batch_scheduling``).
Started as root, the SMTP workers drop to ``mail_owner`` right after the fork (the listening
sockets, TLS keys and the user database are open by then); the queue manager stays root,
because local delivery writes each Maildir as its owner. ``master.cf``'s chroot column does not
chroot anything (the workers serve every service, so they cannot each have their own root), and
a warning says so; but for an smtpd service with chroot ``y`` the auth sockets are resolved
inside ``queue_directory`` as a chrooted Postfix smtpd resolves them (``inbound/auth.py``), so
the recipe's files mean the same here as there.
"""

from __future__ import annotations

import asyncio
import errno
import os
import pwd
import signal
import socket
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from smarthost.config import Config, ConfigError, load
from smarthost.config.mastercf import listen_addresses
from smarthost.config.saslconf import load_sasl_conf
from smarthost.inbound.auth import AuthSettings, AuthSocket, DovecotRelay, PasswordChecker, auth_socket
from smarthost.inbound.limits import ClientCounts, WorkerCounts
from smarthost.inbound.policy import Policy, PolicyError, PolicySettings
from smarthost.inbound.server import Listener, Worker
from smarthost.maillog import MailLog
from smarthost.netaddr import NetworkList
from smarthost.outbound.local import LocalSettings, open_local_tables
from smarthost.queue import QueueStore
from smarthost.sasl import filter_mechanisms
from smarthost.smtp.server import ServerSettings
from smarthost.tables import TableError, open_table
from smarthost.tls import TLSConfigError, server_context

STOP_GRACE = 5.0
# The queue committer's wait for more messages under load (queue/store.py, QueueStore._gather).
COMMIT_GATHER_TIME = 0.002
PID_NAME = "smarthost.pid"
_SIGNALS = {signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR2}
QMGR_ROW = -1  # the queue manager counts no clients


class StartError(Exception):
    """The configuration cannot be served; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Runtime:
    """What one configuration generation serves: listeners with their addresses."""

    config: Config
    bindings: tuple[tuple[Listener, tuple[tuple[str | None, int], ...]], ...]
    warnings: tuple[str, ...]  # the configuration's, each "file:line: text"


def build_listener(service, cfg: Config, warnings: list[str]) -> Listener:
    """Everything one ``master.cf`` service needs, validated."""
    p = service.params
    where = f"{service.file}:{service.line}: service {service.name}"
    level = p["smtpd_tls_security_level"]
    wrapper = p["smtpd_tls_wrappermode"]
    try:
        ctx = server_context(p, mandatory=(level == "encrypt" or wrapper))
    except TLSConfigError as exc:
        raise StartError(f"{where}: {exc}") from None
    if ctx is None and (wrapper or level == "encrypt"):
        why = "smtpd_tls_wrappermode = yes" if wrapper else "smtpd_tls_security_level = encrypt"
        raise StartError(f"{where}: {why} needs a certificate; set smtpd_tls_cert_file and smtpd_tls_key_file"
                         " (smarthost cert selfsigned makes a pair)")
    tables = partial(open_table, config_dir=cfg.config_dir)
    networks = {}
    for name in ("mynetworks", "smtpd_client_event_limit_exceptions", "smtpd_forbid_bare_newline_exclusions"):
        try:
            networks[name] = NetworkList.parse(p[name], open_table=tables)
        except (ValueError, TableError) as exc:
            raise StartError(f"{where}: {name}: {exc}") from None
    bare = p["smtpd_forbid_bare_newline"]
    auth, checker, relay = _build_auth(service, cfg, warnings, tls_possible=ctx is not None and level != "none")
    settings = ServerSettings(
        hostname=p["myhostname"],
        banner=p["smtpd_banner"],
        max_message_size=p["message_size_limit"],
        max_recipients=p["smtpd_recipient_limit"],
        soft_error_limit=p["smtpd_soft_error_limit"],
        hard_error_limit=p["smtpd_hard_error_limit"],
        bare_newline="reject" if bare == "reject" else "normalize",
        forbid_unauth_pipelining=p["smtpd_forbid_unauth_pipelining"],
        starttls_available=ctx is not None and level != "none" and not wrapper,
        tls_required=level == "encrypt" and not wrapper,
        vrfy_enabled=not p["disable_vrfy_command"],
        auth_mechanisms=auth.mechanisms if auth else (),
        auth_tls_mechanisms=auth.tls_mechanisms if auth else None,
        auth_requires_tls=auth.requires_tls if auth else True,
        max_auth_failures=auth.failure_limit if auth else 3,
        broken_sasl_auth_clients=p["broken_sasl_auth_clients"],
    )
    policy_settings = PolicySettings(
        client_restrictions=p["smtpd_client_restrictions"],
        helo_restrictions=p["smtpd_helo_restrictions"],
        sender_restrictions=p["smtpd_sender_restrictions"],
        relay_restrictions=p["smtpd_relay_restrictions"],
        recipient_restrictions=p["smtpd_recipient_restrictions"],
        data_restrictions=p["smtpd_data_restrictions"],
        mynetworks=networks["mynetworks"],
        mydestination=p["mydestination"],
        relay_domains=p["relay_domains"],
        virtual_domains=[*p["virtual_alias_domains"], *p["virtual_mailbox_domains"]],
        myhostname=p["myhostname"],
        inet_addresses_for_ip_literals=_own_addresses(service, p),
        recipient_delimiter=p["recipient_delimiter"],
        sender_login_maps=p["smtpd_sender_login_maps"],
        myorigin=p["myorigin"],
        sasl_auth_enable=p["smtpd_sasl_auth_enable"],
        relay_clientcerts=p["relay_clientcerts"],
    )
    try:
        policy = Policy.build(policy_settings, open_table=tables)
    except (PolicyError, TableError) as exc:
        raise StartError(f"{where}: {exc}") from None
    try:
        local_tables = open_local_tables(p, tables, is_local_domain=policy.is_local_domain)
    except TableError as exc:
        raise StartError(f"{where}: {exc}") from None
    return Listener(
        name=service.name,
        settings=settings,
        policy=policy,
        ssl_context=ctx,
        wrappermode=wrapper,
        myhostname=p["myhostname"],
        timeout=p["smtpd_timeout"],
        error_sleep=p["smtpd_error_sleep_time"],
        soft_error_limit=p["smtpd_soft_error_limit"],
        connection_limit=p["smtpd_client_connection_count_limit"],
        limit_exceptions=networks["smtpd_client_event_limit_exceptions"],
        bare_newline_exclusions=networks["smtpd_forbid_bare_newline_exclusions"],
        tls_loglevel=p["smtpd_tls_loglevel"],
        tls_received_header=p["smtpd_tls_received_header"],
        fingerprint_digest=p["smtpd_tls_fingerprint_digest"],
        local=(LocalSettings.from_params(p), local_tables),
        auth=auth,
        passwords=checker,
        dovecot=relay,
    )


def _build_auth(service, cfg: Config, warnings: list[str], *, tls_possible: bool):
    """AUTH for one service: (AuthSettings, PasswordChecker, DovecotRelay), Nones when off."""
    p = service.params
    if not p["smtpd_sasl_auth_enable"]:
        return None, None, None
    where = f"{service.file}:{service.line}: service {service.name}"
    conf = load_sasl_conf(cfg.config_dir, p)  # ConfigError names its file and line
    warnings.extend(conf.warnings)
    wrapper = p["smtpd_tls_wrappermode"]
    requires_tls = p["smtpd_tls_auth_only"] or wrapper
    if requires_tls and not tls_possible and not wrapper:
        warnings.append(f"{where}: smtpd_sasl_auth_enable = yes, but AUTH is never offered: it needs TLS"
                            " (smtpd_tls_auth_only = yes) and the service has no TLS; configure smtpd_tls_cert_file")

    def socket(path: str, parameter: str) -> AuthSocket:
        return auth_socket(path, parameter, service=service.name, queue_directory=p["queue_directory"],
                           chroot=service.chroot)

    relay = checker = None
    available = None
    if conf.type == "dovecot":
        relay = DovecotRelay(socket(conf.dovecot_path, "smtpd_sasl_path"), p["smtpd_sasl_service"])
        available = relay.mechanisms_now()
        if available is None:
            warnings.append(f"{where}: cannot reach the Dovecot auth socket {relay.socket.explain(relay.socket.path)};"
                                " offering PLAIN LOGIN, attempts fail temporarily until it answers")
            available = ("PLAIN", "LOGIN")
    else:
        checker = PasswordChecker(conf, socket(conf.saslauthd_path, "saslauthd_path"))

    def offered(options_parameter: str) -> tuple[str, ...]:
        names = conf.mechanisms(p[options_parameter], available)
        return tuple(filter_mechanisms(list(names), p["smtpd_sasl_mechanism_filter"]))

    # Postfix: smtpd_sasl_security_options before TLS, smtpd_sasl_tls_security_options once it is up.
    before = () if requires_tls else offered("smtpd_sasl_security_options")
    after = offered("smtpd_sasl_tls_security_options")
    if not before and not after:
        raise StartError(f"{where}: no SASL mechanism is left to offer (mech_list, smtpd_sasl_security_options,"
                         " smtpd_sasl_tls_security_options and smtpd_sasl_mechanism_filter exclude all);"
                         " allow PLAIN or LOGIN")
    if not before and not (tls_possible or wrapper) and not requires_tls:
        warnings.append(f"{where}: smtpd_sasl_auth_enable = yes, but AUTH is never offered: smtpd_sasl_security_options"
                        " leave no mechanism before TLS and the service has no TLS; configure smtpd_tls_cert_file")
    auth = AuthSettings(
        mechanisms=before,
        tls_mechanisms=after,
        service=p["smtpd_sasl_service"],
        realm=p["smtpd_sasl_local_domain"],
        requires_tls=requires_tls,
        failure_limit=p["smtpd_sasl_auth_failure_limit"],
        authenticated_header=p["smtpd_sasl_authenticated_header"],
        rate_limit=p["smtpd_client_auth_rate_limit"],
        rate_unit=p["anvil_rate_time_unit"],
    )
    return auth, checker, relay


def _own_addresses(service, params) -> list[str]:
    """Addresses whose literals (``user@[IP]``) are this host: the listening ones, loopback."""
    out = ["127.0.0.1", "::1"]
    for host, _port in listen_addresses(service, params):
        if host and host not in out:
            out.append(host)
    return out


def build_runtime(cfg: Config) -> Runtime:
    bindings = []
    warnings = list(cfg.warnings)
    for service in cfg.services:
        if service.chroot and service.command == "smtpd":
            warnings.append(f"{service.file}:{service.line}: service {service.name}: chroot column y: the process"
                            " is not chrooted (the SMTP workers are shared by all services), but the auth sockets"
                            " (saslauthd_path, smtpd_sasl_path) are looked for inside queue_directory, as a chrooted"
                            " Postfix smtpd does; other paths are used as written")
        elif service.chroot:
            warnings.append(f"{service.file}:{service.line}: service {service.name}: chroot is not implemented;"
                            " it runs unchrooted")
        if service.type != "inet" or service.command != "smtpd":
            continue
        listener = build_listener(service, cfg, warnings)
        addresses = tuple(listen_addresses(service, service.params))
        bindings.append((listener, addresses))
    if not bindings:
        raise StartError(f"{cfg.config_dir}/master.cf: no inet smtpd service; add e.g. 'smtp inet n - n - - smtpd'")
    return Runtime(config=cfg, bindings=tuple(bindings), warnings=tuple(dict.fromkeys(warnings)))


def bind(host: str | None, port: int) -> socket.socket:
    """A listening socket; ``host=None`` means every address (IPv6 dual-stack where possible)."""
    if host is None:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            addr: tuple = ("::", port)
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            addr = ("0.0.0.0", port)
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        addr = (host, port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        shown = f"[{addr[0]}]:{port}" if ":" in addr[0] else f"{addr[0]}:{port}"
        hint = "another process listens there" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise StartError(f"cannot listen on {shown}: {hint}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


# -- worker processes ------------------------------------------------------------------------


def _batch_scheduling() -> str | None:
    """Put this process, and so everything it forks or starts later, under ``SCHED_BATCH``.

    sched(7): a batch task is "mildly disfavored" when woken and never preempts the running
    task on wake-up, which suits a mail server whose processes and threads wake each other for
    every message (an event loop and its committer thread, the workers and the auth daemon's
    socket) — the woken one runs once the waker sleeps, finding more to do. Any process may
    choose it; no privilege, and the nice value is unchanged. Measured on two cores shared with
    the load generator: together with the committer's gathering, 9–12% less CPU per message.
    Returns a warning when the system refuses (e.g. a sandbox), which is harmless.
    """
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None:
        return None  # not Linux
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError as exc:
        return f"cannot use the SCHED_BATCH scheduling policy ({exc.strerror}); running with the default"
    return None


def _event_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:  # plain asyncio where uvloop is missing
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _child_main(name: str, maillog: MailLog, main) -> None:
    """Run ``main()`` (a coroutine factory) as a forked child process; never returns."""
    status = 0
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        for sig in (signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)
        maillog.set_process(name)
        _event_loop_policy()
        asyncio.run(main())
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - a child must report and exit, never return into the master
        import traceback

        traceback.print_exc()
        status = 1
    finally:
        maillog.flush()
        os._exit(status)


def worker_main(runtime: Runtime, sockets: dict, maillog: MailLog, counts: WorkerCounts,
                owner: tuple[int, int] | None) -> None:
    """Entry point of a forked SMTP worker; never returns. With ``owner`` (uid, gid) it drops
    to that user once the listening sockets are inherited and whatever needs root is open."""
    if owner is not None:
        for listener, _ in runtime.bindings:
            if listener.passwords is not None:
                listener.passwords.open()  # the user database is root's (0600): open it first
        os.setgroups([])
        os.setgid(owner[1])
        os.setuid(owner[0])
    _child_main("smtpd", maillog, lambda: _worker(runtime, sockets, maillog, counts))


def qmgr_main(config_dir: Path, maillog: MailLog) -> None:
    """Entry point of the forked queue manager; never returns."""
    from smarthost.queue.manager import run_queue_manager

    _child_main("qmgr", maillog, lambda: run_queue_manager(config_dir, maillog))


async def _worker(runtime: Runtime, sockets: dict, maillog: MailLog, counts: WorkerCounts) -> None:
    loop = asyncio.get_running_loop()
    params = runtime.config.params
    store = QueueStore(Path(params["queue_directory"]), large_body_threshold=params["queue_large_body_threshold"],
                       gather_time=COMMIT_GATHER_TIME)
    worker = Worker(store, maillog, loop, counts)
    maillog.attach(loop)
    stop = asyncio.Event()
    grace = {"seconds": STOP_GRACE}

    def on_signal(seconds: float) -> None:
        grace["seconds"] = seconds
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, on_signal, STOP_GRACE)
    loop.add_signal_handler(signal.SIGUSR1, on_signal, float(params["smtpd_timeout"]))  # reload: finish sessions
    for listener, addresses in runtime.bindings:
        for address in addresses:
            await worker.serve(listener, sockets[address])
    await stop.wait()
    await worker.drain(grace["seconds"])
    store.close()
    maillog.attach(None)


# -- the master ------------------------------------------------------------------------------


class Master:
    def __init__(self, config_dir: Path) -> None:
        self.config_dir = config_dir
        self.sockets: dict[tuple[str | None, int], socket.socket] = {}
        self.workers: dict[int, tuple[int, float, int]] = {}  # pid -> (generation, started, counts row)
        self.counts = ClientCounts()
        self.generation = 0
        self.runtime: Runtime | None = None
        self.maillog: MailLog | None = None
        self.pid_file: Path | None = None
        self.owner: tuple[int, int] | None = None  # (uid, gid) the SMTP workers run as
        self._restart_delay = 0.0

    # Configuration → runtime, both at start and on reload.
    def prepare(self) -> Runtime:
        cfg = load(self.config_dir)
        runtime = build_runtime(cfg)
        QueueStore(Path(cfg.params["queue_directory"])).close()  # creates it, fails early on permissions
        return runtime

    def _bind_all(self, runtime: Runtime) -> dict:
        wanted = {a for _, addresses in runtime.bindings for a in addresses}
        fresh = {}
        try:
            for address in wanted:
                if address not in self.sockets:
                    fresh[address] = bind(*address)
        except StartError:
            for sock in fresh.values():
                sock.close()
            raise
        for address in list(self.sockets):
            if address not in wanted:
                self.sockets.pop(address).close()
        self.sockets.update(fresh)
        return {a: self.sockets[a] for a in wanted}

    def run(self) -> int:
        runtime = self.prepare()  # raises ConfigError / StartError before anything listens
        params = runtime.config.params
        self.maillog = MailLog(params.raw("maillog_file") or None, hostname=params["myhostname"])
        for warning in runtime.warnings:
            self.maillog.warning(warning)
        problem = _batch_scheduling()
        if problem:
            self.maillog.warning(problem)
        self._bind_all(runtime)
        self.runtime = runtime
        self.owner = self._mail_owner(runtime.config)
        self._write_pid(Path(params["data_directory"]))
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        addresses = ", ".join(
            f"{listener.name}={h or '*'}:{port}" for listener, addrs in runtime.bindings for h, port in addrs
        )
        self.maillog.log(f"daemon started -- version smarthost, configuration {self.config_dir}; listening {addresses}")
        try:
            self._spawn_generation()
            return self._supervise()
        finally:
            self._remove_pid()
            self.maillog.close()

    def _mail_owner(self, cfg: Config) -> tuple[int, int] | None:
        """As root, the SMTP workers run as ``mail_owner`` (the queue manager stays root: local
        delivery switches to each mailbox's owner). The queue directory is given to that user."""
        if os.geteuid() != 0:
            return None
        name = cfg.params["mail_owner"]
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            self.maillog.warning(
                f"mail_owner = {name}: no such user; the SMTP workers run as root. Create it"
                f" (useradd --system --no-create-home --shell /usr/sbin/nologin {name}) or set mail_owner"
                " to an unprivileged user"
            )
            return None
        if user.pw_uid == 0:
            raise StartError(f"mail_owner = {name} is root; name an unprivileged user (e.g. smarthost)")
        queue = Path(cfg.params["queue_directory"])
        (queue / "public").mkdir(mode=0o700, exist_ok=True)  # the queue manager's wake-up socket
        for path in [queue, *queue.iterdir(), *(queue / "bodies").iterdir()]:
            if path.name in ("maildrop", "corrupt-maildrop"):
                continue  # sendmail's drop box (1733 root) and its rejects stay root's
            os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
        return user.pw_uid, user.pw_gid

    def _write_pid(self, data_directory: Path) -> None:
        data_directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.pid_file = data_directory / PID_NAME
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, self.pid_file)

    def _remove_pid(self) -> None:
        if self.pid_file is not None:
            try:
                if self.pid_file.read_text().strip() == str(os.getpid()):
                    self.pid_file.unlink()
            except OSError:
                pass

    def _spawn_generation(self) -> None:
        self.generation += 1
        count = self.runtime.config.params["smtpd_worker_processes"]
        for _ in range(count):
            self._spawn()
        if any(service.command == "qmgr" for service in self.runtime.config.services):
            self._spawn_qmgr()  # as in Postfix, no qmgr line in master.cf: mail is accepted, not delivered

    def _spawn_qmgr(self) -> None:
        self.maillog.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            qmgr_main(self.config_dir, self.maillog)
        self.workers[pid] = (self.generation, time.monotonic(), QMGR_ROW)

    def _spawn(self) -> None:
        sockets = {a: self.sockets[a] for _, addrs in self.runtime.bindings for a in addrs}
        self.maillog.flush()
        sys.stderr.flush()
        row = self.counts.allocate_row()
        pid = os.fork()
        if pid == 0:
            worker_main(self.runtime, sockets, self.maillog, self.counts.bind(row), self.owner)
        self.workers[pid] = (self.generation, time.monotonic(), row)

    def _supervise(self) -> int:
        stopping = False
        while True:
            info = signal.sigtimedwait(_SIGNALS, 1.0)
            self._reap(respawn=not stopping)
            if info is None:
                if stopping and not self.workers:
                    return 0
                continue
            sig = info.si_signo
            if sig in (signal.SIGTERM, signal.SIGINT):
                if not stopping:
                    self.maillog.log("terminating on signal " + signal.Signals(sig).name)
                    stopping = True
                    for pid in self.workers:
                        _kill(pid, signal.SIGTERM)
                    for sock in self.sockets.values():
                        sock.close()
                    self.sockets.clear()
            elif sig == signal.SIGHUP and not stopping:
                self._reload()
            elif sig == signal.SIGUSR2:  # smarthost queue flush: deliver deferred mail now
                for pid, (_, _, row) in self.workers.items():
                    if row == QMGR_ROW:
                        _kill(pid, signal.SIGUSR2)
            if stopping and not self.workers:
                return 0

    def _reload(self) -> None:
        self.maillog.reopen()  # after log rotation, the new generation writes to the new file
        self.maillog.log("reload -- configuration " + str(self.config_dir))
        try:
            runtime = self.prepare()
            self._bind_all(runtime)
        except (ConfigError, StartError) as exc:
            self.maillog.error(f"reload failed, keeping the running configuration: {exc}")
            return
        for warning in runtime.warnings:
            self.maillog.warning(warning)
        self.runtime = runtime
        old = [(pid, row) for pid, (gen, _, row) in self.workers.items() if gen == self.generation]
        self._spawn_generation()
        for pid, row in old:
            # SMTP workers: stop accepting, finish sessions in progress; the queue manager:
            # finish the deliveries in progress (the new one takes over the queue).
            _kill(pid, signal.SIGTERM if row == QMGR_ROW else signal.SIGUSR1)

    def _reap(self, *, respawn: bool) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.workers.clear()
                return
            if pid == 0:
                return
            gen, started, row = self.workers.pop(pid, (None, 0.0, -1))
            if gen is None:
                continue
            if row != QMGR_ROW:
                self.counts.release_row(row)
            code = os.waitstatus_to_exitcode(status)
            if respawn and gen == self.generation:
                name = "qmgr" if row == QMGR_ROW else "smtpd"
                self.maillog.warning(f"process {name} pid {pid} exit status {code}; restarting")
                if time.monotonic() - started < 1.0:  # dying at once: throttle, as Postfix does
                    self._restart_delay = min(max(self._restart_delay * 2, 0.5), 10.0)
                    time.sleep(self._restart_delay)
                else:
                    self._restart_delay = 0.0
                if row == QMGR_ROW:
                    self._spawn_qmgr()
                else:
                    self._spawn()


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def read_pid(data_directory: Path) -> int | None:
    """The running master's pid from the pid file, or None when none runs."""
    try:
        pid = int((data_directory / PID_NAME).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


