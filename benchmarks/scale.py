"""Scale: the cluster service and its scheduling core with 200 hosts and 2,000 kernels, driven through its HTTP API.

The target (issue 12, item 3): placement and execution-request latency p99 <= 20 ms at 100 requests/s, with 2,000
kernels on 200 hosts. One run measures, in order:

(a) **registration**: 200 agents join (``POST /agents`` with the join token), ``--join-concurrency`` at a time as
    after a service restart; the wall time for all of them and each join's latency. From its join on, each agent
    heartbeats with a report of every replica it runs (``POST /agents/NAME/heartbeat``), as
    ``notebookos agent`` does, for the rest of the run, as often as the service's answers say (every second up to
    50 agents; at 200, every 4 s: 50 heartbeats/s of background load), also timed.
(b) **placement**: 2,000 ``POST /kernels`` (what the provisioner sends before it starts a kernel front; 1 GPU per
    cell), open loop at 100/s: each request goes out at its scheduled time whatever the earlier ones are doing, and
    its latency runs from that time, so queueing in the service (or a late send) shows instead of being hidden
    (no coordinated omission). Each answer must place 3 replicas on 3 distinct hosts; the service meanwhile asks
    each chosen agent to start its replica, 3 agent calls per kernel (the ports come from the range each agent lent
    the service when it joined, as ``notebookos agent`` lends it).
(c) **execution requests**: with every kernel placed, ``POST /kernels/ID/executions`` (what a kernel front asks
    before a cell runs: an executor and GPUs on one of its replicas' hosts), open loop at 100/s over the kernels in
    turn; each granted cell holds its GPU for ``--cell-s`` and is then given back (``.../executions/release``, timed
    too, from when it was due). p50/p99/max of each, against the target.

Then the service's CPU (seconds, and % of one core per phase) and RSS at the end, and the same for the load
generator and for the synthetic agents' process.

What is real: the cluster service process (``python -m notebookos.gpu_broker.cluster.service --hosts 0
--join-token-file F``, as ``notebookos cluster`` serves agents, listening on 127.0.0.1), with its request checking,
scheduling core, SQLite state, event log and scheduler tick; and every request, real HTTP. What is synthetic: the
agents, since a real one per host would need 200 machines. They live in a process of their own (real agents run
on machines of their own: in the generator's loop, their answers waited behind its sending and its sends behind
them) and serve the agent API the service calls (``RemoteHost``: ``POST /replicas``,
``DELETE /kernels/ID``, kill) on one HTTP server at 127.0.0.1, each agent under a path of its own, and answer as
``notebookos agent`` does, except that they start no replica process: a started replica is only reported (alive at
once, ready from the agent's next heartbeat, no pid), and the ports the service chose are never bound. No traffic
leaves 127.0.0.1.

The load generator is this process: one asyncio loop and one tornado ``AsyncHTTPClient``, the client that
``ClusterClient`` (kernel fronts, provisioners) uses, with a connection per request as fronts and agents make. It
and the agents' process share this machine's cores with the service, so their CPU is reported beside the
service's.

Writes benchmarks/results/scale.json (the summary), scale.raw.json (every sample; not kept in git) and scale.png
(latency over time at the offered load, and CDFs). Exits 1 when a target is missed.

    .venv/bin/python benchmarks/scale.py [--hosts 200] [--kernels 2000] [--rate 100] [--executions 3000]
                                         [--cell-s 1] [--gpus-per-host 8] [--quick] [--out DIR] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing
import secrets
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from multiprocessing.connection import Connection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import tornado.httpserver
import tornado.netutil
import tornado.web
import zmq
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from cell_latency import progress_bar, run_in_workdir
from latency_report import Target, load_snapshot, machine_context, print_tables, stats_table, summarize, targets_table
from latency_report import write_results

from notebookos.gpu_broker.cluster.agent.remote import HEARTBEAT_S, config_json
from notebookos.gpu_broker.cluster.host_agent import JOURNAL_FILE, public_connection
from notebookos.gpu_broker.cluster.join_token import read_token
from notebookos.gpu_broker.cluster.json_api import JsonHandler
from notebookos.gpu_broker.cluster.launcher import start_cluster, stop_cluster
from notebookos.kernels.replica_config import ReplicaConfig

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "scale"
P99_LIMIT_MS = 20.0  # the target, for placement and for execution requests, at 100 requests/s
ADDRESS = "127.0.0.1"  # the service, the agents' API and every agent's advertised address
FIRST_PORT, LAST_PORT = 20_000, 32_767  # the range each synthetic agent lends the service (never bound)
REQUEST_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10.0
NO_ANSWER = 599  # tornado's status for a request that got no answer
CELL_GPUS = 1
ERRORS_KEPT = 5  # distinct error texts kept per phase in the summary
SETTLE_POLL_S = 2.0  # between looks at the kernels the service lists, once (b) has sent every request
QUICK = {"hosts": 10, "kernels": 50, "executions": 100}


class Failure(RuntimeError):
    """The service failed under the benchmark (it did not start, an agent could not join): reported, exit 1."""


# ------------------------------------------------------------------------------------------------ samples


@dataclass
class Sample:
    """One timed request. ``at``: when it was due, seconds from the phase's start; ``lag_s``: how late this process
    sent it; ``latency_s``: from when it was due to its answer (so a late send counts against the service, never
    for it); ``error``: why the answer was not the one expected (None: it was)."""

    at: float
    lag_s: float
    latency_s: float
    status: int
    error: str | None = None

    def raw(self) -> list[Any]:
        return [round(self.at, 6), round(self.lag_s, 6), round(self.latency_s, 6), self.status, self.error]


def phase_summary(samples: Sequence[Sample], rate: float | None) -> dict[str, Any]:
    """Latency of the requests that succeeded (ms), how many failed and why, and whether the generator kept up."""
    ok = [s.latency_s for s in samples if s.error is None]
    errors = [s.error for s in samples if s.error is not None]
    summary: dict[str, Any] = {
        "requests": len(samples),
        "failed": len(errors),
        "errors": sorted(set(errors))[:ERRORS_KEPT],
        "latency_ms": summarize(ok),
        "send_lag_ms_max": round(max((s.lag_s for s in samples), default=0.0) * 1000, 3),
    }
    if rate is not None and samples:
        span = max(s.at + s.latency_s for s in samples) - min(s.at for s in samples)
        summary["offered_per_s"] = rate
        summary["achieved_per_s"] = round(len(samples) / span, 2) if span > 0 else None
    return summary


# ------------------------------------------------------------------------------------------------ HTTP


class Api:
    """The cluster service's API as its clients call it: tornado's AsyncHTTPClient (as ``ClusterClient``), JSON
    bodies, ``Authorization: token ...``. One client instance for the whole run, with no cap on requests in flight:
    its default of 10 would queue requests here, which an open loop must not do."""

    def __init__(self, url: str, token: str, join_token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.join_token = join_token
        self.client = AsyncHTTPClient(force_instance=True, max_clients=100_000)

    async def call(self, method: str, path: str, body: dict | None = None, agent: bool = False) -> tuple[int, Any]:
        """(status, JSON answer or None); status NO_ANSWER when the service did not answer."""
        data = None if method in ("GET", "DELETE") else json.dumps(body or {})
        headers = {"Authorization": f"token {self.join_token if agent else self.token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"  # as ClusterClient and the agent's requests send it
        request = HTTPRequest(
            self.url + path,
            method=method,
            headers=headers,
            body=data,
            request_timeout=REQUEST_TIMEOUT_S,
            connect_timeout=CONNECT_TIMEOUT_S,
        )
        try:
            response = await self.client.fetch(request, raise_error=False)
        except (HTTPClientError, OSError):  # a time-out or a broken connection: no answer
            return NO_ANSWER, None
        if response.code == NO_ANSWER:
            return NO_ANSWER, None
        try:
            return response.code, json.loads(response.body) if response.body else None
        except ValueError:
            return response.code, None

    def close(self) -> None:
        self.client.close()


def _error_text(status: int, answer: Any) -> str:
    if status == NO_ANSWER:
        return "no answer"
    detail = answer.get("error") if isinstance(answer, dict) else None
    return f"{status}: {detail}" if detail else str(status)


# ------------------------------------------------------------------------------------------ synthetic agents


@dataclass
class SyntheticAgent:
    """One host's agent, answering the service as ``notebookos agent`` does (agent/handlers.py over a HostAgent),
    without starting processes: what it would start, it only reports."""

    name: str
    gpus: int
    state_dir: Path  # where a real agent's --state-dir would be; nothing is written there
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    replicas: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)

    def start_replica(self, config: ReplicaConfig, connection: dict) -> dict[str, Any]:
        """``HostAgent.start_replica``'s answer: the configuration with this agent's own folder, journal, object
        store and working directory, the connection with its address; alive, not yet ready, no process."""
        workdir = self.state_dir / "replicas" / config.kernel_id / f"replica-{config.replica}"
        config = dataclasses.replace(
            config,
            host=self.name,
            journal_path=str(workdir / JOURNAL_FILE),
            store=config.store or (self.state_dir / "objects" / config.kernel_id).as_uri(),
            cwd=str(workdir),
            owns_store=not config.store,
        )
        report = {
            "kernel_id": config.kernel_id,
            "replica": config.replica,
            "pid": None,
            "alive": True,
            "ready": False,
            "exit_code": None,
            "exit_reason": None,
            "restarts": 0,
            "connection": public_connection({**connection, "ip": ADDRESS, "curve_publickey": _public_key()}),
        }
        self.replicas[(config.kernel_id, config.replica)] = report
        return {**report, "config": config_json(config)}

    def stop_kernel(self, kernel_id: str) -> None:
        for key in [k for k in self.replicas if k[0] == kernel_id]:
            del self.replicas[key]

    def kill_replica(self, kernel_id: str, replica: int) -> dict[str, Any]:
        report = self.replicas[(kernel_id, replica)]
        report.update(alive=False, ready=False, exit_code=-9, exit_reason="killed by signal 9 (SIGKILL)")
        return report

    def heartbeat_report(self) -> list[dict[str, Any]]:
        """Every replica, as a heartbeat carries them; a replica counts as caught up once it has been reported."""
        reports = [dict(r) for r in self.replicas.values()]
        for report in self.replicas.values():
            if report["alive"]:
                report["ready"] = True
        return reports


def _public_key() -> str:
    """The public half of the CurveZMQ key pair an agent makes for each replica it starts (and pays for)."""
    return zmq.curve_keypair()[0].decode()


@dataclass
class Fleet:
    """Every synthetic agent, and the one HTTP server their APIs share (agent NAME at ``/NAME/...``)."""

    agents: dict[str, SyntheticAgent]
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("start", "stop", "kill"), 0))
    url: str = ""
    server: tornado.httpserver.HTTPServer | None = None

    @classmethod
    def make(cls, count: int, gpus: int, workdir: Path) -> Fleet:
        width = len(str(count))
        names = [f"agent-{i:0{width}d}" for i in range(1, count + 1)]
        return cls({name: SyntheticAgent(name, gpus, workdir / "agents" / name) for name in names})

    def serve(self) -> None:
        app = tornado.web.Application(
            [
                (r"/([^/]+)/replicas", FleetReplicasHandler, {"fleet": self}),
                (r"/([^/]+)/replicas/([^/]+)/(\d+)/kill", FleetKillHandler, {"fleet": self}),
                (r"/([^/]+)/kernels/([^/]+)", FleetKernelHandler, {"fleet": self}),
            ],
            log_function=lambda _handler: None,  # 200 agents' calls would drown the console
        )
        sockets = tornado.netutil.bind_sockets(0, ADDRESS)
        self.server = tornado.httpserver.HTTPServer(app)
        self.server.add_sockets(sockets)
        self.url = f"http://{ADDRESS}:{sockets[0].getsockname()[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


class FleetHandler(JsonHandler):
    """The agent API's authentication (the token the agent joined with) and JSON, for the agent the path names."""

    agent: SyntheticAgent

    def initialize(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def prepare(self) -> None:
        agent = self.fleet.agents.get(self.path_args[0])
        if agent is None:
            raise tornado.web.HTTPError(404, reason=f"no agent {self.path_args[0]}")
        if not self.presents(agent.token):
            raise tornado.web.HTTPError(401, reason="missing or wrong agent token")
        self.agent = agent


class FleetReplicasHandler(FleetHandler):
    def get(self, _name: str) -> None:
        self.finish({"replicas": list(self.agent.replicas.values())})

    def post(self, _name: str) -> None:
        body = self.body()
        try:
            config = ReplicaConfig.from_json(body.get("config"))
        except (TypeError, ValueError, KeyError) as err:
            raise tornado.web.HTTPError(400, reason=f"config is not a replica configuration: {err}") from None
        if not isinstance(body.get("connection"), dict):
            raise tornado.web.HTTPError(400, reason="connection must be a JSON object (the replica's channels)")
        self.fleet.calls["start"] += 1
        self.finish(self.agent.start_replica(config, body["connection"]))


class FleetKillHandler(FleetHandler):
    def post(self, _name: str, kernel_id: str, replica: str) -> None:
        if (kernel_id, int(replica)) not in self.agent.replicas:
            raise tornado.web.HTTPError(404, reason=f"no replica {kernel_id}/{replica} on this host")
        self.fleet.calls["kill"] += 1
        self.finish(self.agent.kill_replica(kernel_id, int(replica)))


class FleetKernelHandler(FleetHandler):
    def delete(self, _name: str, kernel_id: str) -> None:
        self.fleet.calls["stop"] += 1
        self.agent.stop_kernel(kernel_id)
        self.set_status(204)
        self.finish()


# ------------------------------------------------------------------------------------------------ the load


async def open_loop(
    count: int, rate: float, send: Callable[[int], Awaitable[tuple[int, str | None]]], done: Callable[[], None]
) -> list[Sample]:
    """Send request ``i`` at ``i / rate`` seconds, whether or not the earlier ones have been answered, and time each
    from when it was due. ``send`` returns the status and an error text (None when the answer is as expected)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    samples: list[Sample] = []

    async def one(index: int, due: float) -> None:
        lag = loop.time() - due
        status, error = await send(index)
        samples.append(Sample(due - start, lag, loop.time() - due, status, error))
        done()

    tasks = []
    for index in range(count):
        due = start + index / rate
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        tasks.append(asyncio.ensure_future(one(index, due)))
    await asyncio.gather(*tasks)
    samples.sort(key=lambda s: s.at)
    return samples


@dataclass
class Heartbeats:
    """Every agent's heartbeat loop, as ``Agent._heartbeats``: post the report, stop what the answer lists, join
    again on 404, wait as long as the answer says. The loops start spread over one second; past 50 agents the
    service paces them to 50 heartbeats/s in all (at 200 agents, each every 4 s)."""

    api: Api
    fleet: Fleet
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # (sent, latency s, status)
    tasks: list[asyncio.Future] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self, agent: SyntheticAgent, offset_s: float) -> None:
        self.tasks.append(asyncio.ensure_future(self._loop(agent, offset_s)))

    async def _loop(self, agent: SyntheticAgent, offset_s: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(offset_s)
        while not self.stopping.is_set():
            sent = loop.time()
            status, answer = await self.api.call(
                "POST", f"/agents/{agent.name}/heartbeat", {"replicas": agent.heartbeat_report()}, agent=True
            )
            self.samples.append((sent, loop.time() - sent, status))
            wait = HEARTBEAT_S
            if status == 200 and isinstance(answer, dict):
                for kernel_id, replica in answer.get("stop", []):
                    agent.replicas.pop((kernel_id, int(replica)), None)
                wait = answer.get("next_s", HEARTBEAT_S)  # the pace the service sets, as the agent follows it
            elif status == 404:
                await join(self.api, self.fleet, agent)
            try:
                await asyncio.wait_for(self.stopping.wait(), wait)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        """Let each loop finish its heartbeat in flight (a cancelled request leaves its connection to be reset,
        which asyncio reports on the console), then end."""
        self.stopping.set()
        if not self.tasks:
            return
        _, late = await asyncio.wait(self.tasks, timeout=HEARTBEAT_S + REQUEST_TIMEOUT_S)
        for task in late:
            task.cancel()


async def join(api: Api, fleet: Fleet, agent: SyntheticAgent) -> tuple[int, str | None]:
    """``POST /agents``: the join ``notebookos agent`` sends, with the replicas it already runs."""
    status, answer = await api.call(
        "POST",
        "/agents",
        {
            "name": agent.name,
            "address": ADDRESS,
            "gpus": agent.gpus,
            "url": f"{fleet.url}/{agent.name}",
            "token": agent.token,
            "replicas": agent.heartbeat_report(),
            "cert_pem": None,
            "ports": {"first": FIRST_PORT, "last": LAST_PORT},
        },
        agent=True,
    )
    return status, None if status == 201 else _error_text(status, answer)


async def register(api: Api, fleet: Fleet, heartbeats: Heartbeats, concurrency: int) -> tuple[list[Sample], float]:
    """(a): every agent joins, ``concurrency`` at a time; each starts heartbeating once joined. Returns the joins
    and the wall time until the last was answered."""
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(concurrency)
    start = loop.time()
    samples: list[Sample] = []

    async def one(agent: SyntheticAgent) -> None:
        async with slots:
            sent = loop.time()
            status, error = await join(api, fleet, agent)
            samples.append(Sample(sent - start, 0.0, loop.time() - sent, status, error))
        if error is None:
            heartbeats.start(agent, offset_s=(loop.time() - start) % HEARTBEAT_S)

    await asyncio.gather(*(one(agent) for agent in fleet.agents.values()))
    wall = loop.time() - start
    failed = [s.error for s in samples if s.error]
    if failed:
        raise Failure(f"{len(failed)} of {len(samples)} agents could not join, e.g. {failed[0]}")
    return sorted(samples, key=lambda s: s.at), wall


@dataclass(frozen=True)
class FleetSpec:
    """What the agents' process needs: the service's address and tokens, and the fleet's size."""

    url: str
    token: str
    join_token: str
    hosts: int
    gpus_per_host: int
    join_concurrency: int
    workdir: Path


def fleet_main(spec: FleetSpec, conn: Connection) -> None:
    """The agents' process: serve the agent API, join (a) when told ``"join"``, heartbeat until told ``"stop"``
    (then send the heartbeats and the calls served), and serve until told ``"exit"``: the service's shutdown still
    calls agents."""

    async def run() -> None:
        api = Api(spec.url, spec.token, spec.join_token)
        fleet = Fleet.make(spec.hosts, spec.gpus_per_host, spec.workdir)
        fleet.serve()
        heartbeats = Heartbeats(api, fleet)
        try:
            conn.send(("serving",))
            if not await _told(conn, "join"):
                return
            try:
                conn.send(("registered", *await register(api, fleet, heartbeats, spec.join_concurrency)))
            except Failure as err:
                conn.send(("failed", str(err)))
            if not await _told(conn, "stop"):
                return
            await heartbeats.stop()
            conn.send(("stopped", heartbeats.samples, dict(fleet.calls)))
            await _told(conn, "exit")
        finally:
            await heartbeats.stop()
            fleet.stop()
            api.close()

    asyncio.run(run())


async def _told(conn: Connection, expected: str) -> bool:
    """Whether this process was told ``expected``; False when told ``"exit"`` instead (the run ended early)."""
    said = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    if said not in (expected, "exit"):
        raise ValueError(f"the agents' process was told {said!r}, not {expected!r}")
    return said == expected


class FleetProcess:
    """The synthetic agents' process, driven from this one through a pipe (:func:`fleet_main`)."""

    def __init__(self, spec: FleetSpec) -> None:
        context = multiprocessing.get_context("spawn")  # not fork: this process runs threads and an event loop
        self.conn, child = context.Pipe()
        self.process = context.Process(target=fleet_main, args=(spec, child), name="scale-agents", daemon=True)
        self.process.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    async def _receive(self) -> tuple:
        message = await asyncio.get_running_loop().run_in_executor(None, self.conn.recv)
        if message[0] == "failed":
            raise Failure(message[1])
        return message

    async def serving(self) -> None:
        """Once the agents' process has started and serves the agent API."""
        await self._receive()

    async def register(self) -> tuple[list[Sample], float]:
        """(a): the agents join; their joins and the wall time, once every one has joined (and heartbeats)."""
        self.conn.send("join")
        _, joins, wall = await self._receive()
        return joins, wall

    async def stop_heartbeats(self) -> tuple[list[tuple[float, float, int]], dict[str, int]]:
        """The heartbeats sent and the agent calls served; the agents still answer calls."""
        self.conn.send("stop")
        _, samples, calls = await self._receive()
        return samples, calls

    def exit(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send("exit")
            except OSError:  # it has gone already
                pass
            self.process.join(timeout=REQUEST_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
        self.conn.close()


def kernel_ids(count: int) -> list[str]:
    width = len(str(count))
    return [f"scale-{i:0{width}d}" for i in range(1, count + 1)]


async def place(api: Api, kernels: list[str], rate: float, progress: Progress) -> list[Sample]:
    """(b): one ``POST /kernels`` per kernel, open loop at ``rate``; the answer must name 3 distinct hosts."""
    task = progress.add_task(f"(b) kernels placed at {rate:g}/s", total=len(kernels))

    async def create(index: int) -> tuple[int, str | None]:
        status, answer = await api.call(
            "POST",
            "/kernels",
            {
                "kernel_id": kernels[index],
                "key": secrets.token_hex(16),
                "signature_scheme": "hmac-sha256",
                "cwd": None,
                "gpus": CELL_GPUS,
                "owner": "scale",
                "notebook": f"{kernels[index]}.ipynb",
            },
        )
        if status != 201:
            return status, _error_text(status, answer)
        hosts = {r["host"] for r in answer.get("replicas", [])}
        return status, None if len(hosts) == 3 else f"replicas on {len(hosts)} distinct host(s), not 3"

    return await open_loop(len(kernels), rate, create, lambda: progress.advance(task))


async def settle(api: Api, kernels: list[str], progress: Progress) -> list[str]:
    """Wait until the service has worked through every placement it accepted, so that (c) starts on a quiet
    service: a request this process gave up on may still be in the service's queue. Returns the kernels the service
    lists, the ones (c) asks for GPUs."""
    task = progress.add_task("(b) service done placing", total=len(kernels))
    listed: list[str] | None = None
    while True:
        status, described = await api.call("GET", "/cluster")
        now = sorted(k["id"] for k in described.get("kernels", [])) if status == 200 and described else []
        progress.update(task, completed=len(now))
        if len(now) == len(kernels) or now == listed:
            if not now:
                raise Failure("the service placed none of the kernels; its log says why")
            return now
        listed = now
        await asyncio.sleep(SETTLE_POLL_S)


@dataclass
class Cells:
    """(c): execution requests at ``rate`` over the kernels in turn; each granted cell is released ``cell_s``
    after its grant. A kernel is asked again only once its previous cell is released (a front runs one cell at a
    time), so requests go to idle kernels, in the order they became idle."""

    api: Api
    kernels: list[str]
    cell_s: float
    idle: deque[str] = field(default_factory=deque)
    releases: list[Sample] = field(default_factory=list)
    pending: list[asyncio.Future] = field(default_factory=list)
    queued: int = 0
    start: float = 0.0

    async def run(self, count: int, rate: float, progress: Progress) -> list[Sample]:
        self.idle.extend(self.kernels)
        self.start = asyncio.get_running_loop().time()
        task = progress.add_task(f"(c) execution requests at {rate:g}/s", total=count)
        samples = await open_loop(count, rate, self._request, lambda: progress.advance(task))
        await asyncio.gather(*self.pending)
        self.releases.sort(key=lambda s: s.at)
        return samples

    async def _request(self, _index: int) -> tuple[int, str | None]:
        if not self.idle:
            return 0, "no idle kernel to ask for (raise --kernels or lower --cell-s)"
        kernel_id = self.idle.popleft()
        status, answer = await self.api.call("POST", f"/kernels/{kernel_id}/executions", {"gpus": CELL_GPUS})
        if status == 202:  # queued: a front waits for the grant, then runs the cell
            self.queued += 1
            status, answer = await self.api.call("POST", f"/kernels/{kernel_id}/executions/wait")
        if status not in (200, 202) or not (isinstance(answer, dict) and answer.get("granted")):
            self.idle.append(kernel_id)
            return status, _error_text(status, answer)
        self.pending.append(asyncio.ensure_future(self._release(kernel_id)))
        return status, None

    async def _release(self, kernel_id: str) -> None:
        """Give the cell's GPU back when it is due, timed from then, with bind and release times as a front sends."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self.cell_s
        await asyncio.sleep(self.cell_s)
        lag = loop.time() - due
        status, answer = await self.api.call(
            "POST", f"/kernels/{kernel_id}/executions/release", {"bind_s": 0.001, "release_s": 0.001}
        )
        error = None if status == 200 else _error_text(status, answer)
        self.releases.append(Sample(due - self.start, lag, loop.time() - due, status, error))
        self.idle.append(kernel_id)


# ------------------------------------------------------------------------------------------------ CPU and memory


@dataclass(frozen=True)
class Reading:
    """CPU seconds (user + system) of the service, of this process and of the agents' process, at one moment."""

    wall: float
    service_cpu_s: float
    generator_cpu_s: float
    agents_cpu_s: float


class Meter:
    def __init__(self, service_pid: int, agents_pid: int) -> None:
        self.service = psutil.Process(service_pid)
        self.me = psutil.Process()
        self.agents = psutil.Process(agents_pid)

    def read(self) -> Reading:
        service, me, agents = self.service.cpu_times(), self.me.cpu_times(), self.agents.cpu_times()
        return Reading(
            time.monotonic(), service.user + service.system, me.user + me.system, agents.user + agents.system
        )

    def memory_mib(self) -> dict[str, float]:
        return {
            "service_rss_mib": round(self.service.memory_info().rss / 2**20, 1),
            "generator_rss_mib": round(self.me.memory_info().rss / 2**20, 1),
            "agents_rss_mib": round(self.agents.memory_info().rss / 2**20, 1),
            "service_threads": self.service.num_threads(),
        }


def cpu_between(before: Reading, after: Reading) -> dict[str, float]:
    """CPU seconds of each process over a phase, and as % of one core over its wall time."""
    wall = after.wall - before.wall
    service = after.service_cpu_s - before.service_cpu_s
    generator = after.generator_cpu_s - before.generator_cpu_s
    agents = after.agents_cpu_s - before.agents_cpu_s
    return {
        "wall_s": round(wall, 3),
        "service_cpu_s": round(service, 3),
        "service_cpu_pct": round(100 * service / wall, 1) if wall else 0.0,
        "generator_cpu_s": round(generator, 3),
        "generator_cpu_pct": round(100 * generator / wall, 1) if wall else 0.0,
        "agents_cpu_s": round(agents, 3),
        "agents_cpu_pct": round(100 * agents / wall, 1) if wall else 0.0,
    }


# ------------------------------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class Settings:
    hosts: int = 200
    kernels: int = 2000
    rate: float = 100.0
    placement_rate: float | None = None  # (b)'s offered rate when not ``rate``
    executions: int = 3000
    cell_s: float = 1.0
    gpus_per_host: int = 8
    join_concurrency: int = 20

    @property
    def place_rate(self) -> float:
        return self.rate if self.placement_rate is None else self.placement_rate

    def problem(self) -> str | None:
        """Why these settings cannot run (None: they can)."""
        if self.hosts < 3:
            return "--hosts must be at least 3: a kernel's 3 replicas go to 3 distinct hosts"
        if self.kernels < 1 or self.executions < 1 or self.rate <= 0 or self.place_rate <= 0 or self.cell_s < 0:
            return "--kernels, --executions and the rates must be positive, --cell-s 0 or more"
        if self.cell_s * self.rate > self.kernels / 2:
            return (
                f"--cell-s {self.cell_s:g} at --rate {self.rate:g} keeps {self.cell_s * self.rate:.0f} cells running "
                f"at once; give at least twice as many --kernels, or a shorter --cell-s"
            )
        if self.gpus_per_host < 1:
            return "--gpus-per-host must be at least 1"
        return None


async def drive(
    settings: Settings, console: Console, workdir: Path, service_pid: int, discovery: Path, fleet: FleetProcess
) -> dict:
    """(a), (b) and (c) against the running service; the raw samples and the CPU readings."""
    info = json.loads(discovery.read_text())
    api = Api(info["url"], info["token"], read_token(workdir / "join-token").secret)
    meter = Meter(service_pid, fleet.pid)
    kernels = kernel_ids(settings.kernels)
    await fleet.serving()
    readings = {"start": meter.read()}
    try:
        with progress_bar(console) as progress:
            task = progress.add_task("(a) agents join", total=settings.hosts)
            joins, join_wall = await fleet.register()
            progress.update(task, completed=settings.hosts)
            readings["registered"] = meter.read()
            placements = await place(api, kernels, settings.place_rate, progress)
            kernels = await settle(api, kernels, progress)
            readings["placed"] = meter.read()
            cells = Cells(api, kernels, settings.cell_s)
            executions = await cells.run(settings.executions, settings.rate, progress)
            readings["executed"] = meter.read()
        memory = meter.memory_mib()
        status, described = await api.call("GET", "/cluster")
    finally:
        api.close()
    heartbeats, calls = await fleet.stop_heartbeats()
    listed = described if status == 200 and isinstance(described, dict) else {}
    return {
        "joins": joins,
        "join_wall_s": join_wall,
        "placements": placements,
        "executions": executions,
        "releases": cells.releases,
        "queued": cells.queued,
        "heartbeats": heartbeats,
        "readings": readings,
        "memory": memory,
        "agent_calls": calls,
        "listed": {"hosts": len(listed.get("hosts", [])), "kernels": len(listed.get("kernels", []))},
    }


def measure(settings: Settings, console: Console, workdir: Path) -> dict[str, Any]:
    """Start the service, drive it, stop it (its shutdown still calls the agents, so they serve until it exits)."""
    state = workdir / "service"
    state.mkdir(parents=True)
    options = ("--listen", f"{ADDRESS}:0", "--join-token-file", str(workdir / "join-token"))
    try:
        proc, discovery = start_cluster(state, 0, extra_args=options, log_path=workdir / "service.log")
    except RuntimeError as err:
        raise Failure(str(err)) from None

    info = json.loads(discovery.read_text())
    join_token = read_token(workdir / "join-token").secret
    fleet = FleetProcess(
        FleetSpec(
            info["url"],
            info["token"],
            join_token,
            settings.hosts,
            settings.gpus_per_host,
            settings.join_concurrency,
            workdir,
        )
    )

    async def run() -> dict[str, Any]:
        raw: dict[str, Any] = {}
        try:
            raw = await drive(settings, console, workdir, proc.pid, discovery, fleet)
        finally:
            started = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, stop_cluster, proc)
            raw["shutdown_s"] = time.monotonic() - started
            fleet.exit()
        return raw

    return asyncio.run(run())


# ------------------------------------------------------------------------------------------------ analysis


def analyse(raw: dict[str, Any], settings: Settings) -> dict[str, Any]:
    readings = raw["readings"]
    placement = phase_summary(raw["placements"], settings.place_rate)
    execution = phase_summary(raw["executions"], settings.rate)
    release = phase_summary(raw["releases"], None)
    joins = phase_summary(raw["joins"], None)
    beats = [
        Sample(0.0, 0.0, latency, status, None if status == 200 else str(status))
        for _, latency, status in raw["heartbeats"]
    ]
    targets = [
        Target(
            f"placement p99 at {settings.place_rate:g}/s (ms)",
            P99_LIMIT_MS,
            placement["latency_ms"].get("p99", 1e9),
            "ms",
        ),
        Target(
            f"execution request p99 at {settings.rate:g}/s (ms)",
            P99_LIMIT_MS,
            execution["latency_ms"].get("p99", 1e9),
            "ms",
        ),
        Target(
            "failed requests (placement, execution, release)",
            0,
            placement["failed"] + execution["failed"] + release["failed"],
            "count",
        ),
    ]
    return {
        "registration": {"agents": settings.hosts, "wall_s": round(raw["join_wall_s"], 3), **joins},
        "placement": placement,
        "execution": {**execution, "queued": raw["queued"]},
        "release": release,
        "heartbeats": phase_summary(beats, None),
        "agent_calls": raw["agent_calls"],
        "listed_by_service": raw["listed"],
        "cpu": {
            "registration": cpu_between(readings["start"], readings["registered"]),
            "placement": cpu_between(readings["registered"], readings["placed"]),
            "execution": cpu_between(readings["placed"], readings["executed"]),
        },
        "service": {
            "cpu_s_total": round(readings["executed"].service_cpu_s, 3),
            "rss_mib": raw["memory"]["service_rss_mib"],
            "threads": raw["memory"]["service_threads"],
            "shutdown_s": round(raw["shutdown_s"], 2),
        },
        "generator": {
            "cpu_s_total": round(readings["executed"].generator_cpu_s, 3),
            "rss_mib": raw["memory"]["generator_rss_mib"],
        },
        "agents_process": {
            "cpu_s_total": round(readings["executed"].agents_cpu_s, 3),
            "rss_mib": raw["memory"]["agents_rss_mib"],
        },
        "targets": {t.name: t.as_dict() for t in targets},
        "settings": dataclasses.asdict(settings),
        "counting": {
            "latency": "open loop: from when a request was due to its answer, ms; failed requests are counted apart",
            "cpu": "user + system seconds of the process (psutil) over the phase; % of one core over its wall time",
            "rss": "the service's, this process's and the agents' process's resident set at the end of (c)",
            "agents": "synthetic, in a process of their own: the agent API answered as notebookos agent does, no "
            "replica process started, ports never bound; heartbeats at the pace the service sets, with every "
            "replica's report",
        },
        "_targets": targets,
    }


def raw_json(raw: dict[str, Any]) -> dict[str, Any]:
    """Every sample, as ``[due s, send lag s, latency s, status, error]`` lists (heartbeats: sent, latency, status)."""
    return {
        "columns": ["due_s", "send_lag_s", "latency_s", "status", "error"],
        **{key: [s.raw() for s in raw[key]] for key in ("joins", "placements", "executions", "releases")},
        "heartbeats": [[round(t, 6), round(latency, 6), status] for t, latency, status in raw["heartbeats"]],
    }


# ------------------------------------------------------------------------------------------------ report


def cpu_table(results: dict[str, Any]) -> Table:
    table = Table(title="CPU by phase (% of one core; the machine has 2)", title_justify="left")
    for column in ("phase", "wall s", "service s", "service %", "generator s", "generator %", "agents s", "agents %"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for phase, c in results["cpu"].items():
        table.add_row(
            phase,
            f"{c['wall_s']:.1f}",
            f"{c['service_cpu_s']:.2f}",
            f"{c['service_cpu_pct']:.0f}",
            f"{c['generator_cpu_s']:.2f}",
            f"{c['generator_cpu_pct']:.0f}",
            f"{c['agents_cpu_s']:.2f}",
            f"{c['agents_cpu_pct']:.0f}",
        )
    return table


def plot(path: Path, raw: dict[str, Any], settings: Settings) -> None:
    """Latency over time at the offered load for (b) and (c), and the CDFs of every kind of request."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    kinds = (
        ("placements", "placement (POST /kernels)", "tab:blue"),
        ("executions", "execution request", "tab:orange"),
        ("releases", "release", "tab:green"),
    )
    fig, (placed, executed, cdf) = plt.subplots(1, 3, figsize=(19, 5.2), constrained_layout=True)
    for ax, keys, title in (
        (placed, ("placements",), f"(b) {settings.kernels} kernels placed at {settings.place_rate:g}/s"),
        (executed, ("executions", "releases"), f"(c) execution requests at {settings.rate:g}/s"),
    ):
        for key, label, color in kinds:
            if key not in keys:
                continue
            ok = [s for s in raw[key] if s.error is None]
            ax.scatter([s.at for s in ok], [s.latency_s * 1000 for s in ok], s=3, color=color, label=label, alpha=0.6)
        ax.axhline(P99_LIMIT_MS, color="red", linestyle=":", linewidth=1, label=f"target p99 {P99_LIMIT_MS:g} ms")
        ax.set(yscale="log", xlabel="s since the phase started (when each request was due)", ylabel="latency, ms")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    for key, label, color in kinds:
        ms = np.sort([s.latency_s * 1000 for s in raw[key] if s.error is None])
        if ms.size:
            cdf.step(ms, np.arange(1, ms.size + 1) / ms.size, where="post", color=color, label=f"{label} (n={ms.size})")
    beats = np.sort([latency * 1000 for _, latency, status in raw["heartbeats"] if status == 200])
    if beats.size:
        cdf.step(
            beats,
            np.arange(1, beats.size + 1) / beats.size,
            where="post",
            color="grey",
            linestyle="--",
            label=f"agent heartbeat (n={beats.size})",
        )
    cdf.axvline(P99_LIMIT_MS, color="red", linestyle=":", linewidth=1)
    cdf.axhline(0.99, color="grey", linestyle=":", linewidth=1)
    cdf.set(xscale="log", xlabel="latency, ms (log scale)", ylabel="fraction of requests", ylim=(0, 1.01))
    cdf.set_title("CDFs")
    cdf.grid(True, which="both", alpha=0.3)
    cdf.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        f"Cluster service at scale: {settings.hosts} synthetic agents, {settings.kernels} kernels, open loop at "
        f"{settings.rate:g} requests/s (loopback)"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: dict[str, Any], raw: dict[str, Any], settings: Settings, console: Console, out: Path) -> None:
    targets: list[Target] = results.pop("_targets")
    rows = {
        f"(a) agent join ({results['registration']['agents']}, {settings.join_concurrency} at a time)": results[
            "registration"
        ]["latency_ms"],
        f"(b) placement, POST /kernels at {settings.place_rate:g}/s": results["placement"]["latency_ms"],
        f"(c) execution request at {settings.rate:g}/s": results["execution"]["latency_ms"],
        "(c) release": results["release"]["latency_ms"],
        "agent heartbeats (background)": results["heartbeats"]["latency_ms"],
    }
    print_tables(console, stats_table("Latency, ms", rows), cpu_table(results), targets_table(targets))
    service, generator, agents = results["service"], results["generator"], results["agents_process"]
    console.print(
        f"registration of {settings.hosts} agents: {results['registration']['wall_s']:.2f} s; "
        f"the service lists {results['listed_by_service']['hosts']} hosts and "
        f"{results['listed_by_service']['kernels']} kernels; agent calls {results['agent_calls']}",
        highlight=False,
    )
    console.print(
        f"service at the end: {service['rss_mib']:.0f} MiB RSS, {service['threads']} threads, "
        f"{service['cpu_s_total']:.1f} CPU s in all; generator {generator['rss_mib']:.0f} MiB RSS, "
        f"{generator['cpu_s_total']:.1f} CPU s; agents {agents['rss_mib']:.0f} MiB RSS, "
        f"{agents['cpu_s_total']:.1f} CPU s; "
        f"most a send was late: placement "
        f"{results['placement']['send_lag_ms_max']:.1f} ms, execution {results['execution']['send_lag_ms_max']:.1f} ms",
        highlight=False,
    )
    for phase in ("registration", "placement", "execution", "release", "heartbeats"):
        if results[phase]["failed"]:
            console.print(
                f"[red]{phase}: {results[phase]['failed']} failed, e.g. {results[phase]['errors']}[/red]",
                highlight=False,
            )
    path = write_results(out, NAME, results, raw_json(raw))
    plot(out / f"{NAME}.png", raw, settings)
    console.print(f"wrote {path} and {out / f'{NAME}.png'}", highlight=False)


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, argparse.Namespace]:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=defaults.hosts, help=f"synthetic agents ({defaults.hosts})")
    parser.add_argument("--kernels", type=int, default=defaults.kernels, help=f"kernels placed ({defaults.kernels})")
    parser.add_argument(
        "--rate", type=float, default=defaults.rate, help=f"offered requests/s, (b) and (c) ({defaults.rate:g})"
    )
    parser.add_argument(
        "--placement-rate", type=float, default=None, help="offered POST /kernels per second in (b) (default: --rate)"
    )
    parser.add_argument(
        "--executions", type=int, default=defaults.executions, help=f"execution requests ({defaults.executions})"
    )
    parser.add_argument(
        "--cell-s",
        type=float,
        default=None,
        help=f"how long a granted cell runs (default {defaults.cell_s:g} s, less where the kernels are too few to "
        "keep twice as many idle as running)",
    )
    parser.add_argument(
        "--gpus-per-host",
        type=int,
        default=defaults.gpus_per_host,
        help=f"each agent's GPUs ({defaults.gpus_per_host})",
    )
    parser.add_argument(
        "--join-concurrency",
        type=int,
        default=defaults.join_concurrency,
        help=f"agents joining at once ({defaults.join_concurrency})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: {QUICK['hosts']} hosts, {QUICK['kernels']} kernels, {QUICK['executions']} executions",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and PNG go")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (the service's log and state)")
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)}
    if args.quick:
        values.update(QUICK)
    if args.cell_s is None:  # a kernel runs one cell at a time: keep as many idle as running, and as many again
        values["cell_s"] = min(defaults.cell_s, values["kernels"] / (2 * args.rate)) if args.rate > 0 else 0.0
    settings = Settings(**values)
    problem = settings.problem()
    if problem:
        parser.error(problem)
    return settings, args


def main(argv: Sequence[str] | None = None) -> int:
    settings, args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 140)
    workdir = Path(tempfile.mkdtemp(prefix="notebookos-scale-"))
    started = time.perf_counter()

    def run() -> dict[str, Any]:
        console.print(
            f"{settings.hosts} synthetic agents of {settings.gpus_per_host} GPUs, {settings.kernels} kernels, "
            f"{settings.executions} execution requests, open loop at {settings.rate:g}/s",
            highlight=False,
        )
        load_start = load_snapshot()
        raw = measure(settings, console, workdir)
        results = analyse(raw, settings)
        results["machine"] = {**machine_context(), "load": {"start": load_start, "end": load_snapshot()}}
        results["wall_s"] = round(time.perf_counter() - started, 1)
        report(results, raw, settings, console, args.out)
        console.print(f"total {results['wall_s']} s", highlight=False)
        return results

    return run_in_workdir(run, console, workdir, args.keep, reported=(Failure,))


if __name__ == "__main__":
    sys.exit(main())
