"""Server-side SASL mechanisms: RFC test vectors, hostile input, and the step protocol."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st
from scramp import ScramClient

from smarthost.sasl import (
    Challenge,
    CheckPassword,
    CramSecret,
    Failure,
    NeedScramCredentials,
    NeedSecret,
    SaslStateError,
    ScramCredentials,
    ServerContext,
    Success,
    scram_verifier,
    server_mechanism,
)

SECRET = b"installation secret"


def context(**overrides) -> ServerContext:
    values = dict(hostname="mx.example.com", nonce="3rfcNHYJY1ZVvWVs7j", server_secret=SECRET)
    values.update(overrides)
    return ServerContext(**values)


def credentials(password: str, mechanism: str, salt: bytes, iterations: int = 4096) -> ScramCredentials:
    stored, server = scram_verifier(password, mechanism, salt, iterations)
    return ScramCredentials(salt, iterations, stored, server)


# PLAIN (RFC 4616) ---------------------------------------------------------------


def test_plain_asks_the_daemon_and_succeeds():
    mech = server_mechanism("PLAIN", context())
    step = mech.start(b"\0alice\0s3cret")
    assert step == CheckPassword("alice", "s3cret", "")
    assert mech.password_result(True) == Success("alice", "alice")
    assert mech.done


def test_plain_wrong_password():
    mech = server_mechanism("PLAIN", context())
    mech.start(b"alice\0alice\0nope")
    assert mech.password_result(False) == Failure("authentication failure")


def test_plain_without_initial_response_sends_an_empty_challenge():
    mech = server_mechanism("plain", context())
    assert mech.start(None) == Challenge(b"")
    assert isinstance(mech.respond(b"\0alice\0pw"), CheckPassword)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"", "malformed PLAIN message"),
        (b"\0alice", "malformed PLAIN message"),
        (b"a\0b\0c\0d", "malformed PLAIN message"),
        (b"\0alice\0", "malformed PLAIN message"),
        (b"\0\0pw", "malformed PLAIN message"),
        (b"\0alice\0\xff", "malformed PLAIN message"),
        (b"\0al\xc3ice\0pw", "malformed PLAIN message"),
        (b"\0ali\nce\0pw", "malformed PLAIN message"),
        (b"bob\0alice\0pw", "authorization identity not allowed"),
    ],
)
def test_plain_refuses_bad_messages_without_a_password_check(message, reason):
    assert server_mechanism("PLAIN", context()).start(message) == Failure(reason)


def test_plain_proxying_when_allowed():
    mech = server_mechanism("PLAIN", context(allow_proxy=True))
    assert mech.start(b"bob\0alice\0pw") == CheckPassword("alice", "pw", "bob")
    assert mech.password_result(True) == Success("bob", "alice")


def test_plain_accepts_utf8_names_and_passwords():
    mech = server_mechanism("PLAIN", context())
    assert mech.start("\0jürgen\0pässwörd".encode()) == CheckPassword("jürgen", "pässwörd", "")


# LOGIN --------------------------------------------------------------------------


def test_login_steps():
    mech = server_mechanism("LOGIN", context())
    assert mech.start(None) == Challenge(b"Username:")
    assert mech.respond(b"alice") == Challenge(b"Password:")
    assert mech.respond(b"pw") == CheckPassword("alice", "pw", "")
    assert mech.password_result(True) == Success("alice", "alice")


@pytest.mark.parametrize("steps", [[b""], [b"\xff"], [b"a\x00b"], [b"alice", b""], [b"alice", b"\xff"]])
def test_login_refuses_bad_names_and_passwords(steps):
    mech = server_mechanism("LOGIN", context())
    step = mech.start(None)
    for data in steps:
        step = mech.respond(data)
    assert isinstance(step, Failure)


# EXTERNAL (RFC 4422 App. A) -----------------------------------------------------------


def test_external_uses_the_certificate_identity():
    assert server_mechanism("EXTERNAL", context(tls_peer_identity="alice")).start(b"") == Success("alice", "alice")
    assert server_mechanism("EXTERNAL", context(tls_peer_identity="alice")).start(b"alice") == Success("alice", "alice")
    mech = server_mechanism("EXTERNAL", context(tls_peer_identity="alice"))
    assert mech.start(None) == Challenge(b"")
    assert mech.respond(b"") == Success("alice", "alice")


def test_external_without_a_certificate_or_with_another_authzid_fails():
    assert server_mechanism("EXTERNAL", context()).start(b"") == Failure("no verified client certificate listed in relay_clientcerts")
    assert server_mechanism("EXTERNAL", context(tls_peer_identity="alice")).start(b"root") == Failure(
        "authorization identity not allowed"
    )


# CRAM-MD5 (RFC 2195) ------------------------------------------------------------------


def test_cram_md5_rfc_2195_example():
    mech = server_mechanism("CRAM-MD5", context(nonce="1896.697170952", hostname="postoffice.reston.mci.net"))
    step = mech.start(None)
    # RFC 2195 §2: the challenge, base64 encoded on the wire.
    assert base64.b64encode(step.data) == b"PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"
    assert mech.respond(b"tim b913a602c7eda7a495b4e6e7334d3890") == NeedSecret("tim")
    assert mech.secret("tanstaaftanstaaf") == Success("tim", "tim")


def test_cram_md5_with_the_stored_hmac_states_instead_of_the_password():
    # What the user database keeps: HMAC-MD5's inner/outer MD5 states (RFC 2104), as Dovecot does.
    stored = CramSecret.from_password("tanstaaftanstaaf")
    assert len(stored.inner) == len(stored.outer) == 16 and b"tanstaaf" not in stored.inner + stored.outer
    mech = server_mechanism("CRAM-MD5", context(nonce="1896.697170952", hostname="postoffice.reston.mci.net"))
    mech.start(None)
    mech.respond(b"tim b913a602c7eda7a495b4e6e7334d3890")
    assert mech.secret(stored) == Success("tim", "tim")


@pytest.mark.parametrize("password", ["", "tanstaaf", "x" * 64, "y" * 100, "pässwörd"])
@pytest.mark.parametrize("message", [b"", b"<1.2@h>", b"a" * 55, b"a" * 56, b"a" * 200])
def test_cram_secret_digest_is_hmac_md5(password, message):
    expected = hmac.new(password.encode(), message, hashlib.md5).hexdigest()
    assert CramSecret.from_password(password).hexdigest(message) == expected


@pytest.mark.parametrize("secret", ["wrong", None, CramSecret.from_password("wrong")])
def test_cram_md5_wrong_secret_and_unknown_user_look_the_same(secret):
    mech = server_mechanism("CRAM-MD5", context(nonce="1896.697170952", hostname="postoffice.reston.mci.net"))
    mech.start(None)
    mech.respond(b"tim b913a602c7eda7a495b4e6e7334d3890")
    assert mech.secret(secret) == Failure("authentication failure")


@pytest.mark.parametrize("response", [b"tim", b"tim xyz", b" b913a602c7eda7a495b4e6e7334d3890", b"t\xffm 00"])
def test_cram_md5_malformed_response(response):
    mech = server_mechanism("CRAM-MD5", context())
    mech.start(None)
    assert mech.respond(response) == Failure("malformed CRAM-MD5 response")


def test_cram_md5_refuses_an_initial_response_and_needs_a_nonce():
    assert isinstance(server_mechanism("CRAM-MD5", context()).start(b"tim"), Failure)
    with pytest.raises(ValueError):
        server_mechanism("CRAM-MD5", context(nonce=""))


# SCRAM (RFC 5802, RFC 7677) ------------------------------------------------------------


def test_scram_sha_256_rfc_7677_example():
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    mech = server_mechanism("SCRAM-SHA-256", context(nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"))
    assert mech.start(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO") == NeedScramCredentials("user", "SCRAM-SHA-256")
    assert mech.credentials(credentials("pencil", "SCRAM-SHA-256", salt)) == Challenge(
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    assert mech.respond(
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    ) == Challenge(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    assert mech.respond(b"") == Success("user", "user")


def test_scram_sha_1_rfc_5802_example():
    salt = base64.b64decode("QSXCR+Q6sek8bf92")
    mech = server_mechanism("SCRAM-SHA-1", context())
    mech.start(None)
    assert mech.respond(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL") == NeedScramCredentials("user", "SCRAM-SHA-1")
    assert mech.credentials(credentials("pencil", "SCRAM-SHA-1", salt)) == Challenge(
        b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
    )
    assert mech.respond(
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    ) == Challenge(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
    assert mech.respond(b"") == Success("user", "user")


def scramp_exchange(password: str, stored: ScramCredentials | None, mechanism="SCRAM-SHA-256", name="alice"):
    """Run scramp's client against our server; returns the last step."""
    client = ScramClient([mechanism], name, password, c_nonce="clientnonce")
    mech = server_mechanism(mechanism, context())
    step = mech.start(client.get_client_first().encode())
    assert step == NeedScramCredentials(name, mechanism)
    step = mech.credentials(stored)
    assert isinstance(step, Challenge)
    client.set_server_first(step.data.decode())
    step = mech.respond(client.get_client_final().encode())
    if isinstance(step, Challenge):
        client.set_server_final(step.data.decode())  # raises if our signature were wrong
        step = mech.respond(b"")
    return step


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scram_against_scramps_client(mechanism):
    stored = credentials("hunter2", mechanism, b"saltsaltsalt")
    assert scramp_exchange("hunter2", stored, mechanism) == Success("alice", "alice")
    assert scramp_exchange("hunter3", stored, mechanism) == Failure("authentication failure")


def test_scram_unknown_user_looks_like_a_real_one():
    first = {}
    for attempt in range(2):
        mech = server_mechanism("SCRAM-SHA-256", context(scram_iterations=8192))
        mech.start(b"n,,n=mallory,r=abc")
        first[attempt] = mech.credentials(None).data
    # Same salt every time for the same name, and the configured iteration count.
    assert first[0] == first[1] and first[0].endswith(b",i=8192")
    other = server_mechanism("SCRAM-SHA-256", context(scram_iterations=8192))
    other.start(b"n,,n=trudy,r=abc")
    assert other.credentials(None).data.split(b",")[1] != first[0].split(b",")[1]
    assert scramp_exchange("anything", None, name="mallory") == Failure("authentication failure")


def test_scram_username_escapes():
    mech = server_mechanism("SCRAM-SHA-256", context())
    assert mech.start(b"n,,n=a=2Cb=3Dc,r=abc") == NeedScramCredentials("a,b=c", "SCRAM-SHA-256")
    assert isinstance(server_mechanism("SCRAM-SHA-256", context()).start(b"n,,n=a=3=2CD,r=abc"), Failure)


@pytest.mark.parametrize(
    "first",
    [
        b"p=tls-unique,,n=alice,r=abc",  # channel binding: no -PLUS offered
        b"n,a=bob,n=alice,r=abc",  # authorization identity
        b"x,,n=alice,r=abc",
        b"n,,alice,r=abc",
        b"n,,n=alice",
        b"n,,n=al\xffice,r=abc",
        b"garbage",
    ],
)
def test_scram_refuses_bad_client_first_messages(first):
    assert isinstance(server_mechanism("SCRAM-SHA-256", context()).start(first), Failure)


def test_scram_y_flag_is_accepted():
    stored = credentials("pw", "SCRAM-SHA-256", b"saltsaltsalt")
    mech = server_mechanism("SCRAM-SHA-256", context())
    mech.start(b"y,,n=alice,r=abc")
    assert isinstance(mech.credentials(stored), Challenge)


def test_scram_mandatory_extension_in_the_client_first_message_fails():
    mech = server_mechanism("SCRAM-SHA-256", context())
    assert isinstance(mech.start(b"n,,m=ext,n=alice,r=abc"), Failure)


def test_scram_data_after_the_server_signature_fails():
    salt = base64.b64decode("QSXCR+Q6sek8bf92")
    mech = server_mechanism("SCRAM-SHA-1", context())
    mech.start(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")
    mech.credentials(credentials("pencil", "SCRAM-SHA-1", salt))
    mech.respond(b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=")
    assert isinstance(mech.respond(b"more"), Failure)


def test_scram_needs_a_nonce_and_a_server_secret():
    with pytest.raises(ValueError):
        server_mechanism("SCRAM-SHA-256", context(nonce="a,b"))
    with pytest.raises(ValueError):
        server_mechanism("SCRAM-SHA-256", context(server_secret=b""))


def test_scram_verifier_validates_without_echoing_the_password():
    with pytest.raises(ValueError) as exc:
        scram_verifier("hunter2", "SCRAM-SHA-256", b"short", 4096)
    assert "hunter2" not in str(exc.value)
    with pytest.raises(ValueError):
        scram_verifier("hunter2", "SCRAM-SHA-256", b"saltsaltsalt", 1000)
    with pytest.raises(ValueError):
        scram_verifier("hunter2", "PLAIN", b"saltsaltsalt", 4096)


# The step protocol and secrets ----------------------------------------------------------------


def test_calls_out_of_order_raise():
    mech = server_mechanism("PLAIN", context())
    with pytest.raises(SaslStateError):
        mech.respond(b"x")
    mech.start(b"\0alice\0pw")
    with pytest.raises(SaslStateError):
        mech.credentials(None)
    mech.password_result(False)
    with pytest.raises(SaslStateError):
        mech.password_result(True)  # an answer after the end cannot turn into a success


def test_unknown_mechanism():
    with pytest.raises(ValueError):
        server_mechanism("DIGEST-MD5", context())


def test_secrets_stay_out_of_reprs():
    assert "s3cret" not in repr(CheckPassword("alice", "s3cret"))
    stored = credentials("pw", "SCRAM-SHA-256", b"saltsaltsalt")
    assert stored.stored_key.hex() not in repr(stored) and repr(stored.stored_key) not in repr(stored)
    assert "installation secret" not in repr(context())


# Fuzzing: random client data never raises and never authenticates --------------------------------

MECHANISMS = ["PLAIN", "LOGIN", "SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "EXTERNAL"]


def drive(mech, step):
    """Answer requests as a real store would for alice (password 'right password')."""
    while True:
        if isinstance(step, CheckPassword):
            step = mech.password_result(step.authcid == "alice" and step.password == "right password")
        elif isinstance(step, NeedScramCredentials):
            found = credentials("right password", step.mechanism, b"saltsaltsalt") if step.username == "alice" else None
            step = mech.credentials(found)
        elif isinstance(step, NeedSecret):
            step = mech.secret("right password" if step.username == "alice" else None)
        else:
            return step


@hsettings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(MECHANISMS),
    initial=st.one_of(st.none(), st.binary(max_size=100)),
    responses=st.lists(
        st.one_of(
            st.binary(max_size=100),
            st.sampled_from([b"n,,n=alice,r=abc", b"\0alice\0", b"alice", b"c=biws,r=abc,p=AAAA", b""]),
        ),
        max_size=5,
    ),
)
def test_random_client_data_never_raises_or_succeeds(name, initial, responses):
    mech = server_mechanism(name, context())
    step = drive(mech, mech.start(initial))
    for data in responses:
        if not isinstance(step, Challenge):
            break
        step = drive(mech, mech.respond(data))
    assert not isinstance(step, Success)
