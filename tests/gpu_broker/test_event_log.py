"""The cluster's event log (what the dashboard's stream shows) and the charts' history samples."""

from __future__ import annotations

from notebookos.gpu_broker.scheduler.events import Decision, DecisionKind, MoveCause, ReplicaMoved, ScaleOutRequested
from notebookos.gpu_broker.cluster.event_log import EventLog
from notebookos.gpu_broker.cluster.history import History


def test_core_events_become_flat_numbered_records_with_their_reason():
    log = EventLog()
    seen = []
    log.listeners.append(seen.append)
    log.record(
        ReplicaMoved(
            time=1.0,
            reason="draining h1",
            kernel_id="k",
            replica=2,
            from_host="h1",
            to_host="h3",
            cause=MoveCause.DRAIN,
        )
    )
    log.record(
        Decision(
            time=2.0,
            reason="all replicas YIELD",
            kernel_id="k",
            kind=DecisionKind.MIGRATE,
            gpus=1,
            replica=0,
            host_id="h4",
            devices=(0,),
            source_host="h2",
            events=(ScaleOutRequested(time=2.0, reason="x", hosts=1),),
        )
    )
    moved, decided = log.since(0)
    assert moved == {
        "seq": 1,
        "time": 1.0,
        "kind": "replica_moved",
        "reason": "draining h1",
        "host": "h3",
        "kernel": "k",
        "replica": 2,
        "data": {"from_host": "h1", "cause": "drain"},
    }
    assert decided["kind"] == "decision" and decided["host"] == "h4"
    assert decided["data"] == {"kind": "migrate", "gpus": 1, "devices": [0], "source_host": "h2"}
    assert seen == [moved, decided]


def test_readers_resume_after_a_sequence_number_and_filter():
    log = EventLog(capacity=3)
    for i in range(5):
        log.append("host_added" if i % 2 else "released", float(i), "r", host=f"h{i}", kernel="k" if i < 2 else None)
    assert [e["seq"] for e in log.since(0)] == [3, 4, 5]  # only the latest `capacity` are kept
    assert [e["seq"] for e in log.since(3)] == [4, 5]
    assert [e["seq"] for e in log.since(0, kind="host_added")] == [4]
    assert [e["seq"] for e in log.since(0, host="h4")] == [5]
    assert log.since(0, kernel="k") == []
    assert [e["seq"] for e in log.since(0, limit=1)] == [5]


def test_history_samples_each_interval_with_the_delays_of_cells_started_in_it():
    history = History(interval_s=5.0)
    assert not history.maybe_sample(100.0, 4, 0, 0)  # opens the first interval
    for delay in (0.01, 0.02, 0.03, 2.0):
        history.cell_started(delay)
    history.migrated()
    history.scaled()
    assert history.maybe_sample(105.0, 4, 2, 1)
    assert history.maybe_sample(110.0, 4, 0, 0)
    first, second = history.since(110.0, 3600)
    assert (first["gpus_total"], first["gpus_committed"], first["pending_cells"]) == (4, 2, 1)
    assert first["delay_p50"] == 0.025 and 1.9 < first["delay_p99"] <= 2.0
    assert (first["migrations"], first["scale_events"]) == (1, 1)
    assert second["delay_p50"] is None and second["migrations"] == 0
    assert history.since(110.0, 4) == [second]
