"""Client of the cluster service, and discovery of (or on-demand start of) the local embedded cluster.

Provisioners and kernel fronts find the cluster through a discovery file: ``$NOTEBOOKOS_CLUSTER_FILE`` when set
(``notebookos lab`` sets it), else ``<jupyter runtime dir>/notebookos-cluster.json``. When no live cluster is found
there, :func:`ensure_cluster` starts an ephemeral one that exits once its last kernel is gone, so any Jupyter
client (jupyter_client, nbclient, papermill, VS Code) can use the notebookos kernelspec with nothing else running.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_runtime_dir
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

CLUSTER_FILE_ENV = "NOTEBOOKOS_CLUSTER_FILE"
START_TIMEOUT_S = 60.0
BUSY_RETRIES = 5  # alive() checks (5 s time-out each, 1 s apart) of a cluster whose process still runs
_LOCK_WAITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notebookos-cluster-lock")


class ClusterError(RuntimeError):
    """The cluster refused a request or could not be reached; the message says which and why.

    ``status`` is the cluster's HTTP status when it answered (404: no such kernel), None when it did not answer;
    ``detail`` is the cluster's own error message, if it gave one.
    """

    def __init__(self, message: str, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


def discovery_file() -> Path:
    return Path(os.environ.get(CLUSTER_FILE_ENV) or Path(jupyter_runtime_dir()) / "notebookos-cluster.json")


class ClusterClient:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token

    @classmethod
    def from_file(cls, path: Path) -> "ClusterClient":
        data = json.loads(path.read_text())
        return cls(data["url"], data["token"])

    async def request(self, method: str, path: str, body: dict | None = None, timeout: float = 60.0,
                      text: bool = False) -> Any:
        """The JSON answer (None when empty), or the answer as text with ``text``; ClusterError otherwise."""
        req = HTTPRequest(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"},
            body=None if body is None and method in ("GET", "DELETE") else json.dumps(body or {}),
            request_timeout=timeout, connect_timeout=5.0,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req)
        except HTTPClientError as err:
            if err.response is None or err.code == 599:  # time-out, or the connection broke
                raise ClusterError(f"the notebookos cluster at {self.url} did not answer ({err})") from None
            detail = _error_detail(err.response.body)
            raise ClusterError(f"cluster at {self.url} answered {method} {path} with {err.code}: {detail}",
                               status=err.code, detail=detail) from None
        except OSError as err:
            raise ClusterError(f"cannot reach the notebookos cluster at {self.url}: {err}") from None
        if text:
            return resp.body.decode(errors="replace")
        try:
            return json.loads(resp.body) if resp.body else None
        except ValueError:
            raise ClusterError(f"the notebookos cluster at {self.url} answered {method} {path} with something that "
                               "is not JSON") from None

    async def alive(self) -> bool:
        try:
            await self.request("GET", "/cluster", timeout=5.0)
        except ClusterError:
            return False
        return True

    async def create_kernel(self, kernel_id: str, key: str, signature_scheme: str, cwd: str | None,
                            gpus: int = 0, owner: str | None = None, notebook: str | None = None) -> dict:
        return await self.request("POST", "/kernels", {"kernel_id": kernel_id, "key": key, "gpus": gpus,
                                                       "signature_scheme": signature_scheme, "cwd": cwd,
                                                       "owner": owner, "notebook": notebook})

    async def delete_kernel(self, kernel_id: str) -> None:
        await self.request("DELETE", f"/kernels/{kernel_id}")

    async def restart_replica(self, kernel_id: str, replica: int) -> dict:
        return await self.request("POST", f"/kernels/{kernel_id}/replicas/{replica}/restart")

    async def kill_replica(self, kernel_id: str, replica: int) -> dict:
        return await self.request("POST", f"/kernels/{kernel_id}/replicas/{replica}/kill")

    async def request_execution(self, kernel_id: str, gpus: int) -> dict:
        """The executor and devices for a cell (``granted``), or ``granted: false`` with the reason it waits."""
        return await self.request("POST", f"/kernels/{kernel_id}/executions", {"gpus": gpus})

    async def wait_execution(self, kernel_id: str) -> dict:
        """Wait, as long as it takes, until a queued cell is granted its GPUs."""
        return await self.request("POST", f"/kernels/{kernel_id}/executions/wait", timeout=7 * 24 * 3600.0)

    async def release_execution(self, kernel_id: str, bind_s: float | None = None,
                                release_s: float | None = None) -> None:
        """The cell is over; ``bind_s``/``release_s`` are what binding its GPUs cost the executor, if it said."""
        await self.request("POST", f"/kernels/{kernel_id}/executions/release",
                           {"bind_s": bind_s, "release_s": release_s})

    async def migrate_replica(self, kernel_id: str, replica: int, host: str) -> dict:
        return await self.request("POST", f"/kernels/{kernel_id}/replicas/{replica}/migrate", {"host": host})

    async def kernel(self, kernel_id: str) -> dict:
        return await self.request("GET", f"/kernels/{kernel_id}")


def _error_detail(body: bytes | None) -> str:
    """The ``error`` field of the cluster's JSON error body, else the body as text."""
    text = (body or b"").decode(errors="replace")
    try:
        return str(json.loads(text)["error"])
    except (ValueError, KeyError, TypeError):
        return text


async def ensure_cluster(n_hosts: int = 4) -> ClusterClient:
    """The live cluster named by the discovery file, or a new ephemeral one started for this caller.

    Callers in other processes (and other kernels starting in this one) take turns through a file lock, waited for
    on a thread of its own: on asyncio's shared executor, many kernels starting at once would fill every thread
    with lock waits and starve the name lookups of the very check that the cluster is alive.
    """
    path = discovery_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path.with_suffix(".lock"), "w")
    try:
        await asyncio.get_running_loop().run_in_executor(_LOCK_WAITER, fcntl.flock, lock, fcntl.LOCK_EX)
        if path.exists():
            client = ClusterClient.from_file(path)
            for _ in range(BUSY_RETRIES):
                if await client.alive():
                    return client
                if not _process_exists(path):
                    break
                await asyncio.sleep(1.0)  # busy rather than gone: never start a second cluster over a live one
            else:
                raise ClusterError(f"the notebookos cluster named in {path} runs but has not answered for "
                                   f"{BUSY_RETRIES * 6} s; see its log (cluster.log in its state folder)")
            path.unlink(missing_ok=True)
        return await _start_ephemeral(path, n_hosts)
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _process_exists(path: Path) -> bool:
    """Whether the process that wrote the discovery file still runs."""
    try:
        os.kill(int(json.loads(path.read_text())["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


async def _start_ephemeral(path: Path, n_hosts: int) -> ClusterClient:
    state_dir = tempfile.mkdtemp(prefix="notebookos-cluster-")
    log_path = Path(state_dir) / "cluster.log"
    with open(log_path, "ab") as logfile:
        proc = subprocess.Popen(
            [sys.executable, "-m", "notebookos.gpu_broker.cluster.service", "--state-dir", state_dir, "--hosts", str(n_hosts),
             "--ephemeral", "--discovery-file", str(path)],
            stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"the embedded notebookos cluster exited at start (code {proc.returncode}); "
                               f"see {log_path}")
        if path.exists():
            client = ClusterClient.from_file(path)
            if await client.alive():
                return client
        await asyncio.sleep(0.05)
    proc.kill()
    raise ClusterError(f"the embedded notebookos cluster did not start within {START_TIMEOUT_S:.0f} s; see {log_path}")
