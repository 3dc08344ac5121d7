"""Cluster bookkeeping: the one place that mutates hosts, kernels, replicas and allocations.

It takes no decisions (that is ``SchedulerCore``'s job with its policy); it applies them and keeps the invariants
and the cluster-wide counters the autoscaler reads on every tick, so that reading them costs nothing.
"""

from __future__ import annotations

from .model import Allocation, AllocationState, Host, HostState, Kernel


class Cluster:
    def __init__(self) -> None:
        self.hosts: dict[str, Host] = {}
        self.kernels: dict[str, Kernel] = {}
        self.total_gpus = 0  # on every host, draining ones included: they are still paid for
        self.used_gpus = 0  # devices in pending or committed allocations
        self.subscribed_gpus = 0

    # ----------------------------------------------------------------- hosts
    def add_host(self, host_id: str, gpus: int) -> Host:
        if host_id in self.hosts:
            raise ValueError(f"host {host_id!r} already exists")
        if gpus < 0:
            raise ValueError(f"host {host_id!r}: GPU count must not be negative, got {gpus}")
        host = Host(host_id, gpus)
        self.hosts[host_id] = host
        self.total_gpus += gpus
        return host

    def remove_host(self, host_id: str) -> Host:
        host = self.host(host_id)
        if host.replicas or host.allocations:
            raise ValueError(
                f"host {host_id!r} still holds {len(host.replicas)} replica(s) and "
                f"{len(host.allocations)} allocation(s); drain it first"
            )
        del self.hosts[host_id]
        self.total_gpus -= host.gpus
        return host

    def resize_host(self, host_id: str, gpus: int) -> Host:
        """Give an idle host another GPU count (a logical host reconfigured, a GPU taken out for repair)."""
        host = self.host(host_id)
        if gpus < 1:
            raise ValueError(f"host {host_id!r}: a host needs at least 1 GPU, got {gpus}")
        if host.allocations:
            raise ValueError(
                f"host {host_id!r} has GPUs in use by {len(host.allocations)} kernel(s); change its GPU "
                "count once their cells are over (or drain it first)"
            )
        self.total_gpus += gpus - host.gpus
        host.gpus = gpus
        host.idle_devices = list(range(gpus))
        return host

    def host(self, host_id: str) -> Host:
        try:
            return self.hosts[host_id]
        except KeyError:
            raise KeyError(f"unknown host {host_id!r}") from None

    def active_hosts(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.state is HostState.ACTIVE]

    # --------------------------------------------------------------- kernels
    def add_kernel(self, kernel_id: str, gpus: int) -> Kernel:
        if kernel_id in self.kernels:
            raise ValueError(f"kernel {kernel_id!r} already exists")
        if gpus < 0:
            raise ValueError(f"kernel {kernel_id!r}: GPU request must not be negative, got {gpus}")
        kernel = Kernel(kernel_id, gpus)
        self.kernels[kernel_id] = kernel
        return kernel

    def remove_kernel(self, kernel_id: str) -> Kernel:
        kernel = self.kernel(kernel_id)
        if kernel.allocation is not None:
            self.free(kernel)
        for index in list(kernel.replicas):
            self.remove_replica(kernel, index)
        del self.kernels[kernel_id]
        return kernel

    def kernel(self, kernel_id: str) -> Kernel:
        try:
            return self.kernels[kernel_id]
        except KeyError:
            raise KeyError(f"unknown kernel {kernel_id!r}") from None

    # -------------------------------------------------------------- replicas
    def place_replica(self, kernel: Kernel, index: int, host: Host) -> None:
        if kernel.kernel_id in host.replicas:
            raise ValueError(f"host {host.host_id!r} already holds a replica of kernel {kernel.kernel_id!r}")
        kernel.replicas[index] = host.host_id
        host.replicas[kernel.kernel_id] = index
        host.subscribed += kernel.gpus
        self.subscribed_gpus += kernel.gpus

    def remove_replica(self, kernel: Kernel, index: int) -> Host:
        host = self.hosts[kernel.replicas.pop(index)]
        del host.replicas[kernel.kernel_id]
        host.subscribed -= kernel.gpus
        self.subscribed_gpus -= kernel.gpus
        return host

    def move_replica(self, kernel: Kernel, index: int, target: Host) -> Host:
        source = self.remove_replica(kernel, index)
        self.place_replica(kernel, index, target)
        return source

    # ----------------------------------------------------------- allocations
    def allocate(
        self,
        kernel: Kernel,
        host: Host,
        gpus: int,
        replica: int | None,
        held: bool,
        state: AllocationState,
        now: float,
    ) -> Allocation:
        if kernel.allocation is not None:
            raise ValueError(f"kernel {kernel.kernel_id!r} already has GPUs allocated on {kernel.allocation.host_id!r}")
        if host.idle_gpus < gpus:
            raise ValueError(f"host {host.host_id!r} has {host.idle_gpus} idle GPU(s), {gpus} requested")
        devices = tuple(host.idle_devices[:gpus])
        del host.idle_devices[:gpus]
        allocation = Allocation(kernel.kernel_id, host.host_id, devices, replica, state, held, now)
        host.allocations[kernel.kernel_id] = allocation
        kernel.allocation = allocation
        self.used_gpus += gpus
        return allocation

    def claim(self, kernel: Kernel, allocation: Allocation) -> None:
        """Give a kernel back the devices it held before the driver restarted (ValueError if they are not idle)."""
        host = self.host(allocation.host_id)
        if kernel.allocation is not None or not set(allocation.devices) <= set(host.idle_devices):
            raise ValueError(
                f"kernel {kernel.kernel_id!r} cannot take back devices {list(allocation.devices)} on "
                f"{host.host_id!r}: they are not idle"
            )
        host.idle_devices = [d for d in host.idle_devices if d not in allocation.devices]
        host.allocations[kernel.kernel_id] = allocation
        kernel.allocation = allocation
        self.used_gpus += allocation.gpus

    def free(self, kernel: Kernel) -> Allocation:
        allocation = kernel.allocation
        if allocation is None:
            raise ValueError(f"kernel {kernel.kernel_id!r} holds no GPUs")
        host = self.hosts[allocation.host_id]
        del host.allocations[kernel.kernel_id]
        host.idle_devices = sorted(host.idle_devices + list(allocation.devices))
        kernel.allocation = None
        self.used_gpus -= allocation.gpus
        return allocation
