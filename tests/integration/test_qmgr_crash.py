"""The queue manager under kill -9 during deliveries: the master restarts it, nothing is lost."""

from __future__ import annotations

import os
import signal
import smtplib
import socketserver
import threading
import time

from peers import free_port, process_tree


class Sink(socketserver.ThreadingTCPServer):
    """A slow SMTP sink on 127.0.0.1 that records what arrives (one Subject per message)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, delay: float) -> None:
        self.delay = delay
        self.subjects: list[str] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), SinkHandler)


class SinkHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"220 sink ESMTP\r\n")
        while True:
            line = self.rfile.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.wfile.write(b"250-sink\r\n250 PIPELINING\r\n")
            elif verb == b"DATA":
                self.wfile.write(b"354 go\r\n")
                subject = ""
                while (data := self.rfile.readline()) not in (b".\r\n", b""):
                    if data.startswith(b"Subject: "):
                        subject = data[9:].strip().decode()
                time.sleep(self.server.delay)  # deliveries stay in flight for a while
                with self.server.lock:
                    self.server.subjects.append(subject)
                self.wfile.write(b"250 2.0.0 Ok: queued\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


def test_kill_9_of_the_queue_manager_loses_nothing(smarthost):
    sink_port = free_port()
    sink = Sink(sink_port, delay=0.2)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    port = free_port()
    s = smarthost({"relayhost": f"[127.0.0.1]:{sink_port}", "smtp_tls_security_level": "none",
                   "minimal_backoff_time": "1s", "maximal_backoff_time": "2s", "queue_run_delay": "1s"},
                  master_cf=f"127.0.0.1:{port} inet n - n - - smtpd\nqmgr unix n - n 300 1 qmgr\n")
    try:
        sent = [f"message {i}" for i in range(30)]
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
            for subject in sent:
                c.sendmail("a@example.org", ["bob@foreign.example"], f"Subject: {subject}\r\n\r\nbody\r\n".encode())
        time.sleep(0.5)  # some delivered, some in flight
        qmgr = [p for p in process_tree(s.pid) if p != s.pid and b"qmgr" in _comm_and_log(s, p)]
        assert qmgr, s.describe()
        os.kill(qmgr[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with sink.lock:
                arrived = set(sink.subjects)
            if arrived >= set(sent) and not s.queue_entries():
                break
            time.sleep(0.2)
        assert set(sent) <= arrived, f"lost: {sorted(set(sent) - arrived)}\n{s.describe()}"
        assert s.queue_entries() == []
        assert f"process qmgr pid {qmgr[0]} exit status -9; restarting" in s.log_text()
    finally:
        sink.shutdown()


def _comm_and_log(s, pid: int) -> bytes:
    """Whether ``pid`` is the queue manager: its log lines name it ``smarthost/qmgr[pid]``."""
    return b"qmgr" if f"qmgr[{pid}]" in s.log_text() else b""
