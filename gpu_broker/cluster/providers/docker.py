"""Hosts as agent containers on a Docker host: the cluster adds a host by starting a ``notebookos agent`` container
that joins it, and removes one by removing that container.

Each agent container is named and labelled after its host (``org.notebookos.agent``), gets the cluster's join
token as a read-only file, and runs its replicas as processes inside it (the image holds notebookos). On a bridge
network the agent advertises its container's address (``--address auto``); with ``network="host"`` the agents share
the Docker host's network and each needs an address of its own from ``addresses``. GPUs: with ``gpus_from_nvml``
each agent sees all of the Docker host's GPUs through a device request; otherwise agents carry virtual GPUs.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path
from typing import Any

from ..runtime.docker import docker_client, docker_volumes
from .base import HostProvider, PendingHost, ProviderError

log = logging.getLogger(__name__)

AGENT_LABEL = "org.notebookos.agent"
TOKEN_PATH = "/run/secrets/notebookos-join-token"


class DockerProvider(HostProvider):
    """``join_url``: the cluster service as agent containers reach it. ``python``: the Python that runs the agent
    in the image (default: the image's ``notebookos`` command). ``mounts``: more folders agents and their replicas
    need ('SRC:DST[:ro]'), e.g. the users' home folders."""

    def __init__(
        self,
        join_url: str,
        token_file: Path,
        image: str,
        max_hosts: int | None = None,
        network: str = "bridge",
        addresses: tuple[str, ...] = (),
        mounts: tuple[str, ...] = (),
        python: str | None = None,
        gpus_from_nvml: bool = False,
        client: Any = None,
    ) -> None:
        if network == "host" and not addresses:
            raise ProviderError(
                "agents on the host network need addresses of their own: give --provider-address "
                "once per agent the provider may start"
            )
        self.join_url = join_url
        self.token_file = Path(token_file)
        self.image = image
        self.max_hosts = max_hosts if max_hosts is not None else (len(addresses) or None)
        self.network = network
        self.addresses = list(addresses)
        self.mounts = mounts
        self.python = python
        self.gpus_from_nvml = gpus_from_nvml
        # Fail when the service starts, with what to do, rather than at the first host it adds.
        self.client = docker_client(image, client, ProviderError)
        self._names = (f"docker-host-{n}" for n in itertools.count(1))
        self._in_use: dict[str, str] = {}  # host name -> its address (host network only)

    def add_host(self, gpus: int) -> PendingHost:
        import docker.errors
        from docker.types import DeviceRequest

        if self.max_hosts is not None and len(self._running()) >= self.max_hosts:
            raise ProviderError(f"the Docker provider runs at most {self.max_hosts} agent(s); remove one first")
        name = next(n for n in self._names if not self._exists(n))
        address = "auto"
        if self.network == "host":
            free = [a for a in self.addresses if a not in self._in_use.values()]
            if not free:
                raise ProviderError("every --provider-address is taken by an agent; give more addresses")
            address = self._in_use[name] = free[0]
        command = [
            *((self.python, "-m", "notebookos.server_extension.cli") if self.python else ("notebookos",)),
            "agent",
            "--join",
            self.join_url,
            "--join-token-file",
            TOKEN_PATH,
            "--name",
            name,
            "--address",
            address,
            "--state-dir",
            "/tmp/notebookos-agent",
        ]
        options: dict[str, Any] = {}
        if self.gpus_from_nvml:
            options["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        else:
            command += ["--gpus", str(gpus)]
        volumes = {str(self.token_file): {"bind": TOKEN_PATH, "mode": "ro"}, **docker_volumes(self.mounts)}
        try:
            self.client.containers.run(
                self.image,
                command,
                name=name,
                detach=True,
                labels={AGENT_LABEL: name},
                network_mode=self.network,
                volumes=volumes,
                entrypoint=[],
                restart_policy={"Name": "on-failure", "MaximumRetryCount": 3},
                **options,
            )
        except docker.errors.DockerException as err:
            self._in_use.pop(name, None)
            raise ProviderError(f"Docker could not start an agent container from {self.image!r}: {err}") from None
        log.info("started agent container %s (%s)", name, address)
        return PendingHost(name=name, gpus=gpus, since=time.time())

    def remove_host(self, host: Any) -> None:
        """Remove the host's agent container (the cluster drained the host first, so it runs no replica)."""
        import docker.errors

        self._in_use.pop(host.name, None)
        try:
            self.client.containers.get(host.name).remove(force=True)
        except docker.errors.NotFound:
            pass

    def resize_host(self, host: Any, gpus: int) -> None:
        raise ProviderError(
            "an agent container's GPUs are fixed when it starts: add a host with the GPUs you want and remove this one"
        )

    def _running(self) -> list[Any]:
        return self.client.containers.list(filters={"label": AGENT_LABEL})

    def _exists(self, name: str) -> bool:
        import docker.errors

        try:
            self.client.containers.get(name)
        except docker.errors.NotFound:
            return False
        return True
