"""How the REST API reads the cluster: the cluster service's JSON, fetched and reshaped into the API's models.

The cluster is found the way kernels find it (``$NOTEBOOKOS_CLUSTER_FILE``, else the runtime directory's
``notebookos-cluster.json``), read again on every request, so a cluster that restarts and rewrites its discovery
file is picked up. The API never starts a cluster: with none answering it reports 503 and says what to do.

The models are built field by field from what the cluster returns (a whitelist), so what the cluster keeps for
its own clients (a replica's connection info, which carries the kernel's message key) never reaches the API.
Each takes ``sees``, whether the user may see a kernel of a given owner (:meth:`..permissions.Access.sees`): a
kernel they may not see is left out, and so is its id wherever it would show (a host's kernels, the kernel holding
a GPU). What hosts and GPUs are, and how busy, stays the pool's.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from ...gpu_broker.cluster.client import CLUSTER_FILE_ENV, ClusterClient, ClusterError, discovery_file

REQUEST_TIMEOUT_S = 30.0
# How long after an event names a kernel the cluster does not list yet it is asked again: a kernel's placement is
# logged before its replicas have started and the cluster lists it (1.5 s in all, then the kernel counts as gone).
OWNER_RETRY_S = (0.1, 0.2, 0.4, 0.8)

Sees = Callable[[str | None], bool]  # whether the user may see a kernel of this owner


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
    return (f"Start Jupyter with `notebookos lab`, which starts a cluster and points the server at it, or set "
            f"{CLUSTER_FILE_ENV} to the discovery file of a running cluster (looked for at {path}).")


def _client() -> ClusterClient:
    path = discovery_file()
    if not path.exists():
        raise ClusterUnavailable(f"No notebookos cluster is configured for this server. {_what_to_do(path)}")
    try:
        return ClusterClient.from_file(path)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ClusterUnavailable(f"The notebookos cluster discovery file {path} cannot be read ({err}). "
                                 f"{_what_to_do(path)}") from None


async def cluster_request(method: str, path: str, body: dict | None = None, text: bool = False,
                          timeout: float = REQUEST_TIMEOUT_S) -> Any:
    """One request to the cluster service; its JSON answer (its text with ``text``), or ClusterUnavailable /
    ClusterRefused."""
    client = _client()
    try:
        return await client.request(method, path, body, timeout=timeout, text=text)
    except ClusterError as err:
        if err.status is None:
            said = str(err)
            raise ClusterUnavailable(f"{said[:1].upper()}{said[1:]}. Is the notebookos cluster still running? "
                                     f"{_what_to_do(discovery_file())}") from None
        if err.status == 401:
            raise ClusterUnavailable(f"The notebookos cluster at {client.url} refused this server's token: the "
                                     f"discovery file {discovery_file()} is stale. {_what_to_do(discovery_file())}"
                                     ) from None
        raise ClusterRefused(err.status, err.detail or str(err)) from None


# --- models -----------------------------------------------------------------------------------------------------

def replica_model(raw: dict) -> dict:
    return {"index": int(raw["replica"]), "host": str(raw["host"]), "alive": bool(raw["alive"]),
            "pid": raw.get("pid"), "restarts": int(raw.get("restarts", 0)), "role": raw.get("role"),
            "state": str(raw.get("state") or ("ready" if raw["alive"] else "lost")),
            "exit_reason": raw.get("exit_reason")}


_CELL_FIELDS = ("state", "gpus", "decision", "reason", "host", "devices", "submitted", "started", "ended", "bind_s",
                "release_s")


def kernel_model(raw: dict) -> dict:
    replicas = [replica_model(r) for r in raw.get("replicas", [])]
    cell = raw.get("cell")
    return {"id": str(raw["id"]), "owner": raw.get("owner"), "notebook": raw.get("notebook"),
            "gpus": int(raw.get("gpus", 0)), "replicas": replicas, "replicas_alive": sum(r["alive"] for r in replicas),
            "cell": None if not cell else {k: cell.get(k) for k in _CELL_FIELDS}}


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

    return [{"host": str(host["name"]), "device": int(d["device"]), "state": str(d.get("state", "idle")),
             "kernel": held(d, "kernel"), "replica": held(d, "replica"), "since": d.get("since")}
            for host in raw_cluster.get("hosts", []) for d in host.get("devices", [])]


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
        "gpus": {"total": total, **{state: sum(g["state"] == state for g in gpus)
                                    for state in ("idle", "pending", "committed")}},
        "subscription_ratio": sum(h["subscribed_gpus"] for h in hosts) / total if total else 0.0,
        "subscription_limit": raw_cluster.get("subscription_limit"),
        "pending_cells": int(raw_cluster.get("pending_cells", 0)),
        "pending_hosts": int(raw_cluster.get("pending_hosts", 0)),
        "max_hosts": raw_cluster.get("max_hosts"),
        "pid": raw_cluster.get("pid"),
        "started_at": raw_cluster.get("started_at"),
    }


# --- calls ------------------------------------------------------------------------------------------------------

def _kernel_path(kernel_id: str) -> str:
    return f"/kernels/{quote(kernel_id, safe='')}"


async def get_cluster() -> dict:
    """The cluster service's raw ``GET /cluster``."""
    return await cluster_request("GET", "/cluster")


async def get_kernel(kernel_id: str) -> dict:
    return kernel_model(await cluster_request("GET", _kernel_path(kernel_id)))


async def delete_kernel(kernel_id: str) -> None:
    await cluster_request("DELETE", _kernel_path(kernel_id))


async def replica_action(kernel_id: str, replica: int, action: str, body: dict | None = None) -> dict:
    assert action in ("kill", "restart", "migrate")
    return kernel_model(await cluster_request(
        "POST", f"{_kernel_path(kernel_id)}/replicas/{replica}/{action}", body))


async def host_request(method: str, name: str | None = None, action: str = "", body: dict | None = None) -> dict | None:
    """Add (POST, no name), change (PATCH), drain (POST with action "drain") or remove (DELETE) a host; the host's
    model afterwards (None once removed)."""
    path = "/hosts" + (f"/{quote(name, safe='')}" if name is not None else "") + (f"/{action}" if action else "")
    raw = await cluster_request(method, path, body)
    if raw is None:
        return None
    kernels = [kernel_model(k) for k in (await get_cluster()).get("kernels", [])]
    return host_model(raw, kernels)


async def get_events(query: dict[str, str], wait: bool = False, timeout: float = REQUEST_TIMEOUT_S) -> dict:
    """The cluster's event log after ``query['since']``, filtered; with ``wait``, held until one comes (or the
    cluster's own time-out)."""
    path = "/events" + ("/wait" if wait else "") + ("?" + urlencode(query) if query else "")
    return await cluster_request("GET", path, timeout=timeout)


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
    return await cluster_request("GET", f"/history?seconds={seconds}")


async def get_cluster_metrics() -> str:
    """The cluster service's own Prometheus text (bind latency, interactivity delay, GPU-seconds, ...)."""
    return await cluster_request("GET", "/metrics", text=True)
