"""Content-addressed blob storage for state that is too large for the Raft log.

A state delta of a few hundred megabytes cannot travel through Raft (entries of 10 MB already stall its
heartbeats), so the executor writes the payload here and logs only its key. Keys are the SHA-256 of the bytes:
writing the same payload twice stores it once, a reader can verify what it got, and a key is a safe file name.

Laid out as jupyter_client lays out its provisioners (``provisioning/``: base, local, factory):

- :mod:`.base`: the backend-neutral contract, :class:`ObjectStore`, with the content keys and the errors every
  store raises; the other backends (``redis_store.py``, ``peer_store.py``) import only this.
- :mod:`.local`: :class:`LocalDirectoryStore`, one file per object under a two-character fan-out directory, every
  write atomic and durable before ``put`` returns, because a key goes into the log right after ``put``: a standby
  that reads the log must never find a missing or half-written object behind it.
- :mod:`.factory`: :func:`open_store`, the store a configured location names.
"""

from __future__ import annotations

from .base import (
    KEY_PREFIX,
    BytesReader,
    ObjectCorruptError,
    ObjectMissingError,
    ObjectReader,
    ObjectStore,
    ObjectStoreError,
    StoreFullError,
    content_key,
    key_digest,
)
from .factory import open_store
from .local import LocalDirectoryStore

__all__ = [
    "KEY_PREFIX",
    "BytesReader",
    "LocalDirectoryStore",
    "ObjectCorruptError",
    "ObjectMissingError",
    "ObjectReader",
    "ObjectStore",
    "ObjectStoreError",
    "StoreFullError",
    "content_key",
    "key_digest",
    "open_store",
]
