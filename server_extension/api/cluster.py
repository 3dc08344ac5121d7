"""How the REST API reads the cluster: the cluster service's JSON, fetched and reshaped into the API's models.

The cluster is found the way kernels find it (``$NOTEBOOKOS_CLUSTER_FILE``, else the runtime directory's
``notebookos-cluster.json``), read again on every request, so a cluster that restarts and rewrites its discovery
file is picked up. The API never starts a cluster: with none answering it reports 503 and says what to do. Every
call is one typed method of :class:`ClusterClient` (one operation of the service's OpenAPI document), never a URL
built here.

The models are built field by field from what the cluster returns (a whitelist), so what the cluster keeps for
its own clients (a replica's connection info, which carries the kernel's message key) never reaches the API.
Each takes ``sees``, whether the user may see a kernel of a given owner (:meth:`..permissions.Access.sees`): a
kernel they may not see is left out, and so is its id wherever it would show (a host's kernels, the kernel holding
a GPU). What hosts and GPUs are, and how busy, stays the pool's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ...gpu_broker.cluster.client import CLUSTER_FILE_ENV, ClusterClient, ClusterError, discovery_file

REQUEST_TIMEOUT_S = 30.0
# How long after an event names a kernel the cluster does not list yet it is asked again: a kernel's placement is
# logged before its replicas have started and the cluster lists it (1.5 s in all, then the kernel counts as gone).
OWNER_RETRY_S = (0.1, 0.2, 0.4, 0.8)

Sees = Callable[[str | None], bool]  # whether the user may see a kernel of this owner
T = TypeVar("T")


def everyone(owner: str | None) -> bool:
    """``sees`` for what the cluster tells the API itself, and for admins."""
    return True


class ClusterUnavailable(Exception):
    """No cluster answered (no discovery file, refused connection, time-out, rejected token): HTTP 503."""


class ClusterRefused(Exception):
    """The cluster answered with an error; ``status`` is its HTTP status (404: no such kernel or replica)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _what_to_do(path: Any) -> str:
    return (
        f"Start Jupyter with `notebookos lab`, which starts a cluster and points the server at it; or name a "
        f"shared cluster service with c.NotebookOS.cluster_url and c.NotebookOS.cluster_token_file; or set "
        f"{CLUSTER_FILE_ENV} to the discovery file of a running cluster (looked for at {path}); or start a "
        f"notebookos kernel, which starts a cluster on this machine."
    )


def _client() -> ClusterClient:
    path = discovery_file()
    if not path.exists():
        raise ClusterUnavailable(f"No notebookos cluster is configured for this server. {_what_to_do(path)}")
    try:
        return ClusterClient.from_file(path, timeout=REQUEST_TIMEOUT_S)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ClusterUnavailable(
            f"The notebookos cluster discovery file {path} cannot be read ({err}). {_what_to_do(path)}"
        ) from None


async def _call(operation: Callable[[ClusterClient], Awaitable[T]]) -> T:
    """One call of a :class:`ClusterClient` method on the cluster this server is pointed at; its answer, or
    ClusterUnavailable / ClusterRefused."""
    client = _client()
    try:
        return await operation(client)
    except ClusterError as err:
        if err.status is None:
            said = str(err)
            raise ClusterUnavailable(
                f"{said[:1].upper()}{said[1:]}. Is the notebookos cluster still running? "
                f"{_what_to_do(discovery_file())}"
            ) from None
        if err.status == 401:
            raise ClusterUnavailable(
                f"The notebookos cluster at {client.url} refused this server's token: the "
                f"discovery file {discovery_file()} is stale. {_what_to_do(discovery_file())}"
            ) from None
        raise ClusterRefused(err.status, err.detail or str(err)) from None


# --- models -----------------------------------------------------------------------------------------------------


def replica_model(raw: dict) -> dict:
    return {
        "index": int(raw["replica"]),
        "host": str(raw["host"]),
        "alive": bool(raw["alive"]),
        "pid": raw.get("pid"),
        "restarts": int(raw.get("restarts", 0)),
        "role": raw.get("role"),
        "state": str(raw.get("state") or ("ready" if raw["alive"] else "lost")),
        "exit_reason": raw.get("exit_reason"),
    }


_CELL_FIELDS = (
    "state",
    "gpus",
    "decision",
    "reason",
    "host",
    "devices",
    "submitted",
    "started",
    "ended",
    "bind_s",
    "release_s",
)


def kernel_model(raw: dict) -> dict:
    replicas = [replica_model(r) for r in raw.get("replicas", [])]
    cell = raw.get("cell")
    return {
        "id": str(raw["id"]),
        "owner": raw.get("owner"),
        "notebook": raw.get("notebook"),
        "gpus": int(raw.get("gpus", 0)),
        "replicas": replicas,
        "replicas_alive": sum(r["alive"] for r in replicas),
        "cell": None if not cell else {k: cell.get(k) for k in _CELL_FIELDS},
    }


def replica_counts(kernels: list[dict]) -> dict:
    replicas = [r for k in kernels for r in k["replicas"]]
    alive = sum(r["alive"] for r in replicas)
    return {"total": len(replicas), "alive": alive, "dead": len(replicas) - alive}


def host_model(host: dict, kernels: list[dict], sees: Sees = everyone) -> dict:
    name = str(host["name"])
    placed = [(k, r) for k in kernels for r in k["replicas"] if r["host"] == name]
    return {
        "name": name,
        "state": str(host.get("state", "active")),
        "gpus": int(host.get("gpus", 0)),
        "idle_gpus": int(host.get("idle_gpus", 0)),
        "subscribed_gpus": int(host.get("subscribed_gpus", 0)),
        "subscription_ratio": float(host.get("subscription_ratio", 0.0)),
        "replicas": int(host.get("replicas", len(placed))),
        "replicas_alive": sum(r["alive"] for _, r in placed),
        "kernels": sorted({kernel["id"] for kernel, _ in placed if sees(kernel["owner"])}),
    }


def hosts_model(raw_cluster: dict, sees: Sees = everyone) -> list[dict]:
    kernels = [kernel_model(k) for k in raw_cluster.get("kernels", [])]
    return [host_model(host, kernels, sees) for host in raw_cluster.get("hosts", [])]


def kernels_model(raw_cluster: dict, sees: Sees = everyone) -> list[dict]:
    return [kernel for kernel in map(kernel_model, raw_cluster.get("kernels", [])) if sees(kernel["owner"])]


def kernel_owners(raw_cluster: dict) -> dict[str, str | None]:
    """Kernel id -> owner, for every kernel on the cluster."""
    return {str(k["id"]): k.get("owner") for k in raw_cluster.get("kernels", [])}


def gpus_model(raw_cluster: dict, sees: Sees = everyone) -> list[dict]:
    owners = kernel_owners(raw_cluster)

    def held(device: dict, field: str) -> Any:
        """Which kernel (replica) holds the GPU, if the user may see that kernel."""
        kernel = device.get("kernel")
        return device.get(field) if kernel is None or sees(owners.get(kernel)) else None

    return [
        {
            "host": str(host["name"]),
            "device": int(d["device"]),
            "state": str(d.get("state", "idle")),
            "kernel": held(d, "kernel"),
            "replica": held(d, "replica"),
            "since": d.get("since"),
        }
        for host in raw_cluster.get("hosts", [])
        for d in host.get("devices", [])
    ]


def event_visible(event: dict, owners: dict[str, str | None], sees: Sees) -> bool:
    """Whether the user may see a logged event: host-level events (no kernel) are the pool's; an event of a kernel
    only if the kernel is on the cluster (``owners``, from :func:`kernel_owners`) and the user may see it. The
    event log records no owners, so the events of a kernel that has gone are left out."""
    kernel = event.get("kernel")
    return kernel is None or (kernel in owners and sees(owners[kernel]))


def cluster_model(raw_cluster: dict, sees: Sees = everyone) -> dict:
    kernels = kernels_model(raw_cluster, sees)
    gpus = gpus_model(raw_cluster)
    hosts = hosts_model(raw_cluster)
    total = sum(h["gpus"] for h in hosts)
    return {
        "policy": raw_cluster.get("policy"),
        "hosts": [{"name": h["name"], "replicas": h["replicas"]} for h in hosts],
        "kernels": len(kernels),
        "replicas": replica_counts(kernels),
        "gpus": {
            "total": total,
            **{state: sum(g["state"] == state for g in gpus) for state in ("idle", "pending", "committed")},
        },
        "subscription_ratio": sum(h["subscribed_gpus"] for h in hosts) / total if total else 0.0,
        "subscription_limit": raw_cluster.get("subscription_limit"),
        "pending_cells": int(raw_cluster.get("pending_cells", 0)),
        "pending_hosts": int(raw_cluster.get("pending_hosts", 0)),
        "max_hosts": raw_cluster.get("max_hosts"),
        "pid": raw_cluster.get("pid"),
        "started_at": raw_cluster.get("started_at"),
    }


# --- calls ------------------------------------------------------------------------------------------------------


async def get_cluster() -> dict:
    """The cluster service's raw ``GET /cluster``."""
    return await _call(lambda c: c.describe())


async def get_kernel(kernel_id: str) -> dict:
    return kernel_model(await _call(lambda c: c.kernel(kernel_id)))


async def delete_kernel(kernel_id: str) -> None:
    await _call(lambda c: c.delete_kernel(kernel_id))


async def kill_replica(kernel_id: str, replica: int) -> dict:
    return kernel_model(await _call(lambda c: c.kill_replica(kernel_id, replica)))


async def restart_replica(kernel_id: str, replica: int) -> dict:
    return kernel_model(await _call(lambda c: c.restart_replica(kernel_id, replica)))


async def migrate_replica(kernel_id: str, replica: int, host: str) -> dict:
    return kernel_model(await _call(lambda c: c.migrate_replica(kernel_id, replica, host)))


async def _host_model(raw: dict) -> dict:
    """A host the cluster answered with, as the API's model (its replicas counted from the kernels)."""
    kernels = [kernel_model(k) for k in (await get_cluster()).get("kernels", [])]
    return host_model(raw, kernels)


async def add_host(gpus: int | None) -> dict:
    return await _host_model(await _call(lambda c: c.add_host(gpus)))


async def resize_host(name: str, gpus: int) -> dict:
    return await _host_model(await _call(lambda c: c.resize_host(name, gpus)))


async def drain_host(name: str) -> dict:
    return await _host_model(await _call(lambda c: c.drain_host(name)))


async def remove_host(name: str) -> None:
    await _call(lambda c: c.remove_host(name))


async def get_events(query: dict[str, Any], wait_s: int | None = None) -> dict:
    """The cluster's event log after ``query['since']``, filtered by ``query``'s ``limit``, ``host``, ``kernel`` and
    ``kind``; with ``wait_s``, held up to that many seconds until one comes."""
    timeout = None if wait_s is None else wait_s + 10.0
    return await _call(lambda c: c.events(**query, wait_s=wait_s, timeout=timeout))


async def learn_owners(owners: dict[str, str | None], events: list[dict]) -> None:
    """Add to ``owners`` (kernel id -> owner, kept by an event stream while it lasts) the owners of the kernels the
    events name, from the cluster; a kernel it does not list yet is asked about again (:data:`OWNER_RETRY_S`), one
    it never lists stays out (it has gone, and the event log records no owners)."""
    for delay in (0.0, *OWNER_RETRY_S):
        if {e["kernel"] for e in events if e["kernel"] is not None} <= owners.keys():
            return
        await asyncio.sleep(delay)
        owners.update(kernel_owners(await get_cluster()))


async def get_history(seconds: float) -> dict:
    return await _call(lambda c: c.history(seconds))


async def get_cluster_metrics() -> str:
    """The cluster service's own Prometheus text (bind latency, interactivity delay, GPU-seconds, ...)."""
    return await _call(lambda c: c.metrics())
