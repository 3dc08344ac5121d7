"""Replicas forked from the warm replica template: the session's real cluster service runs the template; the
template's own protocol is driven directly over its Unix socket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from jupyter_client.manager import start_new_kernel

from notebookos.gpu_broker.cluster.runtime import process
from notebookos.gpu_broker.cluster.runtime.base import LaunchSpec
from notebookos.gpu_broker.cluster.runtime.process import ForkedReplica, LocalProcess, ProcessRuntime
from notebookos.kernels.replica_template import REPLICA_MODULE, TEMPLATE_MODULE

from .driver import Notebook, cluster_request, kill, replicas_of, wait_until


def template_of(cluster_file: str) -> psutil.Process | None:
    """The replica template under the cluster service, once it accepts launch requests."""
    service = psutil.Process(json.loads(Path(cluster_file).read_text())["pid"])
    for child in service.children():
        cmdline = child.cmdline()
        if TEMPLATE_MODULE in cmdline and Path(cmdline[cmdline.index("--socket") + 1]).exists():
            return child
    return None


@pytest.fixture
def warm_notebook(cluster_file: str, notebook: Notebook):
    """A kernel started once the template is ready (the session's first kernel may start before it is)."""
    template = wait_until(lambda: template_of(cluster_file), "the replica template to be ready")
    km, kc = start_new_kernel(kernel_name="notebookos", startup_timeout=120)
    yield Notebook(km, kc), template
    kc.stop_channels()
    km.shutdown_kernel(now=False)


def test_replicas_are_forked_from_the_template_with_torch_already_imported(warm_notebook) -> None:
    notebook, template = warm_notebook
    replicas = replicas_of(notebook)
    assert [psutil.Process(r["pid"]).ppid() for r in replicas] == [template.pid] * 3
    res = notebook.run("import sys\nprint('torch' in sys.modules)\nimport torch\nprint(torch.ones(3).sum().item())")
    assert res.status == "ok", res.error
    assert res.stdout.split() == ["True", "3.0"]


def test_kernels_forked_from_one_template_draw_their_own_random_numbers(warm_notebook, cluster_file: str) -> None:
    notebook, _ = warm_notebook
    km, kc = start_new_kernel(kernel_name="notebookos", startup_timeout=120)
    other = Notebook(km, kc)
    try:
        draw = "import random, numpy\nprint(random.getrandbits(64), numpy.random.randint(1 << 62))"
        first, second = notebook.run(draw), other.run(draw)
        assert first.status == second.status == "ok", (first.error, second.error)
        first_numbers, second_numbers = first.stdout.split(), second.stdout.split()
        assert first_numbers[0] != second_numbers[0] and first_numbers[1] != second_numbers[1]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def test_a_killed_forked_replica_is_reported_with_its_signal_and_replaced(warm_notebook, cluster_file: str) -> None:
    notebook, template = warm_notebook
    standby = replicas_of(notebook)[0]
    assert psutil.Process(standby["pid"]).ppid() == template.pid
    kill(standby["pid"])
    kernel_id = notebook.km.kernel_id

    def exited() -> list[dict]:
        return cluster_request(cluster_file, "GET", f"/events?kind=replica_exited&kernel={kernel_id}")["events"]

    event = wait_until(exited, "the replica's exit in the cluster's events")[0]
    assert event["reason"] == "killed by SIGKILL"
    wait_until(
        lambda: any(
            r["replica"] == standby["replica"] and r["alive"] and r["restarts"] == 1 for r in replicas_of(notebook)
        ),
        "the replica's restart",
    )
    assert notebook.run("1 + 1").result == "2"


# ------------------------------------------------------------------------------------------ the template alone


@pytest.fixture
def template(tmp_path: Path):
    """A template with nothing preloaded but the replica's code, serving in ``tmp_path``."""
    path = tmp_path / "t.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", TEMPLATE_MODULE, "--socket", str(path)], stdin=subprocess.PIPE, start_new_session=True
    )
    wait_until(lambda: path.exists() or proc.poll() is not None, "the template to serve", deadline_s=30)
    assert proc.poll() is None
    yield proc, path
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(10)


def ask(path: Path, body: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(str(path))
        conn.sendall(body)
        return json.loads(conn.makefile("rb").readline())


def test_a_malformed_launch_request_is_answered_with_the_problem(template) -> None:
    _, path = template
    assert "bad launch request" in ask(path, b"not json\n")["error"]
    assert "needs args, env, cwd, log and exit_file" in ask(path, b'{"args": []}\n')["error"]
    assert (
        "is a string"
        in ask(path, b'{"args": [1], "env": {}, "cwd": "/", "log": "/dev/null", "exit_file": "x"}\n')["error"]
    )


def test_a_forked_replica_that_fails_reports_its_exit_code_and_output(template, tmp_path: Path) -> None:
    """A replica whose arguments are wrong exits as ``python -m notebookos.kernels.replica`` would: its error in its
    log, its exit status in its exit file (written by the template, its parent), then the template exits with the
    agent."""
    proc, path = template
    answer = ask(
        path,
        json.dumps(
            {
                "args": ["--ReplicaKernel.config_path=/nonexistent/config.json"],
                "env": dict(os.environ),
                "cwd": str(tmp_path),
                "log": str(tmp_path / "replica.log"),
                "exit_file": str(tmp_path / "replica.exit"),
            }
        ).encode()
        + b"\n",
    )
    forked = ForkedReplica(answer["pid"], tmp_path / "replica.exit")
    assert forked.wait(30)
    assert forked.exit_code not in (None, 0)
    assert forked.exit_reason.startswith("exited with code")
    assert "/nonexistent/config.json" in (tmp_path / "replica.log").read_text()


def test_a_stopped_forked_replica_is_over_only_once_its_exit_status_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process on its way out is neither a replica nor a zombie to ``/proc`` for an instant, before its template
    has written its exit status. A stop that returned then let the status land later in the folder where the
    kernel's next replica had started (a start placed again at once), which then passed for dead. Here the exit
    window is held open (``/proc`` never shows the zombie) and the stand-in template writes the status late: the
    wait returns only once it is written."""
    monkeypatch.setattr(process, "_zombie", lambda pid: False)
    exit_file = tmp_path / "replica.exit"
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", REPLICA_MODULE], stdin=subprocess.PIPE
    )
    replica = ForkedReplica(child.pid, exit_file)
    started_by = time.monotonic() + 10
    while not replica.alive and time.monotonic() < started_by:  # until the child has exec'd (its command line)
        time.sleep(0.01)
    assert replica.alive

    def template() -> None:  # as the template does, slowly: the child ended, its status is written, it is reaped
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        time.sleep(0.3)
        exit_file.write_text("0")
        child.wait()

    writer = threading.Thread(target=template)
    writer.start()
    assert child.stdin is not None
    child.stdin.close()  # the replica ends
    try:
        assert replica.wait(10)
        assert exit_file.exists(), "the stop returned before the template wrote the replica's exit status"
    finally:
        writer.join()
    assert replica.exit_code == 0


def test_the_runtime_starts_from_scratch_until_its_template_is_ready(tmp_path: Path) -> None:
    """The first replica does not wait for the template's imports: it starts from scratch (a child of the agent);
    once the template is ready, replicas are forked."""
    runtime = ProcessRuntime(preload=("json",))
    try:
        specs = []
        for n in range(2):
            workdir = tmp_path / f"r{n}"
            workdir.mkdir()
            command = (sys.executable, "-m", REPLICA_MODULE, f"--ReplicaKernel.config_path={workdir}/missing.json")
            specs.append(LaunchSpec("h", "k", n, workdir, command, {}, str(workdir)))
        cold = runtime.launch(specs[0])
        assert isinstance(cold, LocalProcess) and cold.popen is not None  # this process's child
        assert runtime.template is not None
        wait_until(lambda: runtime.template.ready, "the template to be ready", deadline_s=30)
        warm = runtime.launch(specs[1])
        assert isinstance(warm, ForkedReplica)
        assert warm.wait(30) and cold.wait(30)
        assert warm.exit_code == cold.exit_code != 0
        for spec in specs:
            assert int((spec.workdir / "replica.pid").read_text()) in (cold.pid, warm.pid)
    finally:
        assert runtime.template is not None
        runtime.template.close()
