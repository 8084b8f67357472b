"""SMTP AUTH in the pure server core (RFC 4954), driven by the real SASL mechanisms.

``AuthShell`` plays the asyncio shell: it runs a server mechanism for every
AUTH exchange and answers its requests from a small in-memory user store.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings as hsettings
from hypothesis import strategies as st

from server_transcript import DECISIONS, FakeShell, default_decide, settings, transcript
from smarthost.sasl import (
    Challenge,
    CheckPassword,
    ClientContext,
    NeedScramCredentials,
    NeedSecret,
    ScramCredentials,
    ServerContext,
    Success,
    client_mechanism,
    scram_verifier,
    server_mechanism,
)
from smarthost.smtp import replies
from smarthost.smtp.server import NEED_DATA, PAUSED, AuthResponse, AuthStart, Closing, ProtocolError, State

PASSWORD = "correct horse"
SALT = b"0123456789abcdef"
MECHANISMS = ("PLAIN", "LOGIN", "SCRAM-SHA-256", "CRAM-MD5")
AUTH_LINE = "250-AUTH PLAIN LOGIN SCRAM-SHA-256 CRAM-MD5"
EHLO = """
    C: EHLO client.example.org
    S: 250-mx.example.com
    S: 250-PIPELINING
    S: 250-SIZE 10240000
    S: {auth}
    S: 250-ENHANCEDSTATUSCODES
    S: 250-8BITMIME
    S: 250-DSN
    S: 250 SMTPUTF8
"""


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def auth_settings(**overrides):
    values = dict(auth_mechanisms=MECHANISMS, starttls_available=False)
    values.update(overrides)
    return settings(**values)


@dataclass
class AuthShell(FakeShell):
    """Runs a SASL mechanism for each exchange; alice's password is PASSWORD."""

    settings: object = field(default_factory=auth_settings)
    tls_active: bool = True
    checked: list = field(default_factory=list)  # every credential request the mechanism made

    def drain(self) -> bytes:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA or event is PAUSED:
                return self.conn.data_to_send()
            self.events.append(event)
            if isinstance(event, AuthStart):
                context = ServerContext(hostname="mx.example.com", nonce="1896.697170952", server_secret=b"k")
                self.mech = server_mechanism(event.mechanism, context)
                self.answer(self.mech.start(event.initial_response))
            elif isinstance(event, AuthResponse):
                self.answer(self.mech.respond(event.data))
            elif isinstance(event, DECISIONS):
                self.conn.accept(default_decide(event))

    def answer(self, step) -> None:
        while True:
            if isinstance(step, CheckPassword):
                self.checked.append(step)
                step = self.mech.password_result(step.authcid == "alice" and step.password == PASSWORD)
            elif isinstance(step, NeedScramCredentials):
                self.checked.append(step)
                found = None
                if step.username == "alice":
                    stored, server = scram_verifier(PASSWORD, step.mechanism, SALT, 4096)
                    found = ScramCredentials(SALT, 4096, stored, server)
                step = self.mech.credentials(found)
            elif isinstance(step, NeedSecret):
                self.checked.append(step)
                step = self.mech.secret(PASSWORD if step.username == "alice" else None)
            else:
                break
        if isinstance(step, Challenge):
            self.conn.auth_challenge(step.data)
        elif isinstance(step, Success):
            self.conn.auth_success(step.username)
        else:
            self.conn.auth_fail(replies.AUTH_FAILED)


def run(script: str, **shell_args) -> AuthShell:
    return transcript("S: 220 mx.example.com ESMTP smarthost\n" + script, AuthShell(**shell_args))


def greeted(**shell_args) -> AuthShell:
    shell = AuthShell(**shell_args)
    shell.send(b"EHLO client.example.org\r\n")
    return shell


def failures(shell: AuthShell) -> list[str]:
    return [e.reply.text for e in shell.events if isinstance(e, ProtocolError) and e.verb == "AUTH"]


# Advertising ------------------------------------------------------------------


def test_auth_is_advertised_after_tls():
    run(EHLO.format(auth=AUTH_LINE))


def test_auth_is_not_advertised_before_tls():
    shell = greeted(tls_active=False)
    assert not any(cap.startswith("AUTH") for cap in shell.conn.capabilities())


def test_auth_without_tls_requirement_is_advertised_in_plaintext():
    run(EHLO.format(auth=AUTH_LINE), tls_active=False, settings=auth_settings(auth_requires_tls=False))


def test_broken_sasl_auth_clients_get_the_old_line_too():
    run(
        EHLO.format(auth=AUTH_LINE + "\n    S: 250-AUTH=PLAIN LOGIN SCRAM-SHA-256 CRAM-MD5"),
        settings=auth_settings(broken_sasl_auth_clients=True),
    )


def test_security_options_before_tls_and_tls_security_options_after():
    # smtpd_tls_auth_only = no, smtpd_sasl_security_options = noanonymous, noplaintext (nothing of
    # PLAIN LOGIN is left before TLS), smtpd_sasl_tls_security_options = noanonymous (both after).
    plain_only = auth_settings(auth_mechanisms=(), auth_tls_mechanisms=("PLAIN", "LOGIN"),
                               auth_requires_tls=False, starttls_available=True)
    shell = run(
        f"""
        C: EHLO c
        S: 250-mx.example.com
        S: 250-PIPELINING
        S: 250-SIZE 10240000
        S: 250-STARTTLS
        S: 250-ENHANCEDSTATUSCODES
        S: 250-8BITMIME
        S: 250-DSN
        S: 250 SMTPUTF8
        C: AUTH PLAIN {b64(chr(0) + "alice" + chr(0) + PASSWORD)}
        S: 538 5.7.11 Encryption required for requested authentication mechanism
        C: AUTH CRAM-MD5
        S: 504 5.5.4 Unsupported authentication mechanism
        C: STARTTLS
        S: 220 2.0.0 Ready to start TLS
        """,
        tls_active=False, settings=plain_only,
    )
    assert not shell.of_type(AuthStart) and shell.checked == []
    shell.conn.tls_established()
    assert shell.send(b"EHLO c\r\n").split(b"\r\n")[3] == b"250-AUTH PLAIN LOGIN"
    assert shell.send(f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + PASSWORD)}\r\n".encode()) == (
        b"235 2.7.0 Authentication successful\r\n"
    )


def test_the_list_before_tls_is_not_offered_after_it():
    # A list that shrinks once TLS is up (odd, but Postfix allows it): after STARTTLS only the TLS one counts.
    shell = greeted(tls_active=False, settings=auth_settings(
        auth_mechanisms=("PLAIN", "LOGIN"), auth_tls_mechanisms=("LOGIN",), auth_requires_tls=False,
        starttls_available=True))
    assert "AUTH PLAIN LOGIN" in shell.conn.capabilities()
    shell.send(b"STARTTLS\r\n")
    shell.conn.tls_established()
    shell.send(b"EHLO c\r\n")
    assert "AUTH LOGIN" in shell.conn.capabilities()
    assert shell.send(b"AUTH PLAIN =\r\n") == b"504 5.5.4 Unsupported authentication mechanism\r\n"


def test_auth_is_an_unknown_command_when_no_mechanism_is_configured():
    run(
        f"""
        C: EHLO c
        S: 250-mx.example.com
        S: 250-PIPELINING
        S: 250-SIZE 10240000
        S: 250-ENHANCEDSTATUSCODES
        S: 250-8BITMIME
        S: 250-DSN
        S: 250 SMTPUTF8
        C: AUTH PLAIN {b64(chr(0) + "alice" + chr(0) + PASSWORD)}
        S: 500 5.5.2 Error: command not recognized
        """,
        settings=auth_settings(auth_mechanisms=()),
    )


def test_bad_mechanism_names_are_refused_in_settings():
    with pytest.raises(ValueError):
        auth_settings(auth_mechanisms=("plain",))


# Successful exchanges -------------------------------------------------------------


def test_plain_with_initial_response():
    shell = greeted()
    assert shell.send(f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + PASSWORD)}\r\n".encode()) == (
        b"235 2.7.0 Authentication successful\r\n"
    )
    assert shell.conn.session.authenticated == "alice"
    assert shell.conn.session.auth_mechanism == "PLAIN"
    assert shell.conn.counters["auth"] == 1 and shell.conn.failures["auth"] == 0
    assert shell.send(b"MAIL FROM:<alice@example.org>\r\n") == b"250 2.1.0 Ok\r\n"


def test_plain_with_a_challenge_and_lower_case_mechanism():
    shell = greeted()
    assert shell.send(b"auth plain\r\n") == b"334 \r\n"
    assert shell.send(b64("alice\0alice\0" + PASSWORD).encode() + b"\r\n") == (
        b"235 2.7.0 Authentication successful\r\n"
    )
    assert shell.conn.session.authenticated == "alice"


def test_login():
    shell = greeted()
    assert shell.send(b"AUTH LOGIN\r\n") == b"334 VXNlcm5hbWU6\r\n"
    assert shell.send(b64("alice").encode() + b"\r\n") == b"334 UGFzc3dvcmQ6\r\n"
    assert shell.send(b64(PASSWORD).encode() + b"\r\n") == b"235 2.7.0 Authentication successful\r\n"
    assert shell.conn.session.auth_mechanism == "LOGIN"


def test_login_with_the_user_name_as_initial_response():
    shell = greeted()
    assert shell.send(f"AUTH LOGIN {b64('alice')}\r\n".encode()) == b"334 UGFzc3dvcmQ6\r\n"
    assert shell.send(b64(PASSWORD).encode() + b"\r\n") == b"235 2.7.0 Authentication successful\r\n"


def test_scram_sha_256_with_our_client():
    shell = greeted()
    client = client_mechanism("SCRAM-SHA-256", "alice", PASSWORD, ClientContext(nonce="clientnonce123"))
    out = shell.send(b"AUTH SCRAM-SHA-256 " + base64.b64encode(client.start()) + b"\r\n")
    while out.startswith(b"334 "):
        answer = client.step(base64.b64decode(out[4:-2]))
        out = shell.send(base64.b64encode(answer) + b"\r\n")
    assert out == b"235 2.7.0 Authentication successful\r\n"
    client.finish()
    assert shell.conn.session.authenticated == "alice"


def test_cram_md5_challenge_and_answer():
    shell = greeted()
    out = shell.send(b"AUTH CRAM-MD5\r\n")
    assert base64.b64decode(out[4:-2]) == b"<1896.697170952@mx.example.com>"
    client = client_mechanism("CRAM-MD5", "alice", PASSWORD)
    answer = client.step(base64.b64decode(out[4:-2]))
    assert shell.send(base64.b64encode(answer) + b"\r\n") == b"235 2.7.0 Authentication successful\r\n"


def test_rset_and_ehlo_keep_the_authentication():
    shell = greeted()
    shell.send(f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + PASSWORD)}\r\n".encode())
    shell.send(b"RSET\r\n")
    shell.send(b"EHLO again.example.org\r\n")
    assert shell.conn.session.authenticated == "alice"


def test_the_tls_handshake_forgets_the_authentication_and_starttls_after_auth_is_refused():
    shell = greeted(tls_active=False, settings=auth_settings(auth_requires_tls=False, starttls_available=True))
    shell.send(f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + PASSWORD)}\r\n".encode())
    assert shell.send(b"STARTTLS\r\n") == b"503 5.5.1 Error: already authenticated\r\n"
    fresh = greeted(tls_active=False, settings=auth_settings(starttls_available=True))
    assert fresh.send(b"STARTTLS\r\n") == b"220 2.0.0 Ready to start TLS\r\n"
    fresh.conn.tls_established()
    assert fresh.conn.session.authenticated is None and fresh.conn.session.tls_active


# Refusals before any credential is looked at -------------------------------------------


def test_auth_before_starttls_is_refused_without_checking_credentials():
    shell = run(
        f"""
        C: EHLO c
        S: 250-mx.example.com
        S: 250-PIPELINING
        S: 250-SIZE 10240000
        S: 250-ENHANCEDSTATUSCODES
        S: 250-8BITMIME
        S: 250-DSN
        S: 250 SMTPUTF8
        C: AUTH PLAIN {b64(chr(0) + "alice" + chr(0) + PASSWORD)}
        S: 530 5.7.0 Must issue a STARTTLS command first
        C: AUTH LOGIN
        S: 530 5.7.0 Must issue a STARTTLS command first
        """,
        tls_active=False,
    )
    assert not shell.of_type(AuthStart) and shell.checked == []
    assert shell.conn.session.authenticated is None


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("AUTH DIGEST-MD5", "504 5.5.4 Unsupported authentication mechanism"),
        ("AUTH EXTERNAL =", "504 5.5.4 Unsupported authentication mechanism"),
        ("AUTH", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        ("AUTH PLAIN a b", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
    ],
)
def test_refused_auth_commands(line, reply):
    shell = greeted()
    assert shell.send(line.encode() + b"\r\n") == reply.encode() + b"\r\n"
    assert not shell.of_type(AuthStart) and shell.checked == []
    assert shell.conn.auth_failures == 0 and shell.conn.state is State.GREETED


def test_auth_before_ehlo_and_during_a_transaction():
    shell = AuthShell()
    assert shell.send(b"AUTH LOGIN\r\n") == b"503 5.5.1 Error: send HELO/EHLO first\r\n"
    shell.send(b"EHLO c\r\n")
    shell.send(b"MAIL FROM:<a@example.org>\r\n")
    assert shell.send(b"AUTH LOGIN\r\n") == b"503 5.5.1 Error: MAIL transaction in progress\r\n"
    shell.send(b"RCPT TO:<b@example.com>\r\n")
    assert shell.send(b"AUTH LOGIN\r\n") == b"503 5.5.1 Error: MAIL transaction in progress\r\n"
    assert not shell.of_type(AuthStart)


def test_second_auth_is_refused():
    shell = greeted()
    shell.send(f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + PASSWORD)}\r\n".encode())
    assert shell.send(b"AUTH LOGIN\r\n") == b"503 5.5.1 Error: already authenticated\r\n"
    assert len(shell.of_type(AuthStart)) == 1


# Hostile exchanges -------------------------------------------------------------------


def test_bad_base64_is_refused():
    shell = greeted()
    assert shell.send(b"AUTH PLAIN not*base64\r\n") == b"501 5.5.2 Cannot decode response\r\n"
    assert shell.send(b"AUTH LOGIN\r\n") == b"334 VXNlcm5hbWU6\r\n"
    assert shell.send(b"YWxp Y2U=\r\n") == b"501 5.5.2 Cannot decode response\r\n"
    assert shell.checked == [] and shell.conn.auth_failures == 2
    assert shell.send(b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"


def test_star_cancels_the_exchange():
    shell = greeted()
    shell.send(b"AUTH LOGIN\r\n")
    assert shell.send(b"*\r\n") == b"501 5.7.0 Authentication aborted\r\n"
    assert shell.conn.state is State.GREETED and shell.conn.auth_failures == 1
    assert shell.conn.failures["auth"] == 1
    assert shell.send(b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # AUTH PLAIN =
        b"\0alice",
        b"a\0b\0c\0d",
        b"\0alice\0\xff\xfe",
        b"\xc3\0alice\0" + PASSWORD.encode(),
        b"\0\0" + PASSWORD.encode(),
        b"\0alice\0",
        b"bob\0alice\0" + PASSWORD.encode(),  # authzid != authcid, with the right password
    ],
)
def test_malformed_plain_messages_never_authenticate(payload):
    shell = greeted()
    argument = "=" if not payload else base64.b64encode(payload).decode()
    assert shell.send(f"AUTH PLAIN {argument}\r\n".encode()) == (
        b"535 5.7.8 Error: authentication failed: authentication failure\r\n"
    )
    assert shell.checked == []  # refused before any password check
    assert shell.conn.session.authenticated is None


def test_wrong_password_and_unknown_user_look_the_same():
    outputs = set()
    for user, password in (("alice", "wrong"), ("mallory", PASSWORD)):
        shell = greeted()
        outputs.add(shell.send(f"AUTH PLAIN {b64(chr(0) + user + chr(0) + password)}\r\n".encode()))
        assert shell.conn.failures["auth"] == 1
    assert outputs == {b"535 5.7.8 Error: authentication failed: authentication failure\r\n"}


def test_after_a_failure_the_session_is_not_authenticated_and_can_retry():
    shell = greeted()
    shell.send(f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + 'nope')}\r\n".encode())
    assert shell.conn.session.authenticated is None
    assert shell.send(f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + PASSWORD)}\r\n".encode()).startswith(b"235")
    assert shell.conn.counters["auth"] == 2 and shell.conn.failures["auth"] == 1


def test_failure_limit_closes_the_session():
    shell = run(
        f"""
        C: EHLO c
        S: 250-mx.example.com
        S: 250-PIPELINING
        S: 250-SIZE 10240000
        S: {AUTH_LINE}
        S: 250-ENHANCEDSTATUSCODES
        S: 250-8BITMIME
        S: 250-DSN
        S: 250 SMTPUTF8
        C: AUTH PLAIN {b64(chr(0) + "alice" + chr(0) + "guess1")}
        S: 535 5.7.8 Error: authentication failed: authentication failure
        C: AUTH LOGIN
        S: 334 VXNlcm5hbWU6
        C: *
        S: 501 5.7.0 Authentication aborted
        C: AUTH PLAIN {b64(chr(0) + "alice" + chr(0) + "guess3")}
        S: 535 5.7.8 Error: authentication failed: authentication failure
        S: 421 4.7.0 mx.example.com Error: too many failed authentications
        """
    )
    assert shell.conn.closed
    assert shell.events[-1] == Closing(shell.events[-1].reply, "too many failed authentications", "AUTH")
    assert shell.send(f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + PASSWORD)}\r\n".encode()) == b""


def test_temporary_failure_from_the_shell():
    shell = greeted()
    shell.send(b"AUTH LOGIN\r\n")
    shell.send(b64("alice").encode() + b"\r\n")
    shell.conn.receive_data(b64(PASSWORD).encode() + b"\r\n")
    assert isinstance(shell.conn.next_event(), AuthResponse)
    shell.conn.auth_fail(replies.AUTH_TEMPORARY_FAILURE)  # the auth daemon did not answer in time
    assert shell.conn.data_to_send() == b"454 4.7.0 Temporary authentication failure\r\n"
    assert shell.conn.session.authenticated is None and shell.conn.auth_failures == 1


@pytest.mark.parametrize("size", [20 * 1024, 1 << 20])
def test_overlong_initial_response_is_refused_with_bounded_memory(size):
    shell = greeted()
    line = b"AUTH PLAIN " + b"A" * size + b"\r\n"
    out = b""
    peak = 0
    for i in range(0, len(line), 65536):
        out += shell.send(line[i : i + 65536])
        peak = max(peak, shell.conn.buffered)
    assert out == b"500 5.5.6 Authentication Exchange line is too long\r\n"
    assert peak <= 12288 + 32 + 65536
    assert shell.checked == [] and not shell.of_type(AuthStart)
    assert shell.send(b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"


@pytest.mark.parametrize("size", [20 * 1024, 1 << 20])
def test_overlong_response_is_refused_with_bounded_memory(size):
    shell = greeted()
    assert shell.send(b"AUTH PLAIN\r\n") == b"334 \r\n"
    line = b"A" * size + b"\r\n"
    out = b""
    peak = 0
    for i in range(0, len(line), 65536):
        out += shell.send(line[i : i + 65536])
        peak = max(peak, shell.conn.buffered)
    assert out == b"500 5.5.6 Authentication Exchange line is too long\r\n"
    assert peak <= 12288 + 2 + 65536
    assert shell.conn.auth_failures == 1 and shell.checked == []
    assert failures(shell) == ["Authentication Exchange line is too long"]
    assert shell.send(b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"


def test_long_initial_response_within_the_limit_is_accepted():
    # RFC 4954 §4: the AUTH line may exceed the 512-octet command line limit.
    password = "p" * 900
    shell = greeted()
    out = shell.send(f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + password)}\r\n".encode())
    assert out == b"535 5.7.8 Error: authentication failed: authentication failure\r\n"
    assert shell.checked[0].password == password


def test_eof_during_the_exchange():
    shell = greeted()
    shell.send(b"AUTH LOGIN\r\n")
    assert shell.send(b"") == b"421 4.4.2 mx.example.com Error: lost connection\r\n"
    assert shell.events[-1].reason == "eof" and shell.events[-1].verb == "AUTH"


# Pipelining (RFC 4954 §4) ----------------------------------------------------------------


def test_plain_with_initial_response_may_be_pipelined():
    shell = greeted()
    out = shell.send(
        f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + PASSWORD)}\r\nMAIL FROM:<alice@example.org>\r\n".encode()
    )
    assert out == b"235 2.7.0 Authentication successful\r\n250 2.1.0 Ok\r\n"


def test_commands_pipelined_while_the_auth_daemon_is_asked_still_run():
    shell = greeted()
    shell.conn.receive_data(f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + PASSWORD)}\r\n".encode())
    event = shell.conn.next_event()
    assert isinstance(event, AuthStart)
    shell.conn.receive_data(b"MAIL FROM:<alice@example.org>\r\n")  # arrives while the daemon is asked
    shell.mech = server_mechanism("PLAIN", ServerContext(hostname="h"))
    shell.answer(shell.mech.start(event.initial_response))
    assert shell.drain() == b"235 2.7.0 Authentication successful\r\n250 2.1.0 Ok\r\n"


@pytest.mark.parametrize(
    "data",
    [
        b"AUTH LOGIN\r\n" + b64("alice").encode() + b"\r\n",  # did not wait for 334
        b"AUTH PLAIN\r\n" + b64("\0alice\0" + PASSWORD).encode() + b"\r\n",
        b"AUTH LOGIN " + b64("alice").encode() + b"\r\nNOOP\r\n",  # LOGIN is not one round trip
    ],
)
def test_pipelining_into_a_challenge_ends_the_session(data):
    shell = greeted()
    assert shell.send(data) == b"554 5.5.0 Error: SMTP protocol synchronization\r\n"
    assert shell.conn.closed and shell.checked == []


def test_pipelining_after_a_response_ends_the_session():
    shell = greeted()
    shell.send(b"AUTH LOGIN\r\n")
    shell.send(b64("alice").encode() + b"\r\n")
    out = shell.send(b64(PASSWORD).encode() + b"\r\nMAIL FROM:<alice@example.org>\r\n")
    assert out == b"554 5.5.0 Error: SMTP protocol synchronization\r\n"
    assert shell.conn.session.authenticated is None and shell.checked == []


def test_input_arriving_while_a_challenge_is_prepared_ends_the_session():
    shell = greeted()
    shell.conn.receive_data(b"AUTH LOGIN\r\n")
    assert isinstance(shell.conn.next_event(), AuthStart)
    shell.conn.receive_data(b64("alice").encode() + b"\r\n")  # before the 334 was sent
    shell.conn.auth_challenge(b"Username:")
    assert shell.conn.data_to_send() == b"554 5.5.0 Error: SMTP protocol synchronization\r\n"
    assert shell.conn.closed


def test_without_forbid_unauth_pipelining_a_response_may_come_early():
    shell = greeted(settings=auth_settings(forbid_unauth_pipelining=False))
    out = shell.send(b"AUTH PLAIN\r\n" + b64("\0alice\0" + PASSWORD).encode() + b"\r\n")
    assert out == b"334 \r\n235 2.7.0 Authentication successful\r\n"


# The shell's interface ---------------------------------------------------------------------


def test_auth_steps_are_not_answered_with_accept_or_reject():
    shell = greeted()
    shell.conn.receive_data(b"AUTH LOGIN\r\n")
    shell.conn.next_event()
    with pytest.raises(RuntimeError):
        shell.conn.accept()
    with pytest.raises(RuntimeError):
        shell.conn.reject(replies.AUTH_FAILED)
    with pytest.raises(ValueError):
        shell.conn.auth_fail(replies.OK)
    shell.conn.auth_challenge(b"Username:")
    with pytest.raises(RuntimeError):
        shell.conn.auth_success("alice")  # nothing pending: waiting for the client


def test_events_do_not_show_credentials():
    shell = greeted()
    shell.conn.receive_data(f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + PASSWORD)}\r\n".encode())
    event = shell.conn.next_event()
    assert PASSWORD not in repr(event) and PASSWORD not in str(event)
    assert event.initial_response == b"\0alice\0" + PASSWORD.encode()
    assert "bytes" in repr(AuthResponse(PASSWORD.encode())) and PASSWORD not in repr(AuthResponse(PASSWORD.encode()))


# Fuzzing -------------------------------------------------------------------------------------


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mechanism=st.sampled_from(MECHANISMS),
    initial=st.one_of(st.none(), st.binary(max_size=64)),
    lines=st.lists(st.binary(max_size=80).filter(lambda b: b"\n" not in b), max_size=5),
)
def test_random_responses_never_authenticate_and_never_raise(mechanism, initial, lines):
    shell = greeted()
    command = f"AUTH {mechanism}"
    if initial is not None:
        command += " " + (base64.b64encode(initial).decode() or "=")
    written = shell.send(command.encode() + b"\r\n")
    for line in lines:
        if shell.conn.state is not State.AUTH:
            break
        written += shell.send(line + b"\r\n")
    assert shell.conn.session.authenticated is None
    assert written.startswith((b"334 ", b"5")) and not any(
        reply.startswith(b"235") for reply in written.split(b"\r\n")
    )
