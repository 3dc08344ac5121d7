"""The Redis object store against a real redis-server (started by conftest.py): the same contract as the local
directory store, Redis's own failure modes (OOM, unreachable server, value size limit), and state sync through it."""

import hashlib
import logging
import os
import re
import socket
import time

import pytest
import torch

from notebookos.replication.namespace import NamespaceTracker, StateDelta
from notebookos.replication.object_store import (
    ObjectCorruptError,
    ObjectMissingError,
    ObjectStoreError,
    StoreFullError,
    open_store,
)
from notebookos.replication.redis_store import DEFAULT_PREFIX, RedisStore


@pytest.fixture
def store(redis_server, redis_client):
    store = RedisStore(redis_server.url)
    yield store
    store.close()


def keys(client, pattern="*"):
    return sorted(key.decode() for key in client.keys(pattern))


def test_put_then_get_returns_the_same_bytes_under_the_default_prefix(store, redis_client):
    data = os.urandom(100_000)
    key = store.put(data)
    assert key == "sha256:" + hashlib.sha256(data).hexdigest()
    assert store.get(key) == data
    assert keys(redis_client) == [DEFAULT_PREFIX + key] == [store.redis_key(key)]
    assert redis_client.get(DEFAULT_PREFIX + key) == data


def test_put_accepts_memoryviews_and_empty_objects(store):
    assert store.get(store.put(memoryview(b"abc" * 1000))) == b"abc" * 1000
    assert store.get(store.put(b"")) == b""


def test_put_is_idempotent(store, redis_client):
    small, large = b"same bytes", os.urandom(2 << 20)  # large ones take the exists-first path
    for data in (small, large):
        first = store.put(data)
        assert store.put(data) == first
        assert store.get(first) == data
    assert len(keys(redis_client)) == 2


def test_missing_object_message_names_the_server(store):
    key = store.put(b"x")
    store.delete(key)
    with pytest.raises(ObjectMissingError) as raised:
        store.get(key)
    assert store.url in str(raised.value)


def test_corrupt_value_raises_object_corrupt_error_naming_the_key(store, redis_client):
    key = store.put(b"original contents")
    redis_client.set(store.redis_key(key), b"tampered contents")
    with pytest.raises(ObjectCorruptError) as raised:
        store.get(key)
    message = str(raised.value)
    assert key in message and store.redis_key(key) in message and "delete it" in message
    assert "sha256:" + hashlib.sha256(b"tampered contents").hexdigest() in message


def test_a_key_holding_another_redis_type_is_corrupt(store, redis_client):
    key = store.put(b"original contents")
    redis_client.delete(store.redis_key(key))
    redis_client.rpush(store.redis_key(key), b"original contents")
    with pytest.raises(ObjectCorruptError, match="Redis list"):
        store.get(key)


@pytest.mark.parametrize("key", ["sha256:../../etc/passwd", "md5:abc", "sha256:" + "G" * 64, "", "sha256:ab"])
def test_malformed_keys_are_rejected(store, key):
    with pytest.raises(ValueError, match="sha256:"):
        store.get(key)


def test_prefix_is_configurable_by_argument_and_by_url(redis_server, redis_client):
    by_argument = RedisStore(redis_server.url, prefix="team-a:")
    by_url = open_store(redis_server.url + "?prefix=team-b%3A")
    key = by_argument.put(b"shared")
    assert by_url.put(b"shared") == key
    assert keys(redis_client) == ["team-a:" + key, "team-b:" + key]
    by_argument.delete(key)
    assert by_url.get(key) == b"shared"


def test_open_store_returns_a_redis_store_for_redis_urls(redis_server, redis_client):
    store = open_store(redis_server.url)
    assert isinstance(store, RedisStore) and store.prefix == DEFAULT_PREFIX
    assert store.get(store.put(b"via open_store")) == b"via open_store"
    assert isinstance(open_store("redis://127.0.0.1:6379/0"), RedisStore)  # connects lazily


def test_messages_leave_the_password_out():
    store = RedisStore("redis://user:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in repr(store) and store.url == "redis://user@127.0.0.1:1/0"
    with pytest.raises(ObjectStoreError) as raised:
        store.contains("sha256:" + "0" * 64)
    assert "s3cret" not in str(raised.value)


def test_full_server_raises_store_full_error_and_stores_nothing(store, redis_client):
    kept = store.put(b"an object written before the server filled up")
    redis_client.config_set("maxmemory-policy", "noeviction")
    redis_client.config_set("maxmemory", "1mb")
    data = os.urandom(2 << 20)
    with pytest.raises(StoreFullError) as raised:
        store.put(data)
    message = str(raised.value)
    assert store.url in message and "full" in message and "nothing was stored" in message
    assert "maxmemory" in message and "free space" in message
    assert keys(redis_client) == [store.redis_key(kept)]
    redis_client.config_set("maxmemory", "0")
    assert store.get(store.put(data)) == data  # room again: the same put now succeeds


def test_full_server_midway_through_a_chunked_put_leaves_no_chunks_behind(redis_server, redis_client):
    store = RedisStore(redis_server.url, chunk_size=256 << 10)
    kept = store.put(b"an object written before the server filled up")  # also opens the connection
    redis_client.config_set("maxmemory-policy", "noeviction")
    redis_client.config_set("maxmemory", str(redis_client.info("memory")["used_memory"] + (1500 << 10)))
    redis_client.config_resetstat()
    with pytest.raises(StoreFullError, match="nothing was stored"):
        store.put(os.urandom(4 << 20))  # 16 chunks: the first few fit, then the server is full
    hset = redis_client.info("commandstats")["cmdstat_hset"]
    assert hset["calls"] >= 2 and hset["rejected_calls"] == 1
    assert keys(redis_client) == [store.redis_key(kept)]


def test_a_server_that_may_evict_objects_is_reported(store, redis_client, caplog):
    redis_client.config_set("maxmemory-policy", "allkeys-lru")
    with caplog.at_level(logging.WARNING, logger="notebookos.replication.redis_store"):
        store.put(b"x")
    assert "allkeys-lru" in caplog.text and "noeviction" in caplog.text


def test_unreachable_server_raises_object_store_error_naming_the_url():
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = open_store(f"redis://127.0.0.1:{port}/0")
    started = time.monotonic()
    for call in (lambda: store.put(b"payload"), lambda: store.get("sha256:" + "0" * 64)):
        with pytest.raises(ObjectStoreError) as raised:
            call()
        assert type(raised.value) is ObjectStoreError
        message = str(raised.value)
        assert f"redis://127.0.0.1:{port}/0" in message and "refused" in message and "running" in message
    assert time.monotonic() - started < 10  # a few short retries, not redis-py's default schedule


def test_large_objects_are_chunked_and_read_back_whole(redis_server, redis_client):
    store = RedisStore(redis_server.url, chunk_size=1 << 20)
    data = os.urandom((3 << 20) + 123)
    key = store.put(data)
    assert keys(redis_client) == [store.redis_key(key)]  # one key (a hash of chunks), no staging left
    assert redis_client.type(store.redis_key(key)) == b"hash" and redis_client.hlen(store.redis_key(key)) == 4
    assert redis_client.ttl(store.redis_key(key)) == -1  # the staging TTL was dropped
    assert store.get(key) == data
    assert store.put(data) == key and store.contains(key)
    redis_client.hset(store.redis_key(key), "2", b"damaged")
    with pytest.raises(ObjectCorruptError, match=re.escape(key)):
        store.get(key)
    store.delete(key)
    with pytest.raises(ObjectMissingError):
        store.get(key)


def test_values_over_the_servers_bulk_limit_are_chunked_automatically(redis_server, redis_client):
    redis_client.config_set("proto-max-bulk-len", "1mb")
    store = RedisStore(redis_server.url)
    data = os.urandom(3 << 20)
    key = store.put(data)
    assert store.chunk_size == 1 << 20 and redis_client.type(store.redis_key(key)) == b"hash"
    assert store.get(key) == data


def test_a_100_mb_object_round_trips(store, redis_client):
    data = os.urandom(1 << 20) * 100  # 100 MiB (hashing does not care that it repeats)
    started = time.perf_counter()
    key = store.put(data)
    put_s = time.perf_counter() - started
    started = time.perf_counter()
    assert store.get(key) == data
    get_s = time.perf_counter() - started
    assert redis_client.type(store.redis_key(key)) == b"string"  # under the default chunk size: one SET
    print(f"\n100 MiB through Redis: put {put_s:.3f} s, get {get_s:.3f} s")


def test_namespace_tracker_syncs_a_tensor_through_redis(store, redis_client):
    executor_ns, standby_ns = {"__name__": "__main__"}, {"__name__": "__main__"}
    executor, standby = NamespaceTracker(store), NamespaceTracker(store)
    executor.snapshot(executor_ns)
    exec("import torch\nweights = torch.arange(12.0).reshape(3, 4)\nrow = weights[1]\nstep = 7", executor_ns)
    delta = executor.capture(executor_ns, execution_count=1, extra={"note": "cell 1"})
    assert delta.pointer is not None and delta.inline is None  # tensors always go to the store
    assert keys(redis_client) == [store.redis_key(delta.pointer.key)]
    extra = standby.apply(StateDelta.from_bytes(delta.to_bytes()), standby_ns)
    assert extra == {"note": "cell 1"} and standby_ns["step"] == 7
    assert torch.equal(standby_ns["weights"], executor_ns["weights"])
    assert standby_ns["row"].untyped_storage().data_ptr() == standby_ns["weights"].untyped_storage().data_ptr()
