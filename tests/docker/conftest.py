"""Fixtures for tests with a real Docker daemon (see dockerd.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .dockerd import Dockerd, unavailable


@pytest.fixture(scope="package")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    """A private dockerd for this package's tests, with the replicas' image imported; skips, with the reason,
    where one cannot run."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"Docker tests need a Docker daemon: {reason}")
    # A short path: the daemon's sockets live under it, and a Unix socket path has at most 107 bytes.
    daemon = Dockerd(Path(tmp_path_factory.mktemp("dk")))
    try:
        daemon.import_image()
        yield daemon
    finally:
        daemon.stop()
