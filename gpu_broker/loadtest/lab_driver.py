"""Drive a running Jupyter server the way JupyterLab does: REST for sessions, the kernel websocket for cells.

Used by ``notebookos replay``. Only public APIs are used (Jupyter Server's ``/api/status``, ``/api/sessions``,
``/api/kernels/<id>/channels`` with the JSON websocket protocol, and the notebookos extension's
``/api/notebookos/events``), so the same code drives a ``notebookos lab`` started here or any server reachable by
URL and token. :class:`OwnLab` starts and stops a headless
``notebookos lab`` (embedded cluster plus JupyterLab) for a run that is given no server.

Every time is ``time.monotonic()`` on this machine, so submit, start and reply times of one cell are comparable.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

KERNEL_NAME = "notebookos"
PROTOCOL_VERSION = "5.3"
LAB_START_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 180.0  # creating a session starts a kernel: three replicas on three hosts


class LabError(RuntimeError):
    """The Jupyter server refused or failed a request, or did not start."""


# ------------------------------------------------------------------------------------------------ REST


class JupyterRest:
    """The few REST calls a replay needs, authenticated with the server's token."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self.token = token
        self.http = AsyncHTTPClient()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}", "Content-Type": "application/json"}

    async def call(self, method: str, path: str, body: Any = None, timeout: float = REQUEST_TIMEOUT_S) -> Any:
        request = HTTPRequest(
            self.url + path.lstrip("/"),
            method=method,
            headers=self.headers,
            body=None if body is None else json.dumps(body),
            allow_nonstandard_methods=True,
            request_timeout=timeout,
            connect_timeout=min(timeout, 20.0),
        )
        try:
            response = await self.http.fetch(request)
        except HTTPClientError as err:
            detail = ""
            if err.response is not None and err.response.body:
                detail = ": " + err.response.body.decode(errors="replace")[:500]
            raise LabError(f"{method} {path} failed with HTTP {err.code}{detail}") from None
        except OSError as err:
            raise LabError(f"{method} {path}: cannot reach {self.url}: {err}") from None
        return json.loads(response.body) if response.body else None

    async def status(self) -> dict:
        return await self.call("GET", "api/status", timeout=5.0)

    async def create_session(self, name: str, kernel_name: str = KERNEL_NAME) -> dict:
        """``POST /api/sessions``: a notebook session with a new kernel; returns when the kernel has started."""
        return await self.call(
            "POST",
            "api/sessions",
            {
                "path": f"notebookos-replay/{name}.ipynb",
                "name": f"{name}.ipynb",
                "type": "notebook",
                "kernel": {"name": kernel_name},
            },
        )

    async def events(self, kernel_id: str, kind: str | None = None) -> list[dict]:
        """``GET /api/notebookos/events``: the cluster's event log about one kernel (a closed one too, for an
        admin), oldest first."""
        query = f"kernel={quote(kernel_id)}" + (f"&kind={quote(kind)}" if kind else "")
        return (await self.call("GET", f"api/notebookos/events?{query}"))["events"]

    async def delete_session(self, session_id: str) -> None:
        """``DELETE /api/sessions/<id>``: closes the notebook and shuts its kernel down."""
        await self.call("DELETE", f"api/sessions/{session_id}")

    def ws_url(self, kernel_id: str, session_id: str) -> str:
        base = "ws" + self.url[len("http") :] if self.url.startswith("http") else self.url
        return f"{base}api/kernels/{quote(kernel_id)}/channels?session_id={quote(session_id)}"


# ------------------------------------------------------------------------------------------- websocket


@dataclass
class Execution:
    """One execute_request and what came back for it, in ``time.monotonic()`` seconds."""

    msg_id: str
    submitted: float
    submitted_wall: float = field(default_factory=time.time)  # time.time() at submission, to compare with the kernel's
    busy: float | None = None
    execute_input: float | None = None
    reply: float | None = None
    idle: float | None = None
    status: str | None = None  # the reply's status: ok, error, aborted
    error: str | None = None
    stdout: list[str] = field(default_factory=list)
    replied: asyncio.Event = field(default_factory=asyncio.Event)  # the reply came (or never will)
    done: asyncio.Event = field(default_factory=asyncio.Event)  # the reply and the idle status came (or never will)

    @property
    def started(self) -> float | None:
        """When the cell began to execute, as the client sees it: its ``execute_input`` (else the ``busy``).

        The kernel front forwards neither before the replicas have elected this cell's executor."""
        return self.execute_input if self.execute_input is not None else self.busy

    async def wait_reply(self, timeout: float) -> None:
        await self._wait(self.replied, timeout, "no reply")

    async def wait_done(self, timeout: float) -> None:
        await self._wait(self.done, timeout, "no reply and idle status")

    async def _wait(self, event: asyncio.Event, timeout: float, what: str) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            self.status = self.status or "timeout"
            self.error = self.error or f"{what} within {timeout:.0f} s"


class KernelChannel:
    """A kernel's websocket (``/api/kernels/<id>/channels``), JSON protocol; messages matched by parent msg_id."""

    def __init__(self, ws: WebSocketClientConnection, client_session: str) -> None:
        self.ws = ws
        self.client_session = client_session
        self.pending: dict[str, Execution] = {}
        self.replies: dict[str, asyncio.Future] = {}
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, rest: JupyterRest, kernel_id: str, timeout: float = 60.0) -> KernelChannel:
        client_session = uuid.uuid4().hex
        request = HTTPRequest(
            rest.ws_url(kernel_id, client_session),
            headers={"Authorization": f"token {rest.token}"},
            connect_timeout=timeout,
            request_timeout=timeout,
        )
        try:
            ws = await asyncio.wait_for(websocket_connect(request, max_message_size=64 * 1024 * 1024), timeout)
        except (OSError, HTTPClientError, TimeoutError) as err:
            raise LabError(f"cannot open the websocket of kernel {kernel_id}: {err}") from None
        return cls(ws, client_session)

    def _message(self, msg_type: str, content: dict) -> dict:
        return {
            "header": {
                "msg_id": uuid.uuid4().hex,
                "msg_type": msg_type,
                "username": "notebookos-replay",
                "session": self.client_session,
                "version": PROTOCOL_VERSION,
                "date": datetime.now(UTC).isoformat(),
            },
            "parent_header": {},
            "metadata": {},
            "content": content,
            "channel": "shell",
            "buffers": [],
        }

    async def kernel_info(self, timeout: float = 60.0) -> dict:
        """Send kernel_info_request until one is answered (the kernel may still be starting)."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self._message("kernel_info_request", {})
            fut = asyncio.get_running_loop().create_future()
            self.replies[msg["header"]["msg_id"]] = fut
            await self.ws.write_message(json.dumps(msg))
            try:
                return await asyncio.wait_for(fut, min(2.0, max(0.1, deadline - time.monotonic())))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise LabError(f"the kernel did not answer kernel_info within {timeout:.0f} s") from None
            finally:
                self.replies.pop(msg["header"]["msg_id"], None)

    async def execute(self, code: str) -> Execution:
        """Send an execute_request; returns its record at once (await ``record.done`` for reply and idle)."""
        msg = self._message(
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
        )
        record = Execution(msg["header"]["msg_id"], time.monotonic())
        self.pending[record.msg_id] = record
        await self.ws.write_message(json.dumps(msg))
        return record

    async def run(self, code: str, timeout: float) -> Execution:
        """Execute and wait for both the reply and the idle status."""
        record = await self.execute(code)
        await record.wait_done(timeout)
        return record

    async def _read(self) -> None:
        while True:
            raw = await self.ws.read_message()
            now = time.monotonic()
            if raw is None:  # closed: whatever is still pending never finishes
                for record in self.pending.values():
                    if not record.done.is_set():
                        record.status = record.status or "disconnected"
                        record.error = record.error or "the kernel websocket closed"
                        record.replied.set()
                        record.done.set()
                return
            if isinstance(raw, bytes):
                continue  # binary frames carry buffers we never ask for
            msg = json.loads(raw)
            self._dispatch(msg, now)

    def _dispatch(self, msg: dict, now: float) -> None:
        parent_id: str = (msg.get("parent_header") or {}).get("msg_id", "")  # "": not a reply to any of ours
        msg_type = msg.get("header", {}).get("msg_type") or msg.get("msg_type")
        content = msg.get("content") or {}
        fut = self.replies.get(parent_id)
        if fut is not None and msg_type == "kernel_info_reply" and not fut.done():
            fut.set_result(content)
            return
        record = self.pending.get(parent_id)
        if record is None:
            return
        if msg_type == "status":
            state = content.get("execution_state")
            if state == "busy" and record.busy is None:
                record.busy = now
            elif state == "idle" and record.idle is None:
                record.idle = now
        elif msg_type == "execute_input" and record.execute_input is None:
            record.execute_input = now
        elif msg_type == "stream" and content.get("name") == "stdout":
            record.stdout.append(content.get("text", ""))
        elif msg_type == "error":
            record.error = f"{content.get('ename')}: {content.get('evalue')}"
        elif msg_type == "execute_reply":
            record.reply = now
            record.status = content.get("status")
            if record.status == "error" and not record.error:
                record.error = f"{content.get('ename')}: {content.get('evalue')}"
            record.replied.set()
        if record.reply is not None and record.idle is not None:
            record.done.set()
            del self.pending[parent_id]

    def close(self) -> None:
        self._reader.cancel()
        self.ws.close()


# ---------------------------------------------------------------------------------------- own server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnLab:
    """A headless ``notebookos lab`` (embedded cluster of ``hosts`` logical hosts plus JupyterLab) on loopback.
    ``gpus_per_host``: each host's GPUs (a slice of the machine's, else virtual ones); None: the lab's default."""

    def __init__(self, workdir: Path, hosts: int = 4, gpus_per_host: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.hosts = hosts
        self.gpus_per_host = gpus_per_host
        self.port = free_port()
        self.token = secrets.token_hex(24)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = self.workdir / "lab.log"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        root = self.workdir / "root"
        return [
            sys.executable,
            "-m",
            "notebookos.server_extension.cli",
            "lab",
            "--hosts",
            str(self.hosts),
            *(("--gpus-per-host", str(self.gpus_per_host)) if self.gpus_per_host else ()),
            "--state-dir",
            str(self.workdir / "cluster"),
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root}",
            # nothing to fetch from the internet
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]

    async def start(self, timeout: float = LAB_START_TIMEOUT_S) -> JupyterRest:
        (self.workdir / "root").mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir / "root",
                start_new_session=True,  # our Ctrl+C is handled by stop(), not twice
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        rest = JupyterRest(self.url, self.token)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LabError(
                    f"notebookos lab exited with code {self.process.returncode}; see {self.log_path}:\n"
                    + self.log_tail()
                )
            try:
                await rest.status()
                return rest
            except LabError:
                await asyncio.sleep(0.25)
        self.stop()
        raise LabError(f"notebookos lab did not answer within {timeout:.0f} s; see {self.log_path}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to ``notebookos lab`` (it stops JupyterLab, whose kernels go with it, then the cluster)."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session (start_new_session): only what it started
            proc.wait(10)
