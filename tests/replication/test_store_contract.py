"""What every object store backend promises, checked on each of them (local directory, Redis)."""

from __future__ import annotations

import re

import pytest

from notebookos.replication.object_store import LocalDirectoryStore, ObjectMissingError, ObjectStoreError
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
