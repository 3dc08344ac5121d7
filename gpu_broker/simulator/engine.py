"""Discrete-event simulation: drive the scheduling core with a trace on a virtual clock.

The engine plays the part the live scheduler plays in production: it turns the workload into core calls
(``place_kernel`` when a notebook opens, ``request_execution`` when a training event is submitted, ``release``
when it ends, ``close_kernel``, ``tick``) and carries out the events the core returns, charging their costs in
virtual time: a granted cell starts after its decision's start-up delay, a requested host arrives after the
scale-out delay. Nothing here decides anything; every choice is the core's and its policy's.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ..scheduler.events import (
    Decision,
    DecisionKind,
    Event,
    HostRemoved,
    KernelPlaced,
    ReplicaMoved,
    ScaleOutRequested,
)
from ..scheduler.policies import Policy
from ..scheduler.core import CoreConfig, SchedulerCore
from .costs import CostModel
from .metrics import PolicyResult, Recorder
from .workload import NotebookPlan, SessionModel, SessionPlan


@dataclass(frozen=True)
class ClusterSpec:
    hosts: int = 30  # at the start; the paper's testbed is 30 hosts x 8 GPUs
    host_gpus: int = 8
    min_hosts: int = 3
    max_hosts: int | None = None
    subscription_limit: float = 7.0
    tick_s: float = 60.0  # how often the autoscaler runs

    def __post_init__(self) -> None:
        if self.hosts < 0 or self.host_gpus < 1 or self.tick_s <= 0:
            raise ValueError("hosts must be >= 0, host_gpus >= 1 and tick_s > 0")


@dataclass(eq=False, slots=True)
class _Notebook:
    plan: NotebookPlan
    session: SessionPlan
    position: int  # index among the session's notebooks
    cell: int = 0
    submitted: float = 0.0
    ready_at: float = math.inf  # when its replicas are up (infinite until placed)


@dataclass(order=True, slots=True)
class _Item:
    time: float
    seq: int
    action: Callable[..., None] = field(compare=False)
    arg: object = field(compare=False, default=None)


class Simulation:
    def __init__(
        self,
        sessions: list[SessionPlan],
        policy: Policy,
        cluster: ClusterSpec,
        model: SessionModel,
        costs: CostModel,
        window: tuple[float, float | None],
        on_event_done: Callable[[], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.policy = policy
        self.cluster = cluster
        self.model = model
        self.costs = costs
        self.core = SchedulerCore(
            policy,
            CoreConfig(
                host_gpus=cluster.host_gpus,
                subscription_limit=cluster.subscription_limit,
                min_hosts=cluster.min_hosts,
                max_hosts=cluster.max_hosts,
            ),
        )
        self.recorder = Recorder(*window)
        self._on_event_done = on_event_done
        self._queue: list[_Item] = []
        self._seq = 0
        self._notebooks: dict[str, _Notebook] = {}
        self._remaining_sessions_notebooks = sum(len(s.notebooks) for s in sessions)
        self._host_counter = 0
        self._now = 0.0

    # ------------------------------------------------------------------ run
    def run(self) -> PolicyResult:
        if not self.sessions:
            raise ValueError("the workload has no training events")
        start = min(s.first_submit_s for s in self.sessions) - self.model.open_before_s
        self._now = start
        for _ in range(self.cluster.hosts):
            self._add_host(start)
        for session in self.sessions:
            opens = session.first_submit_s - self.model.open_before_s
            self._push(opens, self._open, _Notebook(session.notebooks[0], session, 0))
        self._push(start, self._tick)
        self._observe(start)
        while self._queue and self._remaining_sessions_notebooks:
            item = heapq.heappop(self._queue)
            self.recorder.advance(item.time)
            self._now = item.time
            item.action(item.time, item.arg)
            self._observe(item.time)
        return PolicyResult(self.policy.name, self.recorder, self._now)

    def _push(self, time: float, action: Callable[..., None], arg: object = None) -> None:
        self._seq += 1
        heapq.heappush(self._queue, _Item(time, self._seq, action, arg))

    def _observe(self, now: float) -> None:
        core = self.core
        self.recorder.observe(now, core.provisioned_gpus, core.used_gpus, len(core.cluster.hosts) + core.pending_hosts)

    # -------------------------------------------------------------- actions
    def _add_host(self, now: float, _: object = None) -> None:
        host_id = f"h{self._host_counter}"
        self._host_counter += 1
        self._handle(self.core.add_host(host_id, self.cluster.host_gpus, now), now)

    def _tick(self, now: float, _: object = None) -> None:
        self._handle(self.core.tick(now), now)
        self._push(now + self.cluster.tick_s, self._tick)

    def _open(self, now: float, notebook: _Notebook) -> None:
        self._notebooks[notebook.plan.kernel_id] = notebook
        self._handle(self.core.place_kernel(notebook.plan.kernel_id, notebook.plan.gpus, now), now)
        self._push(now + self.model.open_before_s, self._submit, notebook)

    def _submit(self, now: float, notebook: _Notebook) -> None:
        notebook.submitted = now
        cell = notebook.plan.cells[notebook.cell]
        decision = self.core.request_execution(notebook.plan.kernel_id, cell.event.gpus, now)
        self._handle([decision, *decision.events], now)

    def _start(self, now: float, notebook: _Notebook) -> None:
        self.core.start_execution(notebook.plan.kernel_id, now)
        self.recorder.delays_s.append(now - notebook.submitted)
        self._push(now + notebook.plan.cells[notebook.cell].event.duration_s, self._end, notebook)

    def _end(self, now: float, notebook: _Notebook) -> None:
        self._handle(self.core.release(notebook.plan.kernel_id, now), now)
        if self._on_event_done is not None:
            self._on_event_done()
        notebook.cell += 1
        cells = notebook.plan.cells
        if notebook.cell < len(cells):
            self._push(now + cells[notebook.cell].think_s, self._submit, notebook)
            return
        following = notebook.position + 1
        if following == len(notebook.session.notebooks):
            self._push(now + self.model.closes_after_s, self._close, notebook)
            return
        self._push(now + self.model.idle_timeout_s, self._close, notebook)
        plan = notebook.session.notebooks[following]
        opens = now + plan.cells[0].think_s - self.model.open_before_s
        self._push(opens, self._open, _Notebook(plan, notebook.session, following))

    def _close(self, now: float, notebook: _Notebook) -> None:
        self._handle(self.core.close_kernel(notebook.plan.kernel_id, now), now)
        del self._notebooks[notebook.plan.kernel_id]
        self._remaining_sessions_notebooks -= 1

    # ---------------------------------------------------------- core events
    def _handle(self, events: list[Event], now: float) -> None:
        rec = self.recorder
        for event in events:
            if isinstance(event, Decision):
                if event.granted:
                    notebook = self._notebooks[event.kernel_id]
                    start = max(now + self.costs.start_delay(event.kind), notebook.ready_at)
                    self._push(start, self._start, notebook)
                    if event.kind is DecisionKind.MIGRATE:
                        rec.migrations += 1
            elif isinstance(event, KernelPlaced):
                startup = self.costs.container_start_s if event.hosts else 0.0
                self._notebooks[event.kernel_id].ready_at = now + startup
            elif isinstance(event, ScaleOutRequested):
                rec.scale_out_hosts += event.hosts
                for _ in range(event.hosts):
                    self._push(now + self.costs.scale_out_s, self._add_host)
            elif isinstance(event, HostRemoved):
                rec.scale_in_hosts += 1
            elif isinstance(event, ReplicaMoved):
                rec.drain_moves += 1
