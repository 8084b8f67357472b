"""The user database: what ``smarthost users`` writes and what authd and auxprop read."""

import os
import stat

import pytest
import scramp

from smarthost.authd import passwords
from smarthost.authd.userdb import UserDB, UserDBError


@pytest.fixture
def db(tmp_path):
    database = UserDB(tmp_path / "sasldb")
    yield database
    database.close()


def test_the_file_is_created_mode_0600(db):
    old = os.umask(0)
    try:
        db.add("alice", "secret")
    finally:
        os.umask(old)
    assert stat.S_IMODE(db.path.stat().st_mode) == 0o600


def test_an_existing_wider_file_is_tightened(tmp_path):
    path = tmp_path / "sasldb"
    path.touch(mode=0o644)
    path.chmod(0o644)
    UserDB(path).add("alice", "secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_password_checks(db):
    db.add("alice", "secret")
    assert db.check_password("alice", "", "secret")
    assert not db.check_password("alice", "", "Secret")
    assert not db.check_password("bob", "", "secret")


def test_the_stored_hash_is_argon2id_not_the_password(db):
    db.add("alice", "secret")
    raw = db.path.read_bytes()
    assert b"secret" not in raw and b"$argon2id$" in raw


def test_realms_are_separate_and_user_at_realm_is_understood(db):
    db.add("alice", "one", realm="example.test")
    db.add("alice", "two")
    assert db.check_password("alice", "example.test", "one")
    assert db.check_password("alice@example.test", "", "one")
    assert not db.check_password("alice", "", "one")
    assert db.check_password("alice", "", "two")
    assert [u.login for u in db.list()] == ["alice", "alice@example.test"]


def test_set_password_and_delete(db):
    db.add("alice", "old")
    db.set_password("alice", "new")
    assert db.check_password("alice", "", "new") and not db.check_password("alice", "", "old")
    db.delete("alice")
    assert not db.check_password("alice", "", "new")
    assert db.scram_credentials("alice", "", "SCRAM-SHA-256") is None
    assert db.list() == []


@pytest.mark.parametrize("action", ["set_password", "delete"])
def test_unknown_users_are_errors_naming_user_and_file(db, action):
    db.add("alice", "x")
    args = ("bob", "pw") if action == "set_password" else ("bob",)
    with pytest.raises(UserDBError, match=f"user bob not found in {db.path}"):
        getattr(db, action)(*args)


def test_adding_twice_is_an_error_without_the_password(db):
    db.add("alice", "secret")
    with pytest.raises(UserDBError) as info:
        db.add("alice", "hunter2")
    assert "already exists" in str(info.value) and "hunter2" not in str(info.value)
    assert db.check_password("alice", "", "secret")


@pytest.mark.parametrize("name", ["", "a:b", "a\nb", "x" * 256])
def test_bad_names_are_refused(db, name):
    with pytest.raises(UserDBError):
        db.add(name, "pw")


def test_reading_a_missing_database_creates_nothing(tmp_path):
    db = UserDB(tmp_path / "none")
    assert not db.check_password("alice", "", "pw")
    assert db.list() == []
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scram_verifiers_let_a_real_scram_client_in(db, mechanism):
    db.add("alice", "secret")
    creds = db.scram_credentials("alice", "", mechanism)
    assert creds.iterations >= 4096 and len(creds.salt) >= 16
    assert b"secret" not in repr(creds).encode()

    def lookup(username):
        c = db.scram_credentials(username, "", mechanism)
        return c.salt, c.stored_key, c.server_key, c.iterations

    for password, succeeds in (("secret", True), ("wrong", False)):
        server = scramp.ScramMechanism(mechanism).make_server(lookup)
        client = scramp.ScramClient([mechanism], "alice", password)
        server.set_client_first(client.get_client_first())
        client.set_server_first(server.get_server_first())
        if succeeds:
            server.set_client_final(client.get_client_final())
            client.set_server_final(server.get_server_final())
        else:
            with pytest.raises(scramp.ScramException):
                server.set_client_final(client.get_client_final())


def test_an_unknown_user_costs_one_argon2_verification(db, monkeypatch):
    db.add("alice", "secret")
    seen = []
    real = passwords.verify
    monkeypatch.setattr(passwords, "verify", lambda stored, pw: seen.append(stored[:10]) or real(stored, pw))
    assert not db.check_password("alice", "", "wrong")
    assert not db.check_password("nobody", "", "wrong")
    assert seen == ["$argon2id$", "$argon2id$"]


def test_repr_names_the_file_only(db):
    assert repr(db) == f"UserDB({str(db.path)!r})"


def test_no_cram_md5_secret_unless_asked(db):
    db.add("alice", "secret")
    assert db.cram_secret("alice") is None
    assert "CRAM-MD5" not in db.list()[0].mechanisms


def test_cram_md5_secret_is_the_hmac_states_not_the_password(db):
    import hashlib
    import hmac

    db.add("alice", "tanstaaftanstaaf", cram=True)
    stored = db.cram_secret("alice")
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    assert stored.hexdigest(challenge) == hmac.new(b"tanstaaftanstaaf", challenge, hashlib.md5).hexdigest()
    assert b"tanstaaf" not in db.path.read_bytes()
    assert "CRAM-MD5" in db.list()[0].mechanisms


def test_passwd_without_cram_removes_the_old_cram_secret_and_del_removes_it(db):
    db.add("alice", "old", cram=True)
    db.set_password("alice", "new")
    assert db.cram_secret("alice") is None  # the old password must not keep working via CRAM-MD5
    db.set_password("alice", "newer", cram=True)
    assert db.cram_secret("alice") == db.cram_secret("alice@")  # realm "" either way
    db.delete("alice")
    assert db.cram_secret("alice") is None
