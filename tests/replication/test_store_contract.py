"""What every object store backend promises, checked on each of them (local directory, Redis)."""

from __future__ import annotations

import os
import re

import pytest

from notebookos.replication.object_store import (
    LocalDirectoryStore,
    ObjectMissingError,
    ObjectStoreError,
    content_key,
)
from notebookos.replication.redis_store import RedisStore


@pytest.fixture(params=["local", "redis"])
def any_store(request, tmp_path):
    if request.param == "local":
        return LocalDirectoryStore(tmp_path / "objects")
    request.getfixturevalue("redis_client")  # a clean server for this test
    return RedisStore(request.getfixturevalue("redis_server").url)


def test_contains_and_delete(any_store):
    key = any_store.put(b"x")
    assert any_store.contains(key)
    any_store.delete(key)
    assert not any_store.contains(key)
    any_store.delete(key)  # deleting a missing key is not an error


def test_missing_object_raises_object_missing_error_naming_the_key(any_store):
    key = any_store.put(b"x")
    any_store.delete(key)
    with pytest.raises(ObjectMissingError, match=re.escape(key)) as raised:
        any_store.get(key)
    assert isinstance(raised.value, ObjectStoreError)


def test_put_parts_stores_the_concatenation_under_its_key(any_store):
    parts = [b"header", memoryview(bytearray(b"pickle")), memoryview(os.urandom(3 << 20))]
    whole = b"".join(parts)
    key = any_store.put_parts(parts)
    assert key == content_key(whole) == any_store.put(whole)
    assert any_store.get(key) == whole


def test_an_object_opened_reads_in_pieces_into_memory_the_caller_chooses(any_store):
    data = os.urandom(3 << 20)
    with any_store.open(any_store.put(data)) as reader:
        assert reader.size == len(data)
        head, rest = bytearray(10), bytearray(len(data) - 10)
        reader.readinto(memoryview(head))
        reader.readinto(memoryview(rest))
        reader.verify()
    assert head + rest == data


def test_opening_a_missing_object_raises_object_missing_error(any_store):
    key = any_store.put(b"x")
    any_store.delete(key)
    with pytest.raises(ObjectMissingError, match=re.escape(key)):
        any_store.open(key)


def test_reading_past_an_object_s_end_is_refused(any_store):
    with any_store.open(any_store.put(b"abc")) as reader, pytest.raises(ValueError, match="past the object"):
        reader.readinto(memoryview(bytearray(4)))
