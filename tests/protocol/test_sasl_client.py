"""Client-side SASL mechanisms (for the relay client) and the mechanism choice."""

from __future__ import annotations

import pytest
from scramp import ScramMechanism

from smarthost.sasl import (
    Challenge,
    CheckPassword,
    ClientContext,
    NeedScramCredentials,
    NeedSecret,
    SaslError,
    ScramCredentials,
    ServerContext,
    Success,
    client_mechanism,
    filter_mechanisms,
    meets,
    scram_verifier,
    select_client_mechanism,
    server_mechanism,
)

PASSWORD = "hunter2 with spaces"


# RFC vectors, client side -------------------------------------------------------------------


def test_scram_sha_1_rfc_5802_example():
    mech = client_mechanism("SCRAM-SHA-1", "user", "pencil", ClientContext(nonce="fyko+d2lbbFgONRv9qkxdawL"))
    assert mech.start() == b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
    assert mech.step(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096") == (
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    )
    assert mech.step(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=") == b""
    mech.finish()


def test_scram_sha_256_rfc_7677_example_with_the_signature_checked_at_finish():
    mech = client_mechanism("SCRAM-SHA-256", "user", "pencil", ClientContext(nonce="rOprNGfwEbeRWgbNEkqO"))
    assert mech.start() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    assert mech.step(
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    ) == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    mech.finish(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


def test_scram_client_refuses_a_server_that_cannot_prove_itself():
    mech = client_mechanism("SCRAM-SHA-1", "user", "pencil", ClientContext(nonce="fyko+d2lbbFgONRv9qkxdawL"))
    mech.start()
    mech.step(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
    with pytest.raises(SaslError) as exc:
        mech.step(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    assert "pencil" not in str(exc.value)
    with pytest.raises(SaslError):
        mech.finish()


def test_scram_client_finish_without_a_signature_raises():
    # A server that says 235 without the v= step has not proven it knows the password.
    mech = client_mechanism("SCRAM-SHA-1", "user", "pencil", ClientContext(nonce="fyko+d2lbbFgONRv9qkxdawL"))
    mech.start()
    mech.step(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
    with pytest.raises(SaslError):
        mech.finish()


@pytest.mark.parametrize(
    "server_first",
    [
        b"r=someone-elses-nonce,s=QSXCR+Q6sek8bf92,i=4096",
        b"r=fyko+d2lbbFgONRv9qkxdawL3rfc,s=QSXCR+Q6sek8bf92,i=1",  # too few iterations
        b"e=unknown-user",
        b"\xff",
    ],
)
def test_scram_client_refuses_bad_server_first_messages(server_first):
    mech = client_mechanism("SCRAM-SHA-1", "user", "pencil", ClientContext(nonce="fyko+d2lbbFgONRv9qkxdawL"))
    mech.start()
    with pytest.raises(SaslError):
        mech.step(server_first)


def test_cram_md5_rfc_2195_example():
    mech = client_mechanism("CRAM-MD5", "tim", "tanstaaftanstaaf")
    assert mech.start() is None
    assert mech.step(b"<1896.697170952@postoffice.reston.mci.net>") == b"tim b913a602c7eda7a495b4e6e7334d3890"
    with pytest.raises(SaslError):
        mech.step(b"again")


def test_plain_and_login_messages():
    plain = client_mechanism("PLAIN", "alice", PASSWORD, ClientContext(authzid="bob"))
    assert plain.start() == b"bob\0alice\0" + PASSWORD.encode()
    assert plain.step(b"") == b"bob\0alice\0" + PASSWORD.encode()  # a server that wanted it after 334
    with pytest.raises(SaslError):
        plain.step(b"unexpected")
    login = client_mechanism("LOGIN", "alice", PASSWORD)
    assert login.start() is None
    assert login.step(b"Username:") == b"alice"
    assert login.step(b"Password:") == PASSWORD.encode()
    with pytest.raises(SaslError):
        login.step(b"Again:")


def test_client_construction_errors():
    with pytest.raises(ValueError):
        client_mechanism("GSSAPI", "alice", PASSWORD)
    with pytest.raises(ValueError):
        client_mechanism("SCRAM-SHA-256", "alice", PASSWORD)  # no nonce
    with pytest.raises(ValueError) as exc:
        client_mechanism("SCRAM-SHA-256", "alice", "bad\x07password", ClientContext(nonce="n"))
    assert "bad\x07password" not in str(exc.value)


@pytest.mark.parametrize("name", ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_no_password_in_reprs(name):
    mech = client_mechanism(name, "alice", PASSWORD, ClientContext(nonce="abc"))
    assert PASSWORD not in repr(mech) and PASSWORD not in str(mech)


# Our client against our server -----------------------------------------------------------------


class Store:
    """What the shell would ask: alice's password (plaintext for CRAM-MD5, verifiers for SCRAM)."""

    def answer(self, mech, step):
        while True:
            if isinstance(step, CheckPassword):
                step = mech.password_result(step.authcid == "alice" and step.password == PASSWORD)
            elif isinstance(step, NeedScramCredentials):
                salt = b"0123456789abcdef"
                stored, server = scram_verifier(PASSWORD, step.mechanism, salt, 4096)
                step = mech.credentials(ScramCredentials(salt, 4096, stored, server) if step.username == "alice" else None)
            elif isinstance(step, NeedSecret):
                step = mech.secret(PASSWORD if step.username == "alice" else None)
            else:
                return step


def exchange(name: str, username: str, password: str):
    client = client_mechanism(name, username, password, ClientContext(nonce="client-nonce"))
    server = server_mechanism(name, ServerContext(hostname="mx.example.com", nonce="server-nonce", server_secret=b"k"))
    store = Store()
    step = store.answer(server, server.start(client.start()))
    while isinstance(step, Challenge):
        step = store.answer(server, server.respond(client.step(step.data)))
    if isinstance(step, Success):
        client.finish()
    return step


@pytest.mark.parametrize("name", ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_client_against_server(name):
    assert exchange(name, "alice", PASSWORD) == Success("alice", "alice")
    assert not isinstance(exchange(name, "alice", "wrong"), Success)
    assert not isinstance(exchange(name, "mallory", PASSWORD), Success)


def test_scram_client_against_scramps_server():
    salt, stored, server_key, iterations = ScramMechanism("SCRAM-SHA-256").make_auth_info(PASSWORD, salt=b"s" * 16)
    server = ScramMechanism("SCRAM-SHA-256").make_server(lambda user: (salt, stored, server_key, iterations))
    client = client_mechanism("SCRAM-SHA-256", "alice", PASSWORD, ClientContext(nonce="n0nce"))
    server.set_client_first(client.start().decode())
    final = client.step(server.get_server_first().encode())
    server.set_client_final(final.decode())
    assert client.step(server.get_server_final().encode()) == b""
    client.finish()


# Choosing a mechanism ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "allowed", "options", "chosen"),
    [
        (["PLAIN", "LOGIN", "SCRAM-SHA-1", "SCRAM-SHA-256"], [], ["noanonymous"], "SCRAM-SHA-256"),
        (["plain", "login"], [], ["noanonymous"], "PLAIN"),
        (["PLAIN", "LOGIN"], [], ["noplaintext", "noanonymous"], None),  # Postfix's smtp default
        (["PLAIN", "CRAM-MD5"], [], ["noplaintext", "noanonymous"], "CRAM-MD5"),
        (["PLAIN", "SCRAM-SHA-256"], ["plain"], [], "PLAIN"),
        (["SCRAM-SHA-1", "SCRAM-SHA-256"], ["!scram-sha-256", "static:rest"], [], "SCRAM-SHA-1"),
        (["GSSAPI", "NTLM"], [], [], None),
        (["LOGIN"], [], ["mutual_auth"], None),
        ([], [], [], None),
    ],
)
def test_select_client_mechanism(offered, allowed, options, chosen):
    assert select_client_mechanism(offered, allowed, options) == chosen


def test_filter_mechanisms():
    offered = ["PLAIN", "EXTERNAL", "LOGIN"]
    assert filter_mechanisms(offered, []) == offered
    assert filter_mechanisms(offered, ["!external", "static:rest"]) == ["PLAIN", "LOGIN"]  # Postfix smtpd default
    assert filter_mechanisms(offered, ["login", "plain"]) == ["PLAIN", "LOGIN"]
    with pytest.raises(ValueError):
        filter_mechanisms(offered, ["hash:/etc/postfix/mechs"])


def test_security_properties():
    assert meets("PLAIN", ["noanonymous"]) and not meets("PLAIN", ["noplaintext"])
    assert meets("SCRAM-SHA-256", ["noplaintext", "noanonymous", "mutual_auth"])
    assert not meets("SCRAM-SHA-256", ["nodictionary"])
    assert meets("external", ["nodictionary", "forward_secrecy"])
    assert not meets("ANONYMOUS", ["noanonymous"]) and not meets("UNKNOWN-MECH", ["noanonymous"])
    assert meets("UNKNOWN-MECH", [])
