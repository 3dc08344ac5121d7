"""Prometheus metrics of the cluster, served at ``/api/notebookos/metrics``.

Each server has a registry of its own (not prometheus_client's global one, which Jupyter Server's own ``/metrics``
uses and which would refuse a second registration when a process starts several servers, as tests do). The cluster
gauges are read from the cluster at scrape time: the handler fetches ``GET /cluster`` and hands the answer to
:meth:`ClusterMetrics.update` just before the registry is rendered, so every scrape shows the cluster as it is.
When the cluster does not answer, ``notebookos_cluster_up`` is 0 and the cluster gauges are left out rather than
reported stale. Metrics that accumulate in this process (bind latency and the like) go into the same registry.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .cluster import hosts_model, kernel_model, replica_counts

CONTENT_TYPE = CONTENT_TYPE_LATEST  # the Prometheus text format, as generate_latest writes it


class ClusterMetrics(Collector):
    """Gauges built from the latest cluster snapshot (``None``: the cluster did not answer)."""

    def __init__(self) -> None:
        self.snapshot: dict | None = None

    def update(self, raw_cluster: dict | None) -> None:
        self.snapshot = raw_cluster

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "notebookos_cluster_up",
            "1 if the notebookos cluster answered this scrape, else 0",
            value=0 if self.snapshot is None else 1,
        )
        if self.snapshot is None:
            return
        kernels = [kernel_model(k) for k in self.snapshot.get("kernels", [])]
        hosts = hosts_model(self.snapshot)
        yield GaugeMetricFamily("notebookos_hosts", "Hosts in the cluster", value=len(hosts))
        yield GaugeMetricFamily("notebookos_kernels", "Kernels placed on the cluster", value=len(kernels))
        counts = replica_counts(kernels)
        replicas = GaugeMetricFamily("notebookos_replicas", "Kernel replicas by state", labels=["state"])
        replicas.add_metric(["alive"], counts["alive"])
        replicas.add_metric(["dead"], counts["dead"])
        yield replicas
        per_host = GaugeMetricFamily(
            "notebookos_host_replicas", "Replicas placed on each host, by state", labels=["host", "state"]
        )
        for host in hosts:
            per_host.add_metric([host["name"], "alive"], host["replicas_alive"])
            per_host.add_metric([host["name"], "dead"], host["replicas"] - host["replicas_alive"])
        yield per_host
        yield GaugeMetricFamily(
            "notebookos_replica_restarts",
            "In-place restarts of the current kernels' replicas",
            value=sum(r["restarts"] for k in kernels for r in k["replicas"]),
        )


class Metrics:
    """The extension's registry and its collectors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.cluster = ClusterMetrics()
        self.registry.register(self.cluster)

    def render(self, raw_cluster: dict | None) -> bytes:
        self.cluster.update(raw_cluster)
        return generate_latest(self.registry)
