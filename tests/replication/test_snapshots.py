"""The replicated snapshot state behind log compaction: which entries a replica applies, which snapshots it adopts,
and a real one-node Raft log that compacts its journal and restarts from its dump."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from notebookos.replication.entries import CellKey, ExecutionRecord, MembershipChanged, Proposal, Role, Snapshot
from notebookos.replication.namespace import NamespaceTracker
from notebookos.replication.object_store import LocalDirectoryStore
from notebookos.replication.raft_log import KernelLog
from notebookos.replication.snapshots import DumpWritten, Restore, SnapshotState, dump_path


def record(n: int) -> ExecutionRecord:
    return ExecutionRecord(CellKey(f"m{n}", 0), 0, n, f"x = {n}", {"status": "ok"}, b"")


def proposal(n: int) -> Proposal:
    return Proposal(CellKey(f"m{n}", 0), 0, Role.LEAD, 1, (0, 1, 2))


def snapshot_of(n: int) -> Snapshot:
    return Snapshot(CellKey(f"m{n}", 0), 0, n, {"status": "ok"}, b"state")


def test_a_snapshot_covering_the_last_record_replaces_the_tail() -> None:
    state = SnapshotState(lambda restore: None)
    assert [state.admit(i, e) for i, e in enumerate([proposal(1), record(1), proposal(2), record(2)], 1)] == [True] * 4
    assert state.records_in_tail == 2
    assert state.admit(5, snapshot_of(2)) is False  # bookkeeping only: the namespace already holds it
    assert state.snapshot == snapshot_of(2) and state.tail == [] and state.records_in_tail == 0
    assert state.admit(6, proposal(3))
    assert state.tail == [proposal(3)]


def test_entries_after_the_covered_record_stay_in_the_tail() -> None:
    """The executor died with its snapshot in flight; the re-sent attempt's proposal committed before it."""
    state = SnapshotState(lambda restore: None)
    retry = Proposal(CellKey("m2", 1), 1, Role.LEAD, 1, (1, 2))
    for i, entry in enumerate([proposal(1), record(1), proposal(2), retry], 1):
        state.admit(i, entry)
    state.admit(5, snapshot_of(1))
    assert state.snapshot == snapshot_of(1) and state.tail == [proposal(2), retry]
    state.admit(6, snapshot_of(1))  # the same snapshot again (a retried append)
    assert state.tail == [proposal(2), retry]


def test_a_snapshot_a_record_slipped_in_before_is_ignored() -> None:
    state = SnapshotState(lambda restore: None)
    for i, entry in enumerate([record(1), record(2)], 1):
        state.admit(i, entry)
    state.admit(3, snapshot_of(1))
    assert state.snapshot is None and state.tail == [record(1), record(2)]


def test_entries_at_or_below_the_applied_index_are_not_applied_again() -> None:
    state = SnapshotState(lambda restore: None)
    assert state.admit(7, record(1))
    assert not state.admit(7, record(1))
    assert not state.admit(3, record(0))
    assert state.tail == [record(1)] and state.applied == 7


def test_the_objects_kept_are_those_of_the_dump_on_disk_the_entries_after_it_and_the_latest_snapshot(
    tmp_path: Path,
) -> None:
    """A restart loads the dump and replays the journal after it, so their objects must survive a newer snapshot
    until that snapshot is dumped; then only the newer state's objects are needed."""
    tracker = NamespaceTracker(LocalDirectoryStore(tmp_path / "objects"), inline_limit=8)
    ns: dict = {}

    def stored(n: int) -> tuple[ExecutionRecord, Snapshot, str]:
        """A record whose value lives in the store, its snapshot, and the key of that value."""
        tracker.snapshot(ns)
        ns["x"] = f"value {n} " * 10
        delta = tracker.capture(ns, n).to_bytes()
        (key,) = NamespaceTracker.referenced_keys(delta)
        full = tracker.capture_all(ns, n).to_bytes()
        return (
            ExecutionRecord(CellKey(f"m{n}", 0), 0, n, "", {}, delta),
            Snapshot(CellKey(f"m{n}", 0), 0, n, {}, full),
            key,
        )

    state = SnapshotState(lambda restore: None)
    first, first_snapshot, first_key = stored(1)
    state.admit(1, first)
    state.admit(2, first_snapshot)
    state.serialize(str(tmp_path / "dump"), ("raft", 2))
    second, second_snapshot, _ = stored(2)
    state.admit(3, second)
    state.admit(4, second_snapshot)
    assert first_key in state.referenced_keys(), "the dump on disk still holds the first value"
    dumps = state.dumps
    state.serialize(str(tmp_path / "dump"), ("raft", 4))
    assert state.dumps == dumps + 1
    assert state.referenced_keys() == NamespaceTracker.referenced_keys(second_snapshot.delta)
    assert first_key not in state.referenced_keys()


def test_an_older_dump_is_ignored_and_its_resent_entries_skipped(tmp_path: Path) -> None:
    """pysyncobj may install an older snapshot on an up-to-date follower, then send entries it applied again."""
    leader = SnapshotState(lambda restore: None)
    for i, entry in enumerate([proposal(1), record(1), snapshot_of(1), proposal(2)], 1):
        leader.admit(i, entry)
    old = tmp_path / "old.dump"
    leader.serialize(str(old), ("raft", 4))

    restores: list[Restore] = []
    follower = SnapshotState(restores.append)
    applied = [
        e
        for i, e in enumerate([proposal(1), record(1), snapshot_of(1), proposal(2), record(2), proposal(3)], 1)
        if follower.admit(i, e)
    ]
    assert follower.deserialize(str(old)) == ("raft", 4)  # pysyncobj's part comes back unchanged
    assert restores == []
    resent = [e for i, e in [(5, record(2)), (6, proposal(3)), (7, record(3))] if follower.admit(i, e)]
    assert resent == [record(3)]
    assert applied == [proposal(1), record(1), proposal(2), record(2), proposal(3)]


def test_a_newer_dump_restores_the_snapshot_and_tail_once(tmp_path: Path) -> None:
    leader = SnapshotState(lambda restore: None)
    change = MembershipChanged(1, "10.0.0.9:4000", "http://10.0.0.9:5000")
    for i, entry in enumerate([change, record(1), snapshot_of(1), proposal(2), record(2)], 1):
        leader.admit(i, entry)
    dump = tmp_path / "new.dump"
    leader.serialize(str(dump), ("raft",))

    restores: list[Restore] = []
    follower = SnapshotState(restores.append)
    follower.admit(1, change)
    follower.deserialize(str(dump))
    assert restores == [Restore(5, snapshot_of(1), (proposal(2), record(2)), (change,))]
    assert not follower.admit(5, record(2)) and follower.admit(6, proposal(3))
    follower.deserialize(str(dump))  # the same dump again (pysyncobj's own load at start) restores nothing
    assert len(restores) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Collector:
    """What a replica's main thread would receive from the log, in order."""

    def __init__(self) -> None:
        self.items: list[object] = []
        self.lock = threading.Lock()

    def __call__(self, item: object) -> None:
        with self.lock:
            self.items.append(item)


def _wait(predicate, what: str, deadline_s: float = 20.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        result = predicate()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_one_node_log_compacts_and_restarts_from_its_dump(tmp_path: Path) -> None:
    journal = str(tmp_path / "raft.journal")
    address = f"127.0.0.1:{_free_port()}"
    seen = _Collector()
    raft = KernelLog(address, [address], "pw", journal, seen, compact_after=20)
    try:
        _wait(raft.isReady, "the one-node group to be ready")
        for n in range(1, 61):
            done = threading.Event()
            raft.append(record(n), lambda error, done=done: done.set())
            assert done.wait(10)
            if n % 5 == 0:
                done.clear()
                raft.append(snapshot_of(n), lambda error, done=done: done.set())
                assert done.wait(10)
        # The entries pysyncobj keeps stay bounded; index stepping is confirmed against pysyncobj's own count.
        assert raft.getStatus()["log_len"] <= 25
        assert raft.snapshots.applied == raft.raftLastApplied
        assert Path(dump_path(journal)).is_file()
        assert [i for i in seen.items if isinstance(i, ExecutionRecord)] == [record(n) for n in range(1, 61)]
        # Each dump is told, for the replica's garbage collector, after the entries it covers.
        assert raft.snapshots.dumps >= 2
        assert sum(isinstance(i, DumpWritten) for i in seen.items) == raft.snapshots.dumps
    finally:
        raft.destroy_synchronous()  # its journal closed, as after a replica's exit

    again = _Collector()
    restarted = KernelLog(address, [address], "pw", journal, again, compact_after=20)
    try:
        _wait(
            lambda: restarted.isReady() and restarted.snapshots.applied >= raft.snapshots.applied,
            "the restarted log to reach its old index",
        )
        restore = again.items[0]
        assert isinstance(restore, Restore) and restore.snapshot is not None
        records = [e for e in (*restore.tail, *again.items[1:]) if isinstance(e, ExecutionRecord)]
        assert records == [record(n) for n in range(restore.snapshot.execution_count + 1, 61)]
        # From the last snapshot on (one every 5 records), at most a compaction threshold's worth: not all 60.
        assert len(records) <= 25
    finally:
        restarted.destroy_synchronous()
