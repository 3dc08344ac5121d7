"""The cluster service's API through ClusterClient: its OpenAPI document, requests checked against it (400 naming
the field and why), and the client's typed methods, one per operation."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from notebookos.gpu_broker.cluster.client import ClusterClient, ClusterError
from notebookos.gpu_broker.cluster.service.openapi import DOCUMENT


def call(cluster_file: str, method: str, *args: Any, **kwargs: Any) -> Any:
    client = ClusterClient.from_file(Path(cluster_file))
    return asyncio.run(getattr(client, method)(*args, **kwargs))


def refusal(cluster_file: str, method: str, path: str, body: dict | None = None) -> ClusterError:
    with pytest.raises(ClusterError) as raised:
        call(cluster_file, "request", method, path, body)
    assert raised.value.status == 400, raised.value
    return raised.value


def test_the_service_serves_its_document(cluster_file: str) -> None:
    assert call(cluster_file, "request", "GET", "/openapi.json") == DOCUMENT


def test_requests_are_checked_against_the_document(cluster_file: str) -> None:
    host = call(cluster_file, "describe")["hosts"][0]["name"]
    assert (
        "body field 'gpus': 0 is less than the minimum of 1"
        in refusal(cluster_file, "PATCH", f"/hosts/{host}", {"gpus": 0}).detail
    )
    assert "body field 'gpus' is required" in refusal(cluster_file, "PATCH", f"/hosts/{host}", {}).detail
    # Checked before the kernel is looked up: the request is wrong whichever kernel it names.
    assert "minimum of 1" in refusal(cluster_file, "POST", "/kernels/none/executions", {"gpus": 0}).detail
    assert "query parameter 'since' must be a whole number" in refusal(cluster_file, "GET", "/events?since=x").detail
    assert "unknown query parameter 'sinse'" in refusal(cluster_file, "GET", "/events?sinse=1").detail
    assert "path parameter 'replica'" in refusal(cluster_file, "POST", "/kernels/none/replicas/x/kill").detail


def test_typed_methods_read_the_cluster(cluster_file: str) -> None:
    described = call(cluster_file, "describe")
    assert len(described["hosts"]) >= 3 and "kernels" in described
    events = call(cluster_file, "events", kind="host_added", limit=2)
    assert len(events["events"]) <= 2 and all(e["kind"] == "host_added" for e in events["events"])
    waited = call(cluster_file, "events", since=events["last_seq"] + 10**6, wait_s=0)
    assert waited["events"] == []
    assert call(cluster_file, "history", 60)["interval_s"] > 0
    assert "notebookos_scheduler_decisions_total" in call(cluster_file, "metrics")
    with pytest.raises(ClusterError) as missing:
        call(cluster_file, "kernel", "no/such kernel")
    assert missing.value.status == 404 and "no/such kernel" in missing.value.detail


def test_a_kernel_id_taken_is_refused_and_the_kernel_keeps_its_replicas(cluster_file: str) -> None:
    created = call(cluster_file, "create_kernel", "taken-id", "k" * 32, "hmac-sha256", None)
    try:
        with pytest.raises(ClusterError) as again:
            call(cluster_file, "create_kernel", "taken-id", "k" * 32, "hmac-sha256", None)
        assert again.value.status == 409 and "kernel taken-id already exists" in again.value.detail
        assert [r["pid"] for r in call(cluster_file, "kernel", "taken-id")["replicas"]] == [
            r["pid"] for r in created["replicas"]
        ]
    finally:
        call(cluster_file, "delete_kernel", "taken-id")
