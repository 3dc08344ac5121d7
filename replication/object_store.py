"""Content-addressed blob storage for state that is too large for the Raft log.

A state delta of a few hundred megabytes cannot travel through Raft (entries of 10 MB already stall heartbeats,
see FACTS.md), so the executor writes the payload here and logs only its key. Keys are the SHA-256 of the bytes:
writing the same payload twice stores it once, a reader can verify what it got, and a key is a safe file name.

`ObjectStore` is the backend-neutral contract; Redis and S3 backends implement the same four methods.
`LocalDirectoryStore` keeps one file per object under a two-character fan-out directory and makes every write
atomic and durable before `put` returns, because a key goes into the log right after `put`: a standby that reads
the log must never find a missing or half-written object behind it.
"""

from __future__ import annotations

import abc
import errno
import hashlib
import os
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = [
    "KEY_PREFIX",
    "LocalDirectoryStore",
    "ObjectCorruptError",
    "ObjectMissingError",
    "ObjectStore",
    "ObjectStoreError",
    "StoreFullError",
    "content_key",
    "open_store",
]

KEY_PREFIX = "sha256:"
_HEX_DIGITS = frozenset("0123456789abcdef")
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


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


def _digest_of(key: str) -> str:
    """The hex digest inside `key`, after checking its shape: keys come from log entries and become file names."""
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


def _is_older(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except OSError:  # deleted meanwhile
        return False


class LocalDirectoryStore(ObjectStore):
    """One file per object in a local (or network-mounted) directory: `<root>/<first 2 hex>/<hex>`.

    The fan-out keeps directories small enough for fast lookups. A write goes to a hidden temporary file in the
    object's own directory, is fsynced, then renamed over the final name, and the directory is fsynced: a reader
    sees either no file or the whole object, even after a crash.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ObjectStoreError(
                f"cannot create the object store directory {self.root}: {error.strerror}. "
                "Check that the path is writable, or configure another store location."
            ) from error

    def __repr__(self) -> str:
        return f"LocalDirectoryStore({str(self.root)!r})"

    def put(self, data: bytes | memoryview) -> str:
        view = memoryview(data).cast("B")
        key = content_key(view)
        path = self._path(key)
        if self._holds(path, view.nbytes):
            return key
        try:
            self._ensure_directory(path.parent)
            self._write_atomically(path, view)
        except OSError as error:
            raise self._write_error(key, view.nbytes, error) from error
        return key

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ObjectMissingError(
                f"object {key} is not in the object store at {self.root}. It was deleted, or written to another "
                "store: point this replica at the store the executor writes to, or recompute the values it held."
            ) from None
        except OSError as error:
            raise ObjectStoreError(
                f"cannot read object {key} from {path}: {error.strerror}. Check that the store directory is "
                "mounted and readable by this process."
            ) from error
        actual = content_key(data)
        if actual != key:
            raise ObjectCorruptError(
                f"object {key} in the store at {self.root} is corrupt: its bytes hash to {actual}. The file {path} "
                "was changed or damaged on disk; delete it and recompute the values it held."
            )
        return data

    def contains(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            raise ObjectStoreError(
                f"cannot delete object {key} ({path}): {error.strerror}. Check the store directory's permissions."
            ) from error

    def keys_older_than(self, age_s: float) -> list[str]:
        """Keys of the objects written more than ``age_s`` seconds ago: what a collector may consider (younger
        ones may belong to a cell whose record has not committed yet)."""
        cutoff = time.time() - age_s
        return [KEY_PREFIX + path.name for path in self.root.glob("??/*")
                if not path.name.startswith(".") and _is_older(path, cutoff)]

    def _path(self, key: str) -> Path:
        digest = _digest_of(key)
        return self.root / digest[:2] / digest

    @staticmethod
    def _holds(path: Path, size: int) -> bool:
        """Whether `path` already holds the object: same name means same content, unless it was truncated."""
        try:
            return path.stat().st_size == size
        except FileNotFoundError:
            return False

    def _ensure_directory(self, directory: Path) -> None:
        """Create a fan-out directory durably: a lost directory entry would lose every object written into it."""
        if directory.is_dir():
            return
        directory.mkdir(exist_ok=True)
        _fsync_directory(self.root)

    @staticmethod
    def _write_atomically(path: Path, view: memoryview) -> None:
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:16]}.", suffix=".tmp")
        try:
            try:
                _write_all(descriptor, view)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)

    def _write_error(self, key: str, size: int, error: OSError) -> ObjectStoreError:
        if error.errno in _DISK_FULL_ERRNOS:
            return StoreFullError(
                f"the object store at {self.root} is full ({error.strerror}) while writing a {size}-byte object; "
                "nothing was stored. Free space on that volume (or raise the quota), or point notebookos at a "
                "larger store, then run the cell again."
            )
        return ObjectStoreError(
            f"cannot write object {key} under {self.root}: {error.strerror}; nothing was stored. Check that the "
            "store directory is writable by this process."
        )


def _write_all(descriptor: int, view: memoryview) -> None:
    """os.write may write less than asked (large buffers, signals): loop until everything is written."""
    while view:
        view = view[os.write(descriptor, view) :]


def _fsync_directory(directory: Path) -> None:
    """Make a rename or mkdir inside `directory` survive a crash."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def open_store(location: str) -> ObjectStore:
    """The store a configured location names: 'file:///abs/path', a plain directory path, or 'redis://host:port/db'."""
    if "://" not in location:
        if not location:
            raise ValueError("the object store location is empty; give 'file:///absolute/path' or a directory path")
        return LocalDirectoryStore(location)
    parts = urlsplit(location)
    if parts.scheme in ("redis", "rediss"):
        from .redis_store import RedisStore  # imported here: only Redis users need the redis package

        return RedisStore(location)
    if parts.scheme != "file":
        raise ValueError(
            f"unsupported object store location {location!r}: supported are 'file:///absolute/path' and plain "
            "directory paths, and 'redis://host:port/db' (S3 stores are not available yet)"
        )
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise ValueError(
            f"{location!r} is not a local file URL: write 'file:///absolute/path' (three slashes, no host name)"
        )
    return LocalDirectoryStore(unquote(parts.path))
