"""The scheduling core: pure, event-driven decisions over hosts, GPUs, kernels and replicas.

No I/O, no threads, no clock of its own. The driver (the live scheduler, or the trace simulator) calls one method
per thing that happened, passing the time it happened, and gets back the events describing what the core decided;
carrying them out (starting containers, booting hosts, telling replicas to LEAD) is the driver's job. Both drivers
run the same code, so the simulator's results are the live scheduler's behaviour.

A cell's life, as the core sees it (the whole of it: docs/architecture.md, "One cell"):

1. ``request_execution`` pre-selects the executor and pre-commits its devices (PENDING), or queues the request.
2. ``start_execution`` marks them COMMITTED once the executor runs.
3. ``release`` returns them to idle after the reply; queued requests may then be granted.

Kernels come and go with ``place_kernel`` / ``close_kernel`` / ``replica_lost``; hosts with ``add_host`` /
``remove_host`` / ``drain_host`` / ``host_lost`` / ``scale_out_failed``; ``tick`` runs the autoscaler and retries
whatever waits. Every method returns the events it caused, each with its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .autoscaler import Autoscaler, ScalingContext
from .cluster import Cluster
from .events import (
    Decision,
    DecisionKind,
    Event,
    ExecutionInterrupted,
    ExecutionStarted,
    HostAdded,
    HostDrained,
    HostDrainStarted,
    HostRemoved,
    HostResized,
    KernelClosed,
    KernelPlaced,
    MoveCause,
    PlacementDeferred,
    Released,
    ReplicaLost,
    ReplicaMoved,
    ReplicaReplaced,
    ScaleOutRequested,
)
from .model import Allocation, AllocationState, ExecutionRequest, Host, HostState, Kernel
from .policies import Policy

_EPS = 1e-9


@dataclass(frozen=True)
class CoreConfig:
    host_gpus: int = 8  # GPUs of a host that scale-out adds
    subscription_limit: float = 7.0  # the public prototype's max-subscribed-ratio
    min_hosts: int = 3  # a kernel's three replicas need three hosts
    max_hosts: int | None = None


class SchedulerCore:
    def __init__(self, policy: Policy, config: CoreConfig | None = None) -> None:
        self.policy = policy
        self.config = config or CoreConfig()
        if self.config.subscription_limit <= 0 or self.config.host_gpus <= 0:
            raise ValueError("subscription_limit and host_gpus must be positive")
        self.cluster = Cluster()
        self.autoscaler = Autoscaler(self.config.min_hosts, self.config.max_hosts)
        self.pending_hosts = 0  # requested from the provider, not yet added
        self._queue: dict[str, ExecutionRequest] = {}  # by kernel id, in arrival order
        self._unplaced: dict[str, Kernel] = {}  # kernels with replicas still to place (new, or replacing lost)
        # kernel id -> hosts where one of its replicas died and has not been replaced yet: a replacement goes
        # elsewhere; once every replica is placed again the hosts are forgiven (with few hosts, remembering every
        # past loss would leave a kernel nowhere to go after a few of them).
        self._avoid: dict[str, set[str]] = {}

    # ------------------------------------------------------------- read-outs
    @property
    def provisioned_gpus(self) -> int:
        """GPUs paid for: every host, draining ones included, plus hosts on their way."""
        return self.cluster.total_gpus + self.pending_hosts * self.config.host_gpus

    @property
    def used_gpus(self) -> int:
        return self.cluster.used_gpus

    @property
    def waiting_requests(self) -> list[ExecutionRequest]:
        return list(self._queue.values())

    # ----------------------------------------------------------------- hosts
    def add_host(self, host_id: str, gpus: int, now: float) -> list[Event]:
        """A host joined (initial inventory, a scale-out arriving, or an operator adding one)."""
        self.cluster.add_host(host_id, gpus)
        self.pending_hosts = max(0, self.pending_hosts - 1)
        joined = HostAdded(time=now, reason=f"host joined with {gpus} GPU(s)", host_id=host_id, gpus=gpus)
        return [joined] + self._settle(now)

    def scale_out_failed(self, hosts: int, now: float) -> list[Event]:
        """The provider could not deliver ``hosts`` of the hosts requested: stop counting them as on their way.

        Whatever still waits asks again at once (the provider may succeed on a retry, or the operator may cap it).
        """
        self.pending_hosts = max(0, self.pending_hosts - hosts)
        return self._settle(now)

    def remove_host(self, host_id: str, now: float) -> list[Event]:
        """Take away a host that holds nothing (drain it first)."""
        self.cluster.remove_host(host_id)
        return [HostRemoved(time=now, reason="removed by the operator after draining", host_id=host_id)]

    def resize_host(self, host_id: str, gpus: int, now: float) -> list[Event]:
        """An operator changed an idle host's GPU count; waiting work may fit now (or fit less)."""
        before = self.cluster.host(host_id).gpus
        self.cluster.resize_host(host_id, gpus)
        resized = HostResized(
            time=now, reason=f"GPU count changed from {before} to {gpus} by the operator", host_id=host_id, gpus=gpus
        )
        return [resized] + self._settle(now)

    def drain_host(self, host_id: str, now: float, remove: bool = False) -> list[Event]:
        """Stop placing work on a host and move its idle replicas away; with ``remove``, take it away once empty.

        Replicas that are executing (or cannot be moved for lack of room) stay until a later release or tick.
        """
        host = self.cluster.host(host_id)
        host.state = HostState.DRAINING
        host.remove_when_drained = remove
        why = f"drain requested; {len(host.replicas)} replica(s) to move"
        return [HostDrainStarted(time=now, reason=why, host_id=host_id)] + self._settle(now)

    def host_lost(self, host_id: str, now: float) -> list[Event]:
        """A host died: its allocations are gone, its replicas are replaced on other hosts."""
        host = self.cluster.host(host_id)
        events: list[Event] = []
        for kernel_id in list(host.allocations):
            events += self._interrupt(self.cluster.kernels[kernel_id], host_id, now, "host lost")
        for kernel_id, index in list(host.replicas.items()):
            kernel = self.cluster.kernels[kernel_id]
            events += self._lose_replica(kernel, index, now, "host lost")
        self.cluster.remove_host(host_id)
        events.append(HostRemoved(time=now, reason="host lost", host_id=host_id))
        return events + self._settle(now)

    def host_silent(self, host_id: str, now: float) -> list[Event]:
        """The host's agent missed heartbeats: its machine may be gone. Nothing new is placed on it until it is
        heard from again (``host_heard``) or declared lost (``host_lost``); what it holds stays."""
        self.cluster.host(host_id).reachable = False
        return []

    def host_heard(self, host_id: str, now: float) -> list[Event]:
        """A silent host's agent is heard from again: it takes new work, which waiting work may use at once."""
        self.cluster.host(host_id).reachable = True
        return self._settle(now)

    # --------------------------------------------------------------- kernels
    def place_kernel(self, kernel_id: str, gpus: int, now: float) -> list[Event]:
        """Place a new kernel's replicas on distinct hosts within the subscription limit, or defer it."""
        kernel = self.cluster.add_kernel(kernel_id, gpus)
        placed = self._try_place(kernel, now)
        if placed is not None:
            return placed
        self._unplaced[kernel_id] = kernel
        return [PlacementDeferred(time=now, reason=self._why_unplaceable(kernel), kernel_id=kernel_id)] + (
            self._scale_out_for_waiting(now)
        )

    def close_kernel(self, kernel_id: str, now: float) -> list[Event]:
        """The notebook closed: its replicas and any GPUs it holds go away; waiting work may use them."""
        self._queue.pop(kernel_id, None)
        self._unplaced.pop(kernel_id, None)
        self._avoid.pop(kernel_id, None)
        self.cluster.remove_kernel(kernel_id)
        return [KernelClosed(time=now, reason="notebook closed", kernel_id=kernel_id)] + self._settle(now)

    def replica_lost(self, kernel_id: str, replica: int, now: float) -> list[Event]:
        """One replica died (its host lives on): replace it on another host."""
        kernel = self.cluster.kernel(kernel_id)
        if replica not in kernel.replicas:
            raise ValueError(f"kernel {kernel_id!r} has no replica {replica}")
        return self._lose_replica(kernel, replica, now, "replica process died") + self._settle(now)

    def migrate_replica(self, kernel_id: str, replica: int, host_id: str, now: float) -> list[Event]:
        """An operator moves one replica to another host (the dashboard's "migrate"). Refused, with the reason, when
        the replica is executing, the target is not active, already holds a replica of the kernel, or would pass
        the subscription limit."""
        kernel = self.cluster.kernel(kernel_id)
        if replica not in kernel.replicas:
            raise ValueError(f"kernel {kernel_id!r} has no replica {replica}")
        target = self.cluster.hosts.get(host_id)
        source = kernel.replicas[replica]
        if target is None or not target.active:
            raise ValueError(f"host {host_id!r} is not an active host of this cluster")
        if kernel.executing and kernel.allocation is not None and kernel.allocation.replica == replica:
            raise ValueError(f"replica {replica} of kernel {kernel_id!r} is running a cell; migrate it after the cell")
        if kernel_id in target.replicas:
            raise ValueError(f"host {host_id!r} already holds a replica of kernel {kernel_id!r}")
        if target.ratio(kernel.gpus) > self.config.subscription_limit + _EPS:
            raise ValueError(
                f"host {host_id!r} would pass the subscription limit "
                f"({target.ratio(kernel.gpus):.2f} > {self.config.subscription_limit})"
            )
        self.cluster.move_replica(kernel, replica, target)
        return [
            ReplicaMoved(
                time=now,
                reason="moved on request",
                kernel_id=kernel_id,
                replica=replica,
                from_host=source,
                to_host=host_id,
                cause=MoveCause.REQUEST,
            )
        ]

    # ----------------------------------------------------------------- cells
    def request_execution(self, kernel_id: str, gpus: int, now: float) -> Decision:
        """Pre-select the executor for a cell and pre-commit ``gpus`` devices for it, or queue the request."""
        kernel = self.cluster.kernel(kernel_id)
        allocation = kernel.allocation
        if kernel.executing and allocation is not None and allocation.state is AllocationState.COMMITTED:
            # The front asks again for the cell it was granted: the answer was lost (the driver restarted, or the
            # connection broke). The same grant, not a second one.
            return Decision(
                time=now,
                reason=f"granted already: replica {allocation.replica} holds the cell's "
                f"devices on {allocation.host_id}",
                kernel_id=kernel_id,
                kind=DecisionKind.LEAD,
                gpus=allocation.gpus,
                replica=allocation.replica,
                host_id=allocation.host_id,
                devices=allocation.devices,
            )
        if kernel.executing or kernel_id in self._queue:
            raise ValueError(f"kernel {kernel_id!r} already has a cell executing or waiting")
        if gpus < 0:
            raise ValueError(f"kernel {kernel_id!r}: GPU request must not be negative, got {gpus}")
        if self.policy.holds_gpus and gpus > kernel.gpus:
            raise ValueError(
                f"kernel {kernel_id!r} holds {kernel.gpus} GPU(s) for its session; a cell cannot ask for {gpus}"
            )
        request = ExecutionRequest(kernel_id, gpus, now)
        decision = self._grant(kernel, request, now)
        if decision is not None:
            return decision
        why = self._why_queued(kernel, gpus)
        self._queue[kernel_id] = request
        return Decision(
            time=now,
            reason=why,
            kernel_id=kernel_id,
            kind=DecisionKind.QUEUED,
            gpus=gpus,
            events=tuple(self._scale_out_for_waiting(now)),
        )

    def start_execution(self, kernel_id: str, now: float) -> list[Event]:
        """The executor began running the cell (LEAD confirmed, container or migrated replica ready)."""
        kernel = self.cluster.kernel(kernel_id)
        allocation = kernel.allocation
        if not kernel.executing or allocation is None:
            raise ValueError(f"kernel {kernel_id!r} has no granted cell to start")
        allocation.state = AllocationState.COMMITTED
        return [
            ExecutionStarted(
                time=now,
                reason="executor started",
                kernel_id=kernel_id,
                host_id=allocation.host_id,
                devices=allocation.devices,
            )
        ]

    def release(self, kernel_id: str, now: float) -> list[Event]:
        """The cell replied: its GPUs go back to idle (unless the session holds them) and waiting work retries."""
        kernel = self.cluster.kernel(kernel_id)
        allocation = kernel.allocation
        if not kernel.executing or allocation is None:
            raise ValueError(f"kernel {kernel_id!r} has no cell executing")
        kernel.executing = False
        kernel.last_release = now
        kernel.previous_executor = allocation.replica
        if allocation.held:
            freed: tuple[int, ...] = ()
            why = "cell finished; the session keeps its GPUs"
        else:
            freed = self.cluster.free(kernel).devices
            why = f"cell finished; {len(freed)} GPU(s) back to idle"
        released = Released(time=now, reason=why, kernel_id=kernel_id, host_id=allocation.host_id, devices=freed)
        return [released] + self._settle(now)

    # --------------------------------------------------------------- restore
    def restore_host(self, host_id: str, gpus: int, draining: bool = False, remove_when_drained: bool = False) -> None:
        """A host the driver had before it restarted (it keeps its state on disk), back as it was. No events: it
        happened before; call ``restored`` once every host and kernel is back."""
        host = self.cluster.add_host(host_id, gpus)
        host.state = HostState.DRAINING if draining else HostState.ACTIVE
        host.remove_when_drained = remove_when_drained

    def restore_kernel(
        self,
        kernel_id: str,
        gpus: int,
        replicas: dict[int, str],
        previous_executor: int | None,
        allocation: Allocation | None = None,
        executing: bool = False,
    ) -> None:
        """A kernel the driver had before it restarted, on the hosts it was on, with the devices it held. A cell's
        allocation still PENDING was never answered (the front asks again), so it is not taken back."""
        kernel = self.cluster.add_kernel(kernel_id, gpus)
        kernel.previous_executor = previous_executor
        kernel.ever_placed = True
        for index, host_id in sorted(replicas.items()):
            self.cluster.place_replica(kernel, index, self.cluster.host(host_id))
        if allocation is not None and (allocation.held or allocation.state is AllocationState.COMMITTED):
            self.cluster.claim(kernel, allocation)
            kernel.executing = executing and allocation.state is AllocationState.COMMITTED
        if len(kernel.replicas) < self.policy.replicas:
            self._unplaced[kernel_id] = kernel

    def restored(self, now: float) -> list[Event]:
        """Everything is back: place what lacks replicas, as after any change."""
        return self._settle(now)

    # ------------------------------------------------------------------ time
    def tick(self, now: float) -> list[Event]:
        """Periodic step: retry what waits, then let the autoscaler add or remove hosts."""
        events = self._settle(now)
        ctx = self._scaling_context(now)
        active = sum(1 for h in self.cluster.hosts.values() if h.active)
        plan = self.autoscaler.plan(
            ctx,
            self.policy.target_gpus(ctx),
            active + self.pending_hosts,
            self.policy.scale_in_delay_s,
            self.policy.scale_in_limit,
        )
        if plan.add_hosts:
            events += self._request_hosts(plan.add_hosts, now, plan.reason)
        if plan.remove_hosts:
            events += self._scale_in(plan.remove_hosts, now, plan.reason)
        return events

    # ============================================================ internals
    def _settle(self, now: float) -> list[Event]:
        """After anything changed: progress drains, place waiting kernels, grant waiting requests."""
        events = self._progress_drains(now)
        for kernel_id, kernel in list(self._unplaced.items()):
            placed = self._try_place(kernel, now)
            if placed is not None:
                del self._unplaced[kernel_id]
                events += placed
        events += self._serve_queue(now)
        if self._queue or self._unplaced:
            events += self._scale_out_for_waiting(now)
        return events

    # --------------------------------------------------------- placement
    def _placement_candidates(self, kernel: Kernel, exclude: set[str]) -> list[Host]:
        """Hosts that may take one of the kernel's replicas, in the cluster's order. It runs over every host for each
        kernel placed, so the cheap tests come first and each reads a field (``state``, not the ``active`` property)."""
        limit = self.config.subscription_limit + _EPS
        need = kernel.gpus if self.policy.holds_gpus else 0
        gpus, kernel_id, active = kernel.gpus, kernel.kernel_id, HostState.ACTIVE
        return [
            h
            for h in self.cluster.hosts.values()
            if h.state is active
            and h.reachable
            and kernel_id not in h.replicas
            and h.host_id not in exclude
            and len(h.idle_devices) >= need
            and h.ratio(gpus) <= limit
        ]

    def _try_place(self, kernel: Kernel, now: float) -> list[Event] | None:
        if not self.policy.replicas:
            kernel.ever_placed = True
            why = "no standing replica under this policy"
            return [KernelPlaced(time=now, reason=why, kernel_id=kernel.kernel_id, hosts=())]
        missing = [i for i in range(self.policy.replicas) if i not in kernel.replicas]
        candidates = self._placement_candidates(kernel, self._avoid.get(kernel.kernel_id, set()))
        if len(candidates) < len(missing):
            return None
        chosen = self.policy.rank_placement(kernel, candidates, len(missing))
        for index, host in zip(missing, chosen):
            self.cluster.place_replica(kernel, index, host)
            if self.policy.holds_gpus:
                self.cluster.allocate(
                    kernel, host, kernel.gpus, index, held=True, state=AllocationState.COMMITTED, now=now
                )
        ratios = ", ".join(f"{h.host_id} {h.ratio():.2f}" for h in chosen)
        why = f"{self.policy.placement_rule}; subscription ratio after placement: {ratios}"
        if not kernel.ever_placed:
            kernel.ever_placed = True
            hosts = tuple(kernel.replicas[i] for i in sorted(kernel.replicas))
            return [KernelPlaced(time=now, reason=why, kernel_id=kernel.kernel_id, hosts=hosts)]
        self._avoid.pop(kernel.kernel_id, None)
        return [
            ReplicaReplaced(time=now, reason=why, kernel_id=kernel.kernel_id, replica=i, host_id=h.host_id)
            for i, h in zip(missing, chosen)
        ]

    def _why_unplaceable(self, kernel: Kernel) -> str:
        missing = self.policy.replicas - len(kernel.replicas)
        room = len(self._placement_candidates(kernel, self._avoid.get(kernel.kernel_id, set())))
        what = f"{kernel.gpus} idle GPU(s)" if self.policy.holds_gpus else "subscription room"
        return (
            f"{missing} replica(s) of {kernel.gpus} GPU(s) to place but only {room} distinct host(s) have {what} "
            f"(subscription limit {self.config.subscription_limit})"
        )

    # --------------------------------------------------------- executions
    def _grant(self, kernel: Kernel, request: ExecutionRequest, now: float) -> Decision | None:
        gpus = request.gpus
        policy = self.policy
        if policy.replicas and not kernel.replicas:
            return None
        if policy.holds_gpus:
            allocation = kernel.allocation
            assert allocation is not None  # a placed reservation kernel always holds its GPUs
            kernel.executing = True
            kernel.last_gpus = gpus
            return self._decision(
                kernel,
                request,
                DecisionKind.LEAD,
                allocation.replica,
                allocation.host_id,
                allocation.devices[:gpus],
                None,
                now,
                "the session holds its GPUs",
            )
        if not policy.replicas:
            hosts = [h for h in self.cluster.hosts.values() if h.active and h.idle_gpus >= gpus]
            if not hosts:
                return None
            host = policy.choose_container_host(gpus, hosts)
            assert policy.container_kind is not None
            return self._commit(
                kernel,
                request,
                policy.container_kind,
                None,
                host,
                None,
                now,
                f"container on {host.host_id}, which had {host.idle_gpus} idle GPU(s)",
            )
        replicas = [(i, self.cluster.hosts[h]) for i, h in sorted(kernel.replicas.items())]
        ready = [(i, h) for i, h in replicas if h.active and h.idle_gpus >= gpus]
        previous = next(((i, h) for i, h in ready if i == kernel.previous_executor), None)
        if previous is not None:
            index, host = previous
            return self._commit(
                kernel,
                request,
                DecisionKind.LEAD,
                index,
                host,
                None,
                now,
                f"previous executor (replica {index}) can commit {gpus} GPU(s) on {host.host_id} now",
            )
        if ready:
            index, host = policy.choose_executor(kernel, gpus, ready)
            return self._commit(
                kernel,
                request,
                DecisionKind.LEAD,
                index,
                host,
                None,
                now,
                f"replica {index} on {host.host_id} ({host.idle_gpus} idle GPUs): "
                f"{policy.executor_rule} among the {len(ready)} replica(s) that can commit {gpus}",
            )
        targets = [h for h in self._placement_candidates(kernel, set()) if h.idle_gpus >= gpus]
        if not targets:
            return None
        index = policy.choose_migration_source(kernel, replicas)
        target = policy.choose_migration_target(kernel, gpus, targets)
        source = self.cluster.move_replica(kernel, index, target)
        yielded = ", ".join(f"{h.host_id}:{h.idle_gpus}" for _, h in replicas)
        return self._commit(
            kernel,
            request,
            DecisionKind.MIGRATE,
            index,
            target,
            source.host_id,
            now,
            f"all {len(replicas)} replicas YIELD (idle GPUs {yielded} < {gpus}); migrating replica "
            f"{index} {policy.migration_rule} ({target.host_id}, {target.idle_gpus} idle)",
        )

    def _commit(
        self,
        kernel: Kernel,
        request: ExecutionRequest,
        kind: DecisionKind,
        index: int | None,
        host: Host,
        source: str | None,
        now: float,
        why: str,
    ) -> Decision:
        allocation = self.cluster.allocate(
            kernel, host, request.gpus, index, held=False, state=AllocationState.PENDING, now=now
        )
        kernel.executing = True
        kernel.last_gpus = request.gpus
        return self._decision(kernel, request, kind, index, host.host_id, allocation.devices, source, now, why)

    def _decision(
        self,
        kernel: Kernel,
        request: ExecutionRequest,
        kind: DecisionKind,
        index: int | None,
        host_id: str,
        devices: tuple[int, ...],
        source: str | None,
        now: float,
        why: str,
    ) -> Decision:
        if now > request.submitted:
            why += f" (waited {now - request.submitted:.0f} s)"
        return Decision(
            time=now,
            reason=why,
            kernel_id=kernel.kernel_id,
            kind=kind,
            gpus=request.gpus,
            replica=index,
            host_id=host_id,
            devices=devices,
            source_host=source,
        )

    def _why_queued(self, kernel: Kernel, gpus: int) -> str:
        if self.policy.replicas and not kernel.replicas:
            return "queued: the kernel's replicas are not placed yet"
        if not self.policy.replicas:
            return f"queued: no host has {gpus} idle GPU(s)"
        idle = ", ".join(f"{h}:{self.cluster.hosts[h].idle_gpus}" for h in kernel.replicas.values())
        return (
            f"queued: all replicas YIELD (idle GPUs {idle} < {gpus}) and no other host has {gpus} idle GPU(s) "
            f"within subscription limit {self.config.subscription_limit}"
        )

    def _serve_queue(self, now: float) -> list[Event]:
        if not self._queue:
            return []
        events: list[Event] = []
        most_idle = max((h.idle_gpus for h in self.cluster.hosts.values() if h.active), default=-1)
        for kernel_id, request in list(self._queue.items()):
            if request.gpus > most_idle and not self.policy.holds_gpus:
                continue  # cheap skip: nothing could take it
            decision = self._grant(self.cluster.kernels[kernel_id], request, now)
            if decision is not None:
                del self._queue[kernel_id]
                events.append(decision)
                most_idle = max((h.idle_gpus for h in self.cluster.hosts.values() if h.active), default=-1)
        return events

    # ------------------------------------------------------- failures
    def _interrupt(self, kernel: Kernel, host_id: str, now: float, why: str) -> list[Event]:
        self.cluster.free(kernel)
        if not kernel.executing:
            return []
        kernel.executing = False
        return [
            ExecutionInterrupted(
                time=now, reason=f"{why}; the cell must be requested again", kernel_id=kernel.kernel_id, host_id=host_id
            )
        ]

    def _lose_replica(self, kernel: Kernel, index: int, now: float, why: str) -> list[Event]:
        host_id = kernel.replicas[index]
        events: list[Event] = []
        if kernel.allocation is not None and kernel.allocation.host_id == host_id:
            events += self._interrupt(kernel, host_id, now, why)
        self.cluster.remove_replica(kernel, index)
        if kernel.previous_executor == index:
            kernel.previous_executor = None
        self._avoid.setdefault(kernel.kernel_id, set()).add(host_id)
        self._unplaced[kernel.kernel_id] = kernel
        events.append(ReplicaLost(time=now, reason=why, kernel_id=kernel.kernel_id, replica=index, host_id=host_id))
        return events

    # ------------------------------------------------------ drain, scale
    def _movable_plan(self, host: Host, partial: bool) -> list[tuple[Kernel, int, Host]] | None:
        """Where each replica on ``host`` could go now (tentatively booking room as it goes).

        A replica executing a cell stays. With ``partial`` the others still get a plan; without it, any replica
        that cannot move makes the whole plan None (scale-in removes a host only if it can empty it at once).
        """
        limit = self.config.subscription_limit + _EPS
        booked_sub: dict[str, int] = {}
        booked_gpus: dict[str, int] = {}
        plan: list[tuple[Kernel, int, Host]] = []
        for kernel_id, index in host.replicas.items():
            kernel = self.cluster.kernels[kernel_id]
            allocation = kernel.allocation
            here = allocation is not None and allocation.host_id == host.host_id
            if allocation is not None and here and (kernel.executing or not allocation.held):
                if partial:
                    continue
                return None
            need = kernel.gpus if here else 0
            candidates = [
                h
                for h in self.cluster.hosts.values()
                if h.active
                and h is not host
                and kernel_id not in h.replicas
                and h.ratio(booked_sub.get(h.host_id, 0) + kernel.gpus) <= limit
                and h.idle_gpus - booked_gpus.get(h.host_id, 0) >= need
            ]
            if not candidates:
                if partial:
                    continue
                return None
            target = self.policy.rank_placement(kernel, candidates, 1)[0]
            booked_sub[target.host_id] = booked_sub.get(target.host_id, 0) + kernel.gpus
            booked_gpus[target.host_id] = booked_gpus.get(target.host_id, 0) + need
            plan.append((kernel, index, target))
        return plan

    def _move(self, plan: list[tuple[Kernel, int, Host]], now: float, why: str, cause: MoveCause) -> list[Event]:
        events: list[Event] = []
        for kernel, index, target in plan:
            held = kernel.allocation is not None and kernel.allocation.held
            if held:
                self.cluster.free(kernel)
            source = self.cluster.move_replica(kernel, index, target)
            if held:
                self.cluster.allocate(
                    kernel, target, kernel.gpus, index, held=True, state=AllocationState.COMMITTED, now=now
                )
            events.append(
                ReplicaMoved(
                    time=now,
                    reason=why,
                    kernel_id=kernel.kernel_id,
                    replica=index,
                    from_host=source.host_id,
                    to_host=target.host_id,
                    cause=cause,
                )
            )
        return events

    def _progress_drains(self, now: float) -> list[Event]:
        events: list[Event] = []
        for host in [h for h in self.cluster.hosts.values() if h.state is HostState.DRAINING]:
            plan = self._movable_plan(host, partial=True)
            if plan:
                events += self._move(plan, now, f"draining {host.host_id}", MoveCause.DRAIN)
            if host.replicas or host.allocations:
                continue
            if host.remove_when_drained:
                self.cluster.remove_host(host.host_id)
                events.append(HostRemoved(time=now, reason="drained and removed", host_id=host.host_id))
            elif not host.drained_reported:
                host.drained_reported = True
                events.append(HostDrained(time=now, reason="holds no replica and no allocation", host_id=host.host_id))
        return events

    def _scale_in(self, count: int, now: float, why: str) -> list[Event]:
        """Remove up to ``count`` hosts, emptiest first, each only if all its replicas can move off it now."""
        events: list[Event] = []
        candidates = sorted(
            (h for h in self.cluster.hosts.values() if h.active and not self._busy(h)),
            key=lambda h: (len(h.replicas), h.subscribed),
        )
        for host in candidates[: 2 * count + 2]:
            if count == 0:
                break
            plan = self._movable_plan(host, partial=False)
            if plan is None:
                continue
            host.state = HostState.DRAINING
            events += self._move(plan, now, f"scale-in vacates {host.host_id}", MoveCause.SCALE_IN)
            self.cluster.remove_host(host.host_id)
            events.append(HostRemoved(time=now, reason=why, host_id=host.host_id))
            count -= 1
        return events

    def _busy(self, host: Host) -> bool:
        """Runs a cell, or holds GPUs pre-committed for one."""
        return any(not a.held or self.cluster.kernels[k].executing for k, a in host.allocations.items())

    def _request_hosts(self, count: int, now: float, why: str) -> list[Event]:
        if self.config.max_hosts is not None:
            count = min(count, self.config.max_hosts - len(self.cluster.hosts) - self.pending_hosts)
        if count <= 0:
            return []
        self.pending_hosts += count
        return [ScaleOutRequested(time=now, reason=why, hosts=count)]

    def _scale_out_for_waiting(self, now: float) -> list[Event]:
        """Scale out on placement or migration failure: enough new hosts for what waits, minus those coming."""
        host_gpus = self.config.host_gpus
        sizes = [r.gpus for r in self._queue.values() if r.gpus and not self.policy.holds_gpus]
        sizes += [k.gpus for k in self._unplaced.values() if k.gpus and self.policy.holds_gpus]
        wanted = _bins(sizes, host_gpus)
        for kernel in self._unplaced.values():
            missing = self.policy.replicas - len(kernel.replicas)
            room = len(self._placement_candidates(kernel, self._avoid.get(kernel.kernel_id, set())))
            wanted = max(wanted, missing - room)
        # many kernels blocked by the subscription limit need more hosts than any one of them does
        to_place = self._unplaced_subscription()
        if to_place:
            wanted = max(wanted, math.ceil(to_place / (host_gpus * self.config.subscription_limit)))
        extra = wanted - self.pending_hosts
        if extra <= 0:
            return []
        why = (
            f"scale out: {len(self._queue)} request(s) and {len(self._unplaced)} kernel(s) wait for room; "
            f"{self.pending_hosts} host(s) already on the way"
        )
        return self._request_hosts(extra, now, why)

    def _scaling_context(self, now: float) -> ScalingContext:
        active_gpus = sum(h.gpus for h in self.cluster.hosts.values() if h.active)
        idle_kernels = tuple(
            (k.last_release, k.last_gpus)
            for k in self.cluster.kernels.values()
            if not k.executing and k.last_release is not None
        )
        return ScalingContext(
            now=now,
            host_gpus=self.config.host_gpus,
            capacity_gpus=active_gpus + self.pending_hosts * self.config.host_gpus,
            used_gpus=self.cluster.used_gpus,
            queued_gpus=sum(r.gpus for r in self._queue.values()),
            waiting=bool(self._queue or self._unplaced),
            subscribed_gpus=self.cluster.subscribed_gpus + self._unplaced_subscription(),
            subscription_limit=self.config.subscription_limit,
            empty_hosts=self.pending_hosts
            + sum(1 for h in self.cluster.hosts.values() if h.active and h.idle_gpus == h.gpus),
            idle_kernels=idle_kernels,
        )

    def _unplaced_subscription(self) -> int:
        """GPUs that replicas waiting to be placed will subscribe once placed."""
        return sum((self.policy.replicas - len(k.replicas)) * k.gpus for k in self._unplaced.values())


def _bins(sizes: list[int], capacity: int) -> int:
    """Hosts needed to fit ``sizes`` GPUs, first-fit decreasing (a request bigger than a host takes whole hosts)."""
    free: list[int] = []
    count = 0
    for size in sorted(sizes, reverse=True):
        if size >= capacity:
            count += math.ceil(size / capacity)
            continue
        for i, room in enumerate(free):
            if room >= size:
                free[i] -= size
                break
        else:
            free.append(capacity - size)
    return count + len(free)
