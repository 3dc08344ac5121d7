"""A kernel's Raft group slows down while its notebook is idle and is back at the busy pace when a cell comes; and
a replica can rebuild from the committed state it holds. Real pysyncobj nodes over TCP on loopback."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest

from notebookos.replication import raft_log
from notebookos.replication.entries import ExecutionRecord
from notebookos.replication.raft_log import BUSY, IDLE, KernelLog
from notebookos.replication.snapshots import Restore

from .test_snapshots import _Collector, _free_port, _wait, record, snapshot_of


def _pace(log: KernelLog) -> tuple[float, float, float]:
    conf = log.conf
    return conf.appendEntriesPeriod, conf.raftMinTimeout, conf.raftMaxTimeout


def _append(log: KernelLog, entry: object) -> None:
    done = threading.Event()
    failed: list[BaseException | None] = []
    log.append(entry, lambda error: (failed.append(error), done.set()))
    assert done.wait(10) and failed == [None], failed


@pytest.fixture
def group(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(raft_log, "IDLE_AFTER_S", 0.5)  # production: 5 s
    monkeypatch.setattr(raft_log, "LEADER_LAG_S", 0.5)
    addresses = [f"127.0.0.1:{_free_port()}" for _ in range(3)]
    logs = [KernelLog(a, addresses, "pw", None, _Collector()) for a in addresses]
    try:
        _wait(lambda: all(log.isReady() for log in logs), "the group to elect a leader")
        yield logs
    finally:
        for log in logs:
            log.destroy_synchronous()


def _one_leader(logs: list[KernelLog]) -> object | None:
    """The leader every node names, when they all name the same one."""
    leaders = {log._getLeader() for log in logs}
    return next(iter(leaders)) if len(leaders) == 1 else None


def test_an_idle_group_slows_down_keeps_its_leader_and_is_quick_again_for_a_cell(group):
    busy = (BUSY.heartbeat_s, *BUSY.election_s)
    idle = (IDLE.heartbeat_s, *IDLE.election_s)
    _append(group[0], record(1))
    _wait(lambda: all(_pace(log) == idle for log in group), "every replica to reach the idle pace")
    leader, terms = _one_leader(group), {log.raftCurrentTerm for log in group}
    assert leader is not None and len(terms) == 1, "every replica follows one leader while idle"
    [term] = terms
    for log in group:  # a cell comes: every replica is sent it
        log.quicken()
    assert all(_pace(log) == busy for log in group)
    # Run by the leader's replica: leadership follows a cell's executor (KernelLog._follow_executor), and a record
    # of another replica would hand it over, an election this test does not look for.
    executor = next(i for i, log in enumerate(group) if log.selfNode == leader)
    _append(group[1], dataclasses.replace(record(2), executor=executor))  # through the leader it had while idle
    assert _one_leader(group) == leader and {log.raftCurrentTerm for log in group} == {term}


def test_a_rebuild_hands_over_the_committed_state_in_order_with_the_entries(tmp_path: Path):
    address = f"127.0.0.1:{_free_port()}"
    seen = _Collector()
    log = KernelLog(address, [address], "pw", str(tmp_path / "raft.journal"), seen)
    try:
        _wait(log.isReady, "the one-node group to be ready")
        for entry in (record(1), snapshot_of(1), record(2), record(3)):
            _append(log, entry)
        log.rebuild()
        _append(log, record(4))
        restore = next(i for i in seen.items if isinstance(i, Restore))
        assert restore.snapshot == snapshot_of(1) and list(restore.tail) == [record(2), record(3)]
        after = seen.items[seen.items.index(restore) + 1 :]
        assert [i for i in after if isinstance(i, ExecutionRecord)] == [record(4)]
    finally:
        log.destroy_synchronous()
