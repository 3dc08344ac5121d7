"""The cluster's side of a ``notebookos agent``: a host whose replicas run on another machine.

:class:`RemoteHost` has the methods the cluster calls on any host (:class:`..host_agent.ReplicaHost`) and carries
each out as one authenticated HTTP call to the agent's API (:mod:`.handlers`), from the cluster's worker thread.
What the cluster reads about the replicas (alive, ready, pid, exit code) comes from the agent's heartbeats, so a
read never waits on the network; a host whose heartbeats stop is declared lost by the cluster.
"""

from __future__ import annotations

import dataclasses
import json
import time
import zlib
from dataclasses import dataclass
from typing import Any

import urllib3

from ....kernels.replica_config import ReplicaConfig
from ..host_agent import replica_ports
from ..ports import KernelPorts, PortPool, PortsTaken

CALL_TIMEOUT_S = 30.0  # stopping a kernel's replicas waits up to their stop grace
# A machine that is down does not refuse connections, it drops them: give up quickly, the cluster's thread waits.
CONNECT_TIMEOUT_S = 3.0
# Calls the agent answers from memory (ports). The connection to an agent is kept open, so a machine lost since the
# last call shows as an answer that never comes rather than as a connect time-out: this bounds that wait.
QUICK_CALL_TIMEOUT_S = 5.0
# A replica's start answers once its process, or its container, exists: well under a second for a process, a second
# or two for a container (its image is checked when the agent starts). The same bound, then, on a machine lost since
# the last call, whose answer never comes: the kernel is placed again without it. No longer than the default host
# time-out, so that a start on a machine cut off unnoticed fails before the machine is declared lost, as the ports
# call that came first used to.
START_CALL_TIMEOUT_S = QUICK_CALL_TIMEOUT_S
# An agent heartbeats every second while the cluster is small. Past MAX_HEARTBEATS_PER_S agents, the service tells
# each (in its answer) to heartbeat less often, so that heartbeats never take more of it than that many a second, as
# Nomad paces its clients: at 200 agents, every 4 s. Everything that waits on heartbeats counts in periods.
HEARTBEAT_S = 1.0
MAX_HEARTBEATS_PER_S = 50.0
RECENT_PERIODS = 2.5  # an agent not heard from for this many periods is silent: nothing new is placed there


def heartbeat_period_s(agents: int) -> float:
    """How often each of ``agents`` agents heartbeats."""
    return max(HEARTBEAT_S, agents / MAX_HEARTBEATS_PER_S)


def next_heartbeat_s(name: str, period_s: float, now: float) -> float:
    """When agent ``name`` heartbeats next, so that agents told a longer period spread evenly over it instead of
    keeping the phases they joined with (200 agents joined within a second would all heartbeat in the same second of
    every four): each has its slot in the period, from its name. At least HEARTBEAT_S away, so never two periods
    between heartbeats; every second while the cluster is small."""
    if period_s <= HEARTBEAT_S:
        return HEARTBEAT_S
    slot = zlib.crc32(name.encode()) / 2**32 * period_s
    wait = (slot - now) % period_s
    return wait + period_s if wait < HEARTBEAT_S else wait


_CONFIG_FIELDS = tuple(field.name for field in dataclasses.fields(ReplicaConfig))


def config_json(config: ReplicaConfig) -> dict[str, Any]:
    """A replica's configuration as JSON-ready fields (its tuples encode as lists): the same JSON as
    ``dataclasses.asdict``, whose deep copy cost 20 times as much; the service pays it for each replica it starts
    and each kernel it saves, an agent for each start it answers."""
    return {name: getattr(config, name) for name in _CONFIG_FIELDS}


PORTS_TAKEN = 409  # the agent's answer to a start whose chosen ports are in use on its machine
KEPT_CONNECTIONS = 4  # connections to one agent kept open; calls beyond that many at once open one for themselves


class AgentError(RuntimeError):
    """An agent did not answer or refused; the message names the host and says why."""


class AgentUnreachable(AgentError):
    """An agent did not answer, or has been silent: its machine may be down or cut off."""


class AgentRefused(AgentError):
    """An agent answered with an HTTP error status (``status``)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class AgentPortsTaken(AgentRefused, PortsTaken):
    """The agent refused a start: a port the cluster chose from the range it lent is in use on its machine."""


@dataclass
class RemoteReplica:
    """A replica on an agent's machine, as the agent last reported it."""

    config: ReplicaConfig
    connection: dict
    pid: int | None = None
    alive: bool = True
    ready: bool = False
    exit_code: int | None = None
    exit_reason: str | None = None
    restarts: int = 0

    def update(self, report: dict[str, Any]) -> None:
        self.pid, self.alive, self.ready = report.get("pid"), bool(report.get("alive")), bool(report.get("ready"))
        self.exit_code, self.exit_reason = report.get("exit_code"), report.get("exit_reason")


class RemoteHost:
    """A host run by a ``notebookos agent`` at ``url`` (its API), whose replicas bind ``address``."""

    def __init__(
        self, name: str, address: str, url: str, token: str, verify: str | bool = True, lent_ports: range | None = None
    ) -> None:
        """``verify``: the certificate file an https agent is checked against (True: the system's CAs).
        ``lent_ports``: the range of its machine's ports the agent lent the cluster to choose its replicas' ports
        from (None: an agent that lends none is asked for them, one more call per replica)."""
        self.name = name
        self.address = address
        self.url, self.token, self.verify = "", token, verify
        self._path = ""  # the path the agent's API sits under in its URL, if any
        self._set_url(url)
        self.replicas: dict[tuple[str, int], RemoteReplica] = {}
        self.ports: KernelPorts | None = None
        self.lend(lent_ports)
        self.last_heartbeat = time.monotonic()
        self.period_s = HEARTBEAT_S  # the heartbeat period the cluster told the agent last
        self.reported = False  # a heartbeat has come since this proxy was made (what it knows of replicas is news)
        self.lost = False  # declared lost: calls are no longer made, its replicas count as dead
        self._pool: urllib3.HTTPConnectionPool | None = None  # made at the first call

    def _connection_pool(self) -> urllib3.HTTPConnectionPool:
        """Connections to the agent, kept open: a new one per call cost the cluster's thread about twice the call.
        Through urllib3 itself: requests, on top of it, cost twice the CPU per call (0.65 against 0.32 ms measured),
        which the service paid six times per kernel start. Straight to the agent: no proxy from the environment."""
        if self._pool is None:
            trust = {"ca_certs": self.verify} if isinstance(self.verify, str) else {}
            self._pool = urllib3.connection_from_url(self.url, maxsize=KEPT_CONNECTIONS, retries=False, **trust)
        return self._pool

    def rejoined(self, url: str, token: str, verify: str | bool, lent_ports: range | None = None) -> None:
        """The agent joined again (it, or the service, restarted): its API may have moved, its token has changed,
        it may lend another range of ports."""
        self.token, self.verify = token, verify
        self._set_url(url)
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if lent_ports != self.lent_ports:
            self.lend(lent_ports)

    @property
    def lent_ports(self) -> range | None:
        return self.ports.pool.ports if self.ports is not None else None

    def lend(self, lent_ports: range | None) -> None:
        """Choose replicas' ports from ``lent_ports`` from now on, those of the replicas known here held."""
        if lent_ports is None:
            self.ports = None
            return
        self.ports = KernelPorts(PortPool(lent_ports, self.address, probe=False))
        for (kernel_id, _), replica in self.replicas.items():
            self.ports.hold(kernel_id, replica_ports(replica.config, replica.connection))

    def _set_url(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._path = (urllib3.util.parse_url(self.url).path or "") if self.url else ""  # "": a lost host's stand-in

    def take_ports(self, kernel_id: str, count: int) -> list[int]:
        """From the range the agent lent, without a call; else the agent's own choice."""
        if self.ports is not None:
            return self.ports.take(kernel_id, count)
        ports = self._call("POST", f"/kernels/{kernel_id}/ports", {"count": count}, timeout=QUICK_CALL_TIMEOUT_S)
        return list(ports["ports"])

    def start_replica(self, config: ReplicaConfig, connection: dict) -> RemoteReplica:
        """The agent starts it; AgentPortsTaken if a port chosen from its lent range is in use on its machine."""
        try:
            report = self._call(
                "POST",
                "/replicas",
                {"config": config_json(config), "connection": connection},
                timeout=START_CALL_TIMEOUT_S,
            )
        except AgentRefused as err:
            if err.status == PORTS_TAKEN:
                raise AgentPortsTaken(str(err), err.status) from None
            raise
        started = RemoteReplica(ReplicaConfig.from_json(report["config"]), report["connection"])
        started.update(report)
        self.replicas[(config.kernel_id, config.replica)] = started
        return started

    def kill_replica(self, kernel_id: str, replica: int) -> None:
        target = self.replicas[(kernel_id, replica)]
        target.update(self._call("POST", f"/replicas/{kernel_id}/{replica}/kill"))

    def stop_kernel(self, kernel_id: str) -> None:
        """Stop the kernel's replicas there. Those of a host not heard from are only forgotten: its machine is
        gone or cut off, and if it comes back its agent stops them (the cluster's answer to its heartbeat)."""
        if self.heard_from:
            self._call("DELETE", f"/kernels/{kernel_id}")
        for key in [k for k in self.replicas if k[0] == kernel_id]:
            del self.replicas[key]
        if self.ports is not None:
            self.ports.free(kernel_id)

    def forget_replica(self, kernel_id: str, replica: int) -> None:
        """The replica was placed elsewhere: its agent stops it at its next heartbeat, its ports are free again."""
        known = self.replicas.pop((kernel_id, replica), None)
        if known is not None and self.ports is not None:
            self.ports.free(kernel_id, replica_ports(known.config, known.connection))

    def stop_all(self) -> None:
        for kernel_id in {k for k, _ in self.replicas}:
            self.stop_kernel(kernel_id)

    def restore_replica(self, config: ReplicaConfig, connection: dict) -> RemoteReplica:
        """A replica the cluster placed here before it restarted, taken for alive until the agent reports."""
        replica = RemoteReplica(config, connection, ready=True)
        self.replicas[(config.kernel_id, config.replica)] = replica
        if self.ports is not None:
            self.ports.hold(config.kernel_id, replica_ports(config, connection))
        return replica

    def heartbeat(self, reports: list[dict[str, Any]]) -> None:
        """The agent's report of every replica it runs."""
        self.last_heartbeat = time.monotonic()
        self.reported = True
        for report in reports:
            replica = self.replicas.get((report.get("kernel_id", ""), report.get("replica", -1)))
            if replica is not None:
                replica.update(report)

    @property
    def heard_from(self) -> bool:
        """Its agent sent a heartbeat within the last few periods: calls to it are worth making (a machine that
        is down costs the cluster's thread a connect time-out per call)."""
        return not self.lost and time.monotonic() < self.silent_at

    @property
    def silent_at(self) -> float:
        """When (``time.monotonic``) its agent turns silent unless it heartbeats before: until then, nobody need look
        at whether it is heard from."""
        return self.last_heartbeat + RECENT_PERIODS * self.period_s

    def mark_lost(self) -> None:
        self.lost = True
        for replica in self.replicas.values():
            replica.alive = replica.ready = False

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float = CALL_TIMEOUT_S) -> Any:
        if not self.heard_from:
            silent = time.monotonic() - self.last_heartbeat
            raise AgentUnreachable(
                f"host {self.name} is unavailable: its agent has sent no heartbeat for {silent:.0f} s"
            )
        headers = {"Authorization": f"token {self.token}"}  # as of now: an agent joining again sends a new one
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = self._connection_pool().request(
                method,
                self._path + path,
                body=None if body is None else json.dumps(body),
                headers=headers,
                timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=timeout),
            )
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise AgentUnreachable(
                f"the agent of host {self.name} at {self.url} did not answer ({type(err).__name__})"
            ) from None
        text = response.data.decode(errors="replace")
        if response.status >= 400:
            try:
                detail = json.loads(text).get("error", text)
            except (ValueError, AttributeError):
                detail = text
            raise AgentRefused(
                f"the agent of host {self.name} refused {method} {path} ({response.status}): {detail}", response.status
            )
        return json.loads(text) if text else None
