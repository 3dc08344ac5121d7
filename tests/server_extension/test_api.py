"""The REST API under ``/api/notebookos/`` through a real Jupyter Server (pytest-jupyter) and the session's cluster.

Every response a test gets is validated against the OpenAPI document the server itself serves (the status must be
documented for the operation, the body must match its schema). The schemathesis run fuzzes every operation, the
replica kill and restart included: their generated kernel ids are random strings, which name no kernel (real ones
are UUIDs the server chose), so the fuzzer meets 404s and never kills a real replica.
"""

from __future__ import annotations

import asyncio
import collections
import getpass
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypothesis
import jsonschema
import pytest
import schemathesis
from schemathesis.core.parameters import ParameterLocation
from jupyter_server.auth import Authorizer

from notebookos.gpu_broker.cluster.client import CLUSTER_FILE_ENV

from .conftest import PREFIX, Api, EventStream

# The front notices a killed replica after 1 s of missed heartbeats and restarts it one detection window later.
RESTART_TIMEOUT_S = 30
FUZZ_EXAMPLES = 20  # per operation and generation mode


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
    assert set(doc["paths"]) == {
        f"{PREFIX}/{p}"
        for p in (
            "openapi.json",
            "me",
            "cluster",
            "hosts",
            "hosts/{name}",
            "hosts/{name}/drain",
            "gpus",
            "kernels",
            "kernels/{kernel_id}",
            "metrics",
            "events",
            "events/stream",
            "history",
            "kernels/{kernel_id}/replicas/{replica}/kill",
            "kernels/{kernel_id}/replicas/{replica}/restart",
            "kernels/{kernel_id}/replicas/{replica}/migrate",
        )
    }
    # schemathesis loads it (it refuses documents that are not OpenAPI).
    assert len([op for op in schemathesis.openapi.from_dict(doc).get_all_operations() if op.ok()]) == 19


@pytest.mark.parametrize("authorization", ["", "token not-the-token"])
async def test_requests_without_a_valid_token_are_refused(api: Api, authorization: str) -> None:
    headers = {"Authorization": authorization}
    for template in (
        "openapi.json",
        "me",
        "cluster",
        "hosts",
        "gpus",
        "kernels",
        "kernels/{kernel_id}",
        "metrics",
        "events",
        "events/stream",
        "history",
    ):
        resp = await api.call("GET", f"{PREFIX}/{template}", headers=headers, kernel_id="k")
        assert resp.code == 403, template
    for method, template in CHANGING_ACTIONS:
        resp = await api.call(
            method, f"{PREFIX}/{template}", headers=headers, kernel_id="k", replica="0", name="host-1"
        )
        assert resp.code == 403, template


CHANGING_ACTIONS = [
    ("POST", "hosts"),
    ("PATCH", "hosts/{name}"),
    ("DELETE", "hosts/{name}"),
    ("POST", "hosts/{name}/drain"),
    ("DELETE", "kernels/{kernel_id}"),
] + [("POST", f"kernels/{{kernel_id}}/replicas/{{replica}}/{action}") for action in ("kill", "restart", "migrate")]


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
    assert gpus == [
        {"host": f"host-{i}", "device": 0, "state": "idle", "kernel": None, "replica": None, "since": None}
        for i in range(1, 5)
    ]
    assert [h["gpus"] for h in hosts] == [1, 1, 1, 1] and {h["state"] for h in hosts} == {"active"}
    assert cluster["gpus"] == {"total": 4, "idle": 4, "pending": 0, "committed": 0}
    assert cluster["policy"] == "notebookos" and cluster["pending_cells"] == 0
    # The service process answering, as its discovery file names it: a restart would show a new pid.
    discovery = json.loads(Path(os.environ[CLUSTER_FILE_ENV]).read_text())
    assert cluster["pid"] == discovery["pid"] and 0 < cluster["started_at"] <= time.time()
    assert cluster["subscription_ratio"] == sum(h["subscribed_gpus"] for h in hosts) / 4
    # A personal server (not under JupyterHub, no c.NotebookOS admins named): its user is the pool's admin, and owns
    # the kernels of the account running it.
    me = await api.json("GET", f"{PREFIX}/me")
    assert me["admin"] is True and isinstance(me["name"], str) and me["owner"] == getpass.getuser()

    text = (await api.call("GET", f"{PREFIX}/metrics")).body.decode()
    assert metric(text, "notebookos_cluster_up") == 1
    assert metric(text, "notebookos_hosts") == 4
    assert metric(text, "notebookos_kernels") == cluster["kernels"]
    assert 'notebookos_replicas{state="alive"}' in text and 'notebookos_replicas{state="dead"}' in text
    assert 'notebookos_host_replicas{host="host-1",state="alive"}' in text
    # The cluster service's own counters come with them.
    for counted in (
        "notebookos_gpu_seconds_committed_total",
        "notebookos_interactivity_delay_seconds_count",
        "notebookos_gpu_bind_seconds_count",
        'notebookos_scale_events_total{direction="out"}',
    ):
        assert counted in text, counted


async def test_unknown_kernel_and_malformed_replica(api: Api) -> None:
    missing = await api.json("GET", f"{PREFIX}/kernels/{{kernel_id}}", 404, kernel_id="no-such-kernel-100%s")
    assert "no kernel no-such-kernel-100%s in this cluster" in missing["message"]
    for action in ("kill", "restart"):
        template = f"{PREFIX}/kernels/{{kernel_id}}/replicas/{{replica}}/{action}"
        await api.json("POST", template, 404, kernel_id="no-such-kernel", replica="0")
        for bad in ("x", "-1", "1.5", "\u00b2"):  # a superscript two: a digit to str.isdigit, not to us
            refused = await api.json("POST", template, 400, kernel_id="no-such-kernel", replica=bad)
            assert "path parameter 'replica'" in refused["message"]


async def test_cluster_unreachable_is_503_with_what_to_do(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from notebookos.gpu_broker.cluster.client import CLUSTER_FILE_ENV

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
    down = await api.json(
        "POST", f"{PREFIX}/kernels/{{kernel_id}}/replicas/{{replica}}/kill", 503, kernel_id="k", replica="0"
    )
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
    # Who and what it serves: the notebook as the session names it, the account that runs Jupyter.
    assert kernel["notebook"] == notebook_session["path"] and kernel["owner"] == getpass.getuser()
    assert all(r["alive"] and r["restarts"] == 0 for r in kernel["replicas"]) and kernel["replicas_alive"] == 3
    assert await api.json("GET", one, kernel_id=kernel_id) == kernel
    hosts = (await api.json("GET", f"{PREFIX}/hosts"))["hosts"]
    assert sorted(h["name"] for h in hosts if kernel_id in h["kernels"]) == sorted(
        r["host"] for r in kernel["replicas"]
    )

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

    after = await until(restarted, "the scheduler replacing replica 1", RESTART_TIMEOUT_S)
    assert after["replicas_alive"] == 3
    assert after["replicas"][1]["pid"] != kernel["replicas"][1]["pid"]
    # Replaced on the one host that held no replica of the kernel.
    assert after["replicas"][1]["host"] not in {r["host"] for r in kernel["replicas"]}
    seen = (await api.json("GET", f"{PREFIX}/events", query={"kernel": kernel_id}))["events"]
    assert [e["kind"] for e in seen if e["kind"].startswith("replica_")] == [
        "replica_killed",
        "replica_exited",
        "replica_lost",
        "replica_replaced",
    ]
    assert next(e for e in seen if e["kind"] == "replica_exited")["reason"] == "killed by SIGKILL"

    # Restart of a live replica changes nothing.
    same = await api.json("POST", f"{one}/replicas/{{replica}}/restart", kernel_id=kernel_id, replica="1")
    assert same["replicas"] == after["replicas"]
    text = (await api.call("GET", f"{PREFIX}/metrics")).body.decode()
    assert metric(text, "notebookos_replica_restarts") >= 1


async def test_migrate_a_replica_and_shut_the_kernel_down(api: Api, notebook_session: dict) -> None:
    kernel_id = notebook_session["kernel"]["id"]
    one = f"{PREFIX}/kernels/{{kernel_id}}"
    kernel = await api.json("GET", one, kernel_id=kernel_id)
    [free] = {f"host-{i}" for i in range(1, 5)} - {r["host"] for r in kernel["replicas"]}
    migrate = f"{one}/replicas/{{replica}}/migrate"
    refused = await api.json(
        "POST", migrate, 409, kernel_id=kernel_id, replica="0", body={"host": kernel["replicas"][1]["host"]}
    )
    assert "already holds a replica" in refused["message"]
    assert "host" in (await api.json("POST", migrate, 400, kernel_id=kernel_id, replica="0", body={}))["message"]
    moved = await api.json("POST", migrate, kernel_id=kernel_id, replica="0", body={"host": free})
    assert moved["replicas"][0]["host"] == free
    kinds = [e["kind"] for e in (await api.json("GET", f"{PREFIX}/events", query={"kernel": kernel_id}))["events"]]
    assert "replica_moved" in kinds
    resp = await api.call("DELETE", one, kernel_id=kernel_id)
    assert resp.code == 204
    await api.json("GET", one, 404, kernel_id=kernel_id)


async def test_host_gpu_count_changes_and_refusals(api: Api) -> None:
    host = f"{PREFIX}/hosts/{{name}}"
    resized = await api.json("PATCH", host, name="host-4", body={"gpus": 2})
    assert resized["gpus"] == 2 and resized["idle_gpus"] == 2
    assert [g["device"] for g in (await api.json("GET", f"{PREFIX}/gpus"))["gpus"] if g["host"] == "host-4"] == [0, 1]
    assert (await api.json("PATCH", host, name="host-4", body={"gpus": 1}))["gpus"] == 1
    for bad in ({}, {"gpus": 0}, {"gpus": "2"}, {"gpus": True}):
        assert "body field 'gpus'" in (await api.json("PATCH", host, 400, name="host-4", body=bad))["message"]
    assert "no host" in (await api.json("PATCH", host, 404, name="host-9", body={"gpus": 1}))["message"]
    # The session's cluster runs at its provider's maximum: one more host is refused with what to do.
    more = await api.json("POST", f"{PREFIX}/hosts", 409, body={})
    assert "--max-hosts" in more["message"]
    history = await api.json("GET", f"{PREFIX}/history", query={"seconds": "3600"})
    assert history["interval_s"] > 0 and all(s["gpus_total"] >= 4 for s in history["samples"])
    too_short = await api.json("GET", f"{PREFIX}/history", 400, query={"seconds": "-5"})
    assert "query parameter 'seconds': -5.0 is less than the minimum of 1" in too_short["message"]
    # The extension and the service take the same fields: a typo in a query parameter is refused, not ignored.
    assert (
        "unknown query parameter 'sinse'"
        in (await api.json("GET", f"{PREFIX}/events", 400, query={"sinse": "1"}))["message"]
    )
    changes = (await api.json("GET", f"{PREFIX}/events", query={"kind": "host_resized"}))["events"]
    assert [e["data"]["gpus"] for e in changes][-2:] == [2, 1]


async def test_event_stream_sends_events_as_they_happen(api: Api, event_stream: Callable[..., EventStream]) -> None:
    """The stream is read as a browser's EventSource would: ``id``/``data`` lines, resumed after Last-Event-ID."""
    last = (await api.json("GET", f"{PREFIX}/events"))["last_seq"]
    stream = event_stream(**{"Last-Event-ID": str(last)})
    # Something happens on the cluster: a host's GPU count changes (and changes back).
    for gpus in (3, 1):
        await api.json("PATCH", f"{PREFIX}/hosts/{{name}}", name="host-3", body={"gpus": gpus})
    [received] = await stream.until(lambda event: True, 30)
    assert received["seq"] == last + 1
    assert received["kind"] == "host_resized" and received["host"] == "host-3"


# --- authorization: a user who may read but is not an admin -------------------------------------------------------


class ReaderAuthorizer(Authorizer):
    """Everything Jupyter offers, but only ``read`` on the notebookos resource: no changes, not even by a user the
    notebookos rules make an admin (this personal server's one user)."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return resource != "notebookos" or action == "read"


class AsyncReaderAuthorizer(Authorizer):
    """The same, answering asynchronously (jupyter_server awaits an authorizer that does)."""

    async def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return resource != "notebookos" or action == "read"


class TestReader:
    @pytest.fixture(params=[ReaderAuthorizer, AsyncReaderAuthorizer])
    def jp_server_config(self, jp_server_config: Any, request: pytest.FixtureRequest) -> Any:
        jp_server_config.ServerApp.authorizer_class = request.param
        return jp_server_config

    async def test_reads_work_and_changing_actions_are_forbidden(self, api: Api) -> None:
        for template in ("cluster", "hosts", "kernels", "events", "history"):
            await api.json("GET", f"{PREFIX}/{template}")
        assert (await api.call("GET", f"{PREFIX}/metrics")).code == 200
        assert (await api.json("GET", f"{PREFIX}/me"))["admin"] is False
        for method, template in CHANGING_ACTIONS:
            refused = await api.json(
                method, f"{PREFIX}/{template}", 403, kernel_id="any-kernel", replica="0", name="host-1"
            )
            assert "'write' on resource 'notebookos'" in refused["message"], template


# --- metrics authentication: as the server's own /metrics ---------------------------------------------------------

NO_LOGIN = {"Authorization": "token not-the-server-token"}


async def test_metrics_need_a_login_by_default(api: Api) -> None:
    assert (await api.call("GET", f"{PREFIX}/metrics", headers=NO_LOGIN)).code == 403


class TestOpenMetrics:
    @pytest.fixture
    def jp_server_config(self, jp_server_config: Any) -> Any:
        jp_server_config.ServerApp.authenticate_prometheus = False
        return jp_server_config

    async def test_metrics_are_open_when_the_server_says_so(self, api: Api) -> None:
        resp = await api.call("GET", f"{PREFIX}/metrics", headers=NO_LOGIN)
        assert resp.code == 200 and b"notebookos_cluster_up" in resp.body
        assert (await api.call("GET", f"{PREFIX}/cluster", headers=NO_LOGIN)).code == 403


# --- fuzzing ------------------------------------------------------------------------------------------------------

FRAMING_HEADERS = {"content-length", "transfer-encoding", "host", "connection", "expect"}


async def test_schemathesis_finds_no_server_error(
    api: Api, jp_http_port: int, jp_base_url: str, jp_auth_header: dict
) -> None:
    """Positive and negative cases for every operation against the live server: no 5xx, every answer conforms."""
    schema = schemathesis.openapi.from_dict(api.doc)
    base_url = f"http://127.0.0.1:{jp_http_port}{jp_base_url.rstrip('/')}"
    answers: collections.Counter[tuple[str, int]] = collections.Counter()

    def fuzz() -> None:
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.definition.raw["operationId"] == "streamEvents":
                continue  # an endless stream: tested on its own
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

                @hypothesis.settings(
                    max_examples=FUZZ_EXAMPLES,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(hypothesis.HealthCheck),
                    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                )
                @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
                def check(case: schemathesis.Case) -> None:
                    # Every case is sent with this test's login (jp_auth_header), which replaces whatever the
                    # generator put in the Authorization header: a case made invalid there would be repaired
                    # before it is sent, and then rightly accepted.
                    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER):
                        return
                    # Malformed framing headers (a Content-Length of "e86 L7...") are refused by Tornado's HTTP
                    # layer with an empty 400 before any handler runs: not the API's answer to check.
                    if case.headers:
                        case.headers = {k: v for k, v in case.headers.items() if k.lower() not in FRAMING_HEADERS}
                    # Default checks: no 5xx, status and content type documented, body matches its schema,
                    # invalid input refused with a 4xx, requests without auth refused.
                    response = case.call_and_validate(base_url=base_url, headers=jp_auth_header, timeout=30)
                    operation_id = operation.definition.raw["operationId"]  # noqa: B023 - check() runs at once
                    answers[operation_id, response.status_code] += 1

                check()

    # The server runs on this test's event loop: the synchronous fuzzer runs in a thread while the loop serves it.
    await asyncio.get_running_loop().run_in_executor(None, fuzz)
    # The cases got past authentication (the negative ones mostly do not: they mangle the token header).
    for operation_id in ("getOpenAPI", "getCluster", "listHosts", "listKernels", "getMetrics"):
        assert answers[operation_id, 200], answers
    for action in ("kill", "restart"):
        assert answers[f"{action}Replica", 404] and answers[f"{action}Replica", 400], answers
    assert answers["getKernel", 404], answers
