"""The cluster's side of a ``notebookos agent``: a host whose replicas run on another machine.

:class:`RemoteHost` has the methods the cluster calls on any host (:class:`..host_agent.ReplicaHost`) and carries
each out as one authenticated HTTP call to the agent's API (:mod:`.handlers`), from the cluster's worker thread.
What the cluster reads about the replicas (alive, ready, pid, exit code) comes from the agent's heartbeats, so a
read never waits on the network; a host whose heartbeats stop is declared lost by the cluster.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import requests

from ....kernels.replica_config import ReplicaConfig

CALL_TIMEOUT_S = 30.0  # starting a replica returns once its process exists; stopping waits up to the stop grace
# A machine that is down does not refuse connections, it drops them: give up quickly, the cluster's thread waits.
CONNECT_TIMEOUT_S = 3.0
# Calls the agent answers from memory (ports). The connection to an agent is kept open, so a machine lost since the
# last call shows as an answer that never comes rather than as a connect time-out: this bounds that wait.
QUICK_CALL_TIMEOUT_S = 5.0
RECENT_S = 2.5  # two and a half heartbeat periods


class AgentError(RuntimeError):
    """An agent did not answer or refused; the message names the host and says why."""


class AgentUnreachable(AgentError):
    """An agent did not answer, or has been silent: its machine may be down or cut off."""


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

    def __init__(self, name: str, address: str, url: str, token: str, verify: str | bool = True) -> None:
        """``verify``: the certificate file an https agent is checked against (True: the system's CAs)."""
        self.name = name
        self.address = address
        self.url = url.rstrip("/")
        self.token = token
        self.verify = verify
        self.replicas: dict[tuple[str, int], RemoteReplica] = {}
        self.last_heartbeat = time.monotonic()
        self.reported = False  # a heartbeat has come since this proxy was made (what it knows of replicas is news)
        self.lost = False  # declared lost: calls are no longer made, its replicas count as dead
        # One kept-open connection to the agent: a new one per call cost the cluster's thread about twice the call.
        self._session = requests.Session()
        # Straight to the agent with its token: no proxy from the environment, no credentials from ~/.netrc (each
        # call looked for that file, and the lookups cost more CPU than the call itself).
        self._session.trust_env = False

    def take_ports(self, kernel_id: str, count: int) -> list[int]:
        ports = self._call("POST", f"/kernels/{kernel_id}/ports", {"count": count}, timeout=QUICK_CALL_TIMEOUT_S)
        return list(ports["ports"])

    def start_replica(self, config: ReplicaConfig, connection: dict) -> RemoteReplica:
        report = self._call("POST", "/replicas", {"config": dataclasses.asdict(config), "connection": connection})
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

    def stop_all(self) -> None:
        for kernel_id in {k for k, _ in self.replicas}:
            self.stop_kernel(kernel_id)

    def restore_replica(self, config: ReplicaConfig, connection: dict) -> RemoteReplica:
        """A replica the cluster placed here before it restarted, taken for alive until the agent reports."""
        replica = RemoteReplica(config, connection, ready=True)
        self.replicas[(config.kernel_id, config.replica)] = replica
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
        return not self.lost and time.monotonic() - self.last_heartbeat < RECENT_S

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
        try:
            response = self._session.request(
                method,
                self.url + path,
                json=body,
                timeout=(CONNECT_TIMEOUT_S, timeout),
                headers={"Authorization": f"token {self.token}"},  # as of now: an agent joining again sends a new one
                verify=self.verify,
            )
        except requests.RequestException as err:
            raise AgentUnreachable(
                f"the agent of host {self.name} at {self.url} did not answer ({type(err).__name__})"
            ) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("error", response.text)
            except ValueError:
                detail = response.text
            raise AgentError(
                f"the agent of host {self.name} refused {method} {path} ({response.status_code}): {detail}"
            )
        return response.json() if response.content else None
