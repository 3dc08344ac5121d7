"""The embedded cluster: N logical hosts on this machine, each a host agent, and the kernels placed on them.

This is what ``notebookos lab`` and the provisioner start when no cluster is configured. Where replicas go is
decided by the scheduling core (:mod:`notebookos.gpu_broker.core`), the same code the simulator runs: three
distinct hosts within the subscription limit, each host carrying ``gpus_per_host`` GPUs (virtual ones where the
machine has none). Per-cell GPU commitment, migration and autoscaling through the core come next (issue 3).
"""
from __future__ import annotations

import logging
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..replication.replica_config import ReplicaConfig
from .core.events import Decision, DecisionKind, Event, KernelPlaced, PlacementDeferred
from .core.journal import JournaledCore
from .core.policies import make_policy
from .core.scheduler import CoreConfig, SchedulerCore
from .host_agent import HostAgent, ReplicaProcess

log = logging.getLogger(__name__)

REPLICAS_PER_KERNEL = 3
POLICY = "notebookos"  # the scheduling policy of the live cluster (the simulator compares it with the others)
_CHANNELS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


class PlacementError(RuntimeError):
    """The kernel's replicas cannot be placed now; the message is the scheduler's reason."""


@dataclass
class KernelRecord:
    kernel_id: str
    replicas: list[tuple[HostAgent, ReplicaProcess]]


class EmbeddedCluster:
    def __init__(self, state_dir: Path, n_hosts: int = 4, gpus_per_host: int = 1,
                 subscription_limit: float = CoreConfig.subscription_limit, journal: bool = False) -> None:
        self.state_dir = Path(state_dir)
        self.store_dir = self.state_dir / "objects"
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.gpus_per_host = gpus_per_host
        self.hosts = {f"host-{i + 1}": HostAgent(f"host-{i + 1}", self.state_dir / "hosts" / f"host-{i + 1}")
                      for i in range(n_hosts)}
        self.core_config = CoreConfig(host_gpus=gpus_per_host, subscription_limit=subscription_limit,
                                      min_hosts=min(REPLICAS_PER_KERNEL, n_hosts), max_hosts=n_hosts)
        self.core = SchedulerCore(make_policy(POLICY), self.core_config)
        # With ``journal``, every call the live cluster makes on the core is kept, so that it can be replayed on the
        # simulator's core and the decisions compared (tests, debugging); it grows with every cell and tick.
        self.journal = JournaledCore(self.core) if journal else None
        for name in self.hosts:
            self._decide("add_host", name, gpus_per_host)
        self.kernels: dict[str, KernelRecord] = {}

    def create_kernel(self, kernel_id: str, key: str, signature_scheme: str, cwd: str | None = None,
                      gpus: int = 0) -> dict:
        if kernel_id in self.kernels:
            raise ValueError(f"kernel {kernel_id} already exists")
        hosts = self._place(kernel_id, gpus)
        raft_ports = [_free_port() for _ in hosts]
        peers = tuple(f"127.0.0.1:{p}" for p in raft_ports)
        password = secrets.token_urlsafe(24)
        record = KernelRecord(kernel_id, [])
        for index, host in enumerate(hosts):
            connection = {name: _free_port() for name in _CHANNELS}
            connection.update(ip="127.0.0.1", transport="tcp", key=key, signature_scheme=signature_scheme,
                              kernel_name="notebookos-replica")
            config = ReplicaConfig(
                kernel_id=kernel_id, replica=index, host=host.name, raft_address=peers[index], raft_peers=peers,
                raft_password=password, journal_path=str(host.workdir / kernel_id / f"replica-{index}" / "raft.journal"),
                store=self.store_dir.as_uri(), cwd=cwd,
            )
            record.replicas.append((host, host.start_replica(config, connection)))
        self.kernels[kernel_id] = record
        return self.describe_kernel(kernel_id)

    # ----------------------------------------------------------------------------------- GPUs per cell

    def request_execution(self, kernel_id: str, gpus: int) -> Decision:
        """The scheduler's decision for a kernel's next cell: an executor with pre-committed devices, a replica to
        migrate first, or a place in the queue. A request no host could ever satisfy is refused at once."""
        largest = max((h.gpus for h in self.core.cluster.hosts.values()), default=0)
        if gpus > largest:
            raise PlacementError(f"the cell asks for {gpus} GPU(s) but the largest host has {largest}; ask for at "
                                 f"most {largest} (%gpus {largest}), or add larger hosts")
        return self._decide("request_execution", kernel_id, gpus)

    def carry_out(self, decision: Decision) -> None:
        """Do what a granted decision needs before its executor may run: move the replica for MIGRATE."""
        if decision.kind is DecisionKind.MIGRATE:
            self._hand_over(decision.kernel_id, decision.replica, decision.host_id)
        self._decide("start_execution", decision.kernel_id)

    def _decide(self, method: str, *args: Any) -> Any:
        """One call on the scheduling core, at the wall-clock time (journaled when asked)."""
        if self.journal is not None:
            return self.journal.call(method, *args, now=time.time())
        return getattr(self.core, method)(*args, time.time())

    def migrate_replica(self, kernel_id: str, replica: int, host: str) -> dict:
        """Move a replica to another host on request; the kernel keeps running (ValueError: refused, why)."""
        self._decide("migrate_replica", kernel_id, replica, host)
        self._hand_over(kernel_id, replica, host)
        return self.describe_kernel(kernel_id)

    def _hand_over(self, kernel_id: str, replica: int, host: str) -> None:
        record = self.kernels[kernel_id]
        source, _ = record.replicas[replica]
        target = self.hosts[host]
        record.replicas[replica] = (target, source.hand_over(kernel_id, replica, target))

    def release(self, kernel_id: str) -> list[Event]:
        """The cell is over: its GPUs go back to idle; returns what that set off (queued cells granted)."""
        return self._decide("release", kernel_id)

    def tick(self) -> list[Event]:
        return self._decide("tick")

    # ------------------------------------------------------------------------------------ replicas

    def restart_replica(self, kernel_id: str, replica: int) -> dict:
        host, _ = self.kernels[kernel_id].replicas[replica]
        host.restart_replica(kernel_id, replica)
        return self.describe_kernel(kernel_id)

    def kill_replica(self, kernel_id: str, replica: int) -> dict:
        host, _ = self.kernels[kernel_id].replicas[replica]
        host.kill_replica(kernel_id, replica)
        return self.describe_kernel(kernel_id)

    def delete_kernel(self, kernel_id: str) -> None:
        record = self.kernels.pop(kernel_id)
        self._decide("close_kernel", kernel_id)
        for host in {h for h, _ in record.replicas}:
            host.stop_kernel(kernel_id)

    def shutdown(self) -> None:
        for kernel_id in list(self.kernels):
            self.delete_kernel(kernel_id)

    def describe_kernel(self, kernel_id: str) -> dict:
        kernel = self.core.cluster.kernels.get(kernel_id)
        allocation = kernel.allocation if kernel else None
        return {
            "id": kernel_id,
            "gpus": kernel.gpus if kernel else 0,
            "allocation": None if allocation is None else {
                "host": allocation.host_id, "devices": list(allocation.devices), "replica": allocation.replica,
                "state": allocation.state.value},
            "replicas": [
                {"replica": p.config.replica, "host": h.name, "alive": p.alive, "pid": p.pid, "restarts": p.restarts,
                 "connection": p.connection}
                for h, p in self.kernels[kernel_id].replicas
            ],
        }

    def describe(self) -> dict:
        return {
            "hosts": [self._describe_host(name, agent) for name, agent in self.hosts.items()],
            "kernels": [self.describe_kernel(k) for k in self.kernels],
            "subscription_limit": self.core.config.subscription_limit,
        }

    def _describe_host(self, name: str, agent: HostAgent) -> dict:
        host = self.core.cluster.hosts[name]
        holders = {d: a.kernel_id for a in host.allocations.values() for d in a.devices}
        return {"name": name, "replicas": len(agent.replicas), "gpus": host.gpus, "idle_gpus": host.idle_gpus,
                "subscribed_gpus": host.subscribed, "subscription_ratio": host.ratio(), "state": host.state.value,
                "devices": [{"device": d, "kernel": holders.get(d)} for d in range(host.gpus)]}

    def _place(self, kernel_id: str, gpus: int) -> list[HostAgent]:
        """Ask the scheduling core where the replicas go; refuse with its reason when it cannot place them now."""
        events = self._decide("place_kernel", kernel_id, gpus)
        placed = next((e for e in events if isinstance(e, KernelPlaced)), None)
        if placed is not None:
            return [self.hosts[host] for host in placed.hosts]
        # The embedded cluster has no provider to add hosts with, so a deferred placement is a refusal.
        reason = next((e.reason for e in events if isinstance(e, PlacementDeferred)), "no host can take them")
        self._decide("close_kernel", kernel_id)
        raise PlacementError(f"cannot place the kernel's {REPLICAS_PER_KERNEL} replicas with {gpus} GPU(s) each: "
                             f"{reason}. Add hosts, or raise the subscription limit, or ask for fewer GPUs.")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
