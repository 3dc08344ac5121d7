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
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from .core.events import Decision, Event
from .core.journal import outcome_json
from .embedded import POLICY, EmbeddedCluster, PlacementError

log = logging.getLogger(__name__)

# An ephemeral cluster lingers this long after its last kernel is gone, so a kernel restart (delete, then create)
# reuses it instead of starting a new one.
EPHEMERAL_GRACE_S = 2.0
TICK_S = 1.0


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
    def post(self) -> None:
        data = self.body()
        try:
            kernel_id, key = str(data["kernel_id"]), str(data["key"])
        except KeyError as err:
            raise tornado.web.HTTPError(400, reason=f"missing field {err}") from None
        if kernel_id in self.service.cluster.kernels:
            raise tornado.web.HTTPError(409, reason=f"kernel {kernel_id} already exists")
        gpus = self.gpus(data.get("gpus", 0))
        try:
            described = self.service.cluster.create_kernel(
                kernel_id, key, str(data.get("signature_scheme", "hmac-sha256")), data.get("cwd"), gpus)
        except PlacementError as err:
            raise tornado.web.HTTPError(503, reason=str(err)) from None
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
        await asyncio.get_running_loop().run_in_executor(None, self.service.cluster.delete_kernel, kernel_id)
        self.set_status(204)
        self.finish()
        self.service.kernels_changed()


class ReplicaActionHandler(ClusterHandler):
    ACTIONS = {"restart": "restart_replica", "kill": "kill_replica"}

    def post(self, kernel_id: str, replica: str, action: str) -> None:
        self.kernel(kernel_id)
        index = int(replica)
        if index >= len(self.service.cluster.kernels[kernel_id].replicas):
            raise tornado.web.HTTPError(404, reason=f"kernel {kernel_id} has no replica {index}")
        self.finish(getattr(self.service.cluster, self.ACTIONS[action])(kernel_id, index))


class MigrateHandler(ClusterHandler):
    async def post(self, kernel_id: str, replica: str) -> None:
        self.kernel(kernel_id)
        host = self.body().get("host")
        if not isinstance(host, str):
            raise tornado.web.HTTPError(400, reason="give the target host as {\"host\": \"host-N\"}")
        try:
            described = await asyncio.get_running_loop().run_in_executor(
                None, self.service.cluster.migrate_replica, kernel_id, int(replica), host)
        except ValueError as err:
            raise tornado.web.HTTPError(409, reason=str(err)) from None
        self.finish(described)


class ExecutionsHandler(ClusterHandler):
    """A cell's GPUs: ask (``POST .../executions``), wait while queued (``.../executions/wait``), give back
    (``.../executions/release``)."""

    async def post(self, kernel_id: str, step: str | None = None) -> None:
        self.kernel(kernel_id)
        service = self.service
        if step == "release":
            await service.release(kernel_id)
            self.finish({"released": True})
        elif step == "wait":
            self.finish(decision_json(await service.wait_for_grant(kernel_id)))
        else:
            gpus = self.gpus(self.body().get("gpus"))
            try:
                decision = await service.request_execution(kernel_id, gpus)
            except PlacementError as err:
                raise tornado.web.HTTPError(400, reason=str(err)) from None
            except ValueError as err:
                raise tornado.web.HTTPError(409, reason=str(err)) from None
            self.set_status(200 if decision.granted else 202)
            self.finish(decision_json(decision))


def decision_json(decision: Decision) -> dict[str, Any]:
    return {"kind": decision.kind.value, "granted": decision.granted, "replica": decision.replica,
            "host": decision.host_id, "devices": list(decision.devices), "gpus": decision.gpus,
            "reason": decision.reason}


class JournalHandler(ClusterHandler):
    """The core calls of a cluster started with --journal, with their outcomes, for replay on another core."""

    def get(self) -> None:
        cluster = self.service.cluster
        if cluster.journal is None:
            raise tornado.web.HTTPError(404, reason="this cluster keeps no journal; start it with --journal")
        self.finish({
            "policy": POLICY, "config": dataclasses.asdict(cluster.core_config),
            "calls": [{"method": c.method, "args": list(c.args), "now": c.now} for c in cluster.journal.calls],
            "outcomes": [outcome_json(o) for o in cluster.journal.outcomes],
        })


class ClusterService:
    def __init__(self, state_dir: Path, n_hosts: int, ephemeral: bool, gpus_per_host: int = 1,
                 journal: bool = False) -> None:
        self.cluster = EmbeddedCluster(state_dir, n_hosts, gpus_per_host, journal=journal)
        self.token = secrets.token_urlsafe(24)
        self.ephemeral = ephemeral
        self.stopped = asyncio.Event()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._grants: dict[str, asyncio.Future[Decision]] = {}  # queued cells, by kernel, until granted

    async def request_execution(self, kernel_id: str, gpus: int) -> Decision:
        decision = self.cluster.request_execution(kernel_id, gpus)
        log.info("scheduler: %s for kernel %s: %s", decision.kind.value, kernel_id, decision.reason)
        if decision.granted:
            await self._carry_out(decision)
        else:
            self._grants[kernel_id] = asyncio.get_running_loop().create_future()
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

    async def release(self, kernel_id: str) -> None:
        try:
            events = self.cluster.release(kernel_id)
        except ValueError as err:
            raise tornado.web.HTTPError(409, reason=str(err)) from None
        await self._grant_waiting(events)

    async def tick(self) -> None:
        """The autoscaler's and the queue's clock: retry waiting work once a second."""
        while True:
            await asyncio.sleep(TICK_S)
            await self._grant_waiting(self.cluster.tick())

    async def _grant_waiting(self, events: list[Event]) -> None:
        for event in events:
            log.info("scheduler: %s: %s", type(event).__name__, event.reason)
            if isinstance(event, Decision) and event.granted:
                await self._carry_out(event)
                future = self._grants.get(event.kernel_id)
                if future is not None and not future.done():
                    future.set_result(event)

    async def _carry_out(self, decision: Decision) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.cluster.carry_out, decision)

    def app(self) -> tornado.web.Application:
        args = {"service": self}
        return tornado.web.Application([
            (r"/cluster", ClusterRoot, args),
            (r"/scheduler/journal", JournalHandler, args),
            (r"/kernels", KernelsHandler, args),
            (r"/kernels/([^/]+)", KernelHandler, args),
            (r"/kernels/([^/]+)/replicas/(\d+)/(restart|kill)", ReplicaActionHandler, args),
            (r"/kernels/([^/]+)/replicas/(\d+)/migrate", MigrateHandler, args),
            (r"/kernels/([^/]+)/executions(?:/(wait|release))?", ExecutionsHandler, args),
        ])

    def kernels_changed(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self.ephemeral and not self.cluster.kernels:
            self._idle_timer = asyncio.get_running_loop().call_later(EPHEMERAL_GRACE_S, self.stopped.set)


def write_discovery_file(path: Path, url: str, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "token": token, "pid": os.getpid()}, f)
    os.replace(tmp, path)


async def serve(state_dir: Path, n_hosts: int, ephemeral: bool, discovery_file: Path, port: int = 0,
                gpus_per_host: int = 1, journal: bool = False) -> None:
    service = ClusterService(state_dir, n_hosts, ephemeral, gpus_per_host, journal)
    sockets = tornado.netutil.bind_sockets(port, "127.0.0.1")
    bound = sockets[0].getsockname()[1]
    server = tornado.httpserver.HTTPServer(service.app())
    server.add_sockets(sockets)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stopped.set)
    write_discovery_file(discovery_file, f"http://127.0.0.1:{bound}", service.token)
    log.info("notebookos cluster with %d hosts at http://127.0.0.1:%d", n_hosts, bound)
    if ephemeral:
        service.kernels_changed()
    ticker = asyncio.ensure_future(service.tick())
    try:
        await service.stopped.wait()
    finally:
        ticker.cancel()
        server.stop()
        discovery_file.unlink(missing_ok=True)
        await loop.run_in_executor(None, service.cluster.shutdown)
        if ephemeral:
            shutil.rmtree(state_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m notebookos.gpu_broker.service")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--ephemeral", action="store_true", help="exit once the last kernel is gone")
    parser.add_argument("--discovery-file", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--gpus-per-host", type=int, default=1,
                        help="GPUs of each logical host (virtual GPUs where the machine has none)")
    parser.add_argument("--journal", action="store_true",
                        help="keep every scheduling-core call for replay (GET /scheduler/journal); grows without bound")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(args.state_dir, args.hosts, args.ephemeral, args.discovery_file, args.port,
                      args.gpus_per_host, args.journal))


if __name__ == "__main__":
    main()
