"""Real peers for the interop tests and the benchmarks: a private Postfix instance, smarthost
as a subprocess, free loopback ports, and CPU accounting of a server's process tree.

Nothing here touches the system Postfix or /etc/postfix: every Postfix command gets
``-c DIR`` of an instance that lives entirely under its own test directory. Every server
started here is stopped by ``stop()`` (also via ``with``), which falls back to killing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

LOOPBACK = "127.0.0.1"
POSTFIX_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

# Postfix's daemons without chroot (a chroot would need copies of /etc files in the queue).
_POSTFIX_MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def peer_command(name: str) -> str | None:
    """Full path of a peer's command, also looking where Debian puts Postfix's (/usr/sbin)."""
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip the current test, or fail it under CI=true (CI must run the interop tests)."""
    import pytest

    if in_ci():
        pytest.fail(f"{reason} (CI=true: the interop tests must run here)", pytrace=False)
    pytest.skip(reason)


def require_peer(name: str) -> str:
    """The full path of command ``name``; skips the test (fails it in CI) when not installed."""
    path = peer_command(name)
    if path is None:
        unavailable(f"{name} missing: install with scripts/install-peers.sh")
    return path


def require_root(why: str = "Postfix needs root to start") -> None:
    if os.geteuid() != 0:
        unavailable(f"not root: {why}")


class PeerError(RuntimeError):
    """A peer failed to start or misbehaved; the message carries its own diagnostics."""


# --- ports and directories -------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def port_accepts(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout: float = 15.0, alive: Callable[[], bool] | None = None) -> None:
    """Wait until ``port`` on 127.0.0.1 accepts connections; ``alive()`` false aborts early."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_accepts(port):
            return
        if alive is not None and not alive():
            raise PeerError(f"server exited before port {port} accepted connections")
        time.sleep(0.05)
    raise PeerError(f"port {port} did not accept connections within {timeout:.0f}s")


def make_shared_dir(parent: str | Path | None = None, prefix: str = "smarthost-interop-") -> Path:
    """A fresh directory that the ``postfix`` user can traverse (Postfix's daemons need every
    parent directory searchable; ``mkdtemp`` makes 0700 directories)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o755)
    return path


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


def wait_for_text(path: Path, pattern: str, timeout: float = 20.0, what: str = "log") -> re.Match[str]:
    """Wait until the file at ``path`` contains a match for the regular expression ``pattern``."""
    regex = re.compile(pattern, re.MULTILINE)
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        match = regex.search(text)
        if match:
            return match
        if time.monotonic() > deadline:
            raise PeerError(f"{what} {path} has no line matching {pattern!r} after {timeout:.0f}s:\n{tail(path)}")
        time.sleep(0.1)


# --- process trees and CPU time ---------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of a process tree: every live process's own time plus the time
    of the children it has reaped (so a worker that exited between two readings still counts)."""
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            # After the command name: state=0 ... utime=11 stime=12 cutime=13 cstime=14 (proc(5)).
            ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / _CLK_TCK


def pid_alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def kill_tree(root: int) -> None:
    for pid in reversed(process_tree(root)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- Postfix ---------------------------------------------------------------------------


class PostfixInstance:
    """A private Postfix: its own config, queue and data directories under ``tmpdir``,
    smtpd on ``127.0.0.1:port``, log in ``tmpdir/maillog``.

    ``tmpdir`` and all its parents must be searchable by the ``postfix`` user (see
    ``make_shared_dir``). ``main_cf_extra`` adds or overrides main.cf parameters;
    ``master_cf_extra`` is appended to master.cf.
    """

    def __init__(
        self,
        tmpdir: str | Path,
        port: int,
        main_cf_extra: dict[str, str] | None = None,
        master_cf_extra: str = "",
    ) -> None:
        self.dir = Path(tmpdir)
        self.port = port
        self.config_dir = self.dir / "etc"
        self.queue_dir = self.dir / "spool"
        self.data_dir = self.dir / "data"
        self.maillog = self.dir / "maillog"
        self.main_cf: dict[str, str] = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.dir),
            "inet_interfaces": LOOPBACK,
            "inet_protocols": "ipv4",
            "myhostname": "postfix.example.test",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "alias_maps": "",
            "alias_database": "",
            "smtp_tls_loglevel": "1",
            "smtpd_tls_loglevel": "1",
            # Retry soon if a first delivery attempt failed, so tests need not wait minutes.
            "queue_run_delay": "2s",
            "minimal_backoff_time": "2s",
            "maximal_backoff_time": "4s",
            **(main_cf_extra or {}),
        }
        self.master_cf = f"{LOOPBACK}:{port} inet n - n - - smtpd\n" + _POSTFIX_MASTER_CF + master_cf_extra
        self.started = False

    def _postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        # postfix(1) reports errors only when stderr is a terminal: give it one with script(1).
        command = " ".join([peer_command("postfix") or "postfix", "-c", str(self.config_dir), *args])
        return subprocess.run(
            ["script", "-qec", command, "/dev/null"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
        )

    def start(self) -> None:
        for d in (self.config_dir, self.queue_dir, self.data_dir):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)
        os.chown(self.data_dir, _postfix_uid(), -1)
        (self.config_dir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in self.main_cf.items()))
        (self.config_dir / "master.cf").write_text(self.master_cf)
        self.started = True  # from here on stop() must run, even if start fails half-way
        result = self._postfix("start")
        if result.returncode != 0:
            raise PeerError(f"postfix -c {self.config_dir} start failed:\n{result.stdout}{result.stderr}\n"
                            f"--- {self.maillog}:\n{tail(self.maillog)}")
        wait_for_port(self.port, alive=lambda: self.master_pid() is not None)

    def master_pid(self) -> int | None:
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def stop(self) -> None:
        """Stop the instance; if ``postfix stop`` fails or hangs, abort, then kill."""
        if not self.started:
            return
        pid = self.master_pid()
        try:
            self._postfix("stop", timeout=30)
        except subprocess.TimeoutExpired:
            pass
        if pid is not None and pid_alive(pid):
            try:
                self._postfix("abort", timeout=10)
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.5)
            if pid_alive(pid):
                kill_tree(pid)
        self.started = False

    def __enter__(self) -> PostfixInstance:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def sendmail(self, sender: str, recipients: list[str], message: bytes) -> None:
        """Submit ``message`` (headers and body, LF or CRLF line ends) with Postfix's sendmail."""
        result = subprocess.run(
            [peer_command("sendmail") or "sendmail", "-C", str(self.config_dir), "-f", sender, "-i", "--", *recipients],
            input=message, capture_output=True, timeout=30,
        )
        if result.returncode != 0:
            raise PeerError(f"sendmail failed ({result.returncode}): {result.stderr.decode(errors='replace')}")

    def queued_count(self) -> int:
        """Messages in the queue, counted as queue files (held and deferred ones included)."""
        return sum(
            len(files) for q in POSTFIX_QUEUES for _, _, files in os.walk(self.queue_dir / q)
        )

    def log_text(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""


def _postfix_uid() -> int:
    import pwd

    return pwd.getpwnam("postfix").pw_uid


# --- smarthost -------------------------------------------------------------------------

_INET_SERVICE = re.compile(r"^(?:\[?([\d.]+)\]?:)?(\d+)\s+inet\s", re.MULTILINE)


class SmarthostInstance:
    """smarthost as a subprocess: ``smarthost -c DIR run`` with a config written from
    ``main_cf`` (parameters added to the defaults below) and ``master_cf`` (verbatim; its
    ``host:port`` inet services are the ports waited for).

    With ``tls=True`` a trustme CA issues a certificate for ``localhost``, ``127.0.0.1``
    and ``myhostname``; ``self.ca`` is that CA (for clients that verify).
    stderr goes to ``tmpdir/stderr.log`` and is quoted by ``describe()`` in assertion messages.
    """

    def __init__(self, tmpdir: str | Path, main_cf: dict[str, str], master_cf: str, *, tls: bool = False) -> None:
        self.dir = Path(tmpdir)
        self.config_dir = self.dir / "etc"
        self.queue_dir = self.dir / "queue"
        self.data_dir = self.dir / "data"
        self.maillog = self.dir / "maillog"
        self.stderr_path = self.dir / "stderr.log"
        self.main_cf: dict[str, str] = {
            "myhostname": "mx.example.test",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "maillog_file": str(self.maillog),
        }
        self.ca = None
        if tls:
            self.main_cf.update({
                "smtpd_tls_cert_file": str(self.config_dir / "cert.pem"),
                "smtpd_tls_key_file": str(self.config_dir / "key.pem"),
                "smtpd_tls_security_level": "may",
            })
        self.main_cf.update(main_cf)
        self.master_cf = master_cf
        self.ports = [int(m.group(2)) for m in _INET_SERVICE.finditer(master_cf)]
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "smarthost", "-c", str(self.config_dir), "run"]

    def write_config(self) -> None:
        for d in (self.config_dir, self.queue_dir, self.data_dir):
            d.mkdir(parents=True, exist_ok=True)
        if self.tls:
            import trustme

            self.ca = trustme.CA()
            cert = self.ca.issue_cert("localhost", LOOPBACK, self.main_cf["myhostname"])
            cert.private_key_pem.write_to_path(str(self.config_dir / "key.pem"))
            (self.config_dir / "key.pem").chmod(0o600)
            cert.cert_chain_pems[0].write_to_path(str(self.config_dir / "cert.pem"))
            self.ca.cert_pem.write_to_path(str(self.config_dir / "ca.pem"))
        (self.config_dir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in self.main_cf.items()))
        (self.config_dir / "master.cf").write_text(self.master_cf)

    def start(self, timeout: float = 20.0) -> None:
        self.write_config()
        with open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            for port in self.ports:
                wait_for_port(port, timeout=timeout, alive=lambda: self.process.poll() is None)
        except PeerError as e:
            self.stop()
            raise PeerError(f"{' '.join(self.command)}: {e}\n{self.describe()}") from None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (the server drains), then SIGKILL after ``timeout``; returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_tree(self.process.pid)
                self.process.wait(5)
        return self.process.returncode

    def __enter__(self) -> SmarthostInstance:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def log_text(self) -> str:
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""

    def describe(self) -> str:
        """The tail of stderr and of the mail log, for assertion messages."""
        return f"--- smarthost stderr:\n{tail(self.stderr_path)}\n--- smarthost maillog:\n{tail(self.maillog)}"

    # The queue, read through smarthost's own store (an SQLite database under queue_directory).

    def _store(self):
        from smarthost.queue import QueueStore

        return QueueStore(self.queue_dir)

    def queue_entries(self) -> list:
        with self._store() as store:
            return store.list()

    def queued_count(self) -> int:
        with self._store() as store:
            return store.count()

    def read_body(self, queue_id: str) -> bytes:
        with self._store() as store:
            return store.read_body(queue_id)

    def wait_for_entry(self, queue_id: str, timeout: float = 10.0):
        """The queue entry ``queue_id`` (waiting for it to appear); PeerError if it never does."""
        deadline = time.monotonic() + timeout
        with self._store() as store:
            while (entry := store.get(queue_id)) is None:
                if time.monotonic() > deadline:
                    raise PeerError(f"queue id {queue_id} not in smarthost's queue\n{self.describe()}")
                time.sleep(0.1)
        return entry


# --- Cyrus SASL: the recipe's server side -----------------------------------------------


def wait_for_unix_socket(path: Path, alive: Callable[[], bool], timeout: float = 15.0) -> None:
    """Wait until a unix stream socket at ``path`` accepts; PeerError if ``alive()`` turns
    false first or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise PeerError(f"the daemon exited before {path} accepted connections")
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(path))
                return
            except OSError:
                time.sleep(0.05)
    raise PeerError(f"{path} did not accept connections within {timeout:.0f}s")


class UnixSocketDaemon:
    """A daemon subprocess in its own session, ready once its unix socket ``socket_path``
    accepts; output to ``log`` (or nowhere); ``stop()`` ends its whole process group."""

    def __init__(self, argv: list[str], socket_path: Path, log: Path | None = None) -> None:
        self.argv = argv
        self.socket_path = socket_path
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log or os.devnull, "ab") as out:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                            start_new_session=True)
        try:
            wait_for_unix_socket(self.socket_path, lambda: self.process.poll() is None)
        except PeerError as e:
            self.stop()
            log = f"\n--- {self.log}:\n{tail(self.log)}" if self.log else ""
            raise PeerError(f"{' '.join(self.argv)}: {e}{log}") from None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CyrusSaslauthd(UnixSocketDaemon):
    """A real Cyrus ``saslauthd -a sasldb`` over a private sasldb holding ``users`` (password by
    name) in ``realm``; its socket is ``socket_path`` (``DIR/run/mux``).

    saslauthd ignores ``-O`` for sasldb and always opens /etc/sasldb2, so the private database is
    bind-mounted over /etc/sasldb2 in a mount namespace of its own (``unshare -m``), invisible to
    the rest of the machine. ``-d`` keeps it in the foreground as our child; ``stop()`` ends its
    process group. Needs root and Debian's sasl2-bin.
    """

    def __init__(self, directory: Path, users: dict[str, str], realm: str, threads: int = 5,
                 keep_log: bool = True) -> None:
        directory.mkdir(mode=0o755)
        directory.chmod(0o755)
        self.sasldb = directory / "sasldb2"
        for user, password in users.items():
            subprocess.run([peer_command("saslpasswd2") or "saslpasswd2", "-p", "-c", "-f", str(self.sasldb),
                            "-u", realm, user], input=password, text=True, check=True)
        sockdir = directory / "run"
        sockdir.mkdir(mode=0o755)
        saslauthd = f"{peer_command('saslauthd') or 'saslauthd'} -a sasldb -c -n {threads} -m {sockdir} -d"
        argv = [peer_command("unshare") or "unshare", "-m", "--propagation", "private", "sh", "-c",
                f"mount --bind {self.sasldb} /etc/sasldb2 && exec {saslauthd}"]
        # -d's lines go to the log (a benchmark drops them)
        super().__init__(argv, sockdir / "mux", directory / "saslauthd.log" if keep_log else None)

    def start(self) -> None:
        if not Path("/etc/sasldb2").exists():
            raise PeerError("/etc/sasldb2 missing (the private sasldb is bound over it): install sasl2-bin")
        super().start()


def cyrus_recipe_server_cf(config_dir: Path, saslauthd: CyrusSaslauthd, realm: str, cert: Path,
                           key: Path) -> dict[str, str]:
    """main.cf settings that make a private Postfix the recipe's server: STARTTLS offered
    (``cert``/``key``), AUTH only after TLS, Cyrus SASL with ``pwcheck_method: saslauthd`` and
    ``mech_list: PLAIN LOGIN``, relaying only for authenticated clients (loopback is not in
    ``mynetworks``).

    Writes the Cyrus file ``config_dir/sasl/smtpd.conf``, found through
    ``cyrus_sasl_config_path`` (without it Debian's libsasl2 reads /etc/postfix/sasl).
    ``config_dir`` must be the instance's own configuration directory (``PostfixInstance.config_dir``):
    Postfix 3.7 on Debian 12 did not read a ``sasl/`` directory elsewhere (it fell back to
    auxprop and offered every mechanism). ``smtpd_sasl_local_domain = realm`` makes a login
    ``alice`` the sasldb user ``alice@realm``.
    """
    directory = config_dir
    sasl_dir = directory / "sasl"
    sasl_dir.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    sasl_dir.chmod(0o755)
    (sasl_dir / "smtpd.conf").write_text(
        f"pwcheck_method: saslauthd\nmech_list: PLAIN LOGIN\nsaslauthd_path: {saslauthd.socket_path}\n")
    return {
        "mynetworks": "192.0.2.0/24",
        "smtpd_tls_cert_file": str(cert),
        "smtpd_tls_key_file": str(key),
        "smtpd_tls_security_level": "may",
        "smtpd_tls_auth_only": "yes",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_type": "cyrus",
        "smtpd_sasl_path": "smtpd",
        "smtpd_sasl_security_options": "noanonymous",
        "smtpd_sasl_local_domain": realm,
        "cyrus_sasl_config_path": str(sasl_dir),
        "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
    }
