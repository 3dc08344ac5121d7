"""Many kernels starting at once in one process all find the one live cluster (none starts a second)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from notebookos.gpu_broker.cluster.launcher import ensure_cluster


def test_concurrent_starts_in_one_process_share_the_live_cluster(cluster_file):
    before = json.loads(Path(cluster_file).read_text())

    async def start_many() -> list[str]:
        # More than asyncio's default executor has threads on this machine: waiting for the lock must not take
        # the threads the lock holder needs to check that the cluster is alive.
        clients = await asyncio.gather(*(ensure_cluster() for _ in range(16)))
        return [c.url for c in clients]

    assert set(asyncio.run(start_many())) == {before["url"]}
    assert json.loads(Path(cluster_file).read_text()) == before
