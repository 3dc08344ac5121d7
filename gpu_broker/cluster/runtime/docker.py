"""Replicas in Docker containers, through the Docker SDK.

Each replica is one container of the agent's image, labelled with its host, kernel, replica and folder, so that a
restarted agent finds its replicas by label. Containers use the host's network (a replica binds the agent's address
and the ports the agent chose, as a process would; Raft and the kernel's channels need no port mapping) and see the
replica's folder, its kernel's objects and the notebook's folder at the same paths as the agent. They run as the
agent's user, so the files they write stay the agent's. GPUs: all of the agent's GPUs are visible (a device
request); which of them a cell binds stays the broker's decision. Limits: ``cpus`` and ``memory`` per replica.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import LaunchSpec, ReplicaRuntime, RunningReplica, describe_exit

log = logging.getLogger(__name__)

LABEL = "org.notebookos"  # the prefix of every label this runtime sets
POLL_S = 0.05


@dataclass(frozen=True)
class ContainerLimits:
    """Per-replica limits: ``cpus`` (fractional CPUs, None: no limit) and ``memory`` (Docker's notation, '4g')."""

    cpus: float | None = None
    memory: str | None = None


class ReplicaContainer(RunningReplica):
    """A replica's container; its state is read from the daemon on each question (a heartbeat asks once a
    second), so a container killed or OOM-killed outside the agent is seen at once."""

    def __init__(self, container: Any) -> None:
        self.container = container
        self._state: dict[str, Any] = {}
        self._gone = False
        self._refresh()

    def _refresh(self) -> dict[str, Any]:
        if not self._gone:
            import docker.errors

            try:
                self.container.reload()
                self._state = self.container.attrs.get("State", {})
            except docker.errors.NotFound:
                self._gone = True  # removed by someone else: it has ended
                self._state = {**self._state, "Running": False}
        return self._state

    @property
    def pid(self) -> int | None:
        return self._refresh().get("Pid") or None

    @property
    def alive(self) -> bool:
        return bool(self._refresh().get("Running"))

    @property
    def exit_code(self) -> int | None:
        state = self._refresh()
        if state.get("Running") or "ExitCode" not in state:
            return None
        return int(state["ExitCode"])

    @property
    def exit_reason(self) -> str | None:
        state = self._refresh()
        if state.get("Running"):
            return None
        if state.get("OOMKilled"):
            return (
                f"OOMKilled: the container used all of its memory limit and the kernel's OOM killer ended it "
                f"(exit code {state.get('ExitCode')}); give replicas more memory (--replica-memory) or use "
                f"less in the notebook"
            )
        if self._gone and "ExitCode" not in state:
            return "its container was removed"
        code = state.get("ExitCode")
        if isinstance(code, int) and code > 128:  # Docker reports a death by signal N as 128 + N
            return f"{describe_exit(128 - code)} (exit code {code})"
        return describe_exit(code) or "ended"

    def signal(self, sig: int) -> None:
        import docker.errors

        if self.alive:
            try:
                self.container.kill(signal=int(sig))
            except docker.errors.APIError:
                pass  # it ended meanwhile

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive and time.monotonic() < deadline:
            time.sleep(POLL_S)
        return not self.alive

    def discard(self) -> None:
        import docker.errors

        try:
            self.container.remove(force=True)
        except docker.errors.NotFound:
            pass
        self._gone = True


class DockerRuntime(ReplicaRuntime):
    """``image``: an image with notebookos installed (deploy/docker/Dockerfile). ``python``: its Python.
    ``mounts``: more folders of the machine the replicas need ('SRC:DST[:ro]'), e.g. the users' home folders.
    ``gpu_devices``: the machine's GPUs to expose (NVML indexes); None or empty: none (virtual GPUs)."""

    name = "docker"

    def __init__(
        self,
        image: str,
        python: str = "python",
        limits: ContainerLimits = ContainerLimits(),
        mounts: tuple[str, ...] = (),
        gpu_devices: tuple[int, ...] | None = None,
        client: Any = None,
    ) -> None:
        self.image = image
        self.python = python
        self.limits = limits
        self.mounts = mounts
        self.gpu_devices = gpu_devices
        # Fail at the agent's start, with what to do, rather than at its first replica.
        self.client = docker_client(image, client)

    def launch(self, spec: LaunchSpec) -> ReplicaContainer:
        import docker.errors
        from docker.types import DeviceRequest

        name = _container_name(spec)
        try:
            self.client.containers.get(name).remove(force=True)  # a previous run of this replica that ended
        except docker.errors.NotFound:
            pass
        volumes = {path: {"bind": path, "mode": "rw"} for path in {str(spec.workdir), spec.cwd, *spec.paths}}
        volumes.update(docker_volumes(self.mounts))
        options: dict[str, Any] = {}
        if self.limits.cpus:
            options["nano_cpus"] = int(self.limits.cpus * 1e9)
        if self.limits.memory:
            options["mem_limit"] = self.limits.memory
            options["memswap_limit"] = self.limits.memory  # no swap beyond the limit: the OOM killer, reported
        if self.gpu_devices:
            options["device_requests"] = [
                DeviceRequest(device_ids=[str(d) for d in self.gpu_devices], capabilities=[["gpu"]])
            ]
        labels = {
            f"{LABEL}.host": spec.host,
            f"{LABEL}.kernel": spec.kernel_id,
            f"{LABEL}.replica": str(spec.replica),
            f"{LABEL}.workdir": str(spec.workdir),
        }
        try:
            container = self.client.containers.run(
                self.image,
                list(spec.command),
                name=name,
                detach=True,
                labels=labels,
                network_mode="host",
                environment={"HOME": str(spec.workdir), **spec.settings},
                working_dir=spec.cwd,
                volumes=volumes,
                user=f"{os.getuid()}:{os.getgid()}",
                init=True,
                **options,
            )
        except docker.errors.DockerException as err:
            raise RuntimeError(
                f"Docker could not start replica {spec.kernel_id}/{spec.replica} in {self.image!r}: {err}"
            ) from None
        log.info("replica %s/%d runs in container %s", spec.kernel_id, spec.replica, container.short_id)
        return ReplicaContainer(container)

    def running(self, host: str, replicas_dir: Path) -> dict[Path, RunningReplica]:
        found: dict[Path, RunningReplica] = {}
        for container in self.client.containers.list(filters={"label": f"{LABEL}.host={host}"}):
            workdir = Path(container.labels.get(f"{LABEL}.workdir", ""))
            if workdir.parent.parent == replicas_dir:
                found[workdir] = ReplicaContainer(container)
        return found


def docker_client(image: str, client: Any = None, error: type[RuntimeError] = RuntimeError) -> Any:
    """``client`` (default: the daemon DOCKER_HOST names) once it answers and holds ``image``; ``error`` with what to
    do otherwise."""
    import docker

    try:
        client = client or docker.from_env()
        client.ping()
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise error(
            f"the image {image!r} is not on this machine; build it (docker build -t notebookos "
            "-f deploy/docker/Dockerfile .) or pull it"
        ) from None
    except docker.errors.DockerException as err:
        raise error(
            f"the Docker daemon does not answer ({err}); start dockerd, or set DOCKER_HOST to where it listens"
        ) from None
    return client


def docker_volumes(mounts: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Docker SDK volumes from 'SRC:DST[:MODE]' mounts (DST defaults to SRC, MODE to rw)."""
    volumes = {}
    for mount in mounts:
        source, _, rest = mount.partition(":")
        target, _, mode = rest.partition(":")
        volumes[source] = {"bind": target or source, "mode": mode or "rw"}
    return volumes


def _container_name(spec: LaunchSpec) -> str:
    return f"notebookos-{spec.host}-{spec.kernel_id}-{spec.replica}"
