"""A host agent: owns one host's replica processes, the ports they bind and the folder they keep state in.

In embedded mode every host agent lives in the cluster process and its "host" is a name plus a working directory
on this machine, all on 127.0.0.1; on a real cluster the same class runs inside ``notebookos agent`` on each GPU
machine (:mod:`.agent`), bound to that machine's address, with its journals and objects under its own state
folder. Either way it starts and stops replica processes, knows which of them are alive, and chooses the paths
and ports they use: the cluster only says which kernel, which replica and who its Raft peers are.

How a replica runs is its runtime's business (:mod:`.runtime`): a process in a session of its own, or a Docker
container. Either outlives an agent that dies or is restarted; a new agent on the same state folder re-adopts the
ones still running (:meth:`HostAgent.adopt`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import signal
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import zmq
from jupyter_core.paths import secure_write

from ...kernels.replica_config import ReplicaConfig
from ...kernels.replica_template import REPLICA_MODULE
from .ports import KernelPorts, PortPool
from .runtime.base import LaunchSpec, ReplicaRuntime, RunningReplica
from .runtime.process import ProcessRuntime

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
# A replica moved while it may be running a cell (drain, on request) stays down this long before it starts on its
# new host: longer than the kernel front's loss detection (1 s of missed heartbeats, kernels/replica_link.py), so
# the front sees the loss and re-runs the cell elsewhere, instead of waiting for a reply the new process never sends.
MOVE_PAUSE_S = 1.5
CONFIG_FILE, CONNECTION_FILE, JOURNAL_FILE = "replica.json", "connection.json", "raft.journal"


@dataclass
class ReplicaProcess:
    """One replica on this host and the files it needs to be started again in place; ``running`` is what its
    runtime started (a process or a container), or adopted from a previous agent on this state folder."""

    config: ReplicaConfig
    connection: dict
    workdir: Path
    running: RunningReplica | None = None
    restarts: int = 0
    stopped: bool = field(default=False)

    @property
    def alive(self) -> bool:
        return self.running is not None and self.running.alive

    @property
    def ready(self) -> bool:
        """The replica has caught up with its Raft group (see ReplicaConfig.ready_marker)."""
        return self.config.ready_marker.exists()

    @property
    def pid(self) -> int | None:
        return self.running.pid if self.running is not None else None

    @property
    def exit_code(self) -> int | None:
        """The exit status of a replica that has ended (negative: killed by that signal); None otherwise."""
        return self.running.exit_code if self.running is not None else None

    @property
    def ports(self) -> set[int]:
        return replica_ports(self.config, self.connection)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM, then SIGKILL once ``grace_s`` has passed; returns when it is gone (its container too)."""
        self.stopped = True
        self._signal(signal.SIGTERM)
        if not self._wait(grace_s):
            self.kill()
        if self.running is not None:
            self.running.discard()

    def kill(self) -> None:
        """SIGKILL, as a crash would; returns when it is gone."""
        self._signal(signal.SIGKILL)
        self._wait(STOP_GRACE_S)

    def _signal(self, sig: int) -> None:
        if self.running is not None:
            self.running.signal(sig)

    def _wait(self, timeout: float) -> bool:
        return self.running is None or self.running.wait(timeout)

    @property
    def exit_reason(self) -> str | None:
        """Why it ended (an exit code, a signal, the OOM killer); None while it runs."""
        return None if self.running is None or self.running.alive else self.running.exit_reason

    def describe(self) -> dict[str, Any]:
        """What the agent reports about the replica: to the cluster in heartbeats, and in its own API."""
        return {
            "kernel_id": self.config.kernel_id,
            "replica": self.config.replica,
            "pid": self.pid,
            "alive": self.alive,
            "ready": self.ready,
            "exit_code": self.exit_code,
            "exit_reason": self.exit_reason,
            "restarts": self.restarts,
            "connection": public_connection(self.connection),
        }


class HostAgent:
    """Starts and stops replica processes on one host.

    ``address``: where this host's replicas bind and where their peers and the kernel front reach them.
    ``ports``: the pool the replicas' ports come from (the embedded cluster's logical hosts share one, as they share
    one network stack). ``store``: the object store replicas use unless the cluster names a shared one; by default a
    folder per kernel beside ``workdir`` (``objects/KERNEL``), the kernel's alone, so its replicas can delete what
    it no longer needs. ``shares_objects``: the other hosts of this machine use the same folders (the embedded
    cluster's logical hosts, one disk), so a replica leaving this host leaves its kernel's objects to the others.
    """

    def __init__(
        self,
        name: str,
        workdir: Path,
        address: str = "127.0.0.1",
        ports: PortPool | None = None,
        store: str | None = None,
        runtime: ReplicaRuntime | None = None,
        gpu_devices: tuple[int, ...] | None = None,
        shares_objects: bool = False,
    ) -> None:
        self.name = name
        self.workdir = Path(workdir)
        self.address = address
        self.ports = KernelPorts(ports or PortPool(address=address))
        self.store = store
        self.objects_dir = self.workdir.parent / "objects"
        self.shares_objects = shares_objects
        self.runtime = runtime or ProcessRuntime()
        # A logical host's slice of this machine's real GPUs (its replicas see only those); None: all, or virtual.
        self.gpu_devices = gpu_devices
        self.replicas: dict[tuple[str, int], ReplicaProcess] = {}

    def take_ports(self, kernel_id: str, count: int) -> list[int]:
        """Ports for replicas of ``kernel_id`` about to start here; released when the kernel stops on this host."""
        return self.ports.take(kernel_id, count)

    def start_replica(self, config: ReplicaConfig, connection: dict) -> ReplicaProcess:
        """Start a replica; the agent chooses its folder, journal, object store (unless ``config.store`` names a
        shared one) and working directory (the notebook's folder where this host has it, else the replica's).
        Ports it did not hand out (the cluster service chose them from the range this agent lent it) are checked
        free first: PortsTaken, and nothing started, if one is not.

        The replica gets a CurveZMQ key pair of its own, made here: its channels to the kernel front cross the
        network encrypted (ipykernel serves them as a Curve server; the front connects with the public key, see
        :func:`public_connection`), and its secret key never leaves its machine."""
        self.ports.hold(config.kernel_id, replica_ports(config, connection), check=True)
        workdir = self.workdir / config.kernel_id / f"replica-{config.replica}"
        workdir.mkdir(parents=True, exist_ok=True)
        cwd = config.cwd if config.cwd and Path(config.cwd).is_dir() else str(workdir)
        shared = config.store or self.store
        store = shared or (self.objects_dir / config.kernel_id).as_uri()
        # Only a folder of this replica's alone is collected: where logical hosts share the kernel's folder, a
        # sibling a few entries behind may still need what this replica no longer does.
        config = dataclasses.replace(
            config,
            host=self.name,
            journal_path=str(workdir / JOURNAL_FILE),
            store=store,
            cwd=cwd,
            owns_store=not shared and not self.shares_objects,
        )
        public, secret = zmq.curve_keypair()
        connection = {
            **connection,
            "ip": self.address,
            "curve_publickey": public.decode(),
            "curve_secretkey": secret.decode(),
        }
        proc = ReplicaProcess(config=config, connection=connection, workdir=workdir)
        self.replicas[(config.kernel_id, config.replica)] = proc
        self._spawn(proc)
        return proc

    def kill_replica(self, kernel_id: str, replica: int) -> None:
        """SIGKILL, as a crash would: the fault drill used by tests and the dashboard."""
        self.replicas[(kernel_id, replica)].kill()

    def hand_over(self, kernel_id: str, replica: int, target: HostAgent, pause_s: float = 0.0) -> ReplicaProcess:
        """Move a replica to another host of this machine: stop it, move its folder (journal included), start it
        there with the same ports and Raft address. It replays its journal and catches up like a restarted replica.

        Only valid where hosts share a network namespace (the embedded cluster); across machines a move is a Raft
        membership change to a new address. ``pause_s``: how long it stays down between the two (MOVE_PAUSE_S).
        """
        proc = self.replicas.pop((kernel_id, replica))
        proc.stop()  # a restart asked for meanwhile (the front sees it vanish) must not start it here
        time.sleep(pause_s)
        workdir = target.workdir / kernel_id / f"replica-{replica}"
        workdir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.move(str(proc.workdir), str(workdir))
        config = dataclasses.replace(proc.config, host=target.name, journal_path=str(workdir / JOURNAL_FILE))
        moved = ReplicaProcess(config=config, connection=proc.connection, workdir=workdir, restarts=proc.restarts)
        self.ports.free(kernel_id, proc.ports)
        target.ports.hold(kernel_id, proc.ports)
        target.replicas[(kernel_id, replica)] = moved
        target._spawn(moved)
        return moved

    def stop_kernel(self, kernel_id: str) -> None:
        """Stop every replica of a kernel on this host (SIGTERM, then SIGKILL after a grace period), free its
        ports and delete its folder: a later kernel with the same id (a restart) must start empty."""
        procs = [p for (k, _), p in self.replicas.items() if k == kernel_id]
        for p in procs:
            p.stopped = True
            p._signal(signal.SIGTERM)
        for p in procs:
            p.stop(STOP_GRACE_S)  # already signalled: waits, kills if it must, and discards its container
            del self.replicas[(kernel_id, p.config.replica)]
        self.ports.free(kernel_id)
        shutil.rmtree(self.workdir / kernel_id, ignore_errors=True)
        shutil.rmtree(self.objects_dir / kernel_id, ignore_errors=True)

    def stop_replica(self, kernel_id: str, replica: int) -> None:
        """Stop one replica (the cluster placed it elsewhere), free its ports and delete its folder."""
        proc = self.replicas.pop((kernel_id, replica), None)
        if proc is None:
            return
        proc.stop()
        self.ports.free(kernel_id, proc.ports)
        shutil.rmtree(proc.workdir, ignore_errors=True)
        if not self.shares_objects:  # then this was the kernel's only replica here
            shutil.rmtree(self.objects_dir / kernel_id, ignore_errors=True)

    def stop_all(self) -> None:
        for kernel_id in {k for k, _ in self.replicas} | self.ports.kernels():
            self.stop_kernel(kernel_id)

    def adopt(self) -> list[ReplicaProcess]:
        """Take over the replicas a previous agent on this state folder started and that still run (an agent
        restart must not cost any kernel its replica); the folders of those that died are left for the cluster to
        stop or replace."""
        adopted = []
        for workdir, running in sorted(self.runtime.running(self.name, self.workdir).items()):
            try:
                config = ReplicaConfig.read(workdir / CONFIG_FILE)
                connection = json.loads((workdir / CONNECTION_FILE).read_text())
            except (OSError, ValueError, TypeError, KeyError):
                continue
            proc = ReplicaProcess(config=config, connection=connection, workdir=workdir, running=running)
            self.replicas[(config.kernel_id, config.replica)] = proc
            self.ports.hold(config.kernel_id, proc.ports)
            adopted.append(proc)
            log.info(
                "adopted replica %s/%d (%s, pid %s)", config.kernel_id, config.replica, self.runtime.name, running.pid
            )
        return adopted

    def restore_replica(self, config: ReplicaConfig, connection: dict) -> ReplicaProcess:
        """A replica the cluster placed here before it restarted: the one :meth:`adopt` found running, else one
        that ended meanwhile (not alive: the kernel front asks for its replacement), its ports kept for it."""
        known = self.replicas.get((config.kernel_id, config.replica))
        if known is not None:
            return known
        proc = ReplicaProcess(config=config, connection=connection, workdir=Path(config.journal_path).parent)
        self.replicas[(config.kernel_id, config.replica)] = proc
        self.ports.hold(config.kernel_id, proc.ports)
        return proc

    def replica_environment(self, workdir: Path) -> dict[str, str]:
        """The variables a replica of this host starts with (a process also inherits the agent's environment): its
        own IPython folder, its host's name, and, for a logical host with a slice of this machine's GPUs, only
        those GPUs visible (device 0 is the slice's first)."""
        env = {"IPYTHONDIR": str(workdir / "ipython"), "NOTEBOOKOS_HOST": self.name, "NOTEBOOKOS_CLUSTER_FILE": ""}
        if self.gpu_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in self.gpu_devices)
        return env

    def _spawn(self, proc: ReplicaProcess) -> None:
        proc.config.ready_marker.unlink(missing_ok=True)
        conn_file = proc.workdir / CONNECTION_FILE
        with secure_write(str(conn_file)) as f:  # it holds the kernel's message key
            json.dump(proc.connection, f)
        config_file = proc.workdir / CONFIG_FILE
        proc.config.write(config_file)
        if proc.running is not None:
            proc.running.discard()  # what is left of its previous run
        store = proc.config.store
        spec = LaunchSpec(
            host=self.name,
            kernel_id=proc.config.kernel_id,
            replica=proc.config.replica,
            workdir=proc.workdir,
            command=(
                self.runtime.python,
                "-m",
                REPLICA_MODULE,
                "-f",
                str(conn_file),
                f"--ReplicaKernel.config_path={config_file}",
            ),
            settings=self.replica_environment(proc.workdir),
            cwd=proc.config.cwd or str(proc.workdir),
            paths=(store.removeprefix("file://"),) if store.startswith("file://") else (),
        )
        proc.running = self.runtime.launch(spec)
        log.info(
            "started replica %s/%d on %s (%s, pid %s)",
            proc.config.kernel_id,
            proc.config.replica,
            self.name,
            self.runtime.name,
            proc.running.pid,
        )


def replica_ports(config: ReplicaConfig, connection: dict) -> set[int]:
    """Every port a replica binds: its five Jupyter channels, its Raft node and, across machines, its peer API."""
    ports = {v for k, v in connection.items() if k.endswith("_port")}
    ports.add(int(config.raft_address.rsplit(":", 1)[1]))
    if config.peer_urls:
        peer_port = urllib.parse.urlsplit(config.peer_urls[config.replica]).port
        if peer_port is not None:
            ports.add(peer_port)
    return ports


def public_connection(connection: dict) -> dict:
    """A replica's connection info without its CurveZMQ secret key, which only the replica itself holds."""
    return {k: v for k, v in connection.items() if k != "curve_secretkey"}


class ReplicaView(Protocol):
    """What the cluster reads about a replica, wherever it runs: a process of this machine (ReplicaProcess) or one
    an agent on another machine reports (agent.remote.RemoteReplica)."""

    config: ReplicaConfig
    connection: dict
    restarts: int

    @property
    def alive(self) -> bool: ...

    @property
    def ready(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def exit_reason(self) -> str | None: ...


class ReplicaHost(Protocol):
    """What the cluster asks of a host: a HostAgent in the cluster's process (logical hosts), or the proxy of a
    ``notebookos agent`` on another machine (agent.remote.RemoteHost)."""

    name: str
    address: str
    replicas: dict[tuple[str, int], Any]

    def take_ports(self, kernel_id: str, count: int) -> list[int]: ...

    def start_replica(self, config: ReplicaConfig, connection: dict) -> ReplicaView: ...

    def kill_replica(self, kernel_id: str, replica: int) -> None: ...

    def stop_kernel(self, kernel_id: str) -> None: ...

    def stop_all(self) -> None: ...

    def restore_replica(self, config: ReplicaConfig, connection: dict) -> ReplicaView: ...
