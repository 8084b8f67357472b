"""Shared pieces of the benchmarks: loopback housekeeping, versions and results, TLS material,
and the authenticating servers both ``auth.py`` and ``relay.py`` start.

- TIME_WAIT accounting (every loopback connection leaves one socket behind for 60 s);
- ``versions()`` and ``write_results()`` for the JSON under ``bench/results/``;
- ``TLSFiles``: one trustme CA and one certificate for every server of a run, so Postfix and
  smarthost present the same key type and chain;
- ``CyrusSaslauthd``: a real Cyrus ``saslauthd -a sasldb`` with a private user database bound
  over ``/etc/sasldb2`` in its own mount namespace (saslauthd ignores ``-O`` for sasldb);
- ``SmarthostAuthd``: ``smarthost authd`` serving users of a private user database;
- ``postfix_auth_server()`` / ``smarthost_auth_server()``: the recipe's server role (STARTTLS,
  AUTH only after TLS, relaying only for authenticated clients) in each implementation.

Importing this module puts ``tests/interop`` on ``sys.path``, so the benchmarks share
``peers.py`` (private Postfix instances, smarthost subprocesses, process-tree CPU time).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "interop"))

import peers  # noqa: E402
from peers import (  # noqa: E402
    PostfixInstance,
    SmarthostInstance,
    free_port,
    peer_command,
)

TIME_WAIT_LIMIT = 12000  # loopback has ~28k ephemeral ports; wait below this before a run
SMARTHOST = [sys.executable, "-m", "smarthost"]
BENCH_DOMAIN = "example.test"  # the SASL realm of the Postfix side (smtpd_sasl_local_domain)
UNTRUSTED_NETWORKS = "192.0.2.0/24"  # mynetworks of the servers: loopback must authenticate


# --- loopback housekeeping --------------------------------------------------------------


def time_wait_count() -> int:
    """Sockets in TIME_WAIT (state 06 in /proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        return sum(1 for line in f if line.split()[3:4] == ["06"])


def wait_for_time_wait_below(limit: int = TIME_WAIT_LIMIT) -> None:
    deadline = time.monotonic() + 70  # TIME_WAIT lasts 60 s on Linux
    while time_wait_count() > limit and time.monotonic() < deadline:
        time.sleep(1)


# --- results ----------------------------------------------------------------------------


def versions() -> dict:
    postconf = subprocess.run([peer_command("postconf") or "postconf", "-dh", "mail_version"],
                              capture_output=True, text=True)
    return {
        "postfix": postconf.stdout.strip(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
    }


def median_of(rows: list[dict], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def write_results(results_dir: str | Path, name: str, stamp: str, payload: dict) -> Path:
    """``results_dir/NAME-STAMP.json`` with ``payload`` (plus the benchmark's name and time)."""
    out = Path(results_dir) / f"{name}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": name, "time": stamp, **payload}, indent=2) + "\n")
    return out


# --- TLS --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path, *names: str) -> TLSFiles:
    """A trustme CA (``ca.pem``) and a certificate for localhost, 127.0.0.1 and ``names``."""
    import trustme

    directory.mkdir(mode=0o755, exist_ok=True)
    directory.chmod(0o755)  # Postfix's daemons read the CA as the postfix user
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", *names)
    files = TLSFiles(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(files.ca))
    cert.cert_chain_pems[0].write_to_path(str(files.cert))
    cert.private_key_pem.write_to_path(str(files.key))
    files.key.chmod(0o600)
    return files


# --- auth daemons -----------------------------------------------------------------------


class CyrusSaslauthd(peers.CyrusSaslauthd):
    """Cyrus ``saslauthd -a sasldb -c -n THREADS`` (Debian's default options: 5 processes and the
    credential cache) over a private sasldb holding ``users`` in realm ``BENCH_DOMAIN``; its
    debug lines are dropped, so writing them costs the Postfix side nothing (see ``peers.py``)."""

    def __init__(self, directory: Path, users: dict[str, str], threads: int = 5) -> None:
        super().__init__(directory, users, BENCH_DOMAIN, threads, keep_log=False)


class SmarthostAuthd(peers.UnixSocketDaemon):
    """``smarthost authd -c`` (credential cache, like the Cyrus side) over a user database in
    ``directory`` holding ``users`` (argon2id hashes, made by ``smarthost users add``)."""

    def __init__(self, directory: Path, users: dict[str, str]) -> None:
        directory.mkdir(mode=0o755)
        self.config_dir = directory
        for user, password in users.items():
            subprocess.run([*SMARTHOST, "-c", str(directory), "users", "add", user], input=password + "\n",
                           text=True, check=True, capture_output=True)
        sockdir = directory / "run"
        sockdir.mkdir(mode=0o755)
        super().__init__([*SMARTHOST, "-c", str(directory), "authd", "-c", "-m", str(sockdir), "-d",
                          "-l", str(directory / "maillog")], sockdir / "mux")


# --- the recipe's server role -------------------------------------------------------------


def postfix_auth_server(directory: Path, tls: TLSFiles, saslauthd: CyrusSaslauthd,
                        extra: dict[str, str]) -> PostfixInstance:
    """A private Postfix as the recipe's server: STARTTLS offered, AUTH only after TLS, Cyrus
    SASL with ``pwcheck_method: saslauthd`` / ``mech_list: PLAIN LOGIN``, relaying only for
    authenticated clients (loopback is not in ``mynetworks``). Not started.

    The Cyrus configuration file is ``DIR/etc/sasl/smtpd.conf``, found through
    ``cyrus_sasl_config_path`` (without it Debian's libsasl2 reads /etc/postfix/sasl).
    """
    directory.mkdir(mode=0o755)
    sasl_dir = directory / "etc" / "sasl"
    sasl_dir.mkdir(parents=True)
    (directory / "etc").chmod(0o755)
    (sasl_dir / "smtpd.conf").write_text(
        f"pwcheck_method: saslauthd\nmech_list: PLAIN LOGIN\nsaslauthd_path: {saslauthd.socket_path}\n")
    return PostfixInstance(directory, free_port(), {
        "mynetworks": UNTRUSTED_NETWORKS,
        "smtpd_tls_cert_file": str(tls.cert),
        "smtpd_tls_key_file": str(tls.key),
        "smtpd_tls_security_level": "may",
        "smtpd_tls_auth_only": "yes",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_path": "smtpd",
        "smtpd_sasl_security_options": "noanonymous",
        "smtpd_sasl_local_domain": BENCH_DOMAIN,
        "cyrus_sasl_config_path": str(sasl_dir),
        "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
        # 100 sessions from one address exceed anvil's default limits.
        "smtpd_client_event_limit_exceptions": "127.0.0.0/8",
        **extra,
    })


def smarthost_auth_server(directory: Path, tls: TLSFiles, smtpd_conf: str, extra: dict[str, str],
                          master_extra: str = "", workers: int | None = None) -> SmarthostInstance:
    """smarthost as the recipe's server, configured the way the recipe configures Postfix
    (``smtpd_sasl_auth_enable = yes``, STARTTLS offered, ``sasl/smtpd.conf`` as given); AUTH only
    after TLS is smarthost's default. Not started; ``instance.ports[0]`` is the SMTP port."""
    main_cf = {
        "myhostname": "smarthost.bench.example",
        "mynetworks": UNTRUSTED_NETWORKS,
        "mydestination": "",
        "smtpd_tls_cert_file": str(tls.cert),
        "smtpd_tls_key_file": str(tls.key),
        "smtpd_tls_security_level": "may",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_path": "smtpd",
        "smtpd_sasl_security_options": "noanonymous",
        "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
        "smtpd_client_event_limit_exceptions": "127.0.0.0/8",
        **extra,
    }
    if workers is not None:
        main_cf["smtpd_worker_processes"] = str(workers)
    instance = SmarthostInstance(directory, main_cf, f"127.0.0.1:{free_port()} inet n - n - - smtpd\n" + master_extra)
    instance.write_config()
    (instance.config_dir / "sasl").mkdir(exist_ok=True)
    (instance.config_dir / "sasl" / "smtpd.conf").write_text(smtpd_conf)
    return instance
