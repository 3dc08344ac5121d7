"""Events: every decision the scheduling core takes, as a typed record with a human-readable reason.

The core never acts on the world itself. It returns these records, and whoever drives it (the live scheduler, or
the trace simulator) carries them out: starts a replica container, tells a replica to LEAD, asks the cloud for a
host. Because the reason travels with the decision, the dashboard and the simulator's logs can say *why* a cell
waited or a replica moved without re-deriving it.

Times are seconds on whatever clock the driver passes in (wall clock live, virtual clock in the simulator).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    time: float
    reason: str


class DecisionKind(Enum):
    """How a cell gets its GPUs; the driver maps each kind to the work (and the delay) it implies."""

    LEAD = "lead"  # an existing replica (or the session's own container) runs the cell on devices committed now
    MIGRATE = "migrate"  # every replica YIELDs: one replica moves to a host with free GPUs and runs the cell there
    COLD_CONTAINER = "cold_container"  # a fresh container starts and restores the kernel's state, then runs
    WARM_CONTAINER = "warm_container"  # a pre-started container restores the kernel's state, then runs
    QUEUED = "queued"  # nothing can run it now; a later event grants it


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision(Event):
    """The answer to one execution request.

    ``host_id`` and ``devices`` name the pre-committed GPUs when granted; ``replica`` is the executor replica's index
    (None for a container outside the replica set). For MIGRATE, ``source_host`` is where the replica came from.
    ``events`` holds what this decision set off besides itself (for example a scale-out request when it queued).
    """

    kernel_id: str
    kind: DecisionKind
    gpus: int
    replica: int | None = None
    host_id: str | None = None
    devices: tuple[int, ...] = ()
    source_host: str | None = None
    events: tuple[Event, ...] = ()

    @property
    def granted(self) -> bool:
        return self.kind is not DecisionKind.QUEUED


@dataclass(frozen=True, slots=True, kw_only=True)
class HostAdded(Event):
    host_id: str
    gpus: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HostResized(Event):
    host_id: str
    gpus: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HostRemoved(Event):
    host_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HostDrainStarted(Event):
    host_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HostDrained(Event):
    """The host holds no replica and no allocation any more; ``remove_host`` may now take it away."""

    host_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleOutRequested(Event):
    """Ask the provider for ``hosts`` more hosts; each arrives later through ``add_host``."""

    hosts: int


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelPlaced(Event):
    kernel_id: str
    hosts: tuple[str, ...]  # replica i lives on hosts[i]; empty for policies that keep no replica


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementDeferred(Event):
    """Not enough hosts can take the kernel's replicas now; it is placed when hosts free up or arrive."""

    kernel_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelClosed(Event):
    kernel_id: str


class MoveCause(Enum):
    """Why the core moved an idle replica: what a driver counts a move under (the reason is prose for people)."""

    DRAIN = "drain"  # its host is draining
    SCALE_IN = "scale_in"  # the autoscaler vacates its host to remove it
    REQUEST = "request"  # an operator asked (migrate_replica)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaMoved(Event):
    """An idle replica moved (off a draining host, or on request): off the critical path, it was not executing."""

    kernel_id: str
    replica: int
    from_host: str
    to_host: str
    cause: MoveCause


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaLost(Event):
    kernel_id: str
    replica: int
    host_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaReplaced(Event):
    """A replacement for a lost replica was placed; it counts as a replica once it has caught up."""

    kernel_id: str
    replica: int
    host_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionInterrupted(Event):
    """The executor (or its host) died mid-cell; its GPUs are free and the cell must be requested again."""

    kernel_id: str
    host_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionStarted(Event):
    kernel_id: str
    host_id: str
    devices: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Released(Event):
    kernel_id: str
    host_id: str
    devices: tuple[int, ...]  # the devices now idle again (empty when the session keeps holding them)
