"""Client of the cluster service, and where to find it.

Provisioners and kernel fronts find the cluster through a discovery file: ``$NOTEBOOKOS_CLUSTER_FILE`` when set
(``notebookos lab`` sets it), else ``<jupyter runtime dir>/notebookos-cluster.json``; :mod:`.launcher` starts one
when none answers there.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_runtime_dir
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .tls import client_context

CLUSTER_FILE_ENV = "NOTEBOOKOS_CLUSTER_FILE"


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
    """``ca_pem``: the CA an https service is verified against (None: the system's CAs)."""

    def __init__(self, url: str, token: str, ca_pem: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self._ssl = client_context(ca_pem) if self.url.startswith("https:") else None

    @classmethod
    def from_file(cls, path: Path) -> "ClusterClient":
        data = json.loads(path.read_text())
        return cls(data["url"], data["token"], data.get("ca_pem"))

    async def request(self, method: str, path: str, body: dict | None = None, timeout: float = 60.0,
                      text: bool = False) -> Any:
        """The JSON answer (None when empty), or the answer as text with ``text``; ClusterError otherwise."""
        req = HTTPRequest(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"},
            body=None if body is None and method in ("GET", "DELETE") else json.dumps(body or {}),
            request_timeout=timeout, connect_timeout=5.0, ssl_options=self._ssl,
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

    async def restart_replica(self, kernel_id: str, replica: int, seen: str | None = None) -> dict:
        """Replace a lost replica; ``seen``: the ``ip:shell_port`` the caller lost, so that a request about a
        replica replaced already changes nothing. Answers the kernel's description."""
        return await self.request("POST", f"/kernels/{kernel_id}/replicas/{replica}/restart", {"seen": seen})

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
