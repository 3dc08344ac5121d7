"""The Docker runtime on its own, with a real daemon: what it starts, how it reports an end, what it finds again."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from notebookos.gpu_broker.cluster.runtime.base import LaunchSpec
from notebookos.gpu_broker.cluster.runtime.docker import LABEL, ContainerLimits, DockerRuntime

from .dockerd import IMAGE, Dockerd, host_python_mounts


def _spec(tmp_path: Path, code: str, replica: int = 0) -> LaunchSpec:
    workdir = tmp_path / "replicas" / "k1" / f"replica-{replica}"
    workdir.mkdir(parents=True)
    return LaunchSpec(
        host="h1",
        kernel_id="k1",
        replica=replica,
        workdir=workdir,
        command=(sys.executable, "-c", code),
        settings={"NOTEBOOKOS_HOST": "h1"},
        cwd=str(workdir),
    )


def _runtime(dockerd: Dockerd, limits: ContainerLimits = ContainerLimits()) -> DockerRuntime:
    return DockerRuntime(
        IMAGE, python=sys.executable, limits=limits, mounts=tuple(host_python_mounts()), client=dockerd.client
    )


def test_a_replica_runs_labelled_with_its_limits_and_its_folder_and_is_found_again(
    dockerd: Dockerd, tmp_path: Path
) -> None:
    runtime = _runtime(dockerd, ContainerLimits(cpus=0.5, memory="256m"))
    spec = _spec(
        tmp_path, "import os, time; open('started', 'w').write(os.environ['NOTEBOOKOS_HOST']); time.sleep(600)"
    )
    running = runtime.launch(spec)
    try:
        assert running.alive and running.pid
        container = dockerd.client.containers.get(running.container.id)
        config, host = container.attrs["Config"], container.attrs["HostConfig"]
        assert config["Labels"][f"{LABEL}.kernel"] == "k1" and config["Labels"][f"{LABEL}.replica"] == "0"
        assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 256 * 2**20
        assert host["NetworkMode"] == "host"
        assert f"{spec.workdir}:{spec.workdir}:rw" in host["Binds"]
        # It writes into its folder on this machine's disk, as this machine's user.
        started = spec.workdir / "started"
        assert _eventually(started.exists) and started.read_text() == "h1"
        # A restarted agent finds it by label.
        found = runtime.running("h1", tmp_path / "replicas")
        assert list(found) == [spec.workdir] and found[spec.workdir].pid == running.pid
        running.signal(signal.SIGKILL)
        assert running.wait(10)
        assert running.exit_code == 137 and running.exit_reason == "killed by SIGKILL (exit code 137)"
        assert runtime.running("h1", tmp_path / "replicas") == {}
    finally:
        running.discard()
    assert not dockerd.client.containers.list(all=True, filters={"label": f"{LABEL}.kernel=k1"})


def test_a_replica_past_its_memory_limit_is_reported_as_oom_killed(dockerd: Dockerd, tmp_path: Path) -> None:
    runtime = _runtime(dockerd, ContainerLimits(memory="64m"))
    running = runtime.launch(_spec(tmp_path, "b = bytearray(512 * 2**20)", replica=1))
    try:
        assert running.wait(60)
        assert running.exit_reason is not None and running.exit_reason.startswith("OOMKilled"), running.exit_reason
        assert "--replica-memory" in running.exit_reason
    finally:
        running.discard()


def test_a_missing_image_is_refused_with_what_to_do(dockerd: Dockerd) -> None:
    with pytest.raises(RuntimeError, match="not on this machine; build it"):
        DockerRuntime("notebookos-test:missing", client=dockerd.client)


def _eventually(predicate, deadline_s: float = 30.0) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False
