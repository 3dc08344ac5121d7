"""``notebookos agent``: the daemon each GPU machine runs.

It joins the cluster service with the join token, advertises the machine's address (where its replicas bind and
their peers dial) and its GPUs (NVML's inventory, or ``--gpus N`` virtual GPUs), then heartbeats with a report of
every replica it runs. The cluster starts and stops replicas through the agent's own small API (:mod:`.handlers`),
authenticated by a random token the agent sends with its join. Journals, objects and logs stay under
``--state-dir``: nothing assumes another machine can read this disk. Replicas run as processes in sessions of
their own or in Docker containers (``--runtime``, :mod:`..runtime`); either way they outlive the agent, and an agent
restarted on the same state folder re-adopts those still running.

A join refused for the token is fatal (one line on stderr, exit status 2); a cluster that does not answer is
retried with backoff, as is a cluster that forgot the agent (it restarted, or declared the host lost): the agent
joins again. An agent whose host the cluster removed stops its replicas (containers included) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from collections.abc import Callable
from urllib.parse import urlsplit

import requests
import tornado.httpserver
import tornado.netutil
import tornado.web

from ..host_agent import HostAgent
from ..inventory import nvml_gpu_count
from ..json_api import log_request
from ..join_token import JoinToken, TokenError, read_token
from ..options import configure_logging
from ..tls import ServerTLS, TLSError, fetch_pinned_ca, self_signed
from ..ports import PortPool
from ..runtime.base import ReplicaRuntime
from ..runtime.factory import add_runtime_arguments, make_runtime
from .handlers import routes
from .remote import HEARTBEAT_S

log = logging.getLogger("notebookos.agent")

JOIN_TIMEOUT_S = 10.0
RETRY_MAX_S = 5.0
EXIT_REFUSED = 2


def _period(told: object) -> float:
    """The wait until the next heartbeat the cluster's answer asks for (the more agents, the longer), within bounds
    that no answer can push an agent out of: a tenth of HEARTBEAT_S to a minute."""
    if not isinstance(told, int | float):
        return HEARTBEAT_S
    return min(max(float(told), HEARTBEAT_S / 10), 60.0)


class JoinRefused(RuntimeError):
    """The cluster refused this agent (wrong token, a name taken by another machine); retrying cannot help."""


class Removed(Exception):
    """The cluster removed this agent's host: it stops its replicas and exits."""


class Agent:
    """``verify``: how the cluster's certificate is checked (a CA file, or True: the system's CAs). ``tls``: the
    agent's own certificate, served on its API when the cluster speaks https."""

    def __init__(
        self,
        args: argparse.Namespace,
        token: str,
        runtime: ReplicaRuntime,
        verify: str | bool = True,
        tls: ServerTLS | None = None,
    ) -> None:
        self.name = args.name
        self.address = args.address
        self.cluster_url = args.join.rstrip("/")
        self.join_token = token
        self.verify = verify
        self.tls = tls
        self.gpus = args.gpus if args.gpus is not None else nvml_gpu_count() or 0
        self.state_dir = Path(args.state_dir)
        self.api_token = secrets.token_urlsafe(32)
        self.host = HostAgent(
            self.name,
            self.state_dir / "replicas",
            address=self.address,
            ports=PortPool(address=self.address),
            runtime=runtime,
        )
        self.port = args.port
        self.url = ""
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent")
        self.stopped = asyncio.Event()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one change on the host agent's thread (starting or stopping processes blocks)."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    def report(self) -> list[dict[str, Any]]:
        return [proc.describe() for proc in list(self.host.replicas.values())]

    async def serve(self) -> None:
        adopted = await self.run(self.host.adopt)
        if adopted:
            log.info("re-adopted %d running replica(s)", len(adopted))
        sockets = tornado.netutil.bind_sockets(self.port, self.address, family=socket.AF_INET)
        self.url = f"{'https' if self.tls else 'http'}://{self.address}:{sockets[0].getsockname()[1]}"
        server = tornado.httpserver.HTTPServer(
            tornado.web.Application(routes(self), log_function=log_request),
            ssl_options=self.tls.context() if self.tls else None,
        )
        server.add_sockets(sockets)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopped.set)
        heartbeats = asyncio.ensure_future(self._heartbeats())
        try:
            await asyncio.wait(
                [heartbeats, asyncio.ensure_future(self.stopped.wait())], return_when=asyncio.FIRST_COMPLETED
            )
            if heartbeats.done():
                try:
                    heartbeats.result()  # JoinRefused propagates
                except Removed as removed:
                    count = len(self.host.replicas)
                    await self.run(self.host.stop_all)
                    log.info("%s: stopped this host's %d replica(s); exiting", removed, count)
        finally:
            heartbeats.cancel()
            server.stop()
            self._worker.shutdown(wait=True)

    async def _heartbeats(self) -> None:
        """Join, then heartbeat; join again whenever the cluster no longer knows this agent."""
        backoff = HEARTBEAT_S
        joined = False
        while True:
            try:
                if not joined:
                    lent = self.host.ports.pool.ports  # the service chooses replicas' ports from them
                    await self._post(
                        "/agents",
                        {
                            "name": self.name,
                            "address": self.address,
                            "gpus": self.gpus,
                            "url": self.url,
                            "token": self.api_token,
                            "replicas": self.report(),
                            "cert_pem": self.tls.ca_pem if self.tls else None,
                            "ports": {"first": lent.start, "last": lent.stop - 1},
                        },
                    )
                    log.info(
                        "joined the cluster at %s as %s (%s, %d GPU(s))",
                        self.cluster_url,
                        self.name,
                        self.address,
                        self.gpus,
                    )
                    joined = True
                status, answer = await self._post(f"/agents/{self.name}/heartbeat", {"replicas": self.report()})
                for kernel_id, replica in answer.get("stop", []):
                    log.info("the cluster placed replica %s/%s elsewhere: stopping it here", kernel_id, replica)
                    await self.run(self.host.stop_replica, kernel_id, int(replica))
                if status == 404:
                    log.warning("the cluster no longer knows this host; joining again")
                    joined = False
                    continue
                backoff = HEARTBEAT_S
                period = _period(answer.get("next_s"))
            except OSError as err:
                log.warning("the cluster at %s did not answer (%s); retrying in %.0f s", self.cluster_url, err, backoff)
                joined = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RETRY_MAX_S)
                continue
            await asyncio.sleep(period)

    async def _post(self, path: str, body: dict) -> tuple[int, dict]:
        """POST to the cluster: its status and JSON answer for 2xx and 404; JoinRefused for 401/403/409; OSError if
        it cannot be reached or fails."""

        def call() -> requests.Response:
            return requests.post(
                self.cluster_url + path,
                json=body,
                timeout=JOIN_TIMEOUT_S,
                verify=self.verify,
                headers={"Authorization": f"token {self.join_token}"},
            )

        try:
            response = await asyncio.get_running_loop().run_in_executor(None, call)
        except requests.RequestException as err:
            raise OSError(str(err)) from None
        if response.status_code == 410:
            raise Removed(_error(response))
        if response.status_code in (401, 403, 409):
            raise JoinRefused(f"the cluster at {self.cluster_url} refused to let {self.name} join: {_error(response)}")
        if response.status_code >= 400 and response.status_code != 404:
            raise OSError(f"{response.status_code} {_error(response)}")
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        return response.status_code, answer if isinstance(answer, dict) else {}


def _tls(args: argparse.Namespace, token: JoinToken) -> tuple[str | bool, ServerTLS | None]:
    """How to check the cluster's certificate, and this agent's own: with an https cluster, the agent serves its
    API with a certificate of its own too. A token that pins the cluster's CA makes it the only one trusted."""
    if not args.join.startswith("https:"):
        if not ipaddress.ip_address(args.address).is_loopback:
            log.warning(
                "joining %s over plain HTTP: the join token and the cluster's calls to this agent cross the "
                "network unencrypted; start the cluster with --tls-auto",
                args.join,
            )
        return True, None
    verify: str | bool = True
    if args.cluster_ca:
        verify = str(args.cluster_ca)
    elif token.ca_pin:
        ca_file = args.state_dir / "tls" / "cluster-ca.pem"
        ca_file.parent.mkdir(parents=True, exist_ok=True)
        ca_file.write_text(fetch_pinned_ca(args.join, token.ca_pin))
        verify = str(ca_file)
    return verify, self_signed(args.state_dir / "tls", args.address)


def address_towards(url: str) -> str:
    """This machine's address on the route to ``url``'s host (a UDP socket's source address: nothing is sent)."""
    parts = urlsplit(url)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((parts.hostname or "127.0.0.1", parts.port or 80))
        return probe.getsockname()[0]


def _error(response: requests.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text.strip()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="run this machine's agent: join a cluster and run replicas here",
        description="Join a notebookos cluster as a host and start and stop kernel replicas on this machine.",
    )
    parser.add_argument("--join", required=True, metavar="URL", help="the cluster service, e.g. http://10.0.0.1:8765")
    parser.add_argument("--join-token-file", required=True, type=Path, help="file holding the cluster's join token")
    parser.add_argument("--name", required=True, help="this host's name in the cluster (unique)")
    parser.add_argument(
        "--address",
        required=True,
        metavar="IP",
        help="this machine's address: replicas bind it, peers and kernel fronts dial it; 'auto': "
        "the address this machine reaches the cluster from (a container's on its network)",
    )
    parser.add_argument(
        "--gpus", type=int, default=None, help="virtual GPUs to advertise (default: the GPUs NVML sees; 0 without any)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="journals, objects and logs of this host's replicas (default: a new temporary folder)",
    )
    parser.add_argument("--port", type=int, default=0, help="port of the agent's API on --address (default: any)")
    parser.add_argument(
        "--cluster-ca",
        type=Path,
        default=None,
        metavar="FILE",
        help="the CA (PEM) an https cluster is verified against (default: the one the join token "
        "pins, else the system's)",
    )
    add_runtime_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    configure_logging()
    try:
        token = read_token(args.join_token_file)
    except TokenError as err:
        print(f"notebookos agent: {err}", file=sys.stderr)
        return EXIT_REFUSED
    if args.gpus is not None and args.gpus < 0:
        print(f"notebookos agent: --gpus must be 0 or more, got {args.gpus}", file=sys.stderr)
        return EXIT_REFUSED
    if args.address == "auto":
        args.address = address_towards(args.join)
    try:
        # The machine's real GPUs are exposed to containers; virtual ones (--gpus N) have nothing to expose.
        runtime = make_runtime(args, None if args.gpus is not None else tuple(range(nvml_gpu_count() or 0)))
    except RuntimeError as err:
        print(f"notebookos agent: {err}", file=sys.stderr)
        return EXIT_REFUSED
    temporary = args.state_dir is None
    args.state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="notebookos-agent-"))
    args.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(args.state_dir, 0o700)
    try:
        return _serve(args, token, runtime, temporary)
    finally:
        if temporary:
            shutil.rmtree(args.state_dir, ignore_errors=True)


def _serve(args: argparse.Namespace, token: JoinToken, runtime: ReplicaRuntime, temporary: bool) -> int:
    """Serve until stopped. With a state folder the replicas outlive the agent, for the next agent on that folder
    to adopt (an upgrade); in a temporary one, which no later agent finds, they stop with it."""
    try:
        verify, tls = _tls(args, token)
    except TLSError as err:
        print(f"notebookos agent: {err}", file=sys.stderr)
        return EXIT_REFUSED
    agent = Agent(args, token.secret, runtime, verify, tls)
    try:
        asyncio.run(agent.serve())
    except JoinRefused as err:
        print(f"notebookos agent: {err}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as err:
        print(f"notebookos agent: cannot serve on {args.address}: {err.strerror or err}", file=sys.stderr)
        return 1
    finally:
        if temporary:
            agent.host.stop_all()
    return 0
