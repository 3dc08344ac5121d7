"""Prometheus metrics of the live cluster, kept in the cluster service (which sees every cell and decision) and
served at its ``/metrics``; the Jupyter server extension adds them to ``/api/notebookos/metrics``.

GPU-seconds are the integral of committed-or-pre-committed GPUs over wall time, advanced at every call on the
scheduling core (the only moments the number changes), so the counter is exact rather than sampled.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from ..scheduler.events import DecisionKind, MoveCause

# Bind and release take milliseconds on an idle GPU and seconds for a large model; interactivity delay ranges from
# the few milliseconds of a LEAD to the minutes of a scale-out.
_BIND_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0)
# A MIGRATE decision (every replica yielded) moves the executor; the core's ReplicaMoved says why it moved one.
MIGRATION_CAUSES = ("all_yield", *(cause.value for cause in MoveCause))
_DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class ClusterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.bind_seconds = Histogram(
            "notebookos_gpu_bind_seconds",
            "Time to bind a cell's GPUs in the executor (parked tensors moved back to the device)",
            registry=r,
            buckets=_BIND_BUCKETS,
        )
        self.release_seconds = Histogram(
            "notebookos_gpu_release_seconds",
            "Time to release a cell's GPUs (tensors parked in host memory, cache emptied)",
            registry=r,
            buckets=_BIND_BUCKETS,
        )
        self.interactivity_delay = Histogram(
            "notebookos_interactivity_delay_seconds",
            "From a cell's GPU request to its executor having the GPUs (waiting, migration included)",
            registry=r,
            buckets=_DELAY_BUCKETS,
        )
        self.gpu_seconds = Counter(
            "notebookos_gpu_seconds_committed",
            "GPU-seconds committed or pre-committed to cells (and to sessions, under a reservation policy)",
            registry=r,
        )
        self.migrations = Counter(
            "notebookos_migrations", "Replicas moved to another host, by cause", ["cause"], registry=r
        )
        self.scale_events = Counter(
            "notebookos_scale_events", "Hosts added or removed, by direction", ["direction"], registry=r
        )
        self.replacements = Counter(
            "notebookos_replica_replacements", "Lost replicas replaced on another host", registry=r
        )
        self.decisions = Counter(
            "notebookos_scheduler_decisions", "Execution requests, by the scheduler's answer", ["kind"], registry=r
        )

        # Every known label value exists from the start, so a rate() over them works before the first event.
        for direction in ("out", "in"):
            self.scale_events.labels(direction)
        for cause in MIGRATION_CAUSES:
            self.migrations.labels(cause)
        for kind in DecisionKind:
            self.decisions.labels(kind.value)

    def render(self) -> bytes:
        return generate_latest(self.registry)
