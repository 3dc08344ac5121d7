"""The object store's contract: content keys, the errors every store raises, and :class:`ObjectStore`.

What a store must do, for whichever backend implements it (:mod:`.local`, :mod:`..redis_store`,
:mod:`..peer_store`); it imports nothing of them.
"""

from __future__ import annotations

import abc
import hashlib

__all__ = [
    "KEY_PREFIX",
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


def content_key(data: bytes | memoryview) -> str:
    """The key an object store files `data` under."""
    return KEY_PREFIX + hashlib.sha256(data).hexdigest()


def key_digest(key: str) -> str:
    """The hex digest inside `key`, after checking its shape (ValueError otherwise): keys come from log entries and
    requests, and become file names and Redis keys."""
    digest = key[len(KEY_PREFIX) :] if isinstance(key, str) and key.startswith(KEY_PREFIX) else ""
    if len(digest) != 64 or not _HEX_DIGITS.issuperset(digest):
        raise ValueError(f"{key!r} is not an object store key; keys look like 'sha256:' followed by 64 hex digits")
    return digest


class ObjectStore(abc.ABC):
    """Content-addressed blobs. Key = 'sha256:<hex>' of the bytes. put is idempotent."""

    @abc.abstractmethod
    def put(self, data: bytes | memoryview) -> str:
        """Store `data` durably and return its key. Raises StoreFullError when there is no room."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The bytes stored under `key`, verified against it. Raises ObjectMissingError or ObjectCorruptError."""

    @abc.abstractmethod
    def contains(self, key: str) -> bool:
        """Whether an object is stored under `key` (without reading or verifying it)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object under `key`; a key that is not there is not an error."""
