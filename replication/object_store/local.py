"""The local directory store: one file per object, written atomically and durably before ``put`` returns."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .base import (
    KEY_PREFIX,
    ObjectCorruptError,
    ObjectMissingError,
    ObjectReader,
    ObjectStore,
    ObjectStoreError,
    StoreFullError,
    content_key,
    key_digest,
)

__all__ = ["LocalDirectoryStore"]

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Bytes per read call when an object is read piecemeal: a chunk this size is still in the CPU's cache when it is
# hashed, so verifying an object costs no second pass over memory.
_READ_CHUNK = 1 << 20


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

    An object is written once and read about once by each replica, so the store leaves none in the page cache
    once written or read (`_drop_cached`): kept there, a kernel writing a 100 MB tensor every cell grew the cache
    by 100 MB a cell, evicting what the user's own files had cached, and on a VM whose unused memory the host
    takes back, each write took 270 to 340 ms of faulting in new pages instead of 20 to 30 ms.
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
        return self.put_parts((data,))

    def put_parts(self, parts: Sequence[bytes | memoryview]) -> str:
        """Write the parts one after the other into the object's file, without joining them first."""
        views = [memoryview(part).cast("B") for part in parts]
        key = content_key(*views)
        size = sum(view.nbytes for view in views)
        path = self._path(key)
        if self._holds(path, size):
            return key
        try:
            self._ensure_directory(path.parent)
            self._write_atomically(path, views)
        except OSError as error:
            raise self._write_error(key, size, error) from error
        return key

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            with path.open("rb") as file:
                data = file.read()
                _drop_cached(file.fileno())
        except OSError as error:
            raise self._read_error(key, path, error) from error
        actual = content_key(data)
        if actual != key:
            raise self._corrupt(key, path, f"its bytes hash to {actual}")
        return data

    def open(self, key: str) -> ObjectReader:
        """The object's file, read in chunks that are hashed as they come in, while still in the CPU's cache."""
        path = self._path(key)
        try:
            return _FileReader(self, key, path)
        except OSError as error:
            raise self._read_error(key, path, error) from error

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
        return [
            KEY_PREFIX + path.name
            for path in self.root.glob("??/*")
            if not path.name.startswith(".") and _is_older(path, cutoff)
        ]

    def _path(self, key: str) -> Path:
        digest = key_digest(key)
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
    def _write_atomically(path: Path, views: Sequence[memoryview]) -> None:
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:16]}.", suffix=".tmp")
        try:
            try:
                for view in views:
                    _write_all(descriptor, view)
                os.fsync(descriptor)
                _drop_cached(descriptor)
            finally:
                os.close(descriptor)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)

    def _read_error(self, key: str, path: Path, error: OSError) -> ObjectStoreError:
        if isinstance(error, FileNotFoundError):
            return ObjectMissingError(
                f"object {key} is not in the object store at {self.root}. It was deleted, or written to another "
                "store: point this replica at the store the executor writes to, or recompute the values it held."
            )
        return ObjectStoreError(
            f"cannot read object {key} from {path}: {error.strerror}. Check that the store directory is "
            "mounted and readable by this process."
        )

    def _corrupt(self, key: str, path: Path, problem: str) -> ObjectCorruptError:
        return ObjectCorruptError(
            f"object {key} in the store at {self.root} is corrupt: {problem}. The file {path} was changed or "
            "damaged on disk; delete it and recompute the values it held."
        )

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


class _FileReader(ObjectReader):
    """An object's file, hashed chunk by chunk as it is read (`_READ_CHUNK` bytes at a time)."""

    def __init__(self, store: LocalDirectoryStore, key: str, path: Path) -> None:
        self._file = path.open("rb", buffering=0)
        super().__init__(os.fstat(self._file.fileno()).st_size)
        self._store, self._key, self._path = store, key, path
        self._hash = hashlib.sha256()

    def verify(self) -> None:
        if self.position < self.size:
            self.readinto(memoryview(bytearray(self.size - self.position)))
        actual = KEY_PREFIX + self._hash.hexdigest()
        if actual != self._key:
            raise self._store._corrupt(self._key, self._path, f"its bytes hash to {actual}")

    def close(self) -> None:
        _drop_cached(self._file.fileno())
        self._file.close()

    def _fill(self, view: memoryview) -> None:
        try:
            while view:
                chunk = view[:_READ_CHUNK]
                read = self._file.readinto(chunk)
                if not read:
                    raise self._store._corrupt(self._key, self._path, "its file ended while it was read")
                self._hash.update(chunk[:read])
                view = view[read:]
        except OSError as error:
            raise self._store._read_error(self._key, self._path, error) from error


def _write_all(descriptor: int, view: memoryview) -> None:
    """os.write may write less than asked (large buffers, signals): loop until everything is written."""
    while view:
        view = view[os.write(descriptor, view) :]


def _drop_cached(descriptor: int) -> None:
    """Let the kernel drop the file's pages from the page cache (clean ones: call it after fsync when writing)."""
    if hasattr(os, "posix_fadvise"):  # not on macOS, whose cache this store then leaves as it is
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)


def _fsync_directory(directory: Path) -> None:
    """Make a rename or mkdir inside `directory` survive a crash."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
