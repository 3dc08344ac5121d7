"""The embedded cluster: N logical hosts on this machine, each a host agent, and the kernels placed on them.

This is what ``notebookos lab`` and the provisioner start when no cluster is configured. Placement here is the
simple rule of ARCHITECTURE.md (three distinct hosts, least loaded first); GPU accounting, migration and autoscaling
come from the scheduling core in :mod:`notebookos.gpu_broker.core`.
"""
from __future__ import annotations

import logging
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from ..replication.replica_config import ReplicaConfig
from .host_agent import HostAgent, ReplicaProcess

log = logging.getLogger(__name__)

REPLICAS_PER_KERNEL = 3
_CHANNELS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


class PlacementError(RuntimeError):
    """The kernel's replicas cannot be placed (fewer hosts than replicas)."""


@dataclass
class KernelRecord:
    kernel_id: str
    replicas: list[tuple[HostAgent, ReplicaProcess]]


class EmbeddedCluster:
    def __init__(self, state_dir: Path, n_hosts: int = 4) -> None:
        self.state_dir = Path(state_dir)
        self.store_dir = self.state_dir / "objects"
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.hosts = [HostAgent(f"host-{i + 1}", self.state_dir / "hosts" / f"host-{i + 1}") for i in range(n_hosts)]
        self.kernels: dict[str, KernelRecord] = {}

    def create_kernel(self, kernel_id: str, key: str, signature_scheme: str, cwd: str | None = None) -> dict:
        if kernel_id in self.kernels:
            raise ValueError(f"kernel {kernel_id} already exists")
        hosts = self._place()
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
        for host in {h for h, _ in record.replicas}:
            host.stop_kernel(kernel_id)

    def shutdown(self) -> None:
        for kernel_id in list(self.kernels):
            self.delete_kernel(kernel_id)

    def describe_kernel(self, kernel_id: str) -> dict:
        return {
            "id": kernel_id,
            "replicas": [
                {"replica": p.config.replica, "host": h.name, "alive": p.alive, "pid": p.pid, "restarts": p.restarts,
                 "connection": p.connection}
                for h, p in self.kernels[kernel_id].replicas
            ],
        }

    def describe(self) -> dict:
        return {
            "hosts": [{"name": h.name, "replicas": len(h.replicas)} for h in self.hosts],
            "kernels": [self.describe_kernel(k) for k in self.kernels],
        }

    def _place(self) -> list[HostAgent]:
        if len(self.hosts) < REPLICAS_PER_KERNEL:
            raise PlacementError(
                f"a kernel needs {REPLICAS_PER_KERNEL} hosts for its replicas but the cluster has {len(self.hosts)}; "
                "start it with more hosts"
            )
        return sorted(self.hosts, key=lambda h: len(h.replicas))[:REPLICAS_PER_KERNEL]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
