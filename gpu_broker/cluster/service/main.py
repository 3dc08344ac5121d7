"""``python -m notebookos.gpu_broker.cluster.service``: start a cluster service and write its discovery file."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
from pathlib import Path

import tornado.httpserver
import tornado.netutil

from ...scheduler.policies import POLICIES
from ...scheduler.core import CoreConfig
from ..embedded import POLICY, EmbeddedCluster
from ..inventory import nvml_gpu_count
from .cluster_service import ClusterService

log = logging.getLogger(__name__)


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
    parser = argparse.ArgumentParser(prog="python -m notebookos.gpu_broker.cluster.service")
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
