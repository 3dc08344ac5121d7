"""Agents with ``--runtime docker`` (a real, private dockerd): a kernel's replicas run in containers with limits,
survive a container's loss, are re-adopted by a restarted agent, and are removed with their host.

Four agents run on this machine at the loopback addresses 127.0.0.2 to 127.0.0.5 (containers use the host's
network, so a replica binds its agent's address); the cluster service listens on 127.0.0.1. The image is imported
from an empty root file system and the containers see this machine's Python through read-only mounts (dockerd.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from jupyter_client.manager import start_new_kernel

from notebookos.gpu_broker.cluster.client import CLUSTER_FILE_ENV
from notebookos.gpu_broker.cluster.launcher import start_cluster, stop_cluster
from notebookos.gpu_broker.cluster.runtime.docker import LABEL

from ..kernels.driver import Notebook, cluster_request, wait_until
from .dockerd import IMAGE, Dockerd, host_python_mounts

HOSTS = {f"box-{n}": f"127.0.0.{n + 1}" for n in range(1, 5)}
CPUS, MEMORY = 1.5, "2g"
DEADLINE_S = 90.0


@dataclass
class DockerPool:
    dockerd: Dockerd
    discovery: Path
    token_file: Path
    url: str
    state: Path
    agents: dict[str, subprocess.Popen]

    def request(self, method: str, path: str, body: dict | None = None) -> object:
        return cluster_request(str(self.discovery), method, path, body)

    def replicas(self, kernel_id: str) -> list[dict]:
        return self.request("GET", f"/kernels/{kernel_id}")["replicas"]  # type: ignore[index]

    def hosts_listed(self) -> dict[str, dict]:
        return {h["name"]: h for h in self.request("GET", "/cluster")["hosts"]}  # type: ignore[index]

    def container(self, kernel_id: str, replica: int):
        [found] = self.dockerd.client.containers.list(
            filters={"label": [f"{LABEL}.kernel={kernel_id}", f"{LABEL}.replica={replica}"]}
        )
        return found

    def log(self, name: str) -> Path:
        return self.state / f"agent-{name}.log"

    def start_agent(self, name: str, log_name: str | None = None) -> subprocess.Popen:
        argv = [
            sys.executable,
            "-m",
            "notebookos.server_extension.cli",
            "agent",
            "--join",
            self.url,
            "--join-token-file",
            str(self.token_file),
            "--name",
            name,
            "--address",
            HOSTS[name],
            "--gpus",
            "1",
            "--state-dir",
            str(self.state / name),
            "--runtime",
            "docker",
            "--image",
            IMAGE,
            "--replica-python",
            sys.executable,
            "--replica-cpus",
            str(CPUS),
            "--replica-memory",
            MEMORY,
            *(f"--replica-mount={mount}" for mount in host_python_mounts()),
        ]
        with open(self.log(log_name or name), "ab") as log:
            return subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**__import__("os").environ, "DOCKER_HOST": self.dockerd.url},
            )


@pytest.fixture(scope="module")
def pool(dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory, jupyter_env: Path) -> Iterator[DockerPool]:
    state = tmp_path_factory.mktemp("docker-cluster")
    token_file = state / "join-token"
    proc, discovery = start_cluster(
        state,
        0,
        extra_args=("--listen", "127.0.0.1:0", "--join-token-file", str(token_file)),
        log_path=state / "cluster.log",
    )
    pool = DockerPool(dockerd, discovery, token_file, json.loads(discovery.read_text())["url"], state, {})
    with pytest.MonkeyPatch.context() as env:
        env.setenv(CLUSTER_FILE_ENV, str(discovery))
        try:
            for name in HOSTS:
                pool.agents[name] = pool.start_agent(name)
            wait_until(lambda: len(pool.hosts_listed()) == len(HOSTS), "every agent to join", DEADLINE_S)
            yield pool
        finally:
            for agent in pool.agents.values():
                agent.terminate()
                agent.wait(30)
            stop_cluster(proc)


@pytest.fixture
def notebook(pool: DockerPool, tmp_path: Path) -> Iterator[Notebook]:
    km, kc = start_new_kernel(kernel_name="notebookos", startup_timeout=120, cwd=str(tmp_path))
    yield Notebook(km, kc)
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def test_a_kernels_replicas_run_in_containers_with_their_limits(pool: DockerPool, notebook: Notebook) -> None:
    res = notebook.run("x = 41")
    assert res.status == "ok", (res.reply["content"], res.stderr)
    replicas = pool.replicas(notebook.km.kernel_id)
    assert len({r["host"] for r in replicas}) == 3
    for replica in replicas:
        container = pool.container(notebook.km.kernel_id, replica["replica"])
        assert container.attrs["State"]["Pid"] == replica["pid"]
        assert container.labels[f"{LABEL}.host"] == replica["host"]
        limits = container.attrs["HostConfig"]
        assert limits["NanoCpus"] == CPUS * 1e9 and limits["Memory"] == 2 * 2**30
        # Each holds the state, and runs cells with its host's name.
        where = notebook.value("[__import__('os').environ['NOTEBOOKOS_HOST'], x + 1]", replica=replica["replica"])
        assert where == [replica["host"], 42]


def test_a_killed_container_is_reported_and_replaced_and_the_kernel_goes_on(
    pool: DockerPool, notebook: Notebook
) -> None:
    assert notebook.run("import torch\nt = torch.arange(1_000_000)\nn = 1").status == "ok"
    placed = {r["host"] for r in pool.replicas(notebook.km.kernel_id)}
    executor = notebook.value("__import__('os').environ['NOTEBOOKOS_HOST']")
    standby = next(r for r in pool.replicas(notebook.km.kernel_id) if r["host"] != executor)
    pool.container(notebook.km.kernel_id, standby["replica"]).kill()
    assert notebook.run("n += 1").status == "ok"

    def replacement() -> dict | None:
        return next(
            (r for r in pool.replicas(notebook.km.kernel_id) if r["host"] not in placed and r["state"] == "ready"), None
        )

    new = wait_until(replacement, "a replacement in a container on the spare host", DEADLINE_S)
    assert pool.container(notebook.km.kernel_id, new["replica"]).attrs["State"]["Pid"] == new["pid"]
    events = pool.request("GET", f"/events?kind=replica_exited&host={standby['host']}")["events"]  # type: ignore
    assert events and "SIGKILL" in events[-1]["reason"], events

    def on_replacement() -> list | None:
        where, value = notebook.value(
            "[__import__('os').environ['NOTEBOOKOS_HOST'], [n, int(t.sum())]]", replica=new["replica"]
        )
        return value if where == new["host"] else None

    assert wait_until(on_replacement, "a cell on the replacement", 30) == [2, 499_999_500_000]


def test_a_restarted_agent_adopts_its_running_containers(pool: DockerPool, notebook: Notebook) -> None:
    assert notebook.run("z = 7").status == "ok"
    before = {r["replica"]: (r["host"], r["pid"]) for r in pool.replicas(notebook.km.kernel_id)}
    name = before[0][0]
    pool.agents[name].kill()
    pool.agents[name].wait()
    pool.agents[name] = pool.start_agent(name, log_name=f"{name}-restarted")
    wait_until(
        lambda: "adopted replica" in pool.log(f"{name}-restarted").read_text(),
        "the restarted agent to adopt its container",
        DEADLINE_S,
    )
    assert notebook.run("z += 1").status == "ok"
    assert notebook.value("z", replica=0) == 8
    assert {r["replica"]: (r["host"], r["pid"]) for r in pool.replicas(notebook.km.kernel_id)} == before


def test_a_removed_host_leaves_no_container_and_its_agent_exits(pool: DockerPool, notebook: Notebook) -> None:
    assert notebook.run("w = 1").status == "ok"
    name = pool.replicas(notebook.km.kernel_id)[1]["host"]
    pool.request("POST", f"/hosts/{name}/drain", {})
    wait_until(lambda: pool.hosts_listed()[name]["replicas"] == 0, f"{name}'s replica to move away", DEADLINE_S)
    pool.request("DELETE", f"/hosts/{name}")
    assert pool.agents[name].wait(30) == 0
    assert "removed from the cluster" in pool.log(name).read_text()
    assert not pool.dockerd.client.containers.list(all=True, filters={"label": f"{LABEL}.host={name}"})
    assert name not in pool.hosts_listed()
    assert notebook.run("w += 1").status == "ok" and notebook.value("w") == 2
