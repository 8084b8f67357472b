"""TLS as OpenSSL's own client sees it: STARTTLS handshakes, no TLS below 1.2 on submission,
and no answer to plaintext commands pipelined behind STARTTLS (RFC 3207 §4.2, CVE-2011-0411)."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import threading

import pytest
from peers import LOOPBACK, free_port, require_peer, wait_for_port

OLD_TLS = ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]  # SECLEVEL=0: OpenSSL 3 offers TLS 1.1 only there


@pytest.fixture(scope="module")
def server(start_smarthost):
    smtp, submission = free_port(), free_port()
    return start_smarthost(
        "openssl",
        {"mynetworks": "127.0.0.0/8", "mydestination": "example.test"},
        f"127.0.0.1:{smtp} inet n - n - - smtpd\n"
        f"127.0.0.1:{submission} inet n - n - - smtpd\n"
        "  -o smtpd_tls_security_level=encrypt\n",
        tls=True,
    )


def s_client(*args: str, stdin: str = "QUIT\n") -> subprocess.CompletedProcess[str]:
    command = [require_peer("openssl"), "s_client", *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=30)


def s_client_dialogue(*args: str) -> tuple[int, str, str]:
    """EHLO, then QUIT once EHLO is answered, through ``openssl s_client``: one command per
    write (EHLO may only end a pipelined group, RFC 2920 §3.1). Returns (status, stdout, stderr)."""
    process = subprocess.Popen([require_peer("openssl"), "s_client", *args], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(30, process.kill)
    watchdog.start()
    try:
        transcript = []
        for command in ("EHLO client.example.org", "QUIT"):
            process.stdin.write(command + "\n")
            process.stdin.flush()
            while line := process.stdout.readline():  # up to the reply's last line ("250 ...")
                transcript.append(line)
                if line[3:4] != "-":
                    break
        process.stdin.close()
        rest, stderr = process.stdout.read(), process.stderr.read()
        return process.wait(), "".join(transcript) + rest, stderr
    finally:
        watchdog.cancel()


@pytest.mark.parametrize("service", [0, 1], ids=["smtp", "submission"])
@pytest.mark.parametrize("mode", ["-quiet", "-brief"])
def test_s_client_starttls_completes_with_tls12_or_later(server, service, mode):
    port = server.ports[service]
    status, stdout, stderr = s_client_dialogue(
        "-starttls", "smtp", "-connect", f"127.0.0.1:{port}", "-crlf", "-ign_eof", mode,
        "-CAfile", str(server.config_dir / "ca.pem"), "-verify_hostname", "localhost", "-verify_return_error")
    output = f"{stdout}{stderr}\n{server.describe()}"
    assert status == 0, output
    # Inside TLS: our EHLO is answered by smarthost, then QUIT.
    assert re.match(r"250-mx\.example\.test\r?\n(250-.*\n)*250 .*\n221 ", stdout), output
    if mode == "-brief":
        assert re.search(r"^Protocol version: TLSv1\.[23]$", stderr, re.MULTILINE), output
        assert "Verification: OK" in stderr, output


def test_s_client_tls11_is_refused_on_submission(server):
    openssl = require_peer("openssl")
    # Control: this client does complete a TLS 1.1 handshake where the server allows it.
    control_port = free_port()
    control = subprocess.Popen(
        [openssl, "s_server", "-accept", f"{LOOPBACK}:{control_port}", "-quiet",
         "-cert", str(server.config_dir / "cert.pem"), "-key", str(server.config_dir / "key.pem"), *OLD_TLS],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(control_port, alive=lambda: control.poll() is None)
        ok = s_client("-connect", f"127.0.0.1:{control_port}", "-brief", *OLD_TLS, stdin="")
        assert "Protocol version: TLSv1.1" in ok.stderr, ok.stderr
    finally:
        control.kill()
        control.wait()

    refused = s_client("-starttls", "smtp", "-connect", f"127.0.0.1:{server.ports[1]}", "-brief", *OLD_TLS)
    assert refused.returncode != 0, refused.stderr
    assert "CONNECTION ESTABLISHED" not in refused.stderr
    assert "Protocol version" not in refused.stderr


def read_reply(sock: socket.socket) -> bytes:
    """One complete SMTP reply, read byte by byte so nothing after it is consumed."""
    data = b""
    while not re.search(rb"(?:^|\r\n)\d{3} [^\r\n]*\r\n$", data):
        byte = sock.recv(1)
        assert byte, f"connection closed after {data!r}"
        data += byte
    return data


def test_plaintext_pipelined_after_starttls_is_never_answered(server):
    context = ssl.create_default_context(cafile=str(server.config_dir / "ca.pem"))
    with socket.create_connection((LOOPBACK, server.ports[0]), timeout=10) as sock:
        assert read_reply(sock).startswith(b"220 ")
        sock.sendall(b"EHLO client.example.org\r\n")
        assert b"STARTTLS" in read_reply(sock)
        sock.sendall(b"STARTTLS\r\nRSET\r\n")  # one write: the RSET is an injection attempt
        reply = read_reply(sock)
        if not reply.startswith(b"220 "):
            # Refusing STARTTLS while plaintext is pipelined behind it is safe as well.
            assert reply[:1] in (b"4", b"5"), reply
            return
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            early = sock.recv(100, socket.MSG_PEEK)
            pytest.fail(f"plaintext after the 220 to STARTTLS: {early!r}")
        sock.settimeout(10)
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            tls.settimeout(0.5)
            with pytest.raises(TimeoutError):
                early = tls.recv(100)
                pytest.fail(f"the RSET sent before TLS was answered inside TLS: {early!r}")
            tls.settimeout(10)
            tls.sendall(b"EHLO client.example.org\r\n")
            assert read_reply(tls).startswith(b"250-mx.example.test")
            tls.sendall(b"QUIT\r\n")
            assert read_reply(tls).startswith(b"221 ")
