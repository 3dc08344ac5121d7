"""The cluster service: the embedded cluster behind a small authenticated HTTP/JSON API on loopback.

Kernel provisioners and kernel fronts, possibly in several Jupyter processes, share one cluster through it. Its
address and token are written to a discovery file (mode 0600) that clients read; see :mod:`.client`.

Run: ``python -m notebookos.gpu_broker.service --state-dir DIR --hosts 4 [--ephemeral]``. An ephemeral cluster
(started on demand by the provisioner) exits once its last kernel is gone.
"""
from __future__ import annotations

import argparse
import asyncio
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

from .embedded import EmbeddedCluster, PlacementError

log = logging.getLogger(__name__)

# An ephemeral cluster lingers this long after its last kernel is gone, so a kernel restart (delete, then create)
# reuses it instead of starting a new one.
EPHEMERAL_GRACE_S = 2.0


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
        gpus = data.get("gpus", 0)
        if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 0:
            raise tornado.web.HTTPError(400, reason=f"gpus must be a whole number of GPUs >= 0, got {gpus!r}")
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


class ClusterService:
    def __init__(self, state_dir: Path, n_hosts: int, ephemeral: bool, gpus_per_host: int = 1) -> None:
        self.cluster = EmbeddedCluster(state_dir, n_hosts, gpus_per_host)
        self.token = secrets.token_urlsafe(24)
        self.ephemeral = ephemeral
        self.stopped = asyncio.Event()
        self._idle_timer: asyncio.TimerHandle | None = None

    def app(self) -> tornado.web.Application:
        args = {"service": self}
        return tornado.web.Application([
            (r"/cluster", ClusterRoot, args),
            (r"/kernels", KernelsHandler, args),
            (r"/kernels/([^/]+)", KernelHandler, args),
            (r"/kernels/([^/]+)/replicas/(\d+)/(restart|kill)", ReplicaActionHandler, args),
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
                gpus_per_host: int = 1) -> None:
    service = ClusterService(state_dir, n_hosts, ephemeral, gpus_per_host)
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
    try:
        await service.stopped.wait()
    finally:
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(args.state_dir, args.hosts, args.ephemeral, args.discovery_file, args.port,
                      args.gpus_per_host))


if __name__ == "__main__":
    main()
