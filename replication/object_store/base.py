"""The object store's contract: content keys, the errors every store raises, and :class:`ObjectStore`.

What a store must do, for whichever backend implements it (:mod:`.local`, :mod:`..redis_store`,
:mod:`..peer_store`); it imports nothing of them.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Sequence

__all__ = [
    "KEY_PREFIX",
    "BytesReader",
    "ObjectReader",
    "ObjectCorruptError",
    "ObjectMissingError",
    "ObjectStore",
    "ObjectStoreError",
    "StoreFullError",
    "content_key",
    "key_digest",
]

KEY_PREFIX = "sha256:"
_HEX_DIGITS = frozenset("0123456789abcdef")


class ObjectStoreError(Exception):
    """Base of every store failure. Messages say what happened and what the user should do about it."""


class ObjectMissingError(ObjectStoreError):
    """No object under the requested key."""


class ObjectCorruptError(ObjectStoreError):
    """The stored bytes no longer hash to their key."""


class StoreFullError(ObjectStoreError):
    """The volume or quota is full; the failed write left nothing behind."""


def content_key(*parts: bytes | memoryview) -> str:
    """The key an object store files `parts`, concatenated, under (hashed part by part: nothing is joined)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return KEY_PREFIX + digest.hexdigest()


def key_digest(key: str) -> str:
    """The hex digest inside `key`, after checking its shape (ValueError otherwise): keys come from log entries and
    requests, and become file names and Redis keys."""
    digest = key[len(KEY_PREFIX) :] if isinstance(key, str) and key.startswith(KEY_PREFIX) else ""
    if len(digest) != 64 or not _HEX_DIGITS.issuperset(digest):
        raise ValueError(f"{key!r} is not an object store key; keys look like 'sha256:' followed by 64 hex digits")
    return digest


class ObjectReader(abc.ABC):
    """One object's bytes, read front to back into memory the caller chooses: a state delta's payload is read
    part by part straight into the tensor storages it holds, instead of into one bytes object first and copied
    from there. Nothing read may be trusted before `verify` returns. Use it as a context manager."""

    def __init__(self, size: int) -> None:
        self.size = size  # bytes in the object
        self.position = 0  # bytes read so far

    def readinto(self, target: memoryview) -> None:
        """Fill `target` with the next `target.nbytes` bytes of the object (ValueError past its end)."""
        view = memoryview(target).cast("B")
        if self.position + view.nbytes > self.size:
            raise ValueError(f"reading {view.nbytes} bytes at {self.position} goes past the object's {self.size}")
        self._fill(view)
        self.position += view.nbytes

    @abc.abstractmethod
    def verify(self) -> None:
        """Raise ObjectCorruptError unless the object's bytes hash to its key (reading the rest, if any)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the reader holds open."""

    @abc.abstractmethod
    def _fill(self, view: memoryview) -> None:
        """Read exactly `view.nbytes` bytes into `view`; they are there."""

    def __enter__(self) -> ObjectReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BytesReader(ObjectReader):
    """A reader over bytes in memory that need no verification here: what `ObjectStore.get` returned, or an
    inline payload, which comes in a committed log entry."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._view = memoryview(data).cast("B")
        super().__init__(self._view.nbytes)

    def verify(self) -> None:
        """Nothing to do: the bytes were verified, or come from the log."""

    def close(self) -> None:
        self._view.release()

    def _fill(self, view: memoryview) -> None:
        view[:] = self._view[self.position : self.position + view.nbytes]


class ObjectStore(abc.ABC):
    """Content-addressed blobs. Key = 'sha256:<hex>' of the bytes. put is idempotent."""

    @abc.abstractmethod
    def put(self, data: bytes | memoryview) -> str:
        """Store `data` durably and return its key. Raises StoreFullError when there is no room."""

    def put_parts(self, parts: Sequence[bytes | memoryview]) -> str:
        """Store the concatenation of `parts` as one object, as `put` would, and return its key.

        A state delta's payload is a pickle followed by the raw bytes of the tensors it holds, each part still in
        the memory it lives in, so that a large tensor is not copied into one buffer first. This default joins the
        parts (stores that send the object elsewhere need it whole); a store that can write the parts one after
        the other overrides it.
        """
        return self.put(b"".join(parts))

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The bytes stored under `key`, verified against it. Raises ObjectMissingError or ObjectCorruptError."""

    def open(self, key: str) -> ObjectReader:
        """A reader of the object under `key`. This default reads it whole with `get` (verified there); a store
        that can read an object piecemeal overrides it. Raises what `get` raises."""
        return BytesReader(self.get(key))

    @abc.abstractmethod
    def contains(self, key: str) -> bool:
        """Whether an object is stored under `key` (without reading or verifying it)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object under `key`; a key that is not there is not an error."""
