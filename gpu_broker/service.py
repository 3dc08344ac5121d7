"""The cluster service: the embedded cluster behind a small authenticated HTTP/JSON API on loopback.

Kernel provisioners and kernel fronts, possibly in several Jupyter processes, share one cluster through it. Its
address and token are written to a discovery file (mode 0600) that clients read; see :mod:`.client`.

Run: ``python -m notebookos.gpu_broker.service --state-dir DIR --hosts 4 [--ephemeral]``. An ephemeral cluster
(started on demand by the provisioner) exits once its last kernel is gone.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import secrets
import shutil
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

import tornado.httpserver
import tornado.netutil
import tornado.web

from .core.events import Decision
from .core.journal import outcome_json
from .core.policies import POLICIES
from .core.scheduler import CoreConfig
from .embedded import POLICY, EmbeddedCluster, PlacementError
from .host_agent import ReplicaProcess
from .inventory import nvml_gpu_count
from .providers import ProviderError

log = logging.getLogger(__name__)

# An ephemeral cluster lingers this long after its last kernel is gone, so a kernel restart (delete, then create)
# reuses it instead of starting a new one.
EPHEMERAL_GRACE_S = 2.0
TICK_S = 1.0
MOVE_TIMEOUT_S = 60.0  # longest a cell waits for its migrated executor to catch up
READY_POLL_S = 0.05


class ClusterHandler(tornado.web.RequestHandler):
    """Base handler: token authentication and JSON in and out, errors as JSON with a message."""

    def initialize(self, service: "ClusterService") -> None:
        self.service = service

    def prepare(self) -> None:
        supplied = self.request.headers.get("Authorization", "")
        if not secrets.compare_digest(supplied, f"token {self.service.token}"):
            raise tornado.web.HTTPError(401, reason="missing or wrong cluster token")

    def body(self) -> dict[str, Any]:
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError as err:
            raise tornado.web.HTTPError(400, reason=f"request body is not JSON: {err}") from None
        if not isinstance(data, dict):
            raise tornado.web.HTTPError(400, reason="request body must be a JSON object")
        return data

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish({"error": self._reason})

    @staticmethod
    def gpus(value: Any) -> int:
        """A GPU count from a request body, or 400."""
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise tornado.web.HTTPError(400, reason=f"gpus must be a whole number of GPUs >= 0, got {value!r}")
        return value

    def kernel(self, kernel_id: str) -> None:
        if kernel_id not in self.service.cluster.kernels:
            raise tornado.web.HTTPError(404, reason=f"no kernel {kernel_id} in this cluster")


class ClusterRoot(ClusterHandler):
    def get(self) -> None:
        self.finish(self.service.cluster.describe())


class KernelsHandler(ClusterHandler):
    async def post(self) -> None:
        data = self.body()
        try:
            kernel_id, key = str(data["kernel_id"]), str(data["key"])
        except KeyError as err:
            raise tornado.web.HTTPError(400, reason=f"missing field {err}") from None
        if kernel_id in self.service.cluster.kernels:
            raise tornado.web.HTTPError(409, reason=f"kernel {kernel_id} already exists")
        gpus = self.gpus(data.get("gpus", 0))
        described = await self.service.run(
            self.service.cluster.create_kernel, kernel_id, key, str(data.get("signature_scheme", "hmac-sha256")),
            data.get("cwd"), gpus, _text(data.get("owner")), _text(data.get("notebook")))
        self.service.kernels_changed()
        self.set_status(201)
        self.finish(described)


class KernelHandler(ClusterHandler):
    def get(self, kernel_id: str) -> None:
        self.kernel(kernel_id)
        self.finish(self.service.cluster.describe_kernel(kernel_id))

    async def delete(self, kernel_id: str) -> None:
        self.kernel(kernel_id)
        self.service.forget(kernel_id)
        await self.service.run(self.service.cluster.delete_kernel, kernel_id)
        self.set_status(204)
        self.finish()
        self.service.kernels_changed()


class ReplicaActionHandler(ClusterHandler):
    """``restart``: the kernel front lost the replica; the scheduler replaces it (on another host). ``kill``: the
    fault drill. ``migrate``: move it to the host named in the body."""

    ACTIONS = {"restart": "replace_replica", "kill": "kill_replica", "migrate": "migrate_replica"}

    async def post(self, kernel_id: str, replica: str, action: str) -> None:
        self.kernel(kernel_id)
        index = int(replica)
        if index >= len(self.service.cluster.kernels[kernel_id].replicas):
            raise tornado.web.HTTPError(404, reason=f"kernel {kernel_id} has no replica {index}")
        args: tuple[Any, ...] = (kernel_id, index)
        if action == "migrate":
            host = self.body().get("host")
            if not isinstance(host, str):
                raise tornado.web.HTTPError(400, reason="give the target host as {\"host\": \"host-N\"}")
            args += (host,)
        self.finish(await self.service.run(getattr(self.service.cluster, self.ACTIONS[action]), *args))


class ExecutionsHandler(ClusterHandler):
    """A cell's GPUs: ask (``POST .../executions``), wait while queued (``.../executions/wait``), give back
    (``.../executions/release``, with the bind and release times the executor measured)."""

    async def post(self, kernel_id: str, step: str | None = None) -> None:
        self.kernel(kernel_id)
        service = self.service
        if step == "release":
            data = self.body()
            await service.run(service.cluster.release, kernel_id, _seconds(data.get("bind_s")),
                              _seconds(data.get("release_s")))
            self.finish({"released": True})
        elif step == "wait":
            self.finish(decision_json(await service.wait_for_grant(kernel_id)))
        else:
            gpus = self.gpus(self.body().get("gpus"))
            decision = await service.request_execution(kernel_id, gpus)
            self.set_status(200 if decision.granted else 202)
            self.finish(decision_json(decision))


def decision_json(decision: Decision) -> dict[str, Any]:
    return {"kind": decision.kind.value, "granted": decision.granted, "replica": decision.replica,
            "host": decision.host_id, "devices": list(decision.devices), "gpus": decision.gpus,
            "reason": decision.reason}


class HostsHandler(ClusterHandler):
    """``POST /hosts`` adds a host (``{"gpus": N}``, default the cluster's GPUs per host)."""

    async def post(self) -> None:
        data = self.body()
        gpus = self.gpus(data["gpus"]) if "gpus" in data else None
        if gpus == 0:
            raise tornado.web.HTTPError(400, reason="a host needs at least 1 GPU")
        self.set_status(201)
        self.finish(await self.service.run(self.service.cluster.add_host, gpus))


class HostHandler(ClusterHandler):
    """``PATCH`` changes a host's GPU count, ``DELETE`` removes a drained host, ``POST .../drain`` drains it."""

    async def patch(self, name: str) -> None:
        data = self.body()
        if "gpus" not in data:
            raise tornado.web.HTTPError(400, reason="give the new GPU count as {\"gpus\": N}")
        self.finish(await self.service.run(self.service.cluster.resize_host, name, self.gpus(data["gpus"])))

    async def delete(self, name: str) -> None:
        await self.service.run(self.service.cluster.remove_host, name)
        self.set_status(204)
        self.finish()


class DrainHandler(ClusterHandler):
    async def post(self, name: str) -> None:
        self.finish(await self.service.run(self.service.cluster.drain_host, name))


class EventsHandler(ClusterHandler):
    """``GET /events?since=SEQ&limit=N&host=&kernel=&kind=``: logged events after SEQ, oldest first.
    ``GET /events/wait?since=SEQ&timeout=S``: the same, but waits up to S seconds (at most 60) for one to come."""

    async def get(self, wait: str | None = None) -> None:
        since = self._int("since", 0)
        filters = {k: self.get_query_argument(k, None) for k in ("host", "kernel", "kind")}
        log_ = self.service.cluster.events
        if wait and log_.last_seq <= since:
            timeout = min(self._int("timeout", 25), 60)
            await self.service.new_event(since, timeout)
        self.finish({"events": log_.since(since, limit=self._int("limit", 0) or None, **filters),
                     "last_seq": log_.last_seq})

    def _int(self, name: str, default: int) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        if not (raw.isascii() and raw.isdigit() and len(raw) < 16):
            raise tornado.web.HTTPError(400, reason=f"{name} must be a whole number >= 0, got {raw[:40]!r}")
        return int(raw)


class HistoryHandler(ClusterHandler):
    def get(self) -> None:
        try:
            seconds = float(self.get_query_argument("seconds", "3600"))
        except ValueError:
            raise tornado.web.HTTPError(400, reason="seconds must be a number") from None
        history = self.service.cluster.history
        self.finish({"interval_s": history.interval_s, "samples": history.since(time.time(), seconds)})


class MetricsHandler(ClusterHandler):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.service.cluster.metrics.render())


class JournalHandler(ClusterHandler):
    """The core calls of a cluster started with --journal, with their outcomes, for replay on another core."""

    def get(self) -> None:
        cluster = self.service.cluster
        if cluster.journal is None:
            raise tornado.web.HTTPError(404, reason="this cluster keeps no journal; start it with --journal")
        self.finish({
            "policy": cluster.policy.name, "config": dataclasses.asdict(cluster.core_config),
            "calls": [{"method": c.method, "args": list(c.args), "now": c.now} for c in cluster.journal.calls],
            "outcomes": [outcome_json(o) for o in cluster.journal.outcomes],
        })


def _text(value: Any) -> str | None:
    return str(value)[:1000] if isinstance(value, str) and value else None


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None


class ClusterService:
    def __init__(self, cluster: EmbeddedCluster, ephemeral: bool) -> None:
        self.cluster = cluster
        self.token = secrets.token_urlsafe(24)
        self.ephemeral = ephemeral
        self.stopped = asyncio.Event()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._grants: dict[str, asyncio.Future[Decision]] = {}  # queued cells, by kernel, until granted
        # Every change to the cluster runs on this one thread, in arrival order: the scheduling core and the host
        # agents never see two changes interleave, and the event loop never blocks on a replica being moved.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cluster")
        self._loop = asyncio.get_running_loop()
        self._event_waiters: list[asyncio.Future[None]] = []
        cluster.events.listeners.append(lambda _entry: self._loop.call_soon_threadsafe(self._wake_event_waiters))

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one change on the cluster's thread; answer its refusals as HTTP errors with the reason. Cells that
        the change let through (GPUs freed, hosts added, or the request itself) are then started and answered."""
        def change() -> tuple[Any, list[Decision]]:
            return fn(*args), self.cluster.take_granted()

        try:
            result, granted = await self._loop.run_in_executor(self._worker, change)
        except PlacementError as err:
            raise tornado.web.HTTPError(503, reason=str(err)) from None
        except (KeyError, ProviderError) as err:
            status = 404 if isinstance(err, KeyError) else 409
            raise tornado.web.HTTPError(status, reason=str(err.args[0] if err.args else err)) from None
        except ValueError as err:
            raise tornado.web.HTTPError(409, reason=str(err)) from None
        for decision in granted:
            await self._start(decision)
        return result

    async def _start(self, decision: Decision) -> None:
        """Carry out a granted decision: move the replica for MIGRATE and wait, off the cluster's thread, until it
        has caught up; then commit the devices and answer the waiting front."""
        try:
            moved = await self._loop.run_in_executor(self._worker, self.cluster.prepare, decision)
            if moved is not None:
                await self._until_caught_up(moved)
                self.cluster.events.append(
                    "replica_ready" if moved.ready else "replica_not_ready", time.time(),
                    "caught up on its new host" if moved.ready else f"not caught up after {MOVE_TIMEOUT_S:.0f} s; "
                    "the cell goes to it anyway", host=moved.config.host, kernel=decision.kernel_id,
                    replica=decision.replica)
            await self._loop.run_in_executor(self._worker, self.cluster.start, decision)
        except ValueError as err:  # the kernel went away meanwhile
            log.info("scheduler: grant for kernel %s dropped: %s", decision.kernel_id, err)
            return
        log.info("scheduler: %s for kernel %s started: %s", decision.kind.value, decision.kernel_id, decision.reason)
        future = self._grants.get(decision.kernel_id)
        if future is not None and not future.done():
            future.set_result(decision)

    async def _until_caught_up(self, proc: ReplicaProcess) -> None:
        """A moved replica restarts and replays its journal (seconds); its cell waits for that, not the scheduler's
        thread. Bounded: a replica that never catches up is the front's to detect."""
        deadline = self._loop.time() + MOVE_TIMEOUT_S
        while not proc.ready and proc.popen is not None and proc.popen.poll() is None and \
                self._loop.time() < deadline:
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
            self._grants.pop(kernel_id, None)
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
        except asyncio.TimeoutError:
            pass
        finally:
            if waiter in self._event_waiters:
                self._event_waiters.remove(waiter)

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
        args = {"service": self}
        return tornado.web.Application([
            (r"/cluster", ClusterRoot, args),
            (r"/scheduler/journal", JournalHandler, args),
            (r"/events(?:/(wait))?", EventsHandler, args),
            (r"/history", HistoryHandler, args),
            (r"/metrics", MetricsHandler, args),
            (r"/hosts", HostsHandler, args),
            (r"/hosts/([^/]+)", HostHandler, args),
            (r"/hosts/([^/]+)/drain", DrainHandler, args),
            (r"/kernels", KernelsHandler, args),
            (r"/kernels/([^/]+)", KernelHandler, args),
            (r"/kernels/([^/]+)/replicas/(\d+)/(restart|kill|migrate)", ReplicaActionHandler, args),
            (r"/kernels/([^/]+)/executions(?:/(wait|release))?", ExecutionsHandler, args),
        ])

    def kernels_changed(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self.ephemeral and not self.cluster.kernels:
            self._idle_timer = self._loop.call_later(EPHEMERAL_GRACE_S, self.stopped.set)

    def close(self) -> None:
        self._worker.shutdown(wait=True)


def write_discovery_file(path: Path, url: str, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "token": token, "pid": os.getpid()}, f)
    os.replace(tmp, path)


async def serve(args: argparse.Namespace) -> None:
    gpus_per_host = args.gpus_per_host or nvml_gpu_count() or 1
    cluster = EmbeddedCluster(args.state_dir, args.hosts, gpus_per_host, journal=args.journal,
                              max_hosts=args.max_hosts, policy=args.policy,
                              subscription_limit=args.subscription_limit)
    service = ClusterService(cluster, args.ephemeral)
    sockets = tornado.netutil.bind_sockets(args.port, "127.0.0.1")
    bound = sockets[0].getsockname()[1]
    server = tornado.httpserver.HTTPServer(service.app())
    server.add_sockets(sockets)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stopped.set)
    write_discovery_file(args.discovery_file, f"http://127.0.0.1:{bound}", service.token)
    log.info("notebookos cluster (%s policy) with %d hosts of %d GPU(s) at http://127.0.0.1:%d", cluster.policy.name,
             args.hosts, gpus_per_host, bound)
    if args.ephemeral:
        service.kernels_changed()
    ticker = asyncio.ensure_future(service.tick())
    try:
        await service.stopped.wait()
    finally:
        # The file goes first: while it exists, clients take the cluster for alive (or busy), not for gone.
        args.discovery_file.unlink(missing_ok=True)
        ticker.cancel()
        server.stop()
        await service.run(cluster.shutdown)
        service.close()
        if args.ephemeral:
            shutil.rmtree(args.state_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m notebookos.gpu_broker.service")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--hosts", type=int, default=4, help="hosts to start with; the autoscaler keeps at least these")
    parser.add_argument("--max-hosts", type=int, default=None,
                        help="most hosts the autoscaler may run (default: --hosts, no scale-out)")
    parser.add_argument("--ephemeral", action="store_true", help="exit once the last kernel is gone")
    parser.add_argument("--discovery-file", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--gpus-per-host", type=int, default=None,
                        help="GPUs of each logical host: virtual GPUs (default: the GPUs NVML sees, else 1)")
    parser.add_argument("--policy", choices=sorted(p for p in POLICIES if POLICIES[p].replicas),
                        default=POLICY, help="scheduling policy (reservation: one replica holding its GPUs)")
    parser.add_argument("--subscription-limit", type=float, default=CoreConfig.subscription_limit,
                        help="most GPUs the replicas on a host may ask for, per GPU of the host")
    parser.add_argument("--journal", action="store_true",
                        help="keep every scheduling-core call for replay (GET /scheduler/journal); grows without bound")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
