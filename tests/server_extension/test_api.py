"""The REST API under ``/api/notebookos/`` through a real Jupyter Server (pytest-jupyter) and the session's cluster.

Every response a test gets is validated against the OpenAPI document the server itself serves (the status must be
documented for the operation, the body must match its schema). The schemathesis run fuzzes every operation, the
replica kill and restart included: their generated kernel ids are random strings, which name no kernel (real ones
are UUIDs the server chose), so the fuzzer meets 404s and never kills a real replica.
"""
from __future__ import annotations

import asyncio
import collections
import json
import time
from typing import Any

import hypothesis
import jsonschema
import pytest
import referencing
import referencing.jsonschema
import schemathesis
from jupyter_server.auth import Authorizer
from tornado.httpclient import HTTPResponse

from .conftest import fetch_in_loop

API = ("api", "notebookos")
PREFIX = "/api/notebookos"
DOC_URI = "urn:notebookos:openapi"
# The front notices a killed replica after 1 s of missed heartbeats and restarts it one detection window later.
RESTART_TIMEOUT_S = 30
FUZZ_EXAMPLES = 20  # per operation and generation mode


class Api:
    """Calls the API through ``jp_fetch`` and checks every answer against the served OpenAPI document."""

    def __init__(self, jp_fetch: Any, doc: dict) -> None:
        self.fetch = jp_fetch
        self.doc = doc
        self.registry = referencing.Registry().with_resource(
            DOC_URI, referencing.Resource.from_contents(doc, default_specification=referencing.jsonschema.DRAFT202012))

    async def call(self, method: str, template: str, *, headers: dict | None = None, **params: str) -> HTTPResponse:
        path = template.format(**params)
        resp = await self.fetch(*path.strip("/").split("/"), method=method, headers=headers, raise_error=False,
                                body=b"" if method == "POST" else None, request_timeout=30)
        self.validate(method, template, resp)
        return resp

    def validate(self, method: str, template: str, resp: HTTPResponse) -> None:
        operation = self.doc["paths"][template][method.lower()]
        assert str(resp.code) in operation["responses"], (
            f"{method} {template} answered {resp.code}, which its OpenAPI operation does not document: "
            f"{resp.body[:500]!r}")
        content = operation["responses"][str(resp.code)]["content"]
        content_type = resp.headers.get("Content-Type", "")
        media = content_type.split(";")[0].strip()
        assert media in content, f"{method} {template} {resp.code} answered {content_type}, not {list(content)}"
        if media == "application/json":
            pointer = "/".join(["#/paths", template.replace("~", "~0").replace("/", "~1"), method.lower(),
                                "responses", str(resp.code), "content", "application~1json", "schema"])
            validator = jsonschema.Draft202012Validator({"$ref": DOC_URI + pointer}, registry=self.registry)
            validator.validate(json.loads(resp.body))

    async def json(self, method: str, template: str, expect: int = 200, **kw: Any) -> Any:
        resp = await self.call(method, template, **kw)
        assert resp.code == expect, f"{method} {template}: {resp.code} {resp.body[:500]!r}"
        return json.loads(resp.body)


@pytest.fixture
def api(jp_fetch: Any, jp_asyncio_loop: asyncio.AbstractEventLoop) -> Api:
    """The API client, holding the document the server serves (itself checked against the document)."""
    resp = fetch_in_loop(jp_asyncio_loop, jp_fetch, *API, "openapi.json")
    doc = json.loads(resp.body)
    client = Api(jp_fetch, doc)
    client.validate("GET", f"{PREFIX}/openapi.json", resp)
    return client


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no sample {name} in {text}")


async def until(probe: Any, what: str, timeout: float) -> Any:
    """Poll ``probe()`` (a coroutine function) until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.1)


# --- the document and authentication ------------------------------------------------------------------------------

async def test_openapi_document_describes_the_routes(api: Api, jp_base_url: str) -> None:
    doc = api.doc
    assert doc["openapi"].startswith("3.1")
    assert doc["servers"] == [{"url": jp_base_url.rstrip("/")}]
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    assert set(doc["paths"]) == {f"{PREFIX}/{p}" for p in (
        "openapi.json", "cluster", "hosts", "gpus", "kernels", "kernels/{kernel_id}", "metrics",
        "kernels/{kernel_id}/replicas/{replica}/kill", "kernels/{kernel_id}/replicas/{replica}/restart")}
    # schemathesis loads it (it refuses documents that are not OpenAPI).
    assert len([op for op in schemathesis.openapi.from_dict(doc).get_all_operations() if op.ok()]) == 9


@pytest.mark.parametrize("authorization", ["", "token not-the-token"])
async def test_requests_without_a_valid_token_are_refused(api: Api, authorization: str) -> None:
    headers = {"Authorization": authorization}
    for template in (f"{PREFIX}/openapi.json", f"{PREFIX}/cluster", f"{PREFIX}/hosts", f"{PREFIX}/gpus",
                     f"{PREFIX}/kernels",
                     f"{PREFIX}/kernels/{{kernel_id}}", f"{PREFIX}/metrics"):
        resp = await api.call("GET", template, headers=headers, kernel_id="k")
        assert resp.code == 403, template
    for action in ("kill", "restart"):
        resp = await api.call("POST", f"{PREFIX}/kernels/{{kernel_id}}/replicas/{{replica}}/{action}",
                              headers=headers, kernel_id="k", replica="0")
        assert resp.code == 403


# --- reads and errors ---------------------------------------------------------------------------------------------

async def test_cluster_hosts_kernels_and_metrics(api: Api) -> None:
    cluster = await api.json("GET", f"{PREFIX}/cluster")
    assert [h["name"] for h in cluster["hosts"]] == ["host-1", "host-2", "host-3", "host-4"]
    assert cluster["replicas"]["total"] == sum(h["replicas"] for h in cluster["hosts"])
    hosts = (await api.json("GET", f"{PREFIX}/hosts"))["hosts"]
    assert [h["name"] for h in hosts] == [h["name"] for h in cluster["hosts"]]
    kernels = (await api.json("GET", f"{PREFIX}/kernels"))["kernels"]
    assert len(kernels) == cluster["kernels"]
    # The session cluster: 4 logical hosts with 1 virtual GPU each, none held between cells.
    gpus = (await api.json("GET", f"{PREFIX}/gpus"))["gpus"]
    assert gpus == [{"host": f"host-{i}", "device": 0, "kernel": None} for i in range(1, 5)]
    assert [h["gpus"] for h in hosts] == [1, 1, 1, 1]

    text = (await api.call("GET", f"{PREFIX}/metrics")).body.decode()
    assert metric(text, "notebookos_cluster_up") == 1
    assert metric(text, "notebookos_hosts") == 4
    assert metric(text, "notebookos_kernels") == cluster["kernels"]
    assert 'notebookos_replicas{state="alive"}' in text and 'notebookos_replicas{state="dead"}' in text
    assert 'notebookos_host_replicas{host="host-1",state="alive"}' in text


async def test_unknown_kernel_and_malformed_replica(api: Api) -> None:
    missing = await api.json("GET", f"{PREFIX}/kernels/{{kernel_id}}", 404, kernel_id="no-such-kernel-100%s")
    assert "no kernel no-such-kernel-100%s in this cluster" in missing["message"]
    for action in ("kill", "restart"):
        template = f"{PREFIX}/kernels/{{kernel_id}}/replicas/{{replica}}/{action}"
        await api.json("POST", template, 404, kernel_id="no-such-kernel", replica="0")
        for bad in ("x", "-1", "1.5", "\u00b2"):  # a superscript two: a digit to str.isdigit, not to us
            refused = await api.json("POST", template, 400, kernel_id="no-such-kernel", replica=bad)
            assert "replica must be an index" in refused["message"]


async def test_cluster_unreachable_is_503_with_what_to_do(api: Api, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Any) -> None:
    from notebookos.gpu_broker.client import CLUSTER_FILE_ENV

    monkeypatch.setenv(CLUSTER_FILE_ENV, str(tmp_path / "missing.json"))
    down = await api.json("GET", f"{PREFIX}/cluster", 503)
    assert "No notebookos cluster is configured" in down["message"] and "notebookos lab" in down["message"]

    gone = tmp_path / "gone.json"  # a cluster that has stopped: nothing listens on its port any more
    gone.write_text(json.dumps({"url": "http://127.0.0.1:9", "token": "t", "pid": 1}))
    monkeypatch.setenv(CLUSTER_FILE_ENV, str(gone))
    for template in ("cluster", "hosts", "kernels", "kernels/{kernel_id}"):
        down = await api.json("GET", f"{PREFIX}/{template}", 503, kernel_id="k")
        assert "Cannot reach the notebookos cluster at http://127.0.0.1:9" in down["message"], down
        assert CLUSTER_FILE_ENV in down["message"]
    down = await api.json("POST", f"{PREFIX}/kernels/{{kernel_id}}/replicas/{{replica}}/kill", 503,
                          kernel_id="k", replica="0")
    text = (await api.call("GET", f"{PREFIX}/metrics")).body.decode()
    assert metric(text, "notebookos_cluster_up") == 0
    assert "notebookos_kernels" not in text


# --- a kernel, and the fault drill --------------------------------------------------------------------------------

async def test_kill_a_replica_and_see_it_restarted(api: Api, notebook_session: dict, jp_serverapp: Any) -> None:
    kernel_id = notebook_session["kernel"]["id"]
    one = f"{PREFIX}/kernels/{{kernel_id}}"
    kernels = (await api.json("GET", f"{PREFIX}/kernels"))["kernels"]
    [kernel] = [k for k in kernels if k["id"] == kernel_id]
    assert [r["index"] for r in kernel["replicas"]] == [0, 1, 2]
    assert all(r["alive"] and r["restarts"] == 0 for r in kernel["replicas"]) and kernel["replicas_alive"] == 3
    assert await api.json("GET", one, kernel_id=kernel_id) == kernel
    hosts = (await api.json("GET", f"{PREFIX}/hosts"))["hosts"]
    assert sorted(h["name"] for h in hosts if kernel_id in h["kernels"]) == sorted(r["host"] for r in kernel["replicas"])

    # The kernel's message key appears in no answer (the cluster keeps it in each replica's connection info).
    key = jp_serverapp.kernel_manager.get_kernel(kernel_id).session.key.decode()
    for template in ("cluster", "hosts", "kernels", "kernels/{kernel_id}", "metrics"):
        assert key not in (await api.call("GET", f"{PREFIX}/{template}", kernel_id=kernel_id)).body.decode()

    await api.json("POST", f"{one}/replicas/{{replica}}/kill", 404, kernel_id=kernel_id, replica="3")
    killed = await api.json("POST", f"{one}/replicas/{{replica}}/kill", kernel_id=kernel_id, replica="1")
    assert [r["alive"] for r in killed["replicas"]] == [True, False, True]
    assert killed["replicas_alive"] == 2

    async def restarted() -> dict | None:
        now = await api.json("GET", one, kernel_id=kernel_id)
        replica = now["replicas"][1]
        return now if replica["restarts"] == 1 and replica["alive"] else None

    after = await until(restarted, "the front restarting replica 1 in place", RESTART_TIMEOUT_S)
    assert after["replicas_alive"] == 3
    assert after["replicas"][1]["pid"] != kernel["replicas"][1]["pid"]
    assert after["replicas"][1]["host"] == kernel["replicas"][1]["host"]

    # Restart of a live replica changes nothing.
    same = await api.json("POST", f"{one}/replicas/{{replica}}/restart", kernel_id=kernel_id, replica="1")
    assert same["replicas"] == after["replicas"]
    text = (await api.call("GET", f"{PREFIX}/metrics")).body.decode()
    assert metric(text, "notebookos_replica_restarts") >= 1


# --- authorization: a user who may read but is not an admin -------------------------------------------------------

class ReaderAuthorizer(Authorizer):
    """Everything Jupyter offers, but only ``read`` on the notebookos resource."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return resource != "notebookos" or action == "read"


class TestReader:
    @pytest.fixture
    def jp_server_config(self, jp_server_config: Any) -> Any:
        jp_server_config.ServerApp.authorizer_class = ReaderAuthorizer
        return jp_server_config

    async def test_reads_work_and_fault_drills_are_forbidden(self, api: Api) -> None:
        for template in ("cluster", "hosts", "kernels"):
            await api.json("GET", f"{PREFIX}/{template}")
        assert (await api.call("GET", f"{PREFIX}/metrics")).code == 200
        for action in ("kill", "restart"):
            refused = await api.json("POST", f"{PREFIX}/kernels/{{kernel_id}}/replicas/{{replica}}/{action}", 403,
                                     kernel_id="any-kernel", replica="0")
            assert "admin permission" in refused["message"]


# --- fuzzing ------------------------------------------------------------------------------------------------------

async def test_schemathesis_finds_no_server_error(api: Api, jp_http_port: int, jp_base_url: str,
                                                  jp_auth_header: dict) -> None:
    """Positive and negative cases for every operation against the live server: no 5xx, every answer conforms."""
    schema = schemathesis.openapi.from_dict(api.doc)
    base_url = f"http://127.0.0.1:{jp_http_port}{jp_base_url.rstrip('/')}"
    answers: collections.Counter[tuple[str, int]] = collections.Counter()

    def fuzz() -> None:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                @hypothesis.settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                                     suppress_health_check=list(hypothesis.HealthCheck),
                                     phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
                @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
                def check(case: schemathesis.Case) -> None:
                    # Default checks: no 5xx, status and content type documented, body matches its schema,
                    # invalid input refused with a 4xx, requests without auth refused.
                    response = case.call_and_validate(base_url=base_url, headers=jp_auth_header, timeout=30)
                    answers[operation.definition.raw["operationId"], response.status_code] += 1

                check()

    # The server runs on this test's event loop: the synchronous fuzzer runs in a thread while the loop serves it.
    await asyncio.get_running_loop().run_in_executor(None, fuzz)
    # The cases got past authentication (the negative ones mostly do not: they mangle the token header).
    for operation_id in ("getOpenAPI", "getCluster", "listHosts", "listKernels", "getMetrics"):
        assert answers[operation_id, 200], answers
    for action in ("kill", "restart"):
        assert answers[f"{action}Replica", 404] and answers[f"{action}Replica", 400], answers
    assert answers["getKernel", 404], answers
