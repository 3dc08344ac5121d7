"""The local directory store: one file per object, written atomically and durably before ``put`` returns."""

from __future__ import annotations

import errno
import os
import tempfile
import time
from pathlib import Path

from .base import (
    KEY_PREFIX,
    ObjectCorruptError,
    ObjectMissingError,
    ObjectStore,
    ObjectStoreError,
    StoreFullError,
    content_key,
    key_digest,
)

__all__ = ["LocalDirectoryStore"]

_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


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
