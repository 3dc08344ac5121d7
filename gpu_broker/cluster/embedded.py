"""The embedded cluster: logical hosts on this machine, each a host agent, and the kernels placed on them.

This is what ``notebookos lab`` and the provisioner start when no cluster is configured. Every decision is the
scheduling core's (:mod:`notebookos.gpu_broker.scheduler`), the same code the simulator runs; this class calls it with
what happened, and carries out the events it returns: replicas moved for a drain or scale-in, lost replicas
replaced on other hosts, hosts added by the autoscaler through the provider (:mod:`.providers`), devices granted
to cells. Each event also goes to the event log (:mod:`.event_log`), the metrics and the charts' history.

Calls come from one worker thread of the cluster service (so they never interleave); readers (``describe``) may
come from the service's event loop at any time, and take ``lock`` to see no half-applied change.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast
from collections.abc import Callable

from ...kernels.replica_config import ReplicaConfig
from .agent.remote import (
    HEARTBEAT_S,
    AgentError,
    AgentUnreachable,
    RemoteHost,
    config_json,
    heartbeat_period_s,
    next_heartbeat_s,
)
from .cells import CellRecord
from ..scheduler.events import (
    Decision,
    DecisionKind,
    Event,
    ExecutionStarted,
    HostAdded,
    HostDrained,
    HostDrainStarted,
    HostRemoved,
    HostResized,
    KernelPlaced,
    PlacementDeferred,
    Released,
    ReplicaMoved,
    ReplicaReplaced,
    ScaleOutRequested,
)
from ..scheduler.journal import CoreJournal
from ..scheduler.model import Allocation, AllocationState, HostState
from ..scheduler.policies import LIVE_POLICY, make_policy
from ..scheduler.core import CoreConfig, SchedulerCore
from .event_log import EventLog
from .history import History
from .host_agent import MOVE_PAUSE_S, HostAgent, ReplicaHost, ReplicaView, public_connection
from .metrics import ClusterMetrics
from .ports import PortPool
from .providers import HostProvider, LocalProvider, PendingHost, ProviderError
from .state_store import ClusterStateStore, StoredState

log = logging.getLogger(__name__)
R = TypeVar("R", Decision, list[Event])  # what the scheduling core's calls return
T = TypeVar("T")

REPLICAS_PER_KERNEL = 3
_CHANNELS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
_PORTS_PER_REPLICA = 2 + len(_CHANNELS)  # Raft, the five Jupyter channels, the peer API
# Kernel starts whose agent calls the cluster service runs at once, each on a thread of its own; more wait a turn.
LAUNCHES = 16
# Threads for kernel starts' agent calls: a start calls its three machines at once, the first from its own thread
# and two from here. With 8 (fewer than two per start), starts queued here for a thread under bursts:
# benchmarks/scale.py's placement p99 at 100/s was 31 to 193 ms over seven runs with 8, 20 to 96 ms over six with
# 32. Threads are made only when needed.
_AGENT_CALLS = 2 * LAUNCHES


# A machine a provider starts (a container, a pod on a node the node autoscaler may have to add) whose agent has not
# joined by then is given up on.
START_DEADLINE_S = 600.0
# After the service restarts, its agents' heartbeats resume once their retry back-off (at most 5 s) comes round: a
# machine is declared lost only if it stays silent this much longer than the host time-out.
RESTART_GRACE_S = 10.0
_HOST_EVENTS = (HostAdded, HostRemoved, HostResized, HostDrainStarted, HostDrained)


class PlacementError(RuntimeError):
    """The kernel's replicas cannot be placed now; the message is the scheduler's reason."""


class AgentRemoved(RuntimeError):
    """The agent's host was removed from the cluster by an operator or the autoscaler: it must stop."""


@dataclass
class KernelRecord:
    kernel_id: str
    replicas: list[tuple[ReplicaHost, ReplicaView]]
    owner: str | None = None
    notebook: str | None = None
    cell: CellRecord | None = None
    moving: set[int] = field(default_factory=set)  # replicas being handed over to another host
    cwd: str | None = None  # the working directory the kernel asked for

    def member_addresses(self) -> tuple[list[str], list[str]]:
        """Each replica's Raft address and peer API URL (empty without a peer API), in replica order, each as its
        own config gives it. Another replica's config names the members as they were when that replica started:
        after a replacement, the others' configs still point at the replaced replica's old home."""
        views = [view for _, view in self.replicas]
        urls = [view.config.peer_urls[index] for index, view in enumerate(views) if view.config.peer_urls]
        return [view.config.raft_address for view in views], urls if len(urls) == len(views) else []


@dataclass(frozen=True)
class KernelRequest:
    """What a kernel's start asks for (``POST /kernels``)."""

    kernel_id: str
    key: str
    signature_scheme: str
    cwd: str | None = None
    gpus: int = 0
    owner: str | None = None
    notebook: str | None = None


@dataclass
class KernelLaunch:
    """A kernel the scheduling core has placed, whose replicas are being started (see ``create_kernel``)."""

    request: KernelRequest
    hosts: list[ReplicaHost]
    silent_hosts: set[str] = field(default_factory=set)  # hosts whose agents did not answer a call of this start

    @property
    def off_thread(self) -> bool:
        """Its hosts are machines with agents: their calls may be made off the cluster's thread, at once."""
        return all(isinstance(host, RemoteHost) for host in self.hosts)


class EmbeddedCluster:
    def __init__(
        self,
        state_dir: Path,
        n_hosts: int = 4,
        gpus_per_host: int = 1,
        subscription_limit: float = CoreConfig.subscription_limit,
        journal: bool = False,
        max_hosts: int | None = None,
        policy: str = LIVE_POLICY,
        provider: HostProvider | None = None,
        object_store: str | None = None,
        host_timeout_s: float = 5.0,
        devices: list[int] | None = None,
        state: ClusterStateStore | None = None,
    ) -> None:
        """``state``: where the cluster keeps what it must not lose (:mod:`.state_store`); a cluster started on
        the state a previous one left restores it (its hosts, kernels and the devices their cells hold) instead
        of starting ``n_hosts`` new hosts."""
        self.state_dir = Path(state_dir)
        # A store every host reaches (Redis), or None: each host keeps objects in its own store.
        self.object_store = object_store
        self.host_timeout_s = host_timeout_s  # an agent silent this long has lost its host
        self.gpus_per_host = gpus_per_host
        self.policy = make_policy(policy)
        max_hosts = max(max_hosts or n_hosts, n_hosts)
        # Logical hosts share this machine's network stack and disk: one port pool, one folder per kernel's objects.
        self.provider = provider or LocalProvider(
            self.state_dir / "hosts", max_hosts, PortPool(), object_store, devices
        )
        self.provider_name = type(self.provider).__name__.removesuffix("Provider").lower()
        # The hosts started with are the floor the autoscaler keeps; it may add hosts up to max_hosts. The core sizes
        # a scale-out in GPUs per added host, which must be positive: with hosts without GPUs (for kernels that need
        # none) it counts 1, and the hosts a scale-out adds still get gpus_per_host, none.
        self.core_config = CoreConfig(
            host_gpus=max(1, gpus_per_host),
            subscription_limit=subscription_limit,
            min_hosts=n_hosts,
            max_hosts=max_hosts,
        )
        self.core = SchedulerCore(self.policy, self.core_config)
        # With ``journal``, every call the live cluster makes on the core is kept, so that it can be replayed on the
        # simulator's core and the decisions compared (tests, debugging); it grows with every cell and tick.
        self.journal = CoreJournal() if journal else None
        self.lock = threading.RLock()
        # Agent calls a kernel's start makes on its three machines at once (see _on_each).
        self._agent_calls = ThreadPoolExecutor(max_workers=_AGENT_CALLS, thread_name_prefix="agent-call")
        self._launching: set[str] = set()  # kernels placed whose replicas are being started (place_kernel)
        self.events = EventLog()
        self.metrics = ClusterMetrics()
        self.history = History()
        self.hosts: dict[str, ReplicaHost] = {}
        self.removed_agents: set[str] = set()  # machines removed whose agents have not been told yet
        self.starting: dict[str, PendingHost] = {}  # machines the provider is starting, until their agents join
        self.provided: set[str] = set()  # joined machines the provider started (it removes them)
        self._starting_ids = itertools.count(1)
        self._scaled_starting: set[str] = set()  # those of them the autoscaler asked for
        self.kernels: dict[str, KernelRecord] = {}
        self._clock = time.time()  # when GPU-seconds were last accounted
        self.granted: list[Decision] = []  # decisions for queued cells, taken by the service after each call
        self.state = state
        self._touched_hosts: set[str] = set()  # changed since the last save
        self._touched_kernels: set[str] = set()
        self._restored_at: float | None = None  # monotonic time of the restore, if this cluster was restored
        # Restored commitments of cells on machines whose agents have not reported since: kernel -> (host, replica).
        self._unconfirmed: dict[str, tuple[str, int]] = {}
        self._reachability_due = -math.inf  # when _follow_reachability next looks at every agent (time.monotonic)
        stored = state.load() if state is not None else StoredState()
        if state is not None:
            self.events.listeners.append(state.add_event)
        if stored.empty:
            for _ in range(n_hosts):
                self.add_host(gpus_per_host, scaled=False)
        else:
            self._restore(stored)

    # ------------------------------------------------------------------------------------ kernels

    def create_kernel(
        self,
        kernel_id: str,
        key: str,
        signature_scheme: str,
        cwd: str | None = None,
        gpus: int = 0,
        owner: str | None = None,
        notebook: str | None = None,
    ) -> dict:
        """Place a kernel and start its replicas, all on the calling thread (tests and tools). The service takes
        the same steps across its threads, and places again when an agent did not answer
        (``ClusterService.create_kernel``)."""
        launch = self.place_kernel(KernelRequest(kernel_id, key, signature_scheme, cwd, gpus, owner, notebook))
        try:
            started = self.launch_replicas(launch)
        except Exception as err:
            self.abandon_launch(launch, err)
            raise
        return self.admit_kernel(launch, started)

    def place_kernel(self, request: KernelRequest) -> KernelLaunch:
        """First step of a kernel's start, on the cluster's thread: the scheduling core places its replicas. Until
        :meth:`admit_kernel` (or :meth:`abandon_launch`) the kernel is launching: not listed, its id taken."""
        if request.kernel_id in self.kernels or request.kernel_id in self._launching:
            raise ValueError(f"kernel {request.kernel_id} already exists")
        hosts = self._place(request.kernel_id, request.gpus)
        self._launching.add(request.kernel_id)
        return KernelLaunch(request, hosts)

    def launch_replicas(self, launch: KernelLaunch) -> list[ReplicaView]:
        """Second step: ports from each chosen host, then a replica started on each. Only agent calls: on machines
        of their own (:attr:`KernelLaunch.off_thread`) the service makes them off the cluster's thread, so that one
        slow or dead agent holds up this kernel's start and nothing else; on logical hosts, on that thread."""
        request, hosts = launch.request, launch.hosts
        # Each host chooses the ports its replica binds, on its own address; Raft peers dial those addresses.
        ports = self._on_each(launch, lambda _, host: host.take_ports(request.kernel_id, _PORTS_PER_REPLICA))
        peers = tuple(_raft_address(host, taken) for host, taken in zip(hosts, ports))
        # Replicas on machines of their own talk to each other (objects, membership) through a peer API.
        peer_api = any(isinstance(host, RemoteHost) for host in hosts)
        urls = tuple(_peer_url(host, taken) for host, taken in zip(hosts, ports)) if peer_api else ()
        password = secrets.token_urlsafe(24)

        def start(index: int, host: ReplicaHost) -> ReplicaView:
            config = ReplicaConfig(
                kernel_id=request.kernel_id,
                replica=index,
                host=host.name,
                raft_address=peers[index],
                raft_peers=peers,
                raft_password=password,
                journal_path="",
                store=self.object_store or "",
                cwd=request.cwd,
                peer_urls=urls,
            )
            return host.start_replica(config, _connection(ports[index], request.key, request.signature_scheme))

        return self._on_each(launch, start)

    def admit_kernel(self, launch: KernelLaunch, started: list[ReplicaView]) -> dict:
        """Last step, on the cluster's thread: the kernel is listed with its replicas. Should the core have moved
        one of them meanwhile (its host was lost or removed while the agents were called), the start is undone and
        refused: what the core believes and what runs must agree."""
        kernel_id = launch.request.kernel_id
        placed = self.core.cluster.kernels.get(kernel_id)
        where = [host.name for host in launch.hosts]
        if (
            placed is None
            or [placed.replicas.get(i) for i in range(len(where))] != where
            or any(self.hosts.get(name) is not host for name, host in zip(where, launch.hosts))
        ):
            err = PlacementError(f"kernel {kernel_id}: a host it was placed on left the cluster while it started")
            self.abandon_launch(launch, err)
            raise err
        request = launch.request
        record = KernelRecord(
            kernel_id, list(zip(launch.hosts, started)), owner=request.owner, notebook=request.notebook, cwd=request.cwd
        )
        with self.lock:
            self._launching.discard(kernel_id)
            self.kernels[kernel_id] = record
        self._touched_kernels.add(kernel_id)
        return self.describe_kernel(kernel_id)

    def abandon_launch(self, launch: KernelLaunch, error: BaseException) -> None:
        """On the cluster's thread, after a failed step: stop what started, mark hosts whose agents did not answer
        silent (a second placement avoids them), and close the kernel in the core."""
        kernel_id = launch.request.kernel_id
        log.info("kernel %s did not start: %s", kernel_id, error)
        for host in launch.hosts:
            if host.name in launch.silent_hosts:
                continue
            try:
                host.stop_kernel(kernel_id)
            except AgentError as err:  # the machine that failed the start may not answer this either
                log.warning("could not stop kernel %s's replicas on %s: %s", kernel_id, host.name, err)
        for name in launch.silent_hosts:
            if name in self.core.cluster.hosts:
                self._decide(self.core.host_silent, name)
                self._reachability_news(name)
        self._launching.discard(kernel_id)
        if kernel_id in self.core.cluster.kernels:
            self._act(self._decide(self.core.close_kernel, kernel_id))

    def _on_each(self, launch: KernelLaunch, call: Callable[[int, ReplicaHost], T]) -> list[T]:
        """``call(index, host)`` for each of the launch's hosts, in order of the results. On machines of their own,
        at once: each call is a round trip to that machine's agent. Logical hosts answer in this process, in turn.
        Raises the first error; hosts whose agents did not answer are noted in the launch."""
        hosts = launch.hosts
        if not launch.off_thread:
            results = []
            for index, host in enumerate(hosts):
                try:
                    results.append(call(index, host))
                except AgentUnreachable:
                    launch.silent_hosts.add(host.name)
                    raise
            return results

        def outcome(index: int, host: ReplicaHost) -> tuple[T | None, Exception | None]:
            try:
                return call(index, host), None
            except Exception as err:
                return None, err

        # The first call on this thread, the others on the pool's: a thread hop fewer per round.
        others = [self._agent_calls.submit(outcome, index, host) for index, host in enumerate(hosts) if index]
        outcomes = [outcome(0, hosts[0]), *(future.result() for future in others)]
        errors = [error for _, error in outcomes if error is not None]
        launch.silent_hosts.update(
            host.name for host, (_, error) in zip(hosts, outcomes) if isinstance(error, AgentUnreachable)
        )
        if errors:
            raise errors[0]
        return cast(list[T], [result for result, _ in outcomes])  # no error: every call returned

    def delete_kernel(self, kernel_id: str) -> None:
        with self.lock:
            record = self.kernels.pop(kernel_id)
        self._act(self._decide(self.core.close_kernel, kernel_id))
        for host in {h for h, _ in record.replicas}:
            host.stop_kernel(kernel_id)

    def shutdown(self) -> None:
        for kernel_id in list(self.kernels):
            self.delete_kernel(kernel_id)
        self._agent_calls.shutdown(wait=False)

    def _follow_reachability(self) -> None:
        """Tell the scheduling core which agents' hosts are heard from now (it places nothing on a silent one).
        Every tick, and before a placement: an agent that joined again a moment ago (after a restart of this
        service, or of its machine's link) takes work at once, not at the next tick. It looks at every agent only
        once one of them may have changed (:meth:`_next_look`), not at every placement: with 200 agents, looking
        at all of them cost the service about as much as the scheduling core's placement (py-spy, scale.py)."""
        if time.monotonic() < self._reachability_due:
            return
        for host in [h for h in self.hosts.values() if isinstance(h, RemoteHost) and not h.lost]:
            if host.heard_from != self.core.cluster.host(host.name).reachable:
                self._act(self._decide(self.core.host_heard if host.heard_from else self.core.host_silent, host.name))
        with self.lock:  # heartbeats, on the event loop, bring the time forward under the lock (_reachability_news)
            agents = [h for h in self.hosts.values() if isinstance(h, RemoteHost)]
            self._reachability_due = min(map(self._next_look, agents), default=math.inf)

    def _next_look(self, host: RemoteHost) -> float:
        """When (``time.monotonic``) :meth:`_follow_reachability` must look at this agent's host: at once if the
        core's view of it is out of date; when it turns silent if the core counts it reachable; else (silent, or
        gone) not before news of it (:meth:`_reachability_news`)."""
        placed = self.core.cluster.hosts.get(host.name)
        if host.lost or placed is None:
            return math.inf
        if host.heard_from != placed.reachable:
            return -math.inf
        return host.silent_at if placed.reachable else math.inf

    def _reachability_news(self, name: str) -> None:
        """The host's agent was heard from (a heartbeat, a join), or the host was marked silent while its agent's
        heartbeats may still come: the next :meth:`_follow_reachability` looks if the core must be told."""
        host = self.hosts.get(name)
        if isinstance(host, RemoteHost):
            with self.lock:
                self._reachability_due = min(self._reachability_due, self._next_look(host))

    def _place(self, kernel_id: str, gpus: int) -> list[ReplicaHost]:
        """Ask the scheduling core where the replicas go; refuse with its reason when it cannot place them now."""
        self._follow_reachability()
        events = self._decide(self.core.place_kernel, kernel_id, gpus)
        placed = next((e for e in events if isinstance(e, KernelPlaced)), None)
        if placed is not None:
            return [self.hosts[host] for host in placed.hosts]
        # Deferred: the scale-out it asked for may deliver hosts at once (the local provider does), and the core
        # places the kernel on them as they join.
        reason = next((e.reason for e in events if isinstance(e, PlacementDeferred)), "no host can take them")
        self._act(events)
        replicas = self.core.cluster.kernels[kernel_id].replicas
        if len(replicas) == self.policy.replicas:
            return [self.hosts[replicas[i]] for i in sorted(replicas)]
        # A kernel start does not wait longer: it is refused with the reason.
        self._act(self._decide(self.core.close_kernel, kernel_id))
        raise PlacementError(
            f"cannot place the kernel's {self.policy.replicas} replica(s) with {gpus} GPU(s) each: "
            f"{reason}. Add hosts, or raise the subscription limit, or ask for fewer GPUs."
        )

    # ----------------------------------------------------------------------------------- GPUs per cell

    def request_execution(self, kernel_id: str, gpus: int) -> Decision:
        """The scheduler's decision for a kernel's next cell: an executor with pre-committed devices, a replica to
        migrate first, or a place in the queue. A request no host could ever satisfy is refused at once."""
        largest = max((h.gpus for h in self.core.cluster.hosts.values()), default=0)
        if gpus > largest:
            raise PlacementError(
                f"the cell asks for {gpus} GPU(s) but the largest host has {largest}; ask for at "
                f"most {largest} (%gpus {largest}), or add larger hosts"
            )
        record = self.kernels[kernel_id]
        record.cell = CellRecord(gpus=gpus, submitted=time.time())
        decision = self._decide(self.core.request_execution, kernel_id, gpus)
        record.cell.decided(decision)
        self._act(list(decision.events))
        if decision.granted:
            self.granted.append(decision)
        return decision

    def prepare(self, decision: Decision) -> ReplicaView | None:
        """What a granted decision needs before its executor may run: for MIGRATE, the replica moved (the process
        to wait for until it has caught up, returned); nothing for LEAD."""
        if decision.kind is not DecisionKind.MIGRATE:
            return None
        if decision.replica is None or decision.host_id is None:
            raise RuntimeError(f"the core decided a migration without its replica and host: {decision}")
        self._hand_over(decision.kernel_id, decision.replica, decision.host_id)
        return self.kernels[decision.kernel_id].replicas[decision.replica][1]

    def start(self, decision: Decision) -> None:
        """The executor is ready to run the cell: its devices are committed (ValueError if the kernel has gone)."""
        if decision.kernel_id not in self.kernels:
            raise ValueError(f"kernel {decision.kernel_id} was shut down before its cell started")
        self._decide(self.core.start_execution, decision.kernel_id)

    def release(self, kernel_id: str, bind_s: float | None = None, release_s: float | None = None) -> None:
        """The cell is over: its GPUs go back to idle; queued cells that can now run are granted."""
        cell = self.kernels[kernel_id].cell
        self._act(self._decide(self.core.release, kernel_id))
        if cell is not None:
            cell.bind_s, cell.release_s = bind_s, release_s
            for value, histogram in ((bind_s, self.metrics.bind_seconds), (release_s, self.metrics.release_seconds)):
                if value is not None:
                    histogram.observe(value)

    def tick(self) -> None:
        """Declare silent agents' hosts lost, retry waiting work, let the autoscaler act, and close a history
        sample when one is due."""
        restarting = self._restored_at is not None and time.monotonic() - self._restored_at < RESTART_GRACE_S
        for host in [h for h in self.hosts.values() if isinstance(h, RemoteHost) and not h.lost]:
            silent = time.monotonic() - host.last_heartbeat
            # The time-out is for agents that heartbeat every second; those told to wait longer get as many periods.
            if silent > self.host_timeout_s * host.period_s / HEARTBEAT_S and not restarting:
                self._lose_host(host, f"no heartbeat from its agent for {silent:.1f} s")
        self._follow_reachability()
        for key in [k for k, p in self.starting.items() if time.time() - p.since > START_DEADLINE_S]:
            with self.lock:
                del self.starting[key]
            why = f"its agent did not join within {START_DEADLINE_S:.0f} s"
            self.events.append("host_start_failed", time.time(), why, host=key)
            if key in self._scaled_starting:
                self._scaled_starting.discard(key)
                self._act(self._decide(self.core.scale_out_failed, 1))
        self._confirm_commitments()
        self._act(self._decide(self.core.tick))
        core = self.core
        with self.lock:
            self.history.maybe_sample(time.time(), core.cluster.total_gpus, core.used_gpus, len(core.waiting_requests))

    def take_granted(self) -> list[Decision]:
        """Grants made since the last call, for the cell just requested or for queued ones: the service starts
        them (moving a replica first for MIGRATE) and answers their fronts."""
        granted, self.granted = self.granted, []
        return granted

    # ------------------------------------------------------------------------------------ replicas

    def migrate_replica(self, kernel_id: str, replica: int, host: str) -> dict:
        """Move a replica to another host on request; the kernel keeps running (ValueError: refused, why)."""
        if host not in self.hosts:
            raise ValueError(f"there is no host {host!r}; hosts: {', '.join(self.hosts)}")
        self._act(self._decide(self.core.migrate_replica, kernel_id, replica, host))
        return self.describe_kernel(kernel_id)

    def replace_replica(self, kernel_id: str, replica: int, seen: str | None = None) -> dict:
        """The kernel front lost a replica: the scheduler places a replacement on another host. Between logical
        hosts it takes over the dead replica's journal (the machine lives on, so its disk does); on another
        machine it joins the Raft group as a new member. Nothing happens for a replica that is being moved, or
        waiting for room, or whose endpoint is not ``seen`` (``ip:shell_port`` the front lost: it is stale, the
        replica was replaced already and the answer tells it where). A replica that is alive on a host the cluster
        still hears from is left alone: the front lost touch with it (a partition), and it catches up through Raft
        once the link is back; if its machine is gone, the host is declared lost after ``host_timeout_s`` and the
        core replaces it then."""
        record = self.kernels[kernel_id]
        host, proc = record.replicas[replica]
        placed = replica in self.core.cluster.kernels[kernel_id].replicas
        stale = seen is not None and seen != f"{proc.connection['ip']}:{proc.connection['shell_port']}"
        if replica in record.moving or not placed or stale or (proc.alive and _reachable(host)):
            return self.describe_kernel(kernel_id)
        if proc.exit_reason:
            self.events.append(
                "replica_exited", time.time(), proc.exit_reason, host=host.name, kernel=kernel_id, replica=replica
            )
        self._act(self._decide(self.core.replica_lost, kernel_id, replica))
        return self.describe_kernel(kernel_id)

    def kill_replica(self, kernel_id: str, replica: int) -> dict:
        host, _ = self.kernels[kernel_id].replicas[replica]
        host.kill_replica(kernel_id, replica)
        self.events.append(
            "replica_killed",
            time.time(),
            "killed by the operator (fault drill)",
            host=host.name,
            kernel=kernel_id,
            replica=replica,
        )
        return self.describe_kernel(kernel_id)

    def _hand_over(self, kernel_id: str, replica: int, host: str, pause_s: float = 0.0) -> None:
        """Put a replica (alive, or lost) on another host. Between logical hosts its folder moves there, journal
        included, and it restarts with the same ports after ``pause_s``. Across machines a new member joins the
        kernel's Raft group there in its place (:meth:`_join_elsewhere`); ValueError if the kernel has no peer API
        (all its replicas started on this machine)."""
        record = self.kernels[kernel_id]
        source, current = record.replicas[replica]
        target = self.hosts[host]
        local = isinstance(source, HostAgent) and isinstance(target, HostAgent)
        if not local and not current.config.peer_urls:
            raise ValueError(
                f"replica {replica} of kernel {kernel_id} cannot move from {source.name} to {host}: the "
                "kernel started with every replica on this machine, without the peer API a member on "
                "another machine needs"
            )
        record.moving.add(replica)
        try:
            if isinstance(source, HostAgent) and isinstance(target, HostAgent):  # local
                moved = source.hand_over(kernel_id, replica, target, pause_s)
                with self.lock:
                    record.replicas[replica] = (target, moved)
            else:
                self._join_elsewhere(record, replica, target)
        finally:
            record.moving.discard(replica)

    # --------------------------------------------------------------------------------------- hosts

    def add_host(self, gpus: int | None = None, scaled: bool = True) -> dict:
        """A new host from the provider (the operator's "add host", or a scale-out); ProviderError if it cannot.
        A machine whose agent joins later (a container, a pod) is listed ``starting`` until it does."""
        gpus = self.gpus_per_host if gpus is None else gpus  # 0: a host without GPUs
        agent = self.provider.add_host(gpus)
        if isinstance(agent, PendingHost):
            key = agent.name or f"starting-{next(self._starting_ids)}"
            with self.lock:
                self.starting[key] = agent
                if scaled:
                    self._scaled_starting.add(key)
            self.events.append(
                "host_starting",
                time.time(),
                f"the {self.provider_name} provider is starting it",
                host=key,
                data={"gpus": agent.gpus},
            )
            if scaled:
                self.metrics.scale_events.labels("out").inc()
                self.history.scaled()
            return self._describe_starting(key)
        with self.lock:
            self.hosts[agent.name] = agent
        # A slice of this machine's real GPUs may be smaller than asked for (the others hold the rest).
        granted = len(agent.gpu_devices) if agent.gpu_devices is not None else gpus
        self._act(self._decide(self.core.add_host, agent.name, granted))
        if scaled:
            self.metrics.scale_events.labels("out").inc()
            self.history.scaled()
        return self._describe_host(agent.name)

    def join_agent(
        self,
        name: str,
        address: str,
        gpus: int,
        url: str,
        token: str,
        replicas: list[dict[str, Any]],
        cert_pem: str | None = None,
        lent_ports: range | None = None,
    ) -> dict:
        """A ``notebookos agent`` joined with the join token: its machine becomes a host. An agent that joins again
        under its name from the same address (it was restarted, or the service was) keeps the host and its
        replicas; ValueError if the name belongs to another machine or to a logical host. ``cert_pem``: the
        certificate of an agent serving https, the only one trusted when calling it. ``lent_ports``: the range of
        its machine's ports the agent lets the cluster choose its replicas' ports from."""
        with self.lock:
            self._refuse_removed(name)
        known = self.hosts.get(name)
        if known is not None:
            if not isinstance(known, RemoteHost) or known.address != address:
                where = known.address if isinstance(known, RemoteHost) else "this cluster's own machine"
                raise ValueError(f"host name {name!r} is taken by {where}; start the agent with another --name")
            known.rejoined(url, token, self._agent_trust(name, cert_pem), lent_ports)
            known.heartbeat(replicas)
            self._reachability_news(name)
            self._touched_hosts.add(name)
            self.events.append("agent_rejoined", time.time(), f"the agent at {address} joined again", host=name)
            return self._describe_host(name)
        host = RemoteHost(name, address, url, token, self._agent_trust(name, cert_pem), lent_ports)
        with self.lock:
            self.hosts[name] = host
            # A machine the provider started (by its name, or the first unnamed one on its way), or one an
            # operator runs: only the latter raises the autoscaler's floor and ceiling.
            started = (
                name if name in self.starting else next((k for k, p in self.starting.items() if p.name is None), None)
            )
            if started is not None:
                del self.starting[started]
                self._scaled_starting.discard(started)
                self.provided.add(name)
        if started is None:
            self.core.autoscaler.count_fixed_hosts(+1)
        self._act(self._decide(self.core.add_host, name, gpus))
        self._reachability_news(name)
        return self._describe_host(name)

    def agent_heartbeat(self, name: str, replicas: list[dict[str, Any]]) -> dict[str, Any]:
        """An agent's report of its replicas; KeyError for an agent this cluster does not know (it joins again).

        Answers the replicas the agent must stop (``stop``): an agent runs exactly the replicas the scheduling core
        placed on its host, so a replica replaced elsewhere while its machine was cut off is stopped when it is
        back. And when to heartbeat next (``next_s``): later the more agents there are (:func:`heartbeat_period_s`)."""
        with self.lock:
            self._refuse_removed(name)
            host = self.hosts.get(name)
            if not isinstance(host, RemoteHost) or host.lost:
                raise KeyError(f"no host {name!r} has joined this cluster")
            if not host.reported and self._restored_at is not None:
                self.events.append(
                    "agent_back", time.time(), "its agent reported to the restarted cluster service", host=name
                )
            host.heartbeat(replicas)
            host.period_s = self._heartbeat_period_s()
            self._reachability_news(name)
            placed = self.core.cluster.kernels
            stop = [
                (r["kernel_id"], r["replica"])
                for r in replicas
                if not (
                    r.get("kernel_id") in placed and placed[r["kernel_id"]].replicas.get(r.get("replica", -1)) == name
                )
            ]
            return {"stop": stop, "next_s": next_heartbeat_s(name, host.period_s, time.time())}

    def _heartbeat_period_s(self) -> float:
        return heartbeat_period_s(sum(isinstance(host, RemoteHost) for host in self.hosts.values()))

    def _agent_trust(self, name: str, cert_pem: str | None) -> str | bool:
        """What verifies an agent's https certificate: the one it joined with, kept in a file (requests reads one)."""
        if cert_pem is None:
            return True
        path = self.state_dir / "agents" / f"{name}.pem"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(cert_pem)
        return str(path)

    def _refuse_removed(self, name: str) -> None:
        """The agent of a host an operator removed hears it once (then the name is free again)."""
        if name in self.removed_agents:
            self.removed_agents.discard(name)
            raise AgentRemoved(f"host {name} was removed from the cluster")

    def _lose_host(self, host: RemoteHost, why: str) -> None:
        """The host's machine is gone or cut off: the scheduling core gives back its GPUs and places its
        replicas elsewhere; the kernel fronts re-run a cell it was running."""
        log.warning("host %s lost: %s", host.name, why)
        host.mark_lost()
        self.events.append("host_lost", time.time(), why, host=host.name)
        if host.name not in self.provided:
            self.core.autoscaler.count_fixed_hosts(-1)
        self._act(self._decide(self.core.host_lost, host.name))

    def drain_host(self, name: str) -> dict:
        """Stop placing work on a host and move its replicas away (those running a cell move after it)."""
        self._host(name)
        self._act(self._decide(self.core.drain_host, name))
        return self._describe_host(name)

    def remove_host(self, name: str) -> None:
        """Take away a host that holds nothing (ValueError otherwise: drain it first)."""
        self._host(name)
        self._act(self._decide(self.core.remove_host, name))

    def resize_host(self, name: str, gpus: int) -> dict:
        """Change a host's GPU count (ValueError while cells use its GPUs)."""
        host = self._host(name)
        if not isinstance(host, HostAgent):
            raise ValueError(
                f"{name} is a machine of its own: its agent advertises its GPUs (restart the agent "
                "with another --gpus to change them)"
            )
        self.provider.resize_host(host, gpus)
        self._act(self._decide(self.core.resize_host, name, gpus))
        return self._describe_host(name)

    def _host(self, name: str) -> ReplicaHost:
        if name not in self.hosts:
            raise KeyError(f"there is no host {name!r}; hosts: {', '.join(self.hosts)}")
        return self.hosts[name]

    # ----------------------------------------------------------------------- the core and its events

    def _decide(self, method: Callable[..., R], *args: Any) -> R:
        """One call on the scheduling core (a bound method of ``self.core``, its arguments but the time) at the
        wall-clock time, journaled when asked, its events logged."""
        with self.lock:
            now = time.time()
            self.metrics.gpu_seconds.inc(self.core.used_gpus * max(0.0, now - self._clock))
            self._clock = now
            result: R = method(*args, now)
            if self.journal is not None:
                self.journal.record(method.__name__, args, now, result)
            for event in [result, *result.events] if isinstance(result, Decision) else result or []:
                self._note(event)
        return result

    def _note(self, event: Event) -> None:
        """Log an event and count it; remember what it changed, to be saved."""
        self.events.record(event)
        kernel_id = getattr(event, "kernel_id", None)
        if kernel_id is not None:
            self._touched_kernels.add(kernel_id)
        if isinstance(event, _HOST_EVENTS):
            self._touched_hosts.add(event.host_id)
        metrics = self.metrics
        if isinstance(event, Decision):
            metrics.decisions.labels(event.kind.value).inc()
            if event.kind is DecisionKind.MIGRATE:
                metrics.migrations.labels("all_yield").inc()
                self.history.migrated()
        elif isinstance(event, (ExecutionStarted, Released)):
            cell = self.kernels[event.kernel_id].cell if event.kernel_id in self.kernels else None
            if cell is None:
                return
            if isinstance(event, Released):
                cell.ended = event.time
                return
            cell.started = event.time
            metrics.interactivity_delay.observe(event.time - cell.submitted)
            self.history.cell_started(event.time - cell.submitted)
        elif isinstance(event, ReplicaMoved):
            metrics.migrations.labels(event.cause.value).inc()
            self.history.migrated()
        elif isinstance(event, ReplicaReplaced):
            metrics.replacements.inc()
        elif isinstance(event, HostRemoved):  # by the autoscaler or the operator, like hosts added
            metrics.scale_events.labels("in").inc()
            self.history.scaled()

    def _act(self, events: list[Event]) -> None:
        """Carry out what the core decided besides grants: move and replace replicas, add and remove hosts."""
        for event in events:
            if isinstance(event, Decision) and event.granted:
                record = self.kernels.get(event.kernel_id)
                if record is not None and record.cell is not None:
                    record.cell.decided(event)
                self.granted.append(event)
            elif isinstance(event, (ReplicaMoved, ReplicaReplaced)) and event.kernel_id in self._launching:
                continue  # not started yet: admit_kernel finds the core's placement changed and refuses the start
            elif isinstance(event, ReplicaMoved):
                # The core moves only replicas it does not see executing; a kernel without GPUs runs cells it
                # never hears of, so the replica may be running one: the pause makes the front re-run it.
                self._hand_over(event.kernel_id, event.replica, event.to_host, MOVE_PAUSE_S)
            elif isinstance(event, ReplicaReplaced):
                self._replace(event)
            elif isinstance(event, HostRemoved):
                self._give_back(event.host_id)
            elif isinstance(event, ScaleOutRequested):
                self._scale_out(event.hosts)

    def _give_back(self, name: str) -> None:
        """A host the core removed (or lost) leaves the cluster. A logical host goes back to the provider; a
        machine removed by an operator or the autoscaler is told at its agent's next heartbeat (``AgentRemoved``:
        it stops what it still runs and exits) and, if the provider started it, given back to the provider."""
        with self.lock:
            host = self.hosts.pop(name)
        if isinstance(host, HostAgent):
            self.provider.remove_host(host)
        elif isinstance(host, RemoteHost):
            if not host.lost:
                with self.lock:
                    self.removed_agents.add(name)
                if name not in self.provided:
                    self.core.autoscaler.count_fixed_hosts(-1)
            if name in self.provided:  # removed, or lost: the provider takes back what is left of it
                self.provided.discard(name)
                try:
                    self.provider.remove_host(host)
                except ProviderError as err:
                    self.events.append("host_removal_failed", time.time(), str(err), host=name)

    def _replace(self, event: ReplicaReplaced) -> None:
        """Start a replacement for a dead replica on the host the core chose (see :meth:`_hand_over`); the kernel
        runs on its two other replicas meanwhile, and on them alone when no replacement can be made."""
        record = self.kernels.get(event.kernel_id)
        if record is None:
            return
        try:
            self._hand_over(event.kernel_id, event.replica, event.host_id)
        except (ValueError, AgentError) as err:
            self.events.append(
                "replacement_failed",
                time.time(),
                str(err),
                host=event.host_id,
                kernel=event.kernel_id,
                replica=event.replica,
            )
            return
        record.replicas[event.replica][1].restarts += 1

    def _join_elsewhere(self, record: KernelRecord, index: int, target: ReplicaHost) -> None:
        """Start a new member for replica ``index`` on ``target`` (another machine): it asks the kernel's live
        replicas to swap it into their Raft group in place of the old one (lost, or moved away and stopped here),
        then catches up from the log and fetches the objects it needs from them. Nothing of the old replica's disk
        is used."""
        source, lost = record.replicas[index]
        ports = target.take_ports(record.kernel_id, _PORTS_PER_REPLICA)
        peers, urls = record.member_addresses()
        peers[index] = _raft_address(target, ports)
        if urls:
            urls[index] = _peer_url(target, ports)
        config = dataclasses.replace(
            lost.config,
            host=target.name,
            raft_address=peers[index],
            raft_peers=tuple(peers),
            journal_path="",
            store=self.object_store or "",
            cwd=record.cwd,
            peer_urls=tuple(urls),
            joining=True,
        )
        connection = _connection(ports, lost.connection["key"], lost.connection["signature_scheme"])
        started = target.start_replica(config, connection)
        started.restarts = lost.restarts
        with self.lock:
            record.replicas[index] = (target, started)
        if isinstance(source, RemoteHost):
            # Its agent stops it at its next heartbeat (the core places it elsewhere now), or when its machine is
            # back: no call that may wait out a connect time-out on the cluster's thread.
            source.forget_replica(record.kernel_id, index)
        else:
            source.stop_kernel(record.kernel_id)
        self.events.append(
            "replica_joining",
            time.time(),
            f"joins the kernel's Raft group from {target.name} in place of the replica on {source.name}",
            host=target.name,
            kernel=record.kernel_id,
            replica=index,
        )

    def _scale_out(self, count: int) -> None:
        for added in range(count):
            try:
                self.add_host()
            except ProviderError as err:
                log.warning("scale-out stopped: %s", err)
                self.events.append("scale_out_failed", time.time(), str(err), data={"hosts": count - added})
                self._act(self._decide(self.core.scale_out_failed, count - added))
                return

    # ------------------------------------------------------------------------------------ state on disk

    def save(self) -> None:
        """Write what changed since the last save (the service calls this after every change)."""
        if self.state is None:
            return
        with self.lock:
            hosts, self._touched_hosts = self._touched_hosts, set()
            kernels, self._touched_kernels = self._touched_kernels, set()
            for name in hosts:
                self.state.put_host(name, self._host_state(name))
            for kernel_id in kernels:
                self.state.put_kernel(kernel_id, self._kernel_state(kernel_id))
        self.state.flush()

    def _host_state(self, name: str) -> dict[str, Any] | None:
        host, placed = self.hosts.get(name), self.core.cluster.hosts.get(name)
        if host is None or placed is None:
            return None
        state: dict[str, Any] = {
            "gpus": placed.gpus,
            "draining": placed.state is HostState.DRAINING,
            "remove_when_drained": placed.remove_when_drained,
        }
        if isinstance(host, RemoteHost):
            state["agent"] = {
                "address": host.address,
                "url": host.url,
                "token": host.token,
                "verify": host.verify,
                "provided": name in self.provided,
                "lent_ports": None if host.lent_ports is None else [host.lent_ports.start, host.lent_ports.stop - 1],
            }
        elif isinstance(host, HostAgent):
            state["logical"] = {"devices": list(host.gpu_devices) if host.gpu_devices is not None else None}
        else:
            raise TypeError(f"host {name} is a {type(host).__name__}: neither a HostAgent nor a RemoteHost")
        return state

    def _kernel_state(self, kernel_id: str) -> dict[str, Any] | None:
        record, kernel = self.kernels.get(kernel_id), self.core.cluster.kernels.get(kernel_id)
        if record is None or kernel is None:
            return None
        allocation = kernel.allocation
        return {
            "owner": record.owner,
            "notebook": record.notebook,
            "cwd": record.cwd,
            "gpus": kernel.gpus,
            "placed": {str(i): h for i, h in kernel.replicas.items()},
            "previous_executor": kernel.previous_executor,
            "executing": kernel.executing,
            "allocation": None
            if allocation is None
            else {
                "host": allocation.host_id,
                "devices": list(allocation.devices),
                "replica": allocation.replica,
                "state": allocation.state.value,
                "held": allocation.held,
                "since": allocation.since,
            },
            "replicas": [
                {
                    "host": h.name,
                    "address": h.address,
                    "config": config_json(p.config),
                    "connection": p.connection,
                    "restarts": p.restarts,
                }
                for h, p in record.replicas
            ],
        }

    def _restore(self, stored: StoredState) -> None:
        """Take back what the previous service on this state folder had: its hosts (logical ones re-adopt their
        replica processes, machines' agents are expected to heartbeat again), its kernels on the same replicas,
        the devices their running cells hold, and its event log. Replicas that ended meanwhile are not alive: the
        kernel fronts ask for their replacement as for any lost replica."""
        self._restored_at = time.monotonic()
        self.events.restore(stored.events)
        for name, saved in stored.hosts.items():
            self.hosts[name] = self._restore_host(name, saved)
            self.core.restore_host(name, saved["gpus"], saved["draining"], saved["remove_when_drained"])
        period_s = self._heartbeat_period_s()
        for agent in [h for h in self.hosts.values() if isinstance(h, RemoteHost)]:
            agent.period_s = period_s  # what its agent was last told, give or take
        for kernel_id, saved in stored.kernels.items():
            record = KernelRecord(kernel_id, [], owner=saved["owner"], notebook=saved["notebook"], cwd=saved["cwd"])
            for replica in saved["replicas"]:
                host = self.hosts.get(replica["host"])
                if host is None:  # lost before the restart: a stand-in, as the lost host was
                    host = RemoteHost(replica["host"], replica["address"], "", "")
                    host.mark_lost()
                view = host.restore_replica(ReplicaConfig.from_json(replica["config"]), replica["connection"])
                view.restarts = replica["restarts"]
                record.replicas.append((host, view))
            allocation = self._restore_allocation(record, saved["allocation"])
            self.core.restore_kernel(
                kernel_id,
                saved["gpus"],
                {int(i): h for i, h in saved["placed"].items()},
                saved["previous_executor"],
                allocation,
                saved["executing"],
            )
            self.kernels[kernel_id] = record
        self._stop_strays()
        why = f"the cluster service restarted and took back {len(self.hosts)} host(s) and {len(self.kernels)} kernel(s)"
        log.info("%s from %s", why, self.state.path if self.state else "")
        self.events.append(
            "cluster_restored", time.time(), why, data={"hosts": len(self.hosts), "kernels": len(self.kernels)}
        )
        self._act(self._decide(self.core.restored))

    def _restore_allocation(self, record: KernelRecord, held: dict[str, Any] | None) -> Allocation | None:
        """The devices a kernel's cell held, reconciled with its executor: dropped if that replica process is gone
        (a logical host adopts what runs), kept until the agent reports if it is on a machine (see :meth:`tick`)."""
        if held is None:
            return None
        allocation = Allocation(
            record.kernel_id,
            held["host"],
            tuple(held["devices"]),
            held["replica"],
            AllocationState(held["state"]),
            held["held"],
            held["since"],
        )
        executor = next(((h, p) for h, p in record.replicas if p.config.replica == allocation.replica), None)
        if executor is not None and isinstance(executor[0], RemoteHost):
            self._unconfirmed[record.kernel_id] = (executor[0].name, executor[1].config.replica)
        elif executor is None or not executor[1].alive:
            self._commitment_dropped(record.kernel_id, allocation.host_id, "its executor replica is not running")
            return None
        return allocation

    def _commitment_dropped(self, kernel_id: str, host: str, why: str) -> None:
        self._touched_kernels.add(kernel_id)  # its row still names the devices
        self.events.append(
            "commitment_dropped",
            time.time(),
            f"the GPUs the kernel's cell held before the cluster service restarted are free again: {why}",
            host=host,
            kernel=kernel_id,
        )

    def _confirm_commitments(self) -> None:
        """Restored commitments of cells on machines whose agents have reported since the restart: a cell whose
        executor replica the agent no longer runs gives its devices back."""
        for kernel_id, (name, replica) in list(self._unconfirmed.items()):
            host = self.hosts.get(name)
            kernel = self.core.cluster.kernels.get(kernel_id)
            if not isinstance(host, RemoteHost) or kernel is None or kernel.allocation is None:
                del self._unconfirmed[kernel_id]  # the host or the kernel is gone, or the cell released: settled
                continue
            if not host.reported:
                continue
            del self._unconfirmed[kernel_id]
            view = host.replicas.get((kernel_id, replica))
            if view is None or not view.alive:
                self._commitment_dropped(kernel_id, name, f"its agent no longer runs replica {replica}")
                if kernel.executing:
                    self._act(self._decide(self.core.release, kernel_id))

    def _restore_host(self, name: str, saved: dict[str, Any]) -> ReplicaHost:
        agent = saved.get("agent")
        if agent is not None:
            if agent["provided"]:
                self.provided.add(name)
            else:
                self.core.autoscaler.count_fixed_hosts(+1)
            lent = agent.get("lent_ports")  # absent from the state of a service before agents lent ports
            lent_ports = range(lent[0], lent[1] + 1) if lent else None
            return RemoteHost(name, agent["address"], agent["url"], agent["token"], agent["verify"], lent_ports)
        if not isinstance(self.provider, LocalProvider):
            raise ProviderError(
                f"the state in {self.state_dir} has logical host {name}, which only the local "
                "provider runs: start the service without --provider, or with a new --state-dir"
            )
        devices = saved["logical"]["devices"]
        return self.provider.restore_host(name, tuple(devices) if devices is not None else None)

    def _stop_strays(self) -> None:
        """Replicas a logical host found running that no kernel has (the service died while starting or stopping
        them) are stopped: nobody would ever stop them otherwise. Agents stop theirs at their next heartbeat."""
        placed = {(k, p.config.replica) for k, record in self.kernels.items() for _, p in record.replicas}
        for host in [h for h in self.hosts.values() if isinstance(h, HostAgent)]:
            for kernel_id, replica in [key for key in host.replicas if key not in placed]:
                log.warning(
                    "stopping replica %s/%d on %s: no kernel of this cluster has it", kernel_id, replica, host.name
                )
                host.stop_replica(kernel_id, replica)

    # ------------------------------------------------------------------------------------ read-outs

    def describe_kernel(self, kernel_id: str) -> dict:
        with self.lock:
            record = self.kernels[kernel_id]
            kernel = self.core.cluster.kernels.get(kernel_id)
            allocation = kernel.allocation if kernel else None
            executor = allocation.replica if allocation else (kernel.previous_executor if kernel else None)
            return {
                "id": kernel_id,
                "gpus": kernel.gpus if kernel else 0,
                "owner": record.owner,
                "notebook": record.notebook,
                "allocation": None
                if allocation is None
                else {
                    "host": allocation.host_id,
                    "devices": list(allocation.devices),
                    "replica": allocation.replica,
                    "state": allocation.state.value,
                    "since": allocation.since,
                },
                "cell": record.cell.json() if record.cell else None,
                "replicas": [
                    {
                        "replica": p.config.replica,
                        "host": h.name,
                        "address": h.address,
                        "alive": p.alive,
                        "pid": p.pid,
                        "restarts": p.restarts,
                        "connection": public_connection(p.connection),
                        "exit_reason": p.exit_reason,
                        # Known for kernels that ask for GPUs (the scheduler picks their executor); None otherwise.
                        "role": None if executor is None else "executor" if p.config.replica == executor else "standby",
                        "state": _replica_state(p, p.config.replica in record.moving),
                    }
                    for h, p in record.replicas
                ],
            }

    def describe(self) -> dict:
        with self.lock:
            core = self.core
            return {
                "policy": self.policy.name,
                # A host the core has removed leaves self.hosts a moment later, once its agent is given back.
                "hosts": [self._describe_host(name) for name in self.hosts if name in core.cluster.hosts]
                + [self._describe_starting(key) for key in self.starting],
                "kernels": [self.describe_kernel(k) for k in self.kernels],
                "subscription_limit": core.config.subscription_limit,
                "max_hosts": core.config.max_hosts,
                "pending_cells": len(core.waiting_requests),
                "pending_hosts": core.pending_hosts,
            }

    def _describe_host(self, name: str) -> dict:
        with self.lock:
            host = self.core.cluster.hosts[name]
            held = {d: a for a in host.allocations.values() for d in a.devices}
            return {
                "name": name,
                "address": self.hosts[name].address,
                "replicas": len(self.hosts[name].replicas),
                "gpus": host.gpus,
                "idle_gpus": host.idle_gpus,
                "subscribed_gpus": host.subscribed,
                "subscription_ratio": host.ratio(),
                "state": host.state.value,
                "reachable": host.reachable,
                "devices": [_describe_device(d, held.get(d)) for d in range(host.gpus)],
            }

    def _describe_starting(self, key: str) -> dict:
        pending = self.starting[key]
        return {
            "name": key,
            "address": None,
            "replicas": 0,
            "gpus": pending.gpus,
            "idle_gpus": 0,
            "subscribed_gpus": 0,
            "subscription_ratio": 0.0,
            "state": "starting",
            "reachable": False,
            "devices": [],
            "since": pending.since,
        }


def _reachable(host: ReplicaHost) -> bool:
    """Whether what the cluster knows of the host's replicas is current: always for a logical host, for a machine
    while its agent's heartbeats arrive."""
    return not isinstance(host, RemoteHost) or host.heard_from


def _raft_address(host: ReplicaHost, ports: list[int]) -> str:
    return f"{host.address}:{ports[0]}"


def _peer_url(host: ReplicaHost, ports: list[int]) -> str:
    return f"http://{host.address}:{ports[-1]}"


def _connection(ports: list[int], key: str, signature_scheme: str) -> dict:
    """A replica's Jupyter connection info; its host agent adds the address and the replica's CurveZMQ key pair
    (:meth:`..host_agent.HostAgent.start_replica`)."""
    return {
        **dict(zip(_CHANNELS, ports[1 : 1 + len(_CHANNELS)])),
        "transport": "tcp",
        "key": key,
        "signature_scheme": signature_scheme,
        "kernel_name": "notebookos-replica",
    }


def _describe_device(device: int, holder: Allocation | None) -> dict:
    if holder is None:
        return {"device": device, "kernel": None, "replica": None, "state": "idle", "since": None}
    return {
        "device": device,
        "kernel": holder.kernel_id,
        "replica": holder.replica,
        "state": holder.state.value,
        "since": holder.since,
    }


def _replica_state(proc: ReplicaView, moving: bool) -> str:
    if moving:
        return "migrating"
    if not proc.alive:
        return "lost"
    return "ready" if proc.ready else "catching_up"
