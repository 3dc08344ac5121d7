"""The cluster service's command line: ``python -m notebookos.gpu_broker.cluster.service`` (what ``notebookos lab``
and the on-demand cluster start) and ``notebookos cluster`` (the shared service of a real cluster, in the
foreground, with no hosts of its own: agents join it)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from importlib.util import find_spec
from pathlib import Path

import tornado.httpserver
import tornado.netutil
from jupyter_core.paths import secure_write

from ...scheduler.core import CoreConfig
from ...scheduler.policies import LIVE_POLICY, POLICIES
from ..embedded import EmbeddedCluster
from ..inventory import nvml_gpu_count
from ..join_token import TokenError, ensure_token, pin_ca
from ..options import LOG_LEVELS, configure_logging, gpu_count, hosts_problem, log_level
from ..tls import ServerTLS, TLSError, auto_tls, fingerprint, serving_names
from ..providers import ProviderError
from ..providers.factory import add_provider_arguments, make_provider
from ..state_store import ClusterStateStore
from .cluster_service import ClusterService

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:0"
HOST_TIMEOUT_S = 5.0


def write_discovery_file(path: Path, url: str, token: str, ca_pem: str | None) -> None:
    """Where clients find this service, its token, and the CA to verify it with (None: plain HTTP, or a
    certificate the system's CAs verify)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with secure_write(str(tmp)) as f:
        json.dump({"url": url, "token": token, "pid": os.getpid(), "ca_pem": ca_pem}, f)
    os.replace(tmp, path)


def _server_tls(args: argparse.Namespace, address: str) -> ServerTLS | None:
    if args.tls_auto:
        return auto_tls(
            args.tls_ca or args.state_dir / "tls", args.state_dir / "tls", [*serving_names(address), *args.tls_name]
        )
    if args.certfile or args.keyfile:
        if not (args.certfile and args.keyfile):
            raise TLSError("--certfile and --keyfile go together")
        return ServerTLS(args.certfile, args.keyfile)
    return None


def parse_listen(value: str) -> tuple[str, int]:
    """``ADDR:PORT`` (port 0: any free one) as argparse's type."""
    address, _, port = value.rpartition(":")
    if not address or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(
            f"give the address to listen on as ADDR:PORT, e.g. 10.0.0.1:8765, not {value!r}"
        )
    return address, int(port)


async def serve(args: argparse.Namespace) -> None:
    # With real GPUs, logical hosts split them (default: an equal share each); without, they carry virtual ones.
    physical = nvml_gpu_count()
    gpus_per_host = (
        args.gpus_per_host
        if args.gpus_per_host is not None
        else max(1, physical // max(1, args.hosts))
        if physical
        else 1
    )
    join_token = ensure_token(args.join_token_file) if args.join_token_file else None
    state = ClusterStateStore(args.state_dir)
    stored = state.settings()
    address, port = args.listen
    if port == 0 and stored.get("address") == address:
        port = int(stored["port"])  # a restart: where kernel fronts and agents know it (any port if now taken)
    tls = _server_tls(args, address)
    if tls is not None and tls.ca_pem is not None and args.join_token_file:
        join_token = pin_ca(args.join_token_file, fingerprint(tls.ca_pem))
    elif tls is None and not ipaddress.ip_address(address).is_loopback:
        log.warning(
            "serving plain HTTP on %s: the cluster's tokens and the kernels' cluster traffic cross the "
            "network unencrypted; start with --tls-auto or --certfile/--keyfile",
            address,
        )
    try:
        sockets = tornado.netutil.bind_sockets(port, address, family=socket.AF_INET)
    except OSError:
        if port == args.listen[1]:
            raise
        log.warning("port %d, where the previous service listened, is taken: listening on another one", port)
        sockets = tornado.netutil.bind_sockets(0, address, family=socket.AF_INET)
    bound = sockets[0].getsockname()[1]
    url = f"{'https' if tls else 'http'}://{'127.0.0.1' if address == '0.0.0.0' else address}:{bound}"
    cluster = EmbeddedCluster(
        args.state_dir,
        args.hosts,
        gpus_per_host,
        journal=args.journal,
        max_hosts=args.max_hosts,
        policy=args.policy,
        subscription_limit=args.subscription_limit,
        object_store=args.object_store,
        host_timeout_s=args.host_timeout,
        provider=make_provider(args, url),
        devices=list(range(physical)) if physical else None,
        state=state,
    )
    service = ClusterService(
        cluster,
        args.ephemeral,
        join_token.secret if join_token else None,
        ca_pem=tls.ca_pem if tls else None,
        token=stored.get("token"),
    )
    for name, value in (("token", service.token), ("address", address), ("port", str(bound))):
        state.put_setting(name, value)
    cluster.save()
    _freeze_startup_objects()
    server = tornado.httpserver.HTTPServer(service.app(), ssl_options=tls.context() if tls else None)
    server.add_sockets(sockets)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stopped.set)
    write_discovery_file(args.discovery_file, url, service.token, tls.ca_pem if tls else None)
    log.info(
        "notebookos cluster (%s policy) with %d hosts of %d GPU(s) at %s%s",
        cluster.policy.name,
        len(cluster.hosts),
        gpus_per_host,
        url,
        "; agents join with the token in " + str(args.join_token_file) if join_token else "",
    )
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
        if args.keep_kernels:
            log.info("stopped; kernels keep running, and a service started on %s takes them back", args.state_dir)
        else:
            await service.run(cluster.shutdown)
            state.clear()
        service.close()
        if args.ephemeral:
            shutil.rmtree(args.state_dir, ignore_errors=True)


FULL_COLLECTION_AFTER = 100  # collections of the garbage collector's middle generation (Python's default: 10)


def _freeze_startup_objects() -> None:
    """Take what exists once the service is built (modules, the OpenAPI checker, a restored cluster: some 170,000
    objects) out of the garbage collector's view for good. They live as long as the service, yet each full
    collection walked them all: 50 to 120 ms during which no request was answered, the longest waits of
    ``benchmarks/scale.py``. Garbage made until now is collected first, so none is kept.

    Then full collections are made ten times rarer: after 100 collections of the middle generation instead of 10.
    What they walk is the cluster's own records (kernels, replicas, hosts), which live as long as their kernels:
    at 2,000 kernels one pass takes 25 to 70 ms of the service's only interpreter lock, and while kernels start at
    100 a second the default let one run every 15 s or so. Now about one every two minutes at that load. Cycles of
    objects that had lived long before becoming garbage wait that much longer to be freed; younger ones are freed
    as before."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*gc.get_threshold()[:2], FULL_COLLECTION_AFTER)


def add_service_arguments(parser: argparse.ArgumentParser, hosts: int) -> None:
    """The options the service takes, wherever it is started from."""
    parser.add_argument(
        "--hosts",
        type=int,
        default=hosts,
        help=f"logical hosts on this machine to start with; the autoscaler keeps at least these "
        f"(default {hosts}; 0: only hosts whose agents join; else 3 or more, as each kernel "
        "runs 3 replicas on 3 hosts)",
    )
    parser.add_argument(
        "--max-hosts",
        type=int,
        default=None,
        help="most logical hosts the autoscaler may run (default: --hosts, no scale-out)",
    )
    parser.add_argument(
        "--gpus-per-host",
        type=gpu_count,
        default=None,
        help="GPUs of each logical host: a slice of the GPUs NVML sees (default: an equal share), "
        "else virtual GPUs (default 1); 0: hosts without GPUs, for kernels that need none",
    )
    parser.add_argument(
        "--log-level",
        type=log_level,
        default="INFO",
        metavar="LEVEL",
        help=f"the service's logging: {', '.join(LOG_LEVELS)} (default INFO)",
    )
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=parse_listen(DEFAULT_LISTEN),
        metavar="ADDR:PORT",
        help=f"where the service's API listens (default {DEFAULT_LISTEN}: loopback, any port); agents "
        "and remote Jupyter servers need an address they can reach",
    )
    parser.add_argument(
        "--join-token-file",
        type=Path,
        default=None,
        help="the token agents join with (created, mode 0600, if the file does not exist); "
        "without it no agent can join",
    )
    parser.add_argument(
        "--object-store",
        default=None,
        metavar="URL",
        help="an object store every host reaches (redis://host:port/0) for large values; default: "
        "each host keeps its own",
    )
    parser.add_argument(
        "--host-timeout",
        type=float,
        default=HOST_TIMEOUT_S,
        metavar="SECONDS",
        help=f"a joined host whose agent is silent this long is lost (default {HOST_TIMEOUT_S:.0f})",
    )
    parser.add_argument(
        "--policy",
        choices=sorted(p for p in POLICIES if POLICIES[p].replicas),
        default=LIVE_POLICY,
        help="scheduling policy (reservation: one replica holding its GPUs)",
    )
    parser.add_argument(
        "--subscription-limit",
        type=float,
        default=CoreConfig.subscription_limit,
        help="most GPUs the replicas on a host may ask for, per GPU of the host",
    )
    parser.add_argument(
        "--journal",
        action="store_true",
        help="keep every scheduling-core call for replay (GET /scheduler/journal); grows without bound",
    )
    tls = parser.add_argument_group("TLS (without it the service speaks plain HTTP, as Jupyter does)")
    tls.add_argument(
        "--tls-auto",
        action="store_true",
        help="make a cluster CA at first start (in the state folder) and a certificate from it; the "
        "join token file then pins the CA, so agents and Jupyter servers given it trust only it",
    )
    tls.add_argument(
        "--tls-name",
        action="append",
        default=[],
        metavar="NAME",
        help="with --tls-auto: another DNS name or address clients reach the service by (repeatable)",
    )
    tls.add_argument(
        "--tls-ca",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --tls-auto: the folder of the CA (ca.pem, ca-key.pem) to sign with, made there if "
        "missing (default: the state folder's tls/)",
    )
    tls.add_argument("--certfile", type=Path, default=None, help="the service's certificate (PEM), e.g. from your CA")
    tls.add_argument("--keyfile", type=Path, default=None, help="its private key (PEM)")
    add_provider_arguments(parser)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m notebookos.gpu_broker.cluster.service")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--ephemeral", action="store_true", help="exit once the last kernel is gone")
    parser.add_argument(
        "--keep-kernels",
        action="store_true",
        help="on SIGTERM, stop serving but leave kernels running for the next service on this state "
        "folder (default: stop them, as when JupyterLab exits)",
    )
    parser.add_argument("--discovery-file", type=Path, required=True)
    add_service_arguments(parser, hosts=4)
    sys.exit(_run(parser.parse_args(argv)))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cluster",
        help="run the shared cluster service that agents join and Jupyter servers use",
        description="Run the notebookos cluster service in the foreground. GPU machines join it with "
        "`notebookos agent`; Jupyter servers use it with `notebookos lab --cluster URL`.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the service keeps its files, and its kernels outlive it for the next service "
        "started on it (default: a new temporary folder, removed with the kernels on exit)",
    )
    add_service_arguments(parser, hosts=0)
    parser.set_defaults(func=run_cluster)


def run_cluster(args: argparse.Namespace) -> int:
    temporary = args.state_dir is None
    args.state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="notebookos-cluster-"))
    args.discovery_file = args.state_dir / "cluster.json"
    args.ephemeral = False
    # The shared service: restarting it on its state folder (an upgrade) must cost no kernel. A temporary folder
    # no later service can know is removed on exit, with the kernels it holds.
    args.keep_kernels = not temporary
    try:
        return _run(args)
    finally:
        if temporary:
            shutil.rmtree(args.state_dir, ignore_errors=True)


def _run(args: argparse.Namespace) -> int:
    problem = hosts_problem(args.hosts, POLICIES[args.policy].replicas)
    if args.object_store and args.object_store.startswith("redis") and find_spec("redis") is None:
        problem = (
            "--object-store redis://... needs the redis package, on this machine and every host's: pip "
            "install 'notebookos[redis]'"
        )
    if problem:
        print(f"notebookos cluster: {problem}", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    try:
        asyncio.run(serve(args))
    except (TokenError, ProviderError, TLSError) as err:
        print(f"notebookos cluster: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(
            f"notebookos cluster: cannot listen on {args.listen[0]}:{args.listen[1]}: {err.strerror or err}",
            file=sys.stderr,
        )
        return 1
    return 0
