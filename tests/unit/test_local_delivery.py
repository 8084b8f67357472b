"""Local delivery: system users' Maildirs (as the user), virtual mailboxes, aliases(5) and
virtual(5) rewriting, loops, unknown users, write errors, and the RCPT-time check.

Delivering to a system user needs root (a temporary user is created with useradd and removed
afterwards); those tests skip elsewhere. CI runs them as root.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from smarthost.outbound.aliases import AliasError, expand_aliases, expand_virtual_aliases
from smarthost.outbound.local import (
    LocalSettings,
    LocalTables,
    check_recipient,
    deliver_local,
    delivered_to,
    local_recipient_exists,
    open_local_tables,
    rewrite_virtual,
)
from smarthost.smtp.client import Status
from smarthost.tables import TableError, open_table

MESSAGE = b"From: alice@far.test\r\nSubject: hello\r\n\r\nline one\r\nline two\r\n"
LOCAL_DOMAINS = {"example.test", "mx.example.test"}


class DictTable:
    def __init__(self, data: dict[str, str], name: str = "dict:test") -> None:
        self.name = name
        self.data = {k.lower(): v for k, v in data.items()}

    def lookup(self, key: str) -> str | None:
        return self.data.get(key.lower())


class BrokenTable:
    name = "broken:test"

    def lookup(self, key: str) -> str | None:
        raise TableError("broken:test: cannot read /nowhere")


def is_local(domain: str) -> bool:
    return domain in LOCAL_DOMAINS


def settings(**kw) -> LocalSettings:
    base = dict(myhostname="mx.example.test", recipient_delimiter="+", home_mailbox="Maildir/",
                virtual_minimum_uid=0)
    base.update(kw)
    return LocalSettings(**base)


def new_files(maildir: Path) -> list[Path]:
    return sorted((maildir / "new").iterdir()) if (maildir / "new").is_dir() else []


# -- a temporary system user -------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="delivering as another user needs root (CI runs as root)")


def public_directory() -> Path:
    """A directory every user can traverse (pytest's own tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="smarthost-test-"))
    os.chmod(path, 0o755)
    return path


@pytest.fixture
def public_tmp():
    path = public_directory()
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def user():
    if os.geteuid() != 0:
        pytest.skip("creating a system user needs root")
    home_base = public_directory()
    name = "shlt" + uuid.uuid4().hex[:8]
    home = home_base / name
    subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/usr/sbin/nologin", name], check=True)
    try:
        home.mkdir(mode=0o700)
        import pwd

        pw = pwd.getpwnam(name)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        yield pw
    finally:
        subprocess.run(["userdel", name], check=False)
        shutil.rmtree(home_base)


def tables_for(**kw) -> LocalTables:
    return LocalTables(is_local_domain=is_local, **kw)


# -- system users --------------------------------------------------------------------------------


@needs_root
def test_delivers_into_the_users_maildir_as_the_user(user):
    result = deliver_local(MESSAGE, f"{user.pw_name}@example.test", sender="alice@far.test",
                           settings=settings(), tables=tables_for())
    assert result.outcome.status is Status.SENT, result.outcome
    assert result.outcome.text == "delivered to maildir"
    maildir = Path(user.pw_dir) / "Maildir"
    [path] = new_files(maildir)
    assert str(path) == result.maildirs[0]
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (user.pw_uid, user.pw_gid)
    assert stat.S_IMODE(st.st_mode) == 0o600
    for sub in ("tmp", "new", "cur"):
        sub_st = (maildir / sub).stat()
        assert stat.S_IMODE(sub_st.st_mode) == 0o700 and sub_st.st_uid == user.pw_uid
    assert list((maildir / "tmp").iterdir()) == []
    assert path.read_bytes() == (
        b"Return-Path: <alice@far.test>\n"
        + f"X-Original-To: {user.pw_name}@example.test\nDelivered-To: {user.pw_name}@example.test\n".encode()
        + MESSAGE.replace(b"\r\n", b"\n")
    )
    # maildir(5) unique name: seconds.M<usec>P<pid>Q<n>.host
    assert path.name.split(".", 1)[1].startswith("M") and f"P{os.getpid()}Q" in path.name
    assert path.name.endswith(".mx.example.test")


@needs_root
def test_two_deliveries_make_two_files_and_extensions_go_to_the_user(user):
    maildir = Path(user.pw_dir) / "Maildir"
    before = len(new_files(maildir))
    for rcpt in (f"{user.pw_name}+lists@example.test", f"{user.pw_name.upper()}@example.test"):
        result = deliver_local(MESSAGE, rcpt, sender="", settings=settings(), tables=tables_for())
        assert result.outcome.status is Status.SENT, result.outcome
    files = new_files(maildir)
    assert len(files) == before + 2
    newest = max(files, key=lambda p: p.stat().st_mtime_ns)
    assert newest.read_bytes().startswith(b"Return-Path: <>\n")


@needs_root
def test_a_symlink_in_the_maildir_cannot_make_root_write_elsewhere(user, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)  # root's directory
    maildir = Path(user.pw_dir) / "EvilMaildir"
    maildir.mkdir(mode=0o700)
    os.chown(maildir, user.pw_uid, user.pw_gid)
    os.symlink(victim, maildir / "tmp")
    result = deliver_local(MESSAGE, f"{user.pw_name}@example.test", sender="a@far.test",
                           settings=settings(home_mailbox="EvilMaildir/"), tables=tables_for())
    assert result.outcome.status is Status.DEFERRED
    assert result.outcome.enhanced == "4.2.0"
    assert "Permission denied" in result.outcome.text
    assert list(victim.iterdir()) == []


def test_unknown_user_bounces_5_1_1():
    result = deliver_local(MESSAGE, "nosuchuser-xyz@example.test", sender="a@far.test",
                           settings=settings(), tables=tables_for())
    assert result.outcome.status is Status.BOUNCED
    assert (result.outcome.enhanced, result.outcome.text) == ("5.1.1", 'unknown user: "nosuchuser-xyz"')


def test_empty_home_mailbox_defers_and_says_what_to_set():
    result = deliver_local(MESSAGE, "root@example.test", sender="a@far.test",
                           settings=settings(home_mailbox=""), tables=tables_for())
    assert result.outcome.status is Status.DEFERRED
    assert "set home_mailbox = Maildir/" in result.outcome.text


def test_mbox_file_and_mailbox_command_are_refused_with_a_deferral():
    for kw in ({"home_mailbox": "Mailbox"}, {"mailbox_command": "/usr/bin/procmail"}):
        result = deliver_local(MESSAGE, "root@example.test", sender="a@far.test",
                               settings=settings(**kw), tables=tables_for())
        assert result.outcome.status is Status.DEFERRED
        assert "only into Maildirs" in result.outcome.text


def test_loop_detected_by_delivered_to_bounces():
    looped = b"Delivered-To: Root@Example.test\r\n" + MESSAGE
    result = deliver_local(looped, "root@example.test", sender="a@far.test",
                           settings=settings(), tables=tables_for())
    assert result.outcome.status is Status.BOUNCED
    assert result.outcome.enhanced == "5.4.6"
    assert result.outcome.text == "mail forwarding loop for root@example.test"


def test_delivered_to_reads_only_the_header_section_and_unfolds():
    msg = b"Delivered-To:\r\n a@b.test\r\nSubject: x\r\n\r\nDelivered-To: c@d.test\r\n"
    assert delivered_to(msg) == {"a@b.test"}


def test_a_failing_table_defers():
    result = deliver_local(MESSAGE, "root@example.test", sender="a@far.test",
                           settings=settings(), tables=tables_for(alias_maps=(BrokenTable(),)))
    assert result.outcome.status is Status.DEFERRED
    assert result.outcome.enhanced == "4.3.0"
    assert "lookup table error" in result.outcome.text


def test_a_domain_that_is_not_local_defers_rather_than_bounces():
    result = deliver_local(MESSAGE, "x@far.test", sender="a@far.test", settings=settings(), tables=tables_for())
    assert result.outcome.status is Status.DEFERRED


# -- aliases(5) ---------------------------------------------------------------------------------


@needs_root
def test_alias_expands_to_a_local_user_and_a_remote_address(user, tmp_path):
    aliases = tmp_path / "aliases"
    aliases.write_text(f"# comment\ninfo: {user.pw_name}, Remote@Far.test\npostmaster: info\n")
    table = open_table(f"texthash:{aliases}")
    result = deliver_local(MESSAGE, "postmaster@example.test", sender="a@far.test",
                           settings=settings(), tables=tables_for(alias_maps=(table,)))
    assert result.outcome.status is Status.SENT, result.outcome
    assert result.outcome.text == "delivered to maildir; forwarded to Remote@Far.test"
    assert result.forward == ("Remote@Far.test",)
    assert result.forward_message == b"Delivered-To: postmaster@example.test\r\n" + MESSAGE
    written = Path(result.maildirs[0]).read_bytes()
    assert b"X-Original-To: postmaster@example.test\n" in written
    assert f"Delivered-To: {user.pw_name}@example.test\n".encode() in written


def test_alias_expansion_rules():
    table = DictTable({
        "root": "root, admin@far.test",  # self reference: root's own mailbox
        "a": "b", "b": "a, c@mx.example.test",  # a cycle ends at a mailbox
        "list": '"x@far.test", <y@far.test>, , z',
        "cmd": "|/usr/bin/vacation", "file": "/tmp/mbox", "inc": ":include:/etc/list",
    })
    targets = expand_aliases("ROOT", [table], is_local_domain=is_local)
    assert [(t.kind, t.address) for t in targets] == [("mailbox", "root"), ("forward", "admin@far.test")]
    targets = expand_aliases("a", [table], is_local_domain=is_local)
    assert [(t.kind, t.address) for t in targets] == [("mailbox", "a"), ("mailbox", "c")]
    targets = expand_aliases("list", [table], is_local_domain=is_local)
    assert [(t.kind, t.address) for t in targets] == [
        ("forward", "x@far.test"), ("forward", "y@far.test"), ("mailbox", "z")]
    for name, word in (("cmd", "command"), ("file", "file"), ("inc", ":include:")):
        with pytest.raises(AliasError) as err:
            expand_aliases(name, [table], is_local_domain=is_local)
        assert err.value.enhanced == "5.7.1" and word in err.value.text


def test_alias_to_a_command_bounces_with_a_clear_reason():
    result = deliver_local(MESSAGE, "bot@example.test", sender="a@far.test", settings=settings(),
                           tables=tables_for(alias_maps=(DictTable({"bot": "|/usr/bin/bot"}),)))
    assert result.outcome.status is Status.BOUNCED
    assert result.outcome.enhanced == "5.7.1"
    assert "delivery to a command" in result.outcome.text


def test_alias_to_an_unknown_user_bounces_but_still_forwards():
    result = deliver_local(MESSAGE, "team@example.test", sender="a@far.test", settings=settings(),
                           tables=tables_for(alias_maps=(DictTable({"team": "ghost-xyz, out@far.test"}),)))
    assert result.outcome.status is Status.BOUNCED
    assert result.outcome.text == 'unknown user: "ghost-xyz"'
    assert result.forward == ("out@far.test",)


# -- virtual mailboxes ------------------------------------------------------------------------


@pytest.fixture
def owner(request):
    """(uid, gid) the virtual mailboxes belong to: the temporary user as root, else ourselves."""
    if os.geteuid() == 0:
        pw = request.getfixturevalue("user")
        return pw.pw_uid, pw.pw_gid
    return os.getuid(), os.getgid()


def virtual_setup(tmp_path: Path, owner, maps: dict[str, str]):
    base = tmp_path / "vmail"
    base.mkdir()
    os.chmod(base, 0o755)
    domain_dir = base / "virt.test"
    domain_dir.mkdir()
    os.chown(domain_dir, *owner)
    tables = tables_for(
        is_virtual_mailbox_domain=lambda d: d == "virt.test",
        virtual_mailbox_maps=(DictTable(maps),),
        virtual_uid_maps=(open_table(f"static:{owner[0]}"),),
        virtual_gid_maps=(open_table(f"static:{owner[1]}"),),
    )
    return base, settings(virtual_mailbox_base=str(base)), tables


def test_virtual_mailbox_delivery(public_tmp, owner):
    tmp_path = public_tmp
    base, cfg, tables = virtual_setup(tmp_path, owner, {"alice@virt.test": "virt.test/alice/"})
    result = deliver_local(MESSAGE, "alice+tag@virt.test", sender="s@far.test", settings=cfg, tables=tables)
    assert result.outcome.status is Status.SENT, result.outcome
    [path] = new_files(base / "virt.test" / "alice")
    assert (path.stat().st_uid, path.stat().st_gid) == owner
    assert path.read_bytes().startswith(
        b"Return-Path: <s@far.test>\nX-Original-To: alice+tag@virt.test\nDelivered-To: alice+tag@virt.test\n")


def test_virtual_unknown_user_bounces_and_bad_paths_defer(public_tmp, owner):
    tmp_path = public_tmp
    _, cfg, tables = virtual_setup(tmp_path, owner, {"up@virt.test": "../escape/", "mbox@virt.test": "virt.test/mbox"})
    result = deliver_local(MESSAGE, "nobody@virt.test", sender="s@far.test", settings=cfg, tables=tables)
    assert (result.outcome.status, result.outcome.enhanced) == (Status.BOUNCED, "5.1.1")
    result = deliver_local(MESSAGE, "up@virt.test", sender="s@far.test", settings=cfg, tables=tables)
    assert result.outcome.status is Status.DEFERRED and "below virtual_mailbox_base" in result.outcome.text
    result = deliver_local(MESSAGE, "mbox@virt.test", sender="s@far.test", settings=cfg, tables=tables)
    assert result.outcome.status is Status.DEFERRED and "only into Maildirs" in result.outcome.text
    assert not (tmp_path / "escape").exists()


def test_virtual_uid_below_the_minimum_defers(public_tmp, owner):
    tmp_path = public_tmp
    _, cfg, tables = virtual_setup(tmp_path, owner, {"alice@virt.test": "virt.test/alice/"})
    cfg = settings(virtual_mailbox_base=cfg.virtual_mailbox_base, virtual_minimum_uid=owner[0] + 1)
    result = deliver_local(MESSAGE, "alice@virt.test", sender="s@far.test", settings=cfg, tables=tables)
    assert result.outcome.status is Status.DEFERRED
    assert "below virtual_minimum_uid" in result.outcome.text


def test_unwritable_maildir_defers(public_tmp, owner):
    tmp_path = public_tmp
    base, cfg, tables = virtual_setup(tmp_path, owner, {"alice@virt.test": "virt.test/alice/"})
    maildir = base / "virt.test" / "alice"
    for sub in ("", "tmp", "new", "cur"):
        (maildir / sub).mkdir(exist_ok=True)
        os.chown(maildir / sub, *owner)
    os.chmod(maildir / "new", 0o500)  # read-only for its owner
    result = deliver_local(MESSAGE, "alice@virt.test", sender="s@far.test", settings=cfg, tables=tables)
    assert result.outcome.status is Status.DEFERRED
    assert result.outcome.enhanced == "4.2.0"
    assert "maildir delivery failed" in result.outcome.text and "Permission denied" in result.outcome.text
    assert list((maildir / "tmp").iterdir()) == []  # the temporary file was removed


# -- virtual(5) -------------------------------------------------------------------------------


def test_virtual_alias_rewriting():
    table = DictTable({
        "sales@virt.test": "alice@virt.test, bob@remote.test",
        "alice@example.test": "al@far.test",
        "@old.test": "@new.test",
        "self@virt.test": "self@virt.test, copy@far.test",
        "short@virt.test": "carol",
    })

    def expand(address):
        return expand_virtual_aliases(address, [table], is_local_domain=is_local, myorigin="mx.example.test",
                                      recipient_delimiter="+")

    assert expand("sales@virt.test") == ["alice@virt.test", "bob@remote.test"]
    assert expand("alice+tag@example.test") == ["al+tag@far.test"]  # propagate_unmatched_extensions
    assert expand("joe@old.test") == ["joe@new.test"]
    assert expand("self@virt.test") == ["self@virt.test", "copy@far.test"]
    assert expand("short@virt.test") == ["carol@mx.example.test"]
    assert expand("other@virt.test") == ["other@virt.test"]
    # The manager's entry point: the same rules, settings and tables from LocalSettings/LocalTables.
    cfg = settings(myorigin="example.test")
    assert rewrite_virtual("short@virt.test", cfg, tables_for(virtual_alias_maps=(table,))) == ["carol@example.test"]
    assert rewrite_virtual("short@virt.test", cfg, tables_for()) == ["short@virt.test"]


def test_virtual_alias_loop_is_a_permanent_error():
    table = DictTable({"a@x.test": "b@x.test", "b@x.test": "a@x.test"})
    with pytest.raises(AliasError) as err:
        expand_virtual_aliases("a@x.test", [table], is_local_domain=is_local, myorigin="x.test")
    assert err.value.enhanced == "5.4.6"


# -- RCPT-time check --------------------------------------------------------------------------


def test_unknown_local_recipients_are_refused_with_550_5_1_1(tmp_path):
    aliases = tmp_path / "aliases"
    aliases.write_text("info: root\nsales  root\n")
    params = {"myhostname": "mx.example.test", "recipient_delimiter": "+", "alias_maps": [f"texthash:{aliases}"],
              "virtual_mailbox_domains": ["virt.test"], "virtual_mailbox_maps": ["inline:{ alice@virt.test=a/ }"],
              "virtual_alias_maps": ["inline:{ alias@virt.test=x@far.test }"]}
    cfg = LocalSettings.from_params(params)
    tables = open_local_tables(params, open_table, is_local_domain=is_local)
    reply = check_recipient("ghost-xyz@example.test", cfg, tables)
    assert reply.to_bytes() == (
        b"550 5.1.1 <ghost-xyz@example.test>: Recipient address rejected: User unknown in local recipient table\r\n")
    assert not local_recipient_exists("ghost-xyz@example.test", cfg, tables)
    for known in ("root@example.test", "root+x@example.test", "info@example.test", "sales@mx.example.test",
                  "Postmaster@example.test", "postmaster", "alice@virt.test", "alias@virt.test", "anyone@far.test"):
        assert local_recipient_exists(known, cfg, tables), known
    reply = check_recipient("bob@virt.test", cfg, tables)
    assert reply.code == 550 and reply.enhanced == "5.1.1"
    assert "User unknown in virtual mailbox table" in reply.text


def test_empty_local_recipient_maps_accepts_everyone():
    params = {"myhostname": "mx.example.test", "local_recipient_maps": "", "alias_maps": []}
    cfg = LocalSettings.from_params(params)
    tables = open_local_tables(params, open_table, is_local_domain=is_local)
    assert local_recipient_exists("ghost-xyz@example.test", cfg, tables)


def test_recipient_check_propagates_table_failures():
    with pytest.raises(TableError):
        check_recipient("x@example.test", settings(), tables_for(local_recipient_maps=(BrokenTable(),)))
