"""hash:/btree:/lmdb: tables: compiling, lookups, atomic rebuilds seen by running readers, staleness."""

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from smarthost.tables import TableError, open_table
from smarthost.tables.lmdbtable import LmdbTable, add_entries, compile_file, compiled_path


def write(path: Path, text: str | bytes, mode: int = 0o644) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    path.chmod(mode)
    return path


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def set_mtime(path: Path, seconds: int) -> None:
    os.utime(path, ns=(seconds * 10**9, seconds * 10**9))


@pytest.mark.parametrize("type_name", ["hash", "btree", "lmdb"])
def test_compiled_table_round_trip(tmp_path, type_name):
    src = write(
        tmp_path / "access",
        "# comment\nExample.COM\tREJECT Go Away\nuser@example.net OK\nlong.example 550 first\n  second\n",
    )
    assert compile_file(src) == []
    t = open_table(f"{type_name}:access", config_dir=tmp_path)
    assert t.name == f"{type_name}:access"
    assert t.lookup("example.com") == "REJECT Go Away"
    assert t.lookup("EXAMPLE.com") == "REJECT Go Away"
    assert t.lookup("User@Example.net") == "OK"
    assert t.lookup("long.example") == "550 first second"
    assert t.lookup("missing.example") is None
    assert t.lookup("") is None
    assert t.lookup("x" * 600) is None
    assert t.lookup("caf\udce9") is None  # a surrogate-escaped byte from the wire
    assert sorted(t.items()) == [
        ("example.com", "REJECT Go Away"),
        ("long.example", "550 first second"),
        ("user@example.net", "OK"),
    ]


def test_duplicates_warn_and_keep_the_first_or_replace(tmp_path):
    src = write(tmp_path / "t", "a first\nA second\n")
    assert compile_file(src) == [f'{src}:2: duplicate entry "a" ignored; the first one is used']
    assert open_table(f"hash:{src}").lookup("a") == "first"
    assert compile_file(src, replace=True) == []
    assert LmdbTable("hash:t", src).lookup("a") == "second"


def test_no_folding_keeps_the_case_of_keys(tmp_path):
    src = write(tmp_path / "t", "MixedCase value\n")
    compile_file(src, fold=False)
    assert LmdbTable("hash:t", src, fold=False).lookup("MixedCase") == "value"
    assert LmdbTable("hash:t", src, fold=False).lookup("mixedcase") is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a b\nkeyonly\n", ':2: expected "key whitespace value", found a key without a value'),
        ("a b\n" + "k" * 512 + " v\n", ":2: key longer than 511 bytes"),
        (b"a b\nc \xff\n", ":2: not UTF-8 text"),
    ],
)
def test_source_errors_name_file_and_line(tmp_path, content, message):
    src = write(tmp_path / "t", content)
    with pytest.raises(TableError) as e:
        compile_file(src)
    assert str(e.value).startswith(f"{src}{message}")
    assert not compiled_path(src).exists()


def test_error_does_not_echo_a_password(tmp_path):
    src = write(tmp_path / "sasl_passwd", "[relay.example]:587 user:secret\nuser:hunter2\n", 0o600)
    with pytest.raises(TableError) as e:
        compile_file(src)
    assert "hunter2" not in str(e.value)


def test_missing_compiled_file_says_run_postmap(tmp_path):
    src = write(tmp_path / "access", "a b\n")
    with pytest.raises(TableError) as e:
        open_table(f"hash:{src}")
    assert str(e.value) == f"hash:{src}: {src}.lmdb does not exist: run smarthost postmap {src}"


def test_garbage_compiled_file_is_refused(tmp_path):
    src = write(tmp_path / "access", "a b\n")
    write(tmp_path / "access.lmdb", b"not an lmdb file" * 300)
    with pytest.raises(TableError, match=r"access\.lmdb is not a table file .*: run smarthost postmap"):
        open_table(f"lmdb:{src}")


@pytest.mark.parametrize(("source_mode", "compiled_mode"), [(0o600, 0o600), (0o644, 0o644), (0o640, 0o640), (0o664, 0o644)])
def test_compiled_file_inherits_read_permissions(tmp_path, source_mode, compiled_mode):
    src = write(tmp_path / "sasl_passwd", "[relay.example]:587 user:secret\n", source_mode)
    compile_file(src)
    assert stat.S_IMODE(os.stat(compiled_path(src)).st_mode) == compiled_mode


def test_rebuild_replaces_the_file_and_keeps_no_temporary(tmp_path):
    src = write(tmp_path / "t", "a 1\n")
    compile_file(src)
    first = os.stat(compiled_path(src)).st_ino
    write(src, "a 2\n")
    compile_file(src)
    assert os.stat(compiled_path(src)).st_ino != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t", "t.lmdb"]


def test_running_reader_notices_a_rebuild_within_a_second(tmp_path):
    src = write(tmp_path / "t", "a old\n")
    compile_file(src)
    clock = FakeClock()
    t = LmdbTable("hash:t", src, clock=clock)
    write(src, "a new\nb added\n")
    compile_file(src)
    clock.now += 0.5
    assert t.lookup("a") == "old"
    clock.now += 0.5
    assert (t.lookup("a"), t.lookup("b")) == ("new", "added")


_REBUILDER = """
import sys
from pathlib import Path
from smarthost.tables.lmdbtable import compile_file
src, versions, keys = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for v in range(1, versions + 1):
    src.write_text("".join(f"key{i}@example.com v{v}\\n" for i in range(keys)))
    compile_file(src)
"""


def test_reader_during_rebuilds_sees_old_or_new_never_an_error(tmp_path):
    """postmap rebuilds in its own process while a daemon's table keeps answering."""
    keys = [f"key{i}@example.com" for i in range(300)]
    src = write(tmp_path / "t", "".join(f"{k} v0\n" for k in keys))
    compile_file(src)
    clock = FakeClock()
    table = LmdbTable("hash:t", src, clock=clock)
    versions = 40
    writer = subprocess.Popen([sys.executable, "-c", _REBUILDER, str(src), str(versions), str(len(keys))])
    seen = set()
    try:
        while writer.poll() is None:
            for k in keys[::37]:
                clock.now += 1  # every lookup re-checks the file
                value = table.lookup(k)
                assert value is not None and value[1:].isdigit(), value
                seen.add(value)
    finally:
        assert writer.wait(timeout=30) == 0
    clock.now += 1
    assert table.lookup(keys[0]) == f"v{versions}"
    assert len(seen) >= 2


def test_stale_when_the_source_is_newer(tmp_path, caplog):
    src = write(tmp_path / "t", "a 1\n")
    compile_file(src)
    set_mtime(compiled_path(src), 1_000_000_100)
    set_mtime(src, 1_000_000_000)
    clock = FakeClock()
    t = LmdbTable("hash:t", src, clock=clock)
    assert t.stale is False

    write(src, "a 2\n")
    set_mtime(src, 1_000_000_200)
    clock.now += 1
    with caplog.at_level(logging.WARNING):
        assert t.lookup("a") == "1"
    assert t.stale is True
    assert f"hash:t: {src} is newer than {src}.lmdb: run smarthost postmap {src}" in caplog.text

    compile_file(src)
    clock.now += 1
    assert t.lookup("a") == "2"
    assert t.stale is False


def test_stale_at_open_is_logged(tmp_path, caplog):
    src = write(tmp_path / "t", "a 1\n")
    compile_file(src)
    set_mtime(compiled_path(src), 1_000_000_000)
    with caplog.at_level(logging.WARNING):
        t = open_table(f"hash:{src}")
    assert t.stale is True
    assert "is newer than" in caplog.text


def test_removed_compiled_file_fails_lookups_until_rebuilt(tmp_path):
    src = write(tmp_path / "t", "a 1\n")
    compile_file(src)
    clock = FakeClock()
    t = LmdbTable("hash:t", src, clock=clock)
    compiled_path(src).unlink()
    clock.now += 1
    with pytest.raises(TableError, match=r"hash:t: cannot read .*t\.lmdb: No such file"):
        t.lookup("a")
    compile_file(src)
    clock.now += 1
    assert t.lookup("a") == "1"


def test_incremental_adds_to_the_compiled_file(tmp_path):
    src = write(tmp_path / "t", "a 1\nb 2\n", 0o600)
    compile_file(src)
    warnings = add_entries(src, "C 3\na again\n")
    assert warnings == ['-:2: duplicate entry "a" ignored; the first one is used']
    t = open_table(f"hash:{src}")
    assert (t.lookup("a"), t.lookup("b"), t.lookup("c")) == ("1", "2", "3")
    assert stat.S_IMODE(os.stat(compiled_path(src)).st_mode) == 0o600
    add_entries(src, "a replaced\n", replace=True)
    assert open_table(f"hash:{src}").lookup("a") == "replaced"


def test_incremental_creates_a_missing_table(tmp_path):
    add_entries(tmp_path / "new", "k v\n")
    assert open_table(f"lmdb:{tmp_path}/new").lookup("k") == "v"


def test_repr_and_name_hide_values(tmp_path):
    src = write(tmp_path / "sasl_passwd", "[relay.example]:587 user:hunter2\n", 0o600)
    compile_file(src)
    t = open_table(f"hash:{src}")
    assert "hunter2" not in repr(t) and "hunter2" not in t.name


def test_large_table_grows_the_map(tmp_path):
    src = write(tmp_path / "big", "".join(f"k{i} {'v' * 200}{i}\n" for i in range(20000)))
    compile_file(src)
    t = open_table(f"hash:{src}")
    assert t.lookup("k19999") == "v" * 200 + "19999"


def test_two_tables_on_one_file_share_it(tmp_path):
    src = write(tmp_path / "t", "a 1\n")
    compile_file(src)
    first, second = open_table(f"hash:{src}"), open_table(f"lmdb:{src}")
    assert first.lookup("a") == second.lookup("a") == "1"
    del first
    assert second.lookup("a") == "1"
