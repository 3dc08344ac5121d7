"""The cluster service: one embedded cluster, changed on one thread, answering its clients asynchronously.

It runs every change on the cluster's worker thread, carries out grants (waiting for a migrated executor to catch
up), answers fronts whose cells wait for GPUs, wakes the event-stream long-polls, and runs the scheduler's tick.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import tornado.web

from ...scheduler.events import Decision, DecisionKind
from ..embedded import LAUNCHES, EmbeddedCluster, KernelLaunch, KernelRequest, PlacementError
from ..agent.remote import AgentError, AgentUnreachable
from ..host_agent import ReplicaView
from ..json_api import log_request
from ..ports import PortsExhausted, PortsTaken
from ..providers import ProviderError
from .changes import ChangeThread
from .handlers import routes

log = logging.getLogger(__name__)

# An ephemeral cluster lingers this long after its last kernel is gone, so a kernel restart (delete, then create)
# reuses it instead of starting a new one.
EPHEMERAL_GRACE_S = 2.0
TICK_S = 1.0
MOVE_TIMEOUT_S = 60.0  # longest a cell waits for its migrated executor to catch up
READY_POLL_S = 0.05


class ClusterService:
    def __init__(
        self,
        cluster: EmbeddedCluster,
        ephemeral: bool,
        join_token: str | None = None,
        ca_pem: str | None = None,
        token: str | None = None,
    ) -> None:
        """``token``: the one Jupyter servers and kernel fronts use (a restarted service keeps its predecessor's,
        so they carry on); default a new one."""
        self.cluster = cluster
        self.ca_pem = ca_pem  # the CA this service made (--tls-auto), served to those who pin it
        self.token = token or secrets.token_urlsafe(24)
        self.pid = os.getpid()
        self.started_at = time.time()  # with the pid, how operators (and the dashboard) see that it restarted
        # Agents join with it; a Jupyter server given the same file (notebookos lab --cluster) may use it too.
        self.join_token = join_token
        self.ephemeral = ephemeral
        self.stopped = asyncio.Event()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._grants: dict[str, asyncio.Future[Decision]] = {}  # queued cells, by kernel, until granted
        self._loop = asyncio.get_running_loop()
        # Every change to the cluster runs on this one thread, in arrival order: the scheduling core and the host
        # agents never see two changes interleave, and the event loop never blocks on a replica being moved.
        self._changes = ChangeThread(self._loop, cluster.save)
        # Kernel starts whose agent calls are under way (create_kernel), each waiting for its three machines.
        self._launcher = ThreadPoolExecutor(max_workers=LAUNCHES, thread_name_prefix="launch")
        self._event_waiters: list[asyncio.Future[None]] = []
        cluster.events.listeners.append(self._event_logged)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one change on the cluster's thread; answer its refusals as HTTP errors with the reason. Cells that
        the change let through (GPUs freed, hosts added, or the request itself) are then started and answered."""

        def change() -> tuple[Any, list[tuple[Decision, Exception | None]]]:
            result = fn(*args)
            return result, [(decision, self._start_in_place(decision)) for decision in self.cluster.take_granted()]

        try:
            result, granted = await self._on_worker(change)
        except Exception as err:
            raise _refusal(err) from None
        for decision, failed in granted:
            await self._start(decision, failed)
        return result

    async def create_kernel(self, request: KernelRequest) -> dict:
        """Place a kernel and start its replicas (``POST /kernels``). The core's placement and the listing are
        changes on the cluster's thread; the agent calls in between, on machines with agents, are made off it, so
        that kernels start side by side and a slow or dead agent holds up its own kernel's start, nothing else."""
        cluster = self.cluster
        for retry in (False, True):
            launch: KernelLaunch = await self.run(cluster.place_kernel, request)
            try:
                if launch.off_thread:
                    started = await self._loop.run_in_executor(self._launcher, cluster.launch_replicas, launch)
                else:
                    started = await self._on_worker(cluster.launch_replicas, launch)
            except Exception as err:
                await self.run(cluster.abandon_launch, launch, err)
                if retry or not isinstance(err, (AgentUnreachable, PortsTaken)):
                    raise _refusal(err) from None
                # A machine died within its host time-out, before the cluster noticed, or a program there took a port
                # the cluster chose: place the kernel again, without that host, or with other ports.
                unheard = isinstance(err, AgentUnreachable)
                how = "without the host that did not answer" if unheard else "with other ports"
                log.warning("placing kernel %s again %s: %s", request.kernel_id, how, err)
                continue
            return await self.run(cluster.admit_kernel, launch, started)
        raise AssertionError("unreachable: the second try returns or raises")

    def _start_in_place(self, decision: Decision) -> Exception | None:
        """On the cluster's thread, within the change that granted it: commit the devices of a grant whose executor
        is where it must run (anything but MIGRATE), so that the cell costs one trip to the cluster's thread, not
        three (a change, an empty ``prepare``, ``start``), each with its save. Returns what refused it, if anything,
        for :meth:`_start` to answer as it answers a failed start; a MIGRATE grant is left to :meth:`_start`."""
        if decision.kind is DecisionKind.MIGRATE:
            return None
        try:
            self.cluster.start(decision)
        except (ValueError, AgentError) as err:
            return err
        return None

    async def _start(self, decision: Decision, failed: Exception | None = None) -> None:
        """Carry out a granted decision and answer the waiting front. A MIGRATE grant moves the replica and waits, off
        the cluster's thread, until it has caught up, then commits the devices; any other grant was started in the
        change that made it (:meth:`_start_in_place`), and ``failed`` says what refused it, if anything."""
        try:
            if failed is not None:
                raise failed
            if decision.kind is DecisionKind.MIGRATE:
                await self._migrate_and_start(decision)
        except (ValueError, AgentError) as err:
            if decision.kernel_id not in self.cluster.kernels:  # the kernel went away meanwhile
                log.info("scheduler: grant for kernel %s dropped: %s", decision.kernel_id, err)
                return
            # The replica could not be moved for its GPUs: the devices go back and the waiting cell is told why.
            log.warning("scheduler: %s for kernel %s failed: %s", decision.kind.value, decision.kernel_id, err)
            await self.run(self.cluster.release, decision.kernel_id)
            future = self._grants.get(decision.kernel_id)
            if future is not None and not future.done():
                future.set_exception(
                    tornado.web.HTTPError(
                        503,
                        reason=_reason(
                            f"could not move replica {decision.replica} to {decision.host_id} for its GPUs: {err}"
                        ),
                    )
                )
            return
        log.debug("scheduler: %s for kernel %s started: %s", decision.kind.value, decision.kernel_id, decision.reason)
        future = self._grants.get(decision.kernel_id)
        if future is not None and not future.done():
            future.set_result(decision)

    async def _migrate_and_start(self, decision: Decision) -> None:
        """Move the replica for a MIGRATE grant, wait until it has caught up, then commit the devices."""
        moved = await self._on_worker(self.cluster.prepare, decision)
        if moved is not None:
            await self._until_caught_up(moved)
            self.cluster.events.append(
                "replica_ready" if moved.ready else "replica_not_ready",
                time.time(),
                "caught up on its new host"
                if moved.ready
                else f"not caught up after {MOVE_TIMEOUT_S:.0f} s; the cell goes to it anyway",
                host=moved.config.host,
                kernel=decision.kernel_id,
                replica=decision.replica,
            )
        await self._on_worker(self.cluster.start, decision)

    async def _on_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the cluster's thread; its result once what it changed is saved (also when it failed)."""
        return await self._changes.submit(fn, *args)

    async def _until_caught_up(self, proc: ReplicaView) -> None:
        """A moved replica restarts and replays its journal (seconds); its cell waits for that, not the scheduler's
        thread. Bounded: a replica that never catches up is the front's to detect."""
        deadline = self._loop.time() + MOVE_TIMEOUT_S
        while not proc.ready and proc.alive and self._loop.time() < deadline:
            await asyncio.sleep(READY_POLL_S)

    async def request_execution(self, kernel_id: str, gpus: int) -> Decision:
        # The future exists before the request is made: a queued cell may be granted within the same change (the
        # scale-out it set off delivered a host at once), and that grant must find someone to tell.
        self._grants[kernel_id] = self._loop.create_future()
        try:
            decision = await self.run(self.cluster.request_execution, kernel_id, gpus)
        except tornado.web.HTTPError as err:
            self._grants.pop(kernel_id, None)
            if err.status_code == 503:  # a request no host can ever satisfy: the user's mistake, said at once
                err.status_code = 400
            raise
        log.info("scheduler: %s for kernel %s: %s", decision.kind.value, kernel_id, decision.reason)
        if decision.granted:
            started = self._grants.pop(kernel_id, None)
            failed = started.exception() if started is not None and started.done() and not started.cancelled() else None
            if failed is not None:
                raise failed  # its replica could not be moved: said to the front at once
        return decision

    async def wait_for_grant(self, kernel_id: str) -> Decision:
        future = self._grants.get(kernel_id)
        if future is None:
            raise tornado.web.HTTPError(409, reason=f"kernel {kernel_id} has no queued cell")
        try:
            return await future
        finally:
            self._grants.pop(kernel_id, None)

    def forget(self, kernel_id: str) -> None:
        """The kernel is going away: a cell still waiting for GPUs will never get them."""
        future = self._grants.pop(kernel_id, None)
        if future is not None:
            future.cancel()

    async def new_event(self, since: int, timeout: float) -> None:
        """Until the event log has a record after ``since``, or ``timeout`` seconds."""
        if self.cluster.events.last_seq > since:
            return
        waiter = self._loop.create_future()
        self._event_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            if waiter in self._event_waiters:
                self._event_waiters.remove(waiter)

    def _event_logged(self, _entry: dict[str, Any]) -> None:
        """An event was logged, on whichever thread: wake the long-polls on the event loop."""
        self._loop.call_soon_threadsafe(self._wake_event_waiters)

    def _wake_event_waiters(self) -> None:
        waiters, self._event_waiters = self._event_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def tick(self) -> None:
        """The autoscaler's and the queue's clock: retry waiting work once a second."""
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self.run(self.cluster.tick)
            except tornado.web.HTTPError as err:
                log.error("scheduler tick failed: %s", err.reason)

    def app(self) -> tornado.web.Application:
        return tornado.web.Application(routes(self), log_function=log_request)

    def kernels_changed(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self.ephemeral and not self.cluster.kernels:
            self._idle_timer = self._loop.call_later(EPHEMERAL_GRACE_S, self.stopped.set)

    def describe(self) -> dict[str, Any]:
        """The cluster, and which process of the service answers (``pid``, ``started_at``: a restart shows)."""
        return {**self.cluster.describe(), "pid": self.pid, "started_at": self.started_at}

    def close(self) -> None:
        self._launcher.shutdown(wait=True)
        self._changes.shutdown()
        if self.cluster.state is not None:
            self.cluster.state.close()


def _refusal(err: Exception) -> Exception:
    """A change's refusal as the HTTP error its caller gets, with the reason; anything else as it is (a 500)."""
    if isinstance(err, (PlacementError, PortsExhausted, AgentError)):
        return tornado.web.HTTPError(503, reason=_reason(err))
    if isinstance(err, (KeyError, ProviderError)):
        status = 404 if isinstance(err, KeyError) else 409
        return tornado.web.HTTPError(status, reason=_reason(err.args[0] if err.args else err))
    if isinstance(err, ValueError):
        return tornado.web.HTTPError(409, reason=_reason(err))
    return err


def _reason(err: object) -> str:
    """An error's message as an HTTP reason phrase: one line, and no '<' (tornado replaces such a reason with
    "Unknown", and the caller would never learn why)."""
    return " ".join(str(err).split()).replace("<", "(").replace(">", ")")
