"""A small synchronous driver over jupyter_client for tests: run a cell, collect what a user would see."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.manager import KernelManager

CELL_TIMEOUT_S = 120


@dataclass
class CellResult:
    reply: dict
    stdout: str = ""
    stderr: str = ""
    result: str | None = None
    error: str | None = None
    messages: list[dict] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.reply["content"]["status"]


class Notebook:
    """One kernel, driven like a notebook: cells in order, outputs collected until the kernel is idle."""

    def __init__(self, km: KernelManager, kc: BlockingKernelClient) -> None:
        self.km = km
        self.kc = kc

    def run(
        self,
        code: str,
        replica: int | None = None,
        stdin: list[str] | None = None,
        timeout: float = CELL_TIMEOUT_S,
        on_output: Any = None,
    ) -> CellResult:
        metadata = {} if replica is None else {"notebookos_replica": replica}
        msg = self.kc.session.msg(
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": stdin is not None,
                "stop_on_error": True,
            },
            metadata=metadata,
        )
        self.kc.shell_channel.send(msg)
        msg_id = msg["header"]["msg_id"]
        answers = list(stdin or [])
        out = CellResult(reply={})
        idle = False
        deadline = time.monotonic() + timeout
        while not (idle and out.reply):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"cell did not finish within {timeout} s (reply: {bool(out.reply)}, idle: {idle}, "
                    f"stdout: {out.stdout!r}, stderr: {out.stderr!r})"
                )
            if not out.reply and self.kc.shell_channel.msg_ready():
                reply = self.kc.get_shell_msg(timeout=timeout)
                if reply["parent_header"].get("msg_id") == msg_id:
                    out.reply = reply
                continue
            if stdin is not None and self.kc.stdin_channel.msg_ready():
                self.kc.get_stdin_msg(timeout=timeout)
                self.kc.input(answers.pop(0))
                continue
            try:
                m = self.kc.get_iopub_msg(timeout=0.05)
            except Exception:
                if not out.reply and not self.kc.is_alive():
                    raise RuntimeError("the kernel died") from None
                continue
            if m["parent_header"].get("msg_id") != msg_id:
                continue
            out.messages.append(m)
            kind, content = m["msg_type"], m["content"]
            if kind == "stream":
                setattr(out, content["name"], getattr(out, content["name"]) + content["text"])
                if on_output:
                    on_output(content["text"])
            elif kind == "clear_output":
                out.stdout = out.stderr = ""
            elif kind == "execute_result":
                out.result = content["data"].get("text/plain")
            elif kind == "error":
                out.error = f"{content['ename']}: {content['evalue']}"
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
        return out

    def value(self, expr: str, replica: int | None = None) -> Any:
        """The value of a JSON-representable expression, evaluated in the kernel."""
        res = self.run(f"import json as _j; print(_j.dumps({expr}))", replica=replica)
        assert res.status == "ok", (res.error, res.reply.get("content"), res.stderr)
        return json.loads(res.stdout.strip().splitlines()[-1])


def cluster_request(cluster_file: str, method: str, path: str, body: dict | None = None, text: bool = False) -> Any:
    """One call to the cluster service's API, authenticated with the token of its discovery file: its JSON answer
    (None for 204), or with ``text`` the answer as text (``/metrics``)."""
    data = json.loads(Path(cluster_file).read_text())
    req = urllib.request.Request(
        f"{data['url']}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {data['token']}"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer = resp.read()
    if text:
        return answer.decode()
    return json.loads(answer) if answer else None


def cluster_kernel(cluster_file: str, kernel_id: str) -> dict:
    return cluster_request(cluster_file, "GET", f"/kernels/{kernel_id}")


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


RECOVERY_DEADLINE_S = 60


def replicas_of(notebook: Notebook) -> list[dict]:
    return cluster_kernel(os.environ["NOTEBOOKOS_CLUSTER_FILE"], notebook.km.kernel_id)["replicas"]


def wait_until(predicate, what: str, deadline_s: float = RECOVERY_DEADLINE_S):
    """Poll the cluster's view until ``predicate`` holds; fail with ``what`` when the deadline passes."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {deadline_s} s waiting for {what}")
