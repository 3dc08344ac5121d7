"""The store a configured location names (``--object-store``, a replica's configuration)."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from .base import ObjectStore
from .local import LocalDirectoryStore

__all__ = ["open_store"]


def open_store(location: str) -> ObjectStore:
    """The store a configured location names: 'file:///abs/path', a plain directory path, or 'redis://host:port/db'."""
    if "://" not in location:
        if not location:
            raise ValueError("the object store location is empty; give 'file:///absolute/path' or a directory path")
        return LocalDirectoryStore(location)
    parts = urlsplit(location)
    if parts.scheme in ("redis", "rediss"):
        from ..redis_store import RedisStore  # imported here: only Redis users need the redis package

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
