"""A killed Jupyter server loses no kernel (``notebookos lab --state-dir``).

Each test runs the real command, ``notebookos lab``, headless with a token, and drives it over REST and the kernel
websocket, as JupyterLab does. "The Jupyter server crashed" is SIGKILL to JupyterLab's process, the child of
``notebookos lab``: it holds the kernel manager, the sessions and the kernel fronts' parent link, so killing it
leaves nothing a clean stop would have done (no kernel shut down, no record removed). The ``notebookos lab`` wrapper
sees it die and exits, leaving the cluster running for the fronts, which wait their grace period for a new server.
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
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import psutil
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from notebookos.kernels.replica_template import TEMPLATE_MODULE

from ..e2e.lab_server import isolated_jupyter_env
from ..kernels.driver import cluster_request, wait_until
from .test_jupyter_server import CELL_TIMEOUT_S, KernelSocket

NOTEBOOKOS = Path(sys.prefix) / "bin" / "notebookos"
START_S = 60  # for `notebookos lab` to answer: its cluster, then JupyterLab, start
EXIT_S = 30


@dataclass
class Lab:
    """One ``notebookos lab`` run: the wrapper process and its JupyterLab's URL and token."""

    wrapper: subprocess.Popen
    url: str
    token: str
    log: Path

    def api(self, method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            f"{self.url}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def jupyterlab(self) -> psutil.Process:
        [jupyterlab] = [p for p in psutil.Process(self.wrapper.pid).children() if "jupyterlab" in _cmdline(p)]
        return jupyterlab

    def front(self, kernel_id: str) -> psutil.Process:
        [front] = [p for p in self.jupyterlab().children() if kernel_id in _cmdline(p)]
        return front

    async def run(self, kernel_id: str, code: str) -> dict:
        """Run a cell over the kernel's websocket (it must succeed): its outputs, by message type."""
        # Jupyter accepts the websocket once the kernel answers it: the first time, once its replicas have started.
        ws = await websocket_connect(
            HTTPRequest(
                f"ws{self.url.removeprefix('http')}api/kernels/{kernel_id}/channels?session_id={secrets.token_hex(8)}",
                headers={"Authorization": f"token {self.token}"},
                request_timeout=CELL_TIMEOUT_S,
            )
        )
        try:
            cell = await KernelSocket(ws).execute(code)
        finally:
            ws.close()
        assert cell.reply["content"]["status"] == "ok", cell
        return {m["msg_type"]: m["content"] for m in cell.outputs}

    def wait_exit(self) -> int:
        try:
            return self.wrapper.wait(EXIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"notebookos lab did not exit within {EXIT_S} s:\n{self.log.read_text()[-3000:]}")


class Labs:
    """Runs of ``notebookos lab`` in a Jupyter environment of the test's own, on free ports, with one token."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.env = isolated_jupyter_env(folder / "jupyter")
        self.root = folder / "notebooks"
        self.root.mkdir()
        self.token = secrets.token_hex(16)
        self.runs = 0

    def start(self, state_dir: Path, *options: str) -> Lab:
        """A ``notebookos lab --state-dir state_dir`` answering on its port."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        log = self.folder / f"lab-{self.runs}.log"
        self.runs += 1
        with open(log, "wb") as out:
            wrapper = subprocess.Popen(
                [
                    str(NOTEBOOKOS),
                    "lab",
                    "--state-dir",
                    str(state_dir),
                    "--hosts",
                    "3",
                    *options,
                    "--no-browser",
                    "--ServerApp.ip=127.0.0.1",
                    f"--ServerApp.port={port}",
                    "--ServerApp.port_retries=0",
                    f"--IdentityProvider.token={self.token}",
                    f"--ServerApp.root_dir={self.root}",
                    "--LabApp.news_url=None",
                    "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                ],
                env=self.env,
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        lab = Lab(wrapper, f"http://127.0.0.1:{port}/", self.token, log)
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline and wrapper.poll() is None:
            try:
                lab.api("GET", "api/status")
                return lab
            except (urllib.error.URLError, OSError):
                try:
                    wrapper.wait(0.2)  # the poll's interval; returns at once if it exits
                except subprocess.TimeoutExpired:
                    pass
        pytest.fail(f"notebookos lab did not answer within {START_S} s:\n{log.read_text()[-3000:]}")

    def leftovers(self) -> list[psutil.Process]:
        """Live processes of this environment (the cluster, its replicas and the fronts inherit it)."""
        runtime = self.env["JUPYTER_RUNTIME_DIR"]
        found = []
        for p in psutil.process_iter():
            try:
                if not _exited(p) and p.environ().get("JUPYTER_RUNTIME_DIR") == runtime:
                    found.append(p)
            except psutil.Error:
                pass
        return found


@pytest.fixture
def labs(tmp_path: Path) -> Iterator[Labs]:
    """Whatever a failed test left running is killed."""
    labs = Labs(tmp_path)
    yield labs
    leftovers = labs.leftovers()
    for p in leftovers:
        p.kill()
    psutil.wait_procs(leftovers, timeout=10)


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:  # gone, or a zombie, meanwhile
        return []


def _templates_of(cluster: psutil.Process) -> list[psutil.Process]:
    return [p for p in cluster.children() if TEMPLATE_MODULE in _cmdline(p)]


def _exited(p: psutil.Process) -> bool:
    """Gone, or a zombie: an orphan of the killed server may go to an init that never reaps it."""
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _start_notebook(lab: Lab) -> tuple[str, str]:
    session = lab.api(
        "POST",
        "api/sessions",
        {"path": "restart.ipynb", "type": "notebook", "name": "restart.ipynb", "kernel": {"name": "notebookos"}},
    )
    return session["id"], session["kernel"]["id"]


def _crash(lab: Lab) -> None:
    """SIGKILL JupyterLab; its wrapper then exits, saying that the kernels outlive it."""
    lab.jupyterlab().send_signal(signal.SIGKILL)
    assert lab.wait_exit() != 0
    assert "its kernels keep running for" in lab.log.read_text()


@pytest.mark.timeout(120)
def test_a_restarted_server_gives_back_the_kernel_with_its_state(labs: Labs, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = labs.start(state)
    session_id, kernel_id = _start_notebook(first)
    asyncio.run(first.run(kernel_id, "x = 41"))
    front = first.front(kernel_id)
    cluster = psutil.Process(json.loads((state / "cluster.json").read_text())["pid"])

    _crash(first)
    assert not _exited(front)

    second = labs.start(state)
    assert f"the cluster already running for this state folder (pid {cluster.pid}" in second.log.read_text()
    assert [(k["id"], k["execution_state"]) for k in second.api("GET", "api/kernels")] == [(kernel_id, "idle")]
    [session] = second.api("GET", "api/sessions")
    assert (session["id"], session["kernel"]["id"]) == (session_id, kernel_id)
    outputs = asyncio.run(second.run(kernel_id, "x + 1"))
    assert outputs["execute_result"]["data"]["text/plain"] == "42"

    # The restored kernel restarts like any other: the adopted front goes, a new one has an empty namespace.
    second.api("POST", f"api/kernels/{kernel_id}/restart")
    wait_until(lambda: _exited(front), "the adopted front to exit", EXIT_S)
    outputs = asyncio.run(second.run(kernel_id, "'x' in dir()"))
    assert outputs["execute_result"]["data"]["text/plain"] == "False"

    # A clean stop shuts the kernel down and stops the cluster the second server took over: nothing is left.
    second.wrapper.send_signal(signal.SIGTERM)
    assert second.wait_exit() == 0
    wait_until(lambda: not labs.leftovers(), "the front, the cluster and the replicas to exit", EXIT_S)
    assert _exited(cluster)
    assert list((state / "jupyter" / "kernels").iterdir()) == []


@pytest.mark.timeout(90)
def test_a_kernel_no_server_claims_shuts_down_after_its_grace_period(labs: Labs, tmp_path: Path) -> None:
    grace_s = 3.0
    state = tmp_path / "state"
    lab = labs.start(state, "--kernel-grace", str(grace_s))
    _, kernel_id = _start_notebook(lab)
    front = lab.front(kernel_id)
    cluster_file = str(state / "cluster.json")
    assert cluster_request(cluster_file, "GET", f"/kernels/{kernel_id}")["id"] == kernel_id

    killed = time.monotonic()
    _crash(lab)
    assert f"its kernels keep running for {grace_s:g} s" in lab.log.read_text()

    def kernel_gone() -> bool:
        try:
            cluster_request(cluster_file, "GET", f"/kernels/{kernel_id}")
        except urllib.error.HTTPError as err:
            return err.code == 404
        return False

    wait_until(kernel_gone, "the front to delete its kernel in the cluster", grace_s + 20)
    assert time.monotonic() - killed >= grace_s  # it waited for a server to claim it first
    wait_until(lambda: _exited(front), "the kernel front to exit", EXIT_S)
    cluster = psutil.Process(json.loads(Path(cluster_file).read_text())["pid"])
    # Left running by the wrapper, for a server that did not come, with the template its agents fork replicas from.
    assert set(labs.leftovers()) == {cluster, *_templates_of(cluster)}

    # A server started later finds the front gone: it drops the kernel's record and session, and takes the cluster
    # over, which its clean stop stops.
    again = labs.start(state)
    assert again.api("GET", "api/kernels") == [] and again.api("GET", "api/sessions") == []
    assert list((state / "jupyter" / "kernels").iterdir()) == []
    again.wrapper.send_signal(signal.SIGTERM)
    assert again.wait_exit() == 0
    wait_until(lambda: not labs.leftovers(), "the cluster service to exit", EXIT_S)


@pytest.mark.timeout(120)
def test_a_crashed_cluster_service_is_started_again_and_the_notebook_goes_on(labs: Labs, tmp_path: Path) -> None:
    """SIGKILL of the cluster service under a running ``notebookos lab``: the wrapper starts it again on its state
    folder, it takes the kernel back, and the notebook's next cell runs on the same variables."""
    state = tmp_path / "state"
    lab = labs.start(state)
    _, kernel_id = _start_notebook(lab)
    asyncio.run(lab.run(kernel_id, "x = 41"))
    crashed = lab.api("GET", "api/notebookos/cluster")["pid"]
    os.kill(crashed, signal.SIGKILL)

    def service_pid() -> int | None:
        try:
            return lab.api("GET", "api/notebookos/cluster")["pid"]
        except urllib.error.HTTPError:  # 503 while it is down
            return None

    wait_until(lambda: service_pid() not in (None, crashed), "the cluster service to be started again", START_S)
    restarted = psutil.Process(service_pid())
    assert f"the cluster service (pid {crashed}) died; starting it again" in lab.log.read_text()
    outputs = asyncio.run(lab.run(kernel_id, "x + 1"))
    assert outputs["execute_result"]["data"]["text/plain"] == "42"
    assert [k["id"] for k in lab.api("GET", "api/notebookos/kernels")["kernels"]] == [kernel_id]

    lab.wrapper.send_signal(signal.SIGTERM)
    assert lab.wait_exit() == 0
    wait_until(lambda: not labs.leftovers(), "the restarted cluster service and the replicas to exit", EXIT_S)
    assert _exited(restarted)
