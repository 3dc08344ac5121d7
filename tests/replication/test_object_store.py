"""The local object store: content addressing, verification, atomic writes, and how stores are named."""

import array
import errno
import hashlib
import os
import re

import pytest

from notebookos.replication.object_store import (
    LocalDirectoryStore,
    ObjectCorruptError,
    ObjectStoreError,
    StoreFullError,
    open_store,
)


@pytest.fixture
def store(tmp_path):
    return LocalDirectoryStore(tmp_path / "store")


def stored_files(root):
    """Every file under the store, hidden temporaries included."""
    return sorted(path.relative_to(root) for path in root.rglob("*") if path.is_file())


def test_put_then_get_returns_the_same_bytes(store):
    data = os.urandom(100_000)
    assert store.get(store.put(data)) == data


def test_put_accepts_memoryviews_of_any_item_size(store):
    numbers = array.array("d", [1.5, 2.5, 3.5])
    key = store.put(memoryview(numbers))
    assert store.get(key) == numbers.tobytes()


def test_empty_object_round_trips(store):
    assert store.get(store.put(b"")) == b""


def test_key_is_sha256_of_the_bytes_and_names_the_file_under_a_fan_out_directory(store):
    data = b"weights"
    digest = hashlib.sha256(data).hexdigest()
    key = store.put(data)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", key)
    assert key == f"sha256:{digest}"
    assert stored_files(store.root) == [store.root.joinpath(digest[:2], digest).relative_to(store.root)]


def test_put_is_idempotent(store):
    first = store.put(b"same bytes")
    second = store.put(b"same bytes")
    assert first == second
    assert len(stored_files(store.root)) == 1
    assert store.get(first) == b"same bytes"


def test_put_rewrites_an_object_found_truncated(store):
    key = store.put(b"0123456789")
    (path,) = [p for p in store.root.rglob("*") if p.is_file()]
    path.write_bytes(b"01234")
    assert store.put(b"0123456789") == key
    assert store.get(key) == b"0123456789"


def test_corrupt_object_raises_object_corrupt_error_saying_what_to_do(store):
    key = store.put(b"original contents")
    (path,) = [p for p in store.root.rglob("*") if p.is_file()]
    path.write_bytes(b"tampered contents")
    with pytest.raises(ObjectCorruptError) as raised:
        store.get(key)
    message = str(raised.value)
    assert key in message and str(path) in message and "delete it" in message


@pytest.mark.parametrize("key", ["sha256:../../etc/passwd", "md5:abc", "sha256:" + "G" * 64, "", "sha256:ab"])
def test_malformed_keys_are_rejected_before_touching_the_file_system(store, key):
    with pytest.raises(ValueError, match="sha256:"):
        store.get(key)


@pytest.mark.parametrize("failing_call", ["write", "fsync", "replace"])
@pytest.mark.parametrize("error_number", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_raises_store_full_error_and_leaves_nothing_behind(store, monkeypatch, failing_call, error_number):
    store.put(b"an object written before the disk filled up")
    before = stored_files(store.root)

    def disk_full(*args, **kwargs):
        raise OSError(error_number, os.strerror(error_number))

    with monkeypatch.context() as patch:
        patch.setattr(os, failing_call, disk_full)
        with pytest.raises(StoreFullError) as raised:
            store.put(b"x" * 1_000_000)
    message = str(raised.value)
    assert "full" in message and "nothing was stored" in message and "Free space" in message
    assert stored_files(store.root) == before
    assert not store.contains(f"sha256:{hashlib.sha256(b'x' * 1_000_000).hexdigest()}")


def test_other_write_failures_raise_object_store_error_and_leave_nothing_behind(store, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", denied)
        with pytest.raises(ObjectStoreError, match="Permission denied.*writable"):
            store.put(b"payload")
    assert stored_files(store.root) == []


def test_a_store_root_that_cannot_be_created_raises_object_store_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ObjectStoreError, match="cannot create the object store directory"):
        LocalDirectoryStore(blocker / "store")


def test_open_store_accepts_file_urls_and_plain_paths(tmp_path):
    by_url = open_store(f"file://{tmp_path}/by%20url")
    assert isinstance(by_url, LocalDirectoryStore) and by_url.root == tmp_path / "by url"
    by_path = open_store(str(tmp_path / "by-path"))
    assert isinstance(by_path, LocalDirectoryStore) and by_path.root == tmp_path / "by-path"
    key = by_url.put(b"shared")
    assert open_store(f"file://localhost{tmp_path}/by%20url").get(key) == b"shared"


@pytest.mark.parametrize("location", ["s3://bucket/prefix", "http://host/x"])
def test_open_store_rejects_unsupported_schemes_naming_the_supported_ones(location):
    with pytest.raises(ValueError, match=r"unsupported.*'file:///absolute/path' and plain directory paths"):
        open_store(location)


@pytest.mark.parametrize("location", ["file://otherhost/data", "file://relative/path"])
def test_open_store_rejects_file_urls_that_name_another_host(location):
    with pytest.raises(ValueError, match="file:///absolute/path"):
        open_store(location)


def test_open_store_rejects_an_empty_location():
    with pytest.raises(ValueError, match="empty"):
        open_store("")


def test_an_object_read_in_pieces_is_verified_when_read_to_the_end(store):
    key = store.put(b"original contents")
    (path,) = [p for p in store.root.rglob("*") if p.is_file()]
    path.write_bytes(b"tampered contents")
    with store.open(key) as reader:
        start = bytearray(8)
        reader.readinto(memoryview(start))  # the caller may not trust it yet
        with pytest.raises(ObjectCorruptError, match="hash to") as raised:
            reader.verify()  # reads the rest, then compares
    assert str(path) in str(raised.value)


def test_an_object_that_shrinks_while_read_is_reported_corrupt(store):
    key = store.put(b"0123456789")
    (path,) = [p for p in store.root.rglob("*") if p.is_file()]
    with store.open(key) as reader:
        path.write_bytes(b"01234")  # truncated in place after the reader learned its size
        with pytest.raises(ObjectCorruptError, match="ended while it was read"):
            reader.readinto(memoryview(bytearray(10)))


def test_put_parts_writes_large_parts_without_joining_them(store, monkeypatch):
    joined = []
    monkeypatch.setattr(store, "put", lambda data: joined.append(data))  # the default put_parts would call it
    parts = [b"head", memoryview(os.urandom(5 << 20)), b"tail"]
    key = store.put_parts(parts)
    assert not joined
    assert store.get(key) == b"".join(parts)
