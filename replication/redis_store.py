"""The object store on a Redis server: `redis://host:port/db`, for replicas on hosts that share no file system.

Layout. An object lives under one Redis key, `<prefix>sha256:<hex>` (prefix default 'notebookos:obj:', set with
`?prefix=` in the URL or the `prefix` argument, so that several clusters can share one database):

- up to `chunk_size` bytes (default 256 MiB): a Redis string holding the bytes, written with `SET ... NX`, so
  writing the same payload twice stores it once;
- larger: a Redis hash of chunks (fields '0', '1', ...). Redis refuses any single value above its
  `proto-max-bulk-len` (512 MB by default, as low as 1 MB where configured), so a checkpoint of several GB must be
  split. The chunks are written to a staging key (with a TTL, so that a writer that dies midway leaves nothing
  for long), then one MULTI/EXEC renames it into place (RENAMENX) and drops the TTL: a reader sees no object or
  the whole object, never part of one. The chunk size is lowered to the server's `proto-max-bulk-len` when
  `CONFIG GET` is allowed to read it.

Redis and the store. The server owns durability: a key goes into the Raft log right after `put`, so run it with
`appendonly yes` (and `appendfsync always` to survive a power cut, not only a crash of Redis) where objects must
outlive a restart. It must also never evict: any `maxmemory-policy` but `noeviction` drops objects the log still
points at, and the store logs a warning when it finds one. With `noeviction`, a full server answers OOM and `put`
raises StoreFullError, having stored nothing.

Errors follow object_store/base.py: ObjectMissingError, ObjectCorruptError (naming the key, and the Redis key to
delete), StoreFullError when the server is at its memory limit, and ObjectStoreError naming the URL (its password
left out) when the server cannot be reached or refuses a command. The client connects lazily, on the first call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis import exceptions as redis_errors
from redis.backoff import EqualJitterBackoff
from redis.retry import Retry

from .object_store.base import (
    ObjectCorruptError,
    ObjectMissingError,
    ObjectStore,
    ObjectStoreError,
    StoreFullError,
    content_key,
    key_digest,
)

__all__ = ["DEFAULT_CHUNK_SIZE", "DEFAULT_PREFIX", "RedisStore"]

_log = logging.getLogger(__name__)

DEFAULT_PREFIX = "notebookos:obj:"
DEFAULT_CHUNK_SIZE = 256 << 20  # half of Redis's default proto-max-bulk-len: one SET up to here, chunks above
_REDIS_MAX_BULK = 512 << 20  # Redis's default (and usual) proto-max-bulk-len
_EXISTS_CHECK_SIZE = 1 << 20  # from this size on, ask whether the object is there before sending it again
_STAGING_TTL_S = 3600  # a staging hash whose writer died goes away after this long (refreshed by every chunk)
_CONNECT_TIMEOUT_S = 5.0


class RedisStore(ObjectStore):
    """Content-addressed blobs in a Redis database; see the module docstring for the layout and guarantees.

    `url` is any URL redis-py takes (`redis://[user:password@]host:port/db`, `rediss://` for TLS, query options
    such as `socket_timeout`), plus `prefix`. Thread-safe: calls share a connection pool.
    """

    def __init__(self, url: str, *, prefix: str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        url, url_prefix = _split_prefix(url)
        self.url = _display_url(url)
        self.prefix = prefix if prefix is not None else url_prefix if url_prefix is not None else DEFAULT_PREFIX
        if not 1 <= chunk_size <= _REDIS_MAX_BULK:
            raise ValueError(f"chunk_size must be between 1 byte and {_REDIS_MAX_BULK} bytes, not {chunk_size}")
        self.chunk_size = chunk_size
        try:
            self._client = redis.Redis.from_url(
                url,
                socket_connect_timeout=_CONNECT_TIMEOUT_S,
                socket_keepalive=True,
                retry=Retry(EqualJitterBackoff(cap=0.5, base=0.05), 3),  # ride out a blip, then say so
            )
        except ValueError as error:
            raise ValueError(f"{self.url!r} is not a usable Redis URL: {error}") from error
        self._server_checked = False
        self._server_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, prefix={self.prefix!r})"

    def redis_key(self, key: str) -> str:
        """The Redis key the object under `key` is stored at (checks the key's shape)."""
        key_digest(key)
        return self.prefix + key

    def put(self, data: bytes | memoryview) -> str:
        view = memoryview(data).cast("B")
        key = content_key(view)
        name = self.redis_key(key)
        with self._errors("store", key, view.nbytes):
            chunk_size = self._check_server()
            if view.nbytes >= _EXISTS_CHECK_SIZE and self._client.exists(name):
                return key  # same key, same bytes: do not send them again
            if view.nbytes <= chunk_size:
                self._client.set(name, view, nx=True)
            else:
                self._put_chunked(key, name, view, chunk_size)
        return key

    def get(self, key: str) -> bytes:
        name = self.redis_key(key)
        with self._errors("read", key):
            try:
                data = _raw(self._client.get(name))
            except redis_errors.ResponseError as error:
                if not str(error).startswith("WRONGTYPE"):
                    raise
                data = self._get_chunked(key, name)
        if data is None:
            raise self._missing(key)
        actual = content_key(data)
        if actual != key:
            raise self._corrupt(key, f"its bytes hash to {actual}")
        return data

    def contains(self, key: str) -> bool:
        name = self.redis_key(key)
        with self._errors("look up", key):
            return bool(self._client.exists(name))

    def delete(self, key: str) -> None:
        name = self.redis_key(key)
        with self._errors("delete", key):
            self._client.unlink(name)

    def close(self) -> None:
        """Close the connections to the server; a later call opens new ones."""
        self._client.close()

    def _put_chunked(self, key: str, name: str, view: memoryview, chunk_size: int) -> None:
        """Write the chunks to a staging hash, then move it into place in one step."""
        staging = f"{self.prefix}staging:{key}:{os.urandom(8).hex()}"
        try:
            for index, start in enumerate(range(0, view.nbytes, chunk_size)):
                pipe = self._client.pipeline(transaction=False)
                pipe.hset(staging, str(index), view[start : start + chunk_size])  # HSET: safe to retry
                pipe.expire(staging, _STAGING_TTL_S)
                pipe.execute()
            pipe = self._client.pipeline(transaction=True)
            pipe.renamenx(staging, name)  # 0 when another writer got there first: its object is this object
            pipe.persist(name)
            pipe.unlink(staging)
            try:
                pipe.execute()
            except redis_errors.ResponseError:
                if not self._client.exists(name):  # e.g. a retried EXEC whose first run did move the staging key
                    raise
        finally:
            with contextlib.suppress(redis_errors.RedisError):
                self._client.unlink(staging)

    def _get_chunked(self, key: str, name: str) -> bytes | None:
        kind = self._client.type(name)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "none":
            return None  # deleted since the GET
        if kind != "hash":
            raise self._corrupt(key, f"it holds a Redis {kind}, not an object")
        chunks = []
        for index in range(self._client.hlen(name)):
            chunk = _raw(self._client.hget(name, str(index)))
            if chunk is None:
                if not self._client.exists(name):
                    return None
                raise self._corrupt(key, f"its chunk {index} is missing")
            chunks.append(chunk)
        return b"".join(chunks)

    def _check_server(self) -> int:
        """Once per store: warn if the server may evict objects, and learn the largest value it accepts.

        Returns the chunk size to use. Servers that forbid CONFIG or INFO (managed Redis) are taken at their
        defaults.
        """
        if self._server_checked:
            return self.chunk_size
        with self._server_lock:
            if self._server_checked:
                return self.chunk_size
            with contextlib.suppress(redis_errors.ResponseError):
                limit = self._client.config_get("proto-max-bulk-len").get("proto-max-bulk-len")
                self.chunk_size = min(self.chunk_size, _REDIS_MAX_BULK if limit is None else int(limit))
            with contextlib.suppress(redis_errors.ResponseError):
                policy = self._client.info("memory").get("maxmemory_policy", "noeviction")
                if policy != "noeviction":
                    _log.warning(
                        "the Redis server at %s has maxmemory-policy %s: when it fills up it will evict objects "
                        "that replicas still need. Set maxmemory-policy to noeviction on that server.",
                        self.url,
                        policy,
                    )
            self._server_checked = True
        return self.chunk_size

    @contextlib.contextmanager
    def _errors(self, doing: str, key: str, size: int | None = None) -> Iterator[None]:
        """Turn redis-py's errors into the store's, saying what happened and what to do."""
        what = f"object {key}" if size is None else f"a {size}-byte object ({key})"
        try:
            yield
        except redis_errors.OutOfMemoryError as error:
            answer = str(error).split("caused error: ")[-1].rstrip(".")  # without a pipeline's preamble
            raise StoreFullError(
                f"the Redis server behind the object store at {self.url} is full (it answered OOM: {answer}) while "
                f"writing {what}; nothing was stored. Raise that server's maxmemory (CONFIG SET maxmemory, or "
                "maxmemory in redis.conf) or free space on it by deleting objects no longer needed, or point "
                "notebookos at a larger store, then run the cell again."
            ) from error
        except redis_errors.AuthenticationError as error:
            raise ObjectStoreError(
                f"the Redis server at {self.url} refused our credentials ({error}) when asked to {doing} {what}. "
                "Put the right user name and password in the object store URL (redis://user:password@host:port/db)."
            ) from error
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as error:
            stored = " It may or may not have been stored." if doing == "store" else ""
            raise ObjectStoreError(
                f"cannot reach the Redis object store at {self.url} to {doing} {what}: {str(error).rstrip('.')}."
                f"{stored} Check that "
                "the Redis server is running and reachable from this host (address, port, firewall), or point "
                "notebookos at another object store."
            ) from error
        except redis_errors.ReadOnlyError as error:
            raise ObjectStoreError(
                f"the Redis server at {self.url} is a read-only replica and cannot {doing} {what}. Point the object "
                "store URL at the primary."
            ) from error
        except redis_errors.RedisError as error:
            raise ObjectStoreError(
                f"the Redis server at {self.url} failed to {doing} {what}: {error}. Check that server's log and "
                "configuration."
            ) from error

    def _missing(self, key: str) -> ObjectMissingError:
        return ObjectMissingError(
            f"object {key} is not in the Redis object store at {self.url} (Redis key {self.redis_key(key)}). It was "
            "deleted, evicted (the server's maxmemory-policy must be noeviction), lost in a restart of a server "
            "that does not persist its data, or written to another store: point this replica at the store the "
            "executor writes to, or recompute the values it held."
        )

    def _corrupt(self, key: str, problem: str) -> ObjectCorruptError:
        name = self.redis_key(key)
        return ObjectCorruptError(
            f"object {key} in the Redis object store at {self.url} is corrupt: {problem}. The Redis key {name} was "
            f"overwritten or damaged; delete it (DEL {name}) and recompute the values it held."
        )


def _raw(reply: bytes | str | None) -> bytes | None:
    """A value read back: bytes, since the client is made without ``decode_responses`` (redis-py's annotations allow
    str for clients made with it)."""
    if isinstance(reply, str):
        raise TypeError("the Redis client decoded a value: it must be made without decode_responses")
    return reply


def _split_prefix(url: str) -> tuple[str, str | None]:
    """`url` without its `prefix` query option (redis-py would reject it), and that option's value."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for name, value in query if name == "prefix"]
    rest = urlencode([(name, value) for name, value in query if name != "prefix"])
    return urlunsplit(parts._replace(query=rest)), (prefixes[-1] if prefixes else None)


def _display_url(url: str) -> str:
    """`url` fit for messages and logs: scheme, host, port and database, without credentials or options."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, "", ""))
