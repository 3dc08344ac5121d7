"""How the REST API reads the cluster: the cluster service's JSON, fetched and reshaped into the API's models.

The cluster is found the way kernels find it (``$NOTEBOOKOS_CLUSTER_FILE``, else the runtime directory's
``notebookos-cluster.json``), read again on every request, so a cluster that restarts and rewrites its discovery
file is picked up. The API never starts a cluster: with none answering it reports 503 and says what to do.

The models are built field by field from what the cluster returns (a whitelist), so what the cluster keeps for
its own clients (a replica's connection info, which carries the kernel's message key) never reaches the API.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import quote

from ...gpu_broker.client import CLUSTER_FILE_ENV, ClusterClient, ClusterError, discovery_file

REQUEST_TIMEOUT_S = 30.0


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


async def cluster_request(method: str, path: str) -> Any:
    """One request to the cluster service; its JSON answer, or ClusterUnavailable / ClusterRefused."""
    client = _client()
    try:
        return await client.request(method, path, timeout=REQUEST_TIMEOUT_S)
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
            "pid": raw.get("pid"), "restarts": int(raw.get("restarts", 0))}


def kernel_model(raw: dict) -> dict:
    replicas = [replica_model(r) for r in raw.get("replicas", [])]
    return {"id": str(raw["id"]), "replicas": replicas, "replicas_alive": sum(r["alive"] for r in replicas)}


def replica_counts(kernels: list[dict]) -> dict:
    replicas = [r for k in kernels for r in k["replicas"]]
    alive = sum(r["alive"] for r in replicas)
    return {"total": len(replicas), "alive": alive, "dead": len(replicas) - alive}


def hosts_model(raw_cluster: dict) -> list[dict]:
    kernels = [kernel_model(k) for k in raw_cluster.get("kernels", [])]
    hosts = []
    for host in raw_cluster.get("hosts", []):
        name = str(host["name"])
        placed = [(k["id"], r) for k in kernels for r in k["replicas"] if r["host"] == name]
        model = {
            "name": name,
            "replicas": int(host.get("replicas", len(placed))),
            "replicas_alive": sum(r["alive"] for _, r in placed),
            "kernels": sorted({kernel_id for kernel_id, _ in placed}),
        }
        model.update({k: int(host[k]) for k in ("gpus", "idle_gpus", "subscribed_gpus") if k in host})
        if "subscription_ratio" in host:
            model["subscription_ratio"] = float(host["subscription_ratio"])
        if "state" in host:
            model["state"] = str(host["state"])
        hosts.append(model)
    return hosts


def gpus_model(raw_cluster: dict) -> list[dict]:
    return [{"host": str(host["name"]), "device": int(d["device"]), "kernel": d.get("kernel")}
            for host in raw_cluster.get("hosts", []) for d in host.get("devices", [])]


def cluster_model(raw_cluster: dict) -> dict:
    kernels = [kernel_model(k) for k in raw_cluster.get("kernels", [])]
    return {
        "hosts": [{"name": h["name"], "replicas": h["replicas"]} for h in hosts_model(raw_cluster)],
        "kernels": len(kernels),
        "replicas": replica_counts(kernels),
    }


async def get_cluster() -> dict:
    """The cluster service's raw ``GET /cluster``."""
    return await cluster_request("GET", "/cluster")


async def get_kernel(kernel_id: str) -> dict:
    return kernel_model(await cluster_request("GET", f"/kernels/{quote(kernel_id, safe='')}"))


async def replica_action(kernel_id: str, replica: int, action: str) -> dict:
    assert action in ("kill", "restart")
    return kernel_model(await cluster_request(
        "POST", f"/kernels/{quote(kernel_id, safe='')}/replicas/{replica}/{action}"))
