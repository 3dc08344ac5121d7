"""The state the scheduling core reasons about: hosts with GPU device ids, kernels, replicas and allocations.

These are plain records; the invariants between them (a device belongs to at most one allocation, a host holds at
most one replica of a kernel, subscription counters match the replicas) are kept by ``Cluster``, the only code that
mutates them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum


class HostState(Enum):
    ACTIVE = "active"  # takes new replicas and allocations
    DRAINING = "draining"  # takes nothing new; its replicas are being moved away


class AllocationState(Enum):
    # Devices are reserved for an executor that has not started yet: the chosen replica has not confirmed LEAD,
    # or a container is starting, or a replica is migrating. Nobody else may take them meanwhile.
    PENDING = "pending"
    COMMITTED = "committed"  # the executor runs on these devices


@dataclass(eq=False, slots=True)
class Allocation:
    kernel_id: str
    host_id: str
    devices: tuple[int, ...]
    replica: int | None  # executor replica index; None for a container outside the replica set
    state: AllocationState
    held: bool  # held for the session's whole life (reservation): releasing a cell keeps it
    since: float  # when the devices were taken (pre-committed, or committed for a held session)

    @property
    def gpus(self) -> int:
        return len(self.devices)


@dataclass(eq=False, slots=True)
class Host:
    host_id: str
    gpus: int
    state: HostState = HostState.ACTIVE
    idle_devices: list[int] = field(default_factory=list)  # kept sorted: allocations take the lowest ids
    allocations: dict[str, Allocation] = field(default_factory=dict)  # by kernel id (one per kernel at a time)
    replicas: dict[str, int] = field(default_factory=dict)  # kernel id -> replica index (at most one per kernel)
    subscribed: int = 0  # GPUs requested by the replicas placed here
    remove_when_drained: bool = False
    drained_reported: bool = False
    reachable: bool = True  # False while its agent misses heartbeats: nothing new is placed on it

    def __post_init__(self) -> None:
        if not self.idle_devices:
            self.idle_devices = list(range(self.gpus))

    @property
    def idle_gpus(self) -> int:
        return len(self.idle_devices)

    @property
    def active(self) -> bool:
        return self.state is HostState.ACTIVE

    def ratio(self, extra: int = 0) -> float:
        """Subscription ratio: GPUs requested by replicas placed here (plus ``extra``) over the host's GPUs. A host
        without GPUs (a machine for standbys of GPU-less kernels) takes no request for one."""
        wanted = self.subscribed + extra
        if self.gpus == 0:
            return math.inf if wanted else 0.0
        return wanted / self.gpus


@dataclass(eq=False, slots=True)
class Kernel:
    kernel_id: str
    gpus: int  # what the kernel asks for (its kernelspec or session); what its replicas subscribe
    replicas: dict[int, str] = field(default_factory=dict)  # replica index -> host id
    allocation: Allocation | None = None
    executing: bool = False  # a cell has been granted GPUs and has not been released
    previous_executor: int | None = None
    last_release: float | None = None
    last_gpus: int = 0  # GPUs of the most recent cell
    ever_placed: bool = False


@dataclass(eq=False, slots=True)
class ExecutionRequest:
    kernel_id: str
    gpus: int
    submitted: float
