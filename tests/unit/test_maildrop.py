"""The maildrop: files written durably, picked up into a real queue store byte for byte,
and anything unusable moved to corrupt-maildrop (never lost, never followed through links)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from smarthost.queue import Envelope, QueueStore, Recipient
from smarthost.queue.maildrop import CORRUPT_DIR, MAGIC, MaildropError, ensure_maildrop, pickup, read, write

ENVELOPE = Envelope(
    sender="alice@example.org",
    recipients=(Recipient("bob@example.com"), Recipient("carol@example.net", "rfc822;Carol@example.net",
                                                         ("SUCCESS", "FAILURE"))),
    protocol="local",
    body_type="8BITMIME",
    envid="ENV1",
    ret="HDRS",
)
BODY = b"From: alice@example.org\r\nSubject: caf\xc3\xa9\r\n\r\nbody\r\n.\r\n\x00binary\xff\r\n"


@pytest.fixture
def queue_dir(tmp_path: Path) -> Path:
    return tmp_path / "queue"


@pytest.fixture
def store(queue_dir: Path):
    s = QueueStore(queue_dir, synchronous=False)
    yield s
    s.close()


def test_ensure_maildrop_makes_a_drop_box(queue_dir: Path):
    path = ensure_maildrop(queue_dir)
    assert path == queue_dir / "maildrop"
    assert stat.S_IMODE(path.stat().st_mode) == 0o1733
    assert stat.S_IMODE(queue_dir.stat().st_mode) == 0o711
    assert ensure_maildrop(queue_dir) == path  # idempotent


def test_write_then_read_round_trip(queue_dir: Path):
    drop = ensure_maildrop(queue_dir)
    name = write(drop, ENVELOPE, BODY)
    assert os.listdir(drop) == [name]  # no temporary file left
    path = drop / name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(MAGIC)
    envelope, body, uid = read(path)
    assert body == BODY
    assert envelope == ENVELOPE
    assert uid == os.getuid()


def test_pickup_queues_byte_for_byte_and_removes_the_files(queue_dir: Path, store: QueueStore):
    drop = ensure_maildrop(queue_dir)
    first = write(drop, ENVELOPE, BODY)
    second = write(drop, Envelope("", (Recipient("postmaster@example.com"),)), b"Subject: x\r\n\r\n")
    ids = pickup(store)
    assert len(ids) == 2
    assert os.listdir(drop) == []
    assert store.read_body(ids[0]) == BODY
    entry = store.get(ids[0])
    assert entry.envelope.sender == "alice@example.org"
    assert entry.envelope.recipients == ENVELOPE.recipients
    assert (entry.envelope.envid, entry.envelope.ret, entry.envelope.body_type) == ("ENV1", "HDRS", "8BITMIME")
    assert entry.envelope.protocol == "local"
    assert store.get(ids[1]).envelope.sender == ""
    assert first < second
    assert pickup(store) == []


def test_pickup_adds_a_received_header_with_the_uid(queue_dir: Path, store: QueueStore):
    drop = ensure_maildrop(queue_dir)
    write(drop, ENVELOPE, BODY)
    [queue_id] = pickup(store, received_by="mx.example.test")
    stored = store.read_body(queue_id)
    first, second, rest = stored.split(b"\r\n", 2)
    assert first == f"Received: by mx.example.test (smarthost, from userid {os.getuid()})".encode()
    assert second.startswith(f"\tid {queue_id}; ".encode())
    assert rest == BODY


def corrupt_files(queue_dir: Path) -> list[str]:
    return sorted(os.listdir(queue_dir / CORRUPT_DIR))


@pytest.mark.parametrize("content, reason", [
    (b"garbage\n", "not a version 1 maildrop file"),
    (MAGIC + b"{not json\n", "not JSON"),
    (MAGIC + b'{"sender":"a","recipients":[],"size":0}\n', "needs sender, recipients and size"),
    (MAGIC + b'{"sender":"a","recipients":[{"address":"b"}],"size":10}\nshort', "body has 5 bytes"),
    (MAGIC + b'{"sender":"a\\r\\nRCPT TO:<x>","recipients":[{"address":"b"}],"size":0}\n', "line break"),
])
def test_malformed_files_go_to_corrupt_maildrop(queue_dir, store, caplog, content, reason):
    drop = ensure_maildrop(queue_dir)
    (drop / "8DsiTFtZi04Ac00").write_bytes(content)
    good = write(drop, ENVELOPE, BODY)
    with caplog.at_level(logging.ERROR, logger="smarthost.queue.maildrop"):
        ids = pickup(store)
    assert len(ids) == 1 and store.read_body(ids[0]) == BODY  # the good one still goes through
    assert corrupt_files(queue_dir) == ["8DsiTFtZi04Ac00"]
    assert (queue_dir / CORRUPT_DIR / "8DsiTFtZi04Ac00").read_bytes() == content
    assert reason in caplog.text and "8DsiTFtZi04Ac00" in caplog.text
    assert good not in os.listdir(drop)


def test_links_are_not_followed(queue_dir, store, tmp_path):
    drop = ensure_maildrop(queue_dir)
    secret = tmp_path / "secret"
    secret.write_bytes(MAGIC + b'{"sender":"a","recipients":[{"address":"evil@x"}],"size":0}\n')
    os.symlink(secret, drop / "symlink")
    os.link(secret, drop / "hardlink")
    assert pickup(store) == []
    assert store.count() == 0
    assert corrupt_files(queue_dir) == ["hardlink", "symlink"]
    with pytest.raises(MaildropError, match="hard links"):
        read(queue_dir / CORRUPT_DIR / "hardlink")


def test_writes_in_progress_are_left_alone_until_stale(queue_dir, store):
    drop = ensure_maildrop(queue_dir)
    temp = drop / ".8DsiTFtZi04Ac00.tmp"
    temp.write_bytes(b"smarthost-maildrop 1\n{")
    assert pickup(store) == []
    assert temp.exists()
    assert pickup(store, clock=lambda: temp.stat().st_mtime + 2 * 86400) == []
    assert not temp.exists()
    assert corrupt_files(queue_dir) == ["8DsiTFtZi04Ac00.tmp"]


def test_too_large_files_are_refused(queue_dir, store):
    drop = ensure_maildrop(queue_dir)
    write(drop, ENVELOPE, b"x" * 2000)
    assert pickup(store, max_size=1000) == []
    assert len(corrupt_files(queue_dir)) == 1


def test_a_missing_maildrop_is_an_empty_one(store):
    assert pickup(store) == []
