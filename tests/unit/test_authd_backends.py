"""Backends (shadow and passwd files, userdb) and the credential cache."""

import time
import warnings

import bcrypt
import pytest
from passlib import hash as lp

from smarthost.authd import passwords
from smarthost.authd.backends import BackendError, HashFileBackend, UserDBBackend, make_backend
from smarthost.authd.cache import CredentialCache
from smarthost.authd.userdb import UserDB

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt

TODAY = int(time.time() // 86400)


@pytest.fixture
def shadow(tmp_path):
    path = tmp_path / "shadow"
    yes = crypt.crypt("alicepw", "$y$j9T$abcdefghijklmnop$")
    sha = crypt.crypt("bobpw", crypt.mksalt(crypt.METHOD_SHA512))
    path.write_text(
        f"root:*:19000:0:99999:7:::\n"
        f"alice:{yes}:19000:0:99999:7:::\n"
        f"bob:{sha}:19000:0:99999:7:::\n"
        f"carol:!{sha}:19000:0:99999:7:::\n"
        f"dave:{sha}:19000:0:99999:7::{TODAY - 1}:\n"
        f"erin:{sha}:19000:0:99999:7::{TODAY + 30}:\n"
        f"nopw::19000:0:99999:7:::\n"
    )
    return HashFileBackend("shadow", path)


@pytest.mark.parametrize(
    "login, password, ok",
    [("alice", "alicepw", True), ("alice", "bobpw", False), ("bob", "bobpw", True),
     ("carol", "bobpw", False),  # locked with "!"
     ("dave", "bobpw", False),  # account expired yesterday
     ("erin", "bobpw", True),  # expires next month
     ("nopw", "", False), ("root", "", False), ("nobody", "bobpw", False)],
)
def test_shadow(shadow, login, password, ok):
    assert shadow.check(login, password, "smtp", "") is ok


def test_shadow_ignores_the_realm_unless_told_to_combine(tmp_path):
    path = tmp_path / "shadow"
    path.write_text(f"alice:{crypt.crypt('pw', crypt.mksalt(crypt.METHOD_SHA512))}:1::::::\n"
                    f"alice@example.test:{crypt.crypt('other', crypt.mksalt(crypt.METHOD_SHA512))}:1::::::\n")
    assert HashFileBackend("shadow", path).check("alice", "pw", "smtp", "example.test")
    combined = HashFileBackend("shadow", path, combine_realm=True)
    assert combined.check("alice", "other", "smtp", "example.test")
    assert not combined.check("alice", "pw", "smtp", "example.test")


def test_passwd_file_formats_comments_and_extra_fields(tmp_path):
    path = tmp_path / "users"
    path.write_text(
        "# users\n\n"
        f"argon:{passwords.hash_password('pw1')}\n"
        f"blow:{bcrypt.hashpw(b'pw2', bcrypt.gensalt(rounds=4)).decode()}\n"
        f"ssha:{lp.ldap_salted_sha1.hash('pw3')}:1000:1000::/home/ssha::\n"
        "plain:{PLAIN}pw4\n"
        "bare:pw5\n"
    )
    backend = make_backend("passwd", option=str(path))
    for login, pw in (("argon", "pw1"), ("blow", "pw2"), ("ssha", "pw3"), ("plain", "pw4")):
        assert backend.check(login, pw, "smtp", "")
        assert not backend.check(login, pw + "x", "smtp", "")
    assert not backend.check("bare", "pw5", "smtp", "")  # plaintext only with {PLAIN}


def test_the_file_is_reread_when_it_changes(tmp_path):
    path = tmp_path / "users"
    path.write_text("alice:{PLAIN}one\n")
    backend = make_backend("passwd", option=str(path))
    assert backend.check("alice", "one", "smtp", "")
    path.write_text("alice:{PLAIN}two\nbob:{PLAIN}three\n")
    assert backend.check("alice", "two", "smtp", "") and backend.check("bob", "three", "smtp", "")


def test_an_unreadable_file_is_a_backend_error_naming_it(tmp_path):
    backend = make_backend("passwd", option=str(tmp_path / "missing"))
    with pytest.raises(BackendError, match=f"cannot read {tmp_path / 'missing'}"):
        backend.check("alice", "pw", "smtp", "")


def test_unknown_user_and_wrong_password_do_the_same_work(shadow, monkeypatch):
    seen = []
    real = passwords.verify
    monkeypatch.setattr(passwords, "verify", lambda stored, pw: seen.append(stored.split("$")[1]) or real(stored, pw))
    assert not shadow.check("alice", "wrong", "smtp", "")
    assert not shadow.check("nobody", "wrong", "smtp", "")
    assert seen == ["y", "y"]  # the unknown user was checked against a real yescrypt hash from the file


def test_userdb_backend(tmp_path):
    UserDB(tmp_path / "db").add("alice", "pw", realm="example.test")
    backend = UserDBBackend(tmp_path / "db")
    assert backend.check("alice", "pw", "smtp", "example.test")
    assert backend.check("alice@example.test", "pw", "smtp", "")
    assert not backend.check("alice", "pw", "smtp", "")
    assert not backend.check("alice", "", "smtp", "example.test")


@pytest.mark.parametrize("name, option, message", [("passwd", None, "needs -O FILE"), ("ldap", None, "unknown backend")])
def test_make_backend_errors(name, option, message):
    with pytest.raises(BackendError, match=message):
        make_backend(name, option=option)


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


def test_cache_remembers_successes_for_the_ttl():
    clock = Clock()
    cache = CredentialCache(60, clock=clock)
    assert not cache.hit("alice", "pw", "smtp", "")
    cache.remember("alice", "pw", "smtp", "")
    assert cache.hit("alice", "pw", "smtp", "")
    assert not cache.hit("alice", "other", "smtp", "")
    assert not cache.hit("alice", "pw", "imap", "")
    assert not cache.hit("alicepw", "", "smtp", "")  # fields are length-prefixed: no run-together collisions
    clock.now += 61
    assert not cache.hit("alice", "pw", "smtp", "")
    assert len(cache) == 0


def test_cache_is_bounded_and_keeps_no_password():
    cache = CredentialCache(60, max_entries=3)
    for i in range(5):
        cache.remember(f"user{i}", "hunter2-secret", "smtp", "")
    assert len(cache) == 3
    assert not cache.hit("user0", "hunter2-secret", "smtp", "")
    assert cache.hit("user4", "hunter2-secret", "smtp", "")
    dump = repr(cache) + repr(vars(cache))
    assert "hunter2" not in dump and b"hunter2" not in b"".join(cache._expiry)
