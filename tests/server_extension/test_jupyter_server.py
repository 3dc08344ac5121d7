"""The notebookos kernel through a real Jupyter Server, as JupyterLab uses it: REST sessions and the kernel websocket.

The server runs in the test process (pytest-jupyter); the kernel front it starts through the notebookos provisioner
places its three replicas on the session's cluster (``cluster_file``). Messages go over the kernel websocket in the
JSON ("legacy", no subprotocol) form of the v5 messaging protocol.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

# Starting a kernel places three replicas and starts the front; a first cell waits for the replicas' Raft group.
from .conftest import KERNEL_START_TIMEOUT_S

CELL_TIMEOUT_S = 60


@dataclass
class Cell:
    reply: dict | None = None
    outputs: list[dict] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        return "".join(
            m["content"]["text"] for m in self.outputs if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
        )

    def of_type(self, msg_type: str) -> list[dict]:
        return [m for m in self.outputs if m["msg_type"] == msg_type]


class KernelSocket:
    """A client of one kernel over ``/api/kernels/<id>/channels``."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.session = uuid.uuid4().hex

    async def execute(self, code: str, timeout: float = CELL_TIMEOUT_S) -> Cell:
        """Send an execute_request; collect its IOPub messages and reply, until both the reply and idle arrived."""
        msg_id = uuid.uuid4().hex
        self.ws.write_message(
            json.dumps(
                {
                    "channel": "shell",
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "execute_request",
                        "username": "test",
                        "session": self.session,
                        "date": datetime.datetime.now(datetime.UTC).isoformat(),
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "buffers": [],
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": True,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                }
            )
        )
        cell, idle = Cell(), False
        deadline = time.monotonic() + timeout
        while cell.reply is None or not idle:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no reply and idle status for {code!r} within {timeout} s; got {cell}")
            raw = await asyncio.wait_for(self.ws.read_message(), remaining)
            assert raw is not None, f"the kernel websocket closed while running {code!r}; got {cell}"
            msg = json.loads(raw)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["channel"] == "shell" and msg["msg_type"] == "execute_reply":
                cell.reply = msg
            elif msg["channel"] == "iopub":
                if msg["msg_type"] == "status":
                    idle = idle or msg["content"]["execution_state"] == "idle"
                else:
                    cell.outputs.append(msg)
        return cell


async def cluster_get(cluster_file: str, path: str) -> tuple[int, Any]:
    """GET on the cluster's own REST API, authenticated with the token of its discovery file."""
    with open(cluster_file) as f:
        data = json.load(f)
    req = HTTPRequest(f"{data['url']}{path}", headers={"Authorization": f"token {data['token']}"}, request_timeout=10)
    try:
        resp = await AsyncHTTPClient().fetch(req)
    except HTTPClientError as err:
        return err.code, None
    return resp.code, json.loads(resp.body)


async def open_kernel(jp_ws_fetch: Any, kernel_id: str) -> KernelSocket:
    ws = await jp_ws_fetch("api", "kernels", kernel_id, "channels", params={"session_id": uuid.uuid4().hex})
    return KernelSocket(ws)


async def test_kernelspec_is_listed(jp_fetch: Any) -> None:
    resp = await jp_fetch("api", "kernelspecs")
    specs = json.loads(resp.body)["kernelspecs"]
    assert "notebookos" in specs
    spec = specs["notebookos"]["spec"]
    assert spec["display_name"] == "Python 3 (notebookos)"
    assert spec["language"] == "python"


async def test_cells_run_over_the_kernel_websocket(notebook_session: dict, jp_ws_fetch: Any) -> None:
    assert notebook_session["kernel"]["name"] == "notebookos"
    kernel = await open_kernel(jp_ws_fetch, notebook_session["kernel"]["id"])
    try:
        first = await kernel.execute("a = 20")
        assert first.reply["content"]["status"] == "ok"
        assert first.of_type("error") == [] and first.stdout == ""

        second = await kernel.execute("print(a + 22)")
        assert second.reply["content"]["status"] == "ok"
        assert second.stdout == "42\n"
        assert second.reply["content"]["execution_count"] == first.reply["content"]["execution_count"] + 1

        result = await kernel.execute("a * 2")
        [shown] = result.of_type("execute_result")
        assert shown["content"]["data"]["text/plain"] == "40"
    finally:
        kernel.ws.close()


async def test_error_cell_reports_the_error(notebook_session: dict, jp_ws_fetch: Any) -> None:
    kernel = await open_kernel(jp_ws_fetch, notebook_session["kernel"]["id"])
    try:
        failed = await kernel.execute("undefined_name + 1")
        assert failed.reply["content"]["status"] == "error"
        assert failed.reply["content"]["ename"] == "NameError"
        [error] = failed.of_type("error")
        assert error["content"]["ename"] == "NameError"
        assert "undefined_name" in error["content"]["evalue"]
        assert error["content"]["traceback"]

        # The kernel is still usable after the error.
        after = await kernel.execute("print('still here')")
        assert after.reply["content"]["status"] == "ok"
        assert after.stdout == "still here\n"
    finally:
        kernel.ws.close()


async def test_deleting_the_session_removes_the_replicas(
    notebook_session: dict, jp_fetch: Any, jp_ws_fetch: Any, cluster_file: str
) -> None:
    kernel_id = notebook_session["kernel"]["id"]
    kernel = await open_kernel(jp_ws_fetch, kernel_id)
    try:
        ran = await kernel.execute("x = 1")
        assert ran.reply["content"]["status"] == "ok"
    finally:
        kernel.ws.close()

    code, described = await cluster_get(cluster_file, f"/kernels/{kernel_id}")
    assert code == 200
    pids = [r["pid"] for r in described["replicas"]]
    assert len(pids) == 3 and all(r["alive"] for r in described["replicas"])

    resp = await jp_fetch(
        "api", "sessions", notebook_session["id"], method="DELETE", request_timeout=KERNEL_START_TIMEOUT_S
    )
    assert resp.code == 204

    code, _ = await cluster_get(cluster_file, f"/kernels/{kernel_id}")
    assert code == 404
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(HTTPClientError) as gone:
        await jp_fetch("api", "kernels", kernel_id)
    assert gone.value.code == 404
