"""The cluster service's state on disk: changes reach the database file itself while the service runs, and the
write-ahead log stays the size of a few hundred changes (:class:`ClusterStateStore`, its :class:`Checkpointer`).

Real SQLite files in a temporary folder; nothing is mocked."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

from notebookos.gpu_broker.cluster.state_store import CHECKPOINT_EVERY, DB_FILE, ClusterStateStore

DEADLINE_S = 10.0
ROUNDS = 20


def kernel_state(i: int) -> dict:
    """About as large as a kernel's row: three replicas' configurations and connections."""
    peers = [f"10.0.0.{r}:{20000 + i}" for r in range(3)]
    return {"replicas": [{"config": {"raft_peers": peers}, "key": "k" * 64}] * 3}


def write_changes(store: ClusterStateStore, first: int, count: int) -> None:
    for i in range(first, first + count):
        store.put_kernel(f"kernel-{i}", kernel_state(i))
        store.add_event({"seq": i, "what": "kernel_started", "kernel": f"kernel-{i}"})
        store.flush()


def kernels_in_database_file(folder: Path, scratch: Path) -> int:
    """How many kernels the database file alone holds, without its write-ahead log: what a checkpoint copied."""
    scratch.mkdir(exist_ok=True)
    shutil.copyfile(folder / DB_FILE, scratch / DB_FILE)
    with sqlite3.connect(scratch / DB_FILE) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM kernels").fetchone()[0])
        except sqlite3.OperationalError:  # no table yet: its creation is still only in the log
            return 0


def test_changes_reach_the_database_file_while_the_service_runs_and_the_log_stays_small(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    store = ClusterStateStore(folder)
    try:
        write_changes(store, 0, CHECKPOINT_EVERY)
        # The checkpoint runs on its own thread: wait, boundedly, until the file holds what it copied.
        deadline = time.monotonic() + DEADLINE_S
        copied = 0
        while copied < CHECKPOINT_EVERY and time.monotonic() < deadline:
            copied = kernels_in_database_file(folder, tmp_path / "copy")
            time.sleep(0.05)
        assert copied == CHECKPOINT_EVERY, "the changes stayed in the write-ahead log"

        # Twenty times as many changes, written as fast as they come, so that commits land during every checkpoint:
        # the log starts over after each checkpoint instead of growing with the changes (to some 20 times its size
        # after one round). The bound leaves the checkpoint thread room to lag behind by several rounds.
        log_after_one_round = (folder / f"{DB_FILE}-wal").stat().st_size
        write_changes(store, CHECKPOINT_EVERY, ROUNDS * CHECKPOINT_EVERY)
        log_after_all = (folder / f"{DB_FILE}-wal").stat().st_size
        assert log_after_all < ROUNDS / 2 * log_after_one_round, (log_after_one_round, log_after_all)
    finally:
        store.close()

    reopened = ClusterStateStore(folder)
    try:
        stored = reopened.load()
    finally:
        reopened.close()
    assert len(stored.kernels) == (ROUNDS + 1) * CHECKPOINT_EVERY
    assert stored.kernels["kernel-7"] == kernel_state(7)
    assert stored.events[-1]["seq"] == (ROUNDS + 1) * CHECKPOINT_EVERY - 1
