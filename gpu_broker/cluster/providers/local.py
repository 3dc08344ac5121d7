"""Logical hosts on this machine: the embedded cluster's provider.

Each host is a name and a working directory; replicas on every host are processes of this machine. Hosts are named
``host-1``, ``host-2``, ... in the order they were added, never reusing a name within a cluster's life, so the
event log stays unambiguous. GPUs are the ones the cluster was configured with (virtual where there are none).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..host_agent import HostAgent
from ..ports import PortPool
from .base import HostProvider, ProviderError


class LocalProvider(HostProvider):
    def __init__(
        self,
        hosts_dir: Path,
        max_hosts: int | None,
        ports: PortPool,
        store: str | None,
        devices: list[int] | None = None,
    ) -> None:
        """``store``: an object store every kernel shares (Redis), or None: each kernel's replicas share a folder
        of this machine's (under ``hosts_dir``). ``devices``: this machine's GPUs (NVML indexes), split between the
        hosts so that no two hosts grant the same card; None: hosts carry virtual GPUs."""
        self.devices = devices
        self._assigned: dict[str, tuple[int, ...]] = {}
        self.hosts_dir = Path(hosts_dir)
        self.ports = ports  # one network stack: one pool for every logical host
        self.store = store
        self.max_hosts = max_hosts
        self.running = 0
        self._next = 1

    def add_host(self, gpus: int) -> HostAgent:
        if self.max_hosts is not None and self.running >= self.max_hosts:
            raise ProviderError(
                f"the local provider runs at most {self.max_hosts} hosts (--max-hosts); remove a "
                "drained host first or start the cluster with a higher --max-hosts"
            )
        name = f"host-{self._next}"
        self._next += 1
        self.running += 1
        devices = None
        if self.devices is not None:
            taken = {d for slice_ in self._assigned.values() for d in slice_}
            devices = self._assigned[name] = tuple(d for d in self.devices if d not in taken)[:gpus]
        return HostAgent(
            name, self.hosts_dir / name, ports=self.ports, store=self.store, gpu_devices=devices, shares_objects=True
        )

    def restore_host(self, name: str, devices: tuple[int, ...] | None) -> HostAgent:
        """A logical host of a cluster service that restarted on the same state folder: the same name, folder and
        GPU slice, with the replica processes that still run adopted."""
        self.running += 1
        number = name.removeprefix("host-")
        self._next = max(self._next, int(number) + 1 if number.isdigit() else self._next)
        if devices is not None:
            self._assigned[name] = devices
        agent = HostAgent(
            name, self.hosts_dir / name, ports=self.ports, store=self.store, gpu_devices=devices, shares_objects=True
        )
        agent.adopt()
        return agent

    def remove_host(self, agent: HostAgent) -> None:
        if agent.replicas:
            raise ProviderError(f"{agent.name} still runs {len(agent.replicas)} replica(s); drain it first")
        self.running -= 1
        self._assigned.pop(agent.name, None)
        shutil.rmtree(agent.workdir, ignore_errors=True)

    def resize_host(self, agent: HostAgent, gpus: int) -> None:
        """Hosts with virtual GPUs take any count; a slice of this machine's real GPUs is fixed (another host may
        hold the cards next to it): add or remove hosts instead."""
        if agent.gpu_devices is not None:
            raise ProviderError(
                f"{agent.name} holds this machine's GPU(s) {list(agent.gpu_devices)}; logical hosts "
                "split the machine's GPUs, so add or remove hosts instead of resizing one"
            )
