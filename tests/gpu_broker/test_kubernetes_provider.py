"""The Kubernetes provider's API calls, made by the real kubernetes client against a small HTTP server that answers
with API objects in the form a Kubernetes API server returns them: the agent pool's Deployment is the manifest of
deploy/kubernetes/agent-pool.yaml as the server would store it, its Scale and a PodList are in recorded/. No live
Kubernetes API server was reachable here: the provider has not been run against a real cluster.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from kubernetes import client

from notebookos.gpu_broker.cluster.providers.base import ProviderError
from notebookos.gpu_broker.cluster.providers.kubernetes import DELETION_COST, KubernetesProvider

RECORDED = Path(__file__).parent / "recorded"
MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "agent-pool.yaml"
APPS = "/apis/apps/v1/namespaces/notebookos/deployments/notebookos-agent-pool"
PODS = "/api/v1/namespaces/notebookos/pods"


class FakeApiServer:
    """Answers the provider's requests from the recorded objects and keeps every request it saw."""

    def __init__(self) -> None:
        self.scale = json.loads((RECORDED / "agent-pool-scale.json").read_text())
        self.pods = json.loads((RECORDED / "agent-pool-pods.json").read_text())
        self.deployment = {**_as_stored(yaml.safe_load(MANIFEST.read_text())), "status": {"replicas": 2}}
        self.requests: list[tuple[str, str, dict, object]] = []
        self.forbidden = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                server.requests.append((method, url.path, parse_qs(url.query), body))
                if server.forbidden:
                    self._answer(
                        403,
                        {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "status": "Failure",
                            "code": 403,
                            "reason": "Forbidden",
                            "message": "deployments.apps/scale is forbidden",
                        },
                    )
                elif url.path == f"{APPS}/scale":
                    if method == "PATCH":
                        server.scale["spec"]["replicas"] = body["spec"]["replicas"]
                    self._answer(200, server.scale)
                elif url.path == APPS and method == "GET":
                    self._answer(200, server.deployment)
                elif url.path == PODS and method == "GET":
                    self._answer(200, server.pods)
                elif url.path.startswith(PODS + "/") and method == "PATCH":
                    self._answer(200, server.pods["items"][0])
                else:
                    self._answer(404, {"kind": "Status", "code": 404, "reason": "NotFound"})

            def do_GET(self) -> None:
                self._handle("GET")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def patches(self) -> list[tuple[str, object]]:
        return [(path, body) for method, path, _, body in self.requests if method == "PATCH"]


def _as_stored(value: object, key: str = "") -> object:
    """The manifest as the API server returns it: resource quantities are strings ("8", not 8)."""
    if isinstance(value, dict):
        return {k: _as_stored(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_stored(v) for v in value]
    return str(value) if key in ("cpu", "memory", "nvidia.com/gpu") else value


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    yield server
    server.httpd.shutdown()


def _provider(api: FakeApiServer, max_hosts: int | None = None) -> KubernetesProvider:
    configuration = client.Configuration(host=api.url)
    api_client = client.ApiClient(configuration)
    return KubernetesProvider(max_hosts=max_hosts, apps=client.AppsV1Api(api_client), core=client.CoreV1Api(api_client))


def test_adding_a_host_scales_the_agent_pool_up_by_one(api: FakeApiServer) -> None:
    pending = _provider(api).add_host(gpus=8)
    assert pending.name is None and pending.gpus == 8  # the node names the agent: the next to join takes it
    assert api.patches() == [(f"{APPS}/scale", {"spec": {"replicas": 3}})]


def test_the_provider_refuses_past_its_most_hosts(api: FakeApiServer) -> None:
    with pytest.raises(ProviderError, match="already runs 2 agent"):
        _provider(api, max_hosts=2).add_host(gpus=8)
    assert api.patches() == []


def test_removing_a_host_deletes_the_pod_on_its_node_by_scaling_down(api: FakeApiServer) -> None:
    _provider(api).remove_host(SimpleNamespace(name="gpu-node-2"))
    [listed] = [query for method, path, query, _ in api.requests if method == "GET" and path == PODS]
    assert listed == {
        "labelSelector": ["app.kubernetes.io/name=notebookos-agent-pool"],
        "fieldSelector": ["spec.nodeName=gpu-node-2"],
    }
    assert api.patches() == [
        (f"{PODS}/notebookos-agent-pool-7d9f8c6b5-x2k4q", {"metadata": {"annotations": {DELETION_COST: "-1000000"}}}),
        (f"{APPS}/scale", {"spec": {"replicas": 1}}),
    ]


def test_missing_permissions_are_an_error_that_names_the_rbac(api: FakeApiServer) -> None:
    api.forbidden = True
    with pytest.raises(ProviderError, match="403 Forbidden.*rbac.yaml"):
        _provider(api).add_host(gpus=8)
