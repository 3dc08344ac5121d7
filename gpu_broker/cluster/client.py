"""Client of the cluster service, and where to find it.

Provisioners and kernel fronts find the cluster through a discovery file: ``$NOTEBOOKOS_CLUSTER_FILE`` when set
(``notebookos lab`` sets it), else ``<jupyter runtime dir>/notebookos-cluster.json``; :mod:`.launcher` starts one
when none answers there.
"""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jupyter_core.paths import jupyter_runtime_dir
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

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
    """``ca_pem``: the CA an https service is verified against (None: the system's CAs); ``timeout``: seconds a
    request may take unless its method says otherwise."""

    def __init__(self, url: str, token: str, ca_pem: str | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._ssl: ssl.SSLContext | None = None
        if self.url.startswith("https:"):
            # Imported here: tls.py brings cryptography (50 ms), which a kernel front on a plain-HTTP cluster, started
            # with every kernel, does not need.
            from .tls import client_context

            self._ssl = client_context(ca_pem)

    @classmethod
    def from_file(cls, path: Path, timeout: float = 60.0) -> ClusterClient:
        data = json.loads(path.read_text())
        return cls(data["url"], data["token"], data.get("ca_pem"), timeout)

    async def request(
        self, method: str, path: str, body: dict | None = None, timeout: float | None = None, text: bool = False
    ) -> Any:
        """The JSON answer (None when empty), or the answer as text with ``text``; ClusterError otherwise."""
        data = None if body is None and method in ("GET", "DELETE") else json.dumps(body or {})
        headers = {"Authorization": f"token {self.token}"}
        if data is not None:
            # Said, so the service takes the body for what it is: tornado's client otherwise labels a POST body a
            # form, and the service's tornado parses it as one before the handler reads it as JSON.
            headers["Content-Type"] = "application/json"
        req = HTTPRequest(
            f"{self.url}{path}",
            method=method,
            headers=headers,
            body=data,
            request_timeout=self.timeout if timeout is None else timeout,
            connect_timeout=5.0,
            ssl_options=self._ssl,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req)
        except HTTPClientError as err:
            if err.response is None or err.code == 599:  # time-out, or the connection broke
                raise ClusterError(f"the notebookos cluster at {self.url} did not answer ({err})") from None
            detail = _error_detail(err.response.body)
            raise ClusterError(
                f"cluster at {self.url} answered {method} {path} with {err.code}: {detail}",
                status=err.code,
                detail=detail,
            ) from None
        except OSError as err:
            raise ClusterError(f"cannot reach the notebookos cluster at {self.url}: {err}") from None
        if text:
            return resp.body.decode(errors="replace")
        try:
            return json.loads(resp.body) if resp.body else None
        except ValueError:
            raise ClusterError(
                f"the notebookos cluster at {self.url} answered {method} {path} with something that is not JSON"
            ) from None

    async def alive(self) -> bool:
        try:
            await self.describe(timeout=5.0)
        except ClusterError:
            return False
        return True

    # Each method is one operation of the service's OpenAPI document (service/openapi.py); ids are quoted here.

    async def describe(self, timeout: float | None = None) -> dict:
        """``GET /cluster``: hosts, kernels with their replicas, pending work, the service's pid."""
        return await self.request("GET", "/cluster", timeout=timeout)

    async def create_kernel(
        self,
        kernel_id: str,
        key: str,
        signature_scheme: str,
        cwd: str | None,
        gpus: int = 0,
        owner: str | None = None,
        notebook: str | None = None,
    ) -> dict:
        return await self.request(
            "POST",
            "/kernels",
            {
                "kernel_id": kernel_id,
                "key": key,
                "gpus": gpus,
                "signature_scheme": signature_scheme,
                "cwd": cwd,
                "owner": owner,
                "notebook": notebook,
            },
        )

    async def kernel(self, kernel_id: str) -> dict:
        return await self.request("GET", _kernel(kernel_id))

    async def delete_kernel(self, kernel_id: str) -> None:
        await self.request("DELETE", _kernel(kernel_id))

    async def restart_replica(self, kernel_id: str, replica: int, seen: str | None = None) -> dict:
        """Replace a lost replica; ``seen``: the ``ip:shell_port`` the caller lost, so that a request about a
        replica replaced already changes nothing. Answers the kernel's description."""
        return await self.request("POST", f"{_kernel(kernel_id)}/replicas/{replica}/restart", {"seen": seen})

    async def kill_replica(self, kernel_id: str, replica: int) -> dict:
        """The fault drill: SIGKILL the replica. Answers the kernel's description."""
        return await self.request("POST", f"{_kernel(kernel_id)}/replicas/{replica}/kill")

    async def migrate_replica(self, kernel_id: str, replica: int, host: str) -> dict:
        """Move the replica to ``host``. Answers the kernel's description."""
        return await self.request("POST", f"{_kernel(kernel_id)}/replicas/{replica}/migrate", {"host": host})

    async def request_execution(self, kernel_id: str, gpus: int) -> dict:
        """The executor and devices for a cell (``granted``), or ``granted: false`` with the reason it waits."""
        return await self.request("POST", f"{_kernel(kernel_id)}/executions", {"gpus": gpus})

    async def wait_execution(self, kernel_id: str) -> dict:
        """Wait, as long as it takes, until a queued cell is granted its GPUs."""
        return await self.request("POST", f"{_kernel(kernel_id)}/executions/wait", timeout=7 * 24 * 3600.0)

    async def release_execution(
        self, kernel_id: str, bind_s: float | None = None, release_s: float | None = None
    ) -> None:
        """The cell is over; ``bind_s``/``release_s`` are what binding its GPUs cost the executor, if it said."""
        await self.request(
            "POST", f"{_kernel(kernel_id)}/executions/release", {"bind_s": bind_s, "release_s": release_s}
        )

    async def add_host(self, gpus: int | None = None) -> dict:
        """A host from the cluster's provider (``gpus``: default the cluster's GPUs per host)."""
        return await self.request("POST", "/hosts", {} if gpus is None else {"gpus": gpus})

    async def resize_host(self, name: str, gpus: int) -> dict:
        return await self.request("PATCH", _host(name), {"gpus": gpus})

    async def drain_host(self, name: str) -> dict:
        return await self.request("POST", f"{_host(name)}/drain")

    async def remove_host(self, name: str) -> None:
        await self.request("DELETE", _host(name))

    async def events(
        self,
        since: int | None = None,
        limit: int | None = None,
        host: str | None = None,
        kernel: str | None = None,
        kind: str | None = None,
        wait_s: int | None = None,
        timeout: float | None = None,
    ) -> dict:
        """Logged events after ``since``, oldest first, filtered; with ``wait_s``, held up to that many seconds
        (at most 60) until one comes."""
        query = {
            k: v
            for k, v in (
                ("since", since),
                ("limit", limit),
                ("host", host),
                ("kernel", kernel),
                ("kind", kind),
                ("timeout", wait_s),
            )
            if v is not None
        }
        path = "/events/wait" if wait_s is not None else "/events"
        return await self.request("GET", path + ("?" + urlencode(query) if query else ""), timeout=timeout)

    async def history(self, seconds: float = 3600.0) -> dict:
        """Samples of the last ``seconds`` for charts."""
        return await self.request("GET", f"/history?{urlencode({'seconds': seconds})}")

    async def metrics(self) -> str:
        """The service's Prometheus text."""
        return await self.request("GET", "/metrics", text=True)


def _kernel(kernel_id: str) -> str:
    return f"/kernels/{quote(kernel_id, safe='')}"


def _host(name: str) -> str:
    return f"/hosts/{quote(name, safe='')}"


def _error_detail(body: bytes | None) -> str:
    """The ``error`` field of the cluster's JSON error body, else the body as text."""
    text = (body or b"").decode(errors="replace")
    try:
        return str(json.loads(text)["error"])
    except (ValueError, KeyError, TypeError):
        return text
