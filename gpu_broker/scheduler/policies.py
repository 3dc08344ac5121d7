"""Scheduling policies: the choices that differ between the platforms we compare, over one shared core.

``SchedulerCore`` owns the mechanics (placement within the subscription limit, the previous-executor rule,
pre-commit, the all-YIELD path, queues, drain, autoscaling steps). A policy answers only the questions where the
platforms really differ: how many replicas a kernel has, whether a session holds its GPUs, how a cell without
replicas gets a container, which host or replica to prefer, and how much capacity to keep.

The base ``Policy`` is the NotebookOS paper's behaviour; the others override what they change.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import ClassVar

from .autoscaler import ScalingContext
from .events import DecisionKind
from .model import Host, Kernel


@dataclass
class Policy:
    name: ClassVar[str] = "policy"
    summary: ClassVar[str] = ""
    replicas: ClassVar[int] = 3  # replicas per kernel; 0 means a container per cell and no standing replica
    holds_gpus: ClassVar[bool] = False  # the kernel's GPUs stay committed for the session's whole life
    container_kind: ClassVar[DecisionKind | None] = None  # how a cell runs when the policy keeps no replica
    placement_rule: ClassVar[str] = "lowest subscription ratio, then most idle GPUs"
    executor_rule: ClassVar[str] = "its host has the most idle GPUs"
    migration_rule: ClassVar[str] = "from the most subscribed host to the host with the most idle GPUs"

    scaling_factor: float = 1.0  # capacity kept per GPU of demand
    buffer_hosts: int = 0  # whole idle hosts kept on top, so that a burst does not wait for a scale-out
    scale_in_delay_s: float = 600.0  # how long a surplus must last before hosts are removed
    scale_in_limit: int = 2  # hosts removed per autoscaler step

    def rank_placement(self, kernel: Kernel, hosts: list[Host], count: int) -> list[Host]:
        """The ``count`` best of the candidate hosts for a kernel's replicas (all have subscription room), best
        first; among equals, the first listed. ``heapq.nsmallest`` picks them as a sort would, without sorting
        every host of the cluster for the few the core takes."""
        return heapq.nsmallest(count, hosts, key=lambda h: (h.ratio(kernel.gpus), -h.idle_gpus))

    def choose_executor(self, kernel: Kernel, gpus: int, candidates: list[tuple[int, Host]]) -> tuple[int, Host]:
        """Pick the executor among replicas whose host can commit ``gpus`` now (the previous executor, if it
        could, was already taken by the core)."""
        return max(candidates, key=lambda c: c[1].idle_gpus)

    def choose_migration_source(self, kernel: Kernel, replicas: list[tuple[int, Host]]) -> int:
        """All replicas YIELDed: the replica to move. The one on the most subscribed host relieves it most."""
        index, _ = max(replicas, key=lambda r: r[1].ratio())
        return index

    def choose_migration_target(self, kernel: Kernel, gpus: int, targets: list[Host]) -> Host:
        """Where the moving replica goes, among hosts that can commit ``gpus`` within the subscription limit."""
        return max(targets, key=lambda h: (h.idle_gpus, -h.ratio()))

    def choose_container_host(self, gpus: int, hosts: list[Host]) -> Host:
        """Host for a per-cell container (policies without replicas): the tightest fit keeps whole hosts free."""
        return min(hosts, key=lambda h: h.idle_gpus)

    def target_gpus(self, ctx: ScalingContext) -> float:
        """GPUs the cluster should have now; the autoscaler rounds up to hosts and applies hysteresis."""
        return max(
            ctx.demand_gpus * self.scaling_factor + self.buffer_hosts * ctx.host_gpus,
            self.subscription_floor(ctx),
        )

    def subscription_floor(self, ctx: ScalingContext) -> float:
        return ctx.subscribed_gpus / ctx.subscription_limit if self.replicas else 0.0


@dataclass
class NotebookOS(Policy):
    """The paper: three replicas, GPUs bound per cell, migration on all-YIELD, autoscaling with a host buffer.

    Defaults follow the public prototype's configuration: capacity = 1.05 x committed demand plus a buffer of three
    idle hosts, at most two hosts released per step.
    """

    name: ClassVar[str] = "notebookos"
    summary: ClassVar[str] = "3 replicas, GPUs bound per cell, migration and autoscaling (the paper)"
    scaling_factor: float = 1.05
    buffer_hosts: int = 3


@dataclass
class Reservation(Policy):
    """Today's notebook platforms: a session's GPUs are committed from open to close, one container."""

    name: ClassVar[str] = "reservation"
    summary: ClassVar[str] = "GPUs held for the session's whole life, one container"
    replicas: ClassVar[int] = 1
    holds_gpus: ClassVar[bool] = True
    placement_rule: ClassVar[str] = "tightest fit (fewest idle GPUs that still fit)"

    def rank_placement(self, kernel: Kernel, hosts: list[Host], count: int) -> list[Host]:
        return heapq.nsmallest(count, hosts, key=lambda h: h.idle_gpus)


@dataclass
class Batch(Policy):
    """A batch system: every training event gets a fresh container that restores the notebook's state first."""

    name: ClassVar[str] = "batch"
    summary: ClassVar[str] = "fresh container per training event (start-up + state restore on the critical path)"
    replicas: ClassVar[int] = 0
    container_kind: ClassVar[DecisionKind | None] = DecisionKind.COLD_CONTAINER


@dataclass
class LargeContainerPool(Policy):
    """LCP: a large pool of pre-started containers; a cell runs in any warm one after restoring the state.

    No replica keeps the kernel's state, so every cell pays the restore; the pool is kept large (half the demand
    again plus four idle hosts) so that a cell almost never waits for a host.
    """

    name: ClassVar[str] = "lcp"
    summary: ClassVar[str] = "large warm container pool, state restored per cell, no replicas"
    replicas: ClassVar[int] = 0
    container_kind: ClassVar[DecisionKind | None] = DecisionKind.WARM_CONTAINER
    scaling_factor: float = 1.5
    buffer_hosts: int = 4


@dataclass
class NotebookOSPlus(NotebookOS):
    """Our policy: NotebookOS with shape-aware choices and capacity sized in whole free hosts.

    What limits NotebookOS on real traces is not the number of idle GPUs but where they are: a cell that asks for a
    whole host (8 GPUs, 30% of the June trace's events) can only run on a host with nothing else on it, so it
    migrates or waits for a scale-out whenever small cells are spread over every host. Three changes follow:

    * Tightest fit for the executor and for a migration target, instead of the most idle host: small cells fill
      hosts that are already in use, and the hosts that full-host kernels just freed stay free for their next cell.
    * Capacity kept as whole empty hosts rather than as a GPU margin: ``empty_hosts`` always, plus one for every
      full-host kernel that released its GPUs within ``returning_window_s`` (users come back within minutes: the
      median gap between training events is 3 minutes), so its next cell finds a host without a scale-out.
    * Faster, gentler scale-in: surplus hosts go after 5 minutes instead of 10, one at a time.
    """

    name: ClassVar[str] = "notebookos-plus"
    summary: ClassVar[str] = "NotebookOS + tightest-fit executors, empty-host headroom predicted from returning kernels"
    executor_rule: ClassVar[str] = "tightest fit (fewest idle GPUs that still fit)"
    migration_rule: ClassVar[str] = "from the most subscribed host to the tightest-fitting host"
    empty_hosts: int = 1
    returning_window_s: float = 600.0
    scale_in_delay_s: float = 300.0
    scale_in_limit: int = 1

    def choose_executor(self, kernel: Kernel, gpus: int, candidates: list[tuple[int, Host]]) -> tuple[int, Host]:
        return min(candidates, key=lambda c: c[1].idle_gpus)

    def choose_migration_target(self, kernel: Kernel, gpus: int, targets: list[Host]) -> Host:
        return min(targets, key=lambda h: (h.idle_gpus, h.ratio()))

    def target_gpus(self, ctx: ScalingContext) -> float:
        returning = sum(
            1
            for released, gpus in ctx.idle_kernels
            if gpus >= ctx.host_gpus and ctx.now - released <= self.returning_window_s
        )
        wanted_empty = self.empty_hosts + returning
        return max(
            ctx.capacity_gpus + (wanted_empty - ctx.empty_hosts) * ctx.host_gpus,
            self.subscription_floor(ctx),
        )


POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (Reservation, Batch, NotebookOS, LargeContainerPool, NotebookOSPlus)
}
LIVE_POLICY = NotebookOS.name  # the live cluster's default policy (the simulator compares it with the others)


def make_policy(name: str) -> Policy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None
