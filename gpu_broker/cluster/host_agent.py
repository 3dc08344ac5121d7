"""A host agent: owns one (logical) host's replica processes.

In embedded mode every host agent lives in the cluster process and its "host" is a name plus a working directory
on this machine; on a real cluster the same class runs inside ``notebookos agent`` on each GPU machine. Either way
it starts, restarts in place and stops replica processes, and knows which of them are alive.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ...kernels.replica_config import ReplicaConfig

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
# A replica moved while it may be running a cell (drain, on request) stays down this long before it starts on its
# new host: longer than the kernel front's loss detection (1 s of missed heartbeats, kernels/replica_link.py), so
# the front sees the loss and re-runs the cell elsewhere, instead of waiting for a reply the new process never sends.
MOVE_PAUSE_S = 1.5


@dataclass
class ReplicaProcess:
    """One replica process and the files it needs to be started again in place."""

    config: ReplicaConfig
    connection: dict
    workdir: Path
    popen: subprocess.Popen | None = None
    restarts: int = 0
    stopped: bool = field(default=False)

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def ready(self) -> bool:
        """The replica has caught up with its Raft group (see ReplicaConfig.ready_marker)."""
        return self.config.ready_marker.exists()

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None


class HostAgent:
    """Starts and stops replica processes on one host."""

    def __init__(self, name: str, workdir: Path, python: str = sys.executable) -> None:
        self.name = name
        self.workdir = Path(workdir)
        self.python = python
        self.replicas: dict[tuple[str, int], ReplicaProcess] = {}

    def start_replica(self, config: ReplicaConfig, connection: dict) -> ReplicaProcess:
        workdir = self.workdir / config.kernel_id / f"replica-{config.replica}"
        workdir.mkdir(parents=True, exist_ok=True)
        proc = ReplicaProcess(config=config, connection=connection, workdir=workdir)
        self.replicas[(config.kernel_id, config.replica)] = proc
        self._spawn(proc)
        return proc

    def restart_replica(self, kernel_id: str, replica: int) -> ReplicaProcess:
        """Start a dead replica again with the same ports, journal and configuration, so it rejoins its group."""
        proc = self.replicas[(kernel_id, replica)]
        if proc.alive or proc.stopped:
            return proc
        proc.restarts += 1
        self._spawn(proc)
        return proc

    def kill_replica(self, kernel_id: str, replica: int) -> None:
        """SIGKILL, as a crash would: the fault drill used by tests and the dashboard."""
        proc = self.replicas[(kernel_id, replica)]
        if proc.alive:
            proc.popen.kill()
            proc.popen.wait()

    def hand_over(self, kernel_id: str, replica: int, target: "HostAgent", pause_s: float = 0.0) -> ReplicaProcess:
        """Move a replica to another host of this machine: stop it, move its folder (journal included), start it
        there with the same ports and Raft address. It replays its journal and catches up like a restarted replica.

        Only valid where hosts share a network namespace (the embedded cluster); across machines a move is a Raft
        membership change to a new address. ``pause_s``: how long it stays down between the two (MOVE_PAUSE_S).
        """
        proc = self.replicas.pop((kernel_id, replica))
        proc.stopped = True  # a restart asked for meanwhile (the front sees it vanish) must not start it here
        if proc.alive:
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        time.sleep(pause_s)
        workdir = target.workdir / kernel_id / f"replica-{replica}"
        workdir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.move(str(proc.workdir), str(workdir))
        config = dataclasses.replace(proc.config, host=target.name,
                                     journal_path=str(workdir / Path(proc.config.journal_path).name))
        moved = ReplicaProcess(config=config, connection=proc.connection, workdir=workdir, restarts=proc.restarts)
        target.replicas[(kernel_id, replica)] = moved
        target._spawn(moved)
        return moved

    def stop_kernel(self, kernel_id: str) -> None:
        """Stop every replica of a kernel on this host: SIGTERM, then SIGKILL after a grace period."""
        procs = [p for (k, _), p in self.replicas.items() if k == kernel_id]
        for p in procs:
            p.stopped = True
            if p.alive:
                p.popen.send_signal(signal.SIGTERM)
        for p in procs:
            if p.popen is None:
                continue
            try:
                p.popen.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
        for p in procs:
            del self.replicas[(kernel_id, p.config.replica)]
        # The journal goes with the kernel: a later kernel with the same id (a restart) must start empty.
        shutil.rmtree(self.workdir / kernel_id, ignore_errors=True)

    def stop_all(self) -> None:
        for kernel_id in {k for k, _ in self.replicas}:
            self.stop_kernel(kernel_id)

    def _spawn(self, proc: ReplicaProcess) -> None:
        proc.config.ready_marker.unlink(missing_ok=True)
        conn_file = proc.workdir / "connection.json"
        conn_file.write_text(json.dumps(proc.connection))
        os.chmod(conn_file, 0o600)
        config_file = proc.workdir / "replica.json"
        proc.config.write(config_file)
        env = dict(os.environ)
        env["IPYTHONDIR"] = str(proc.workdir / "ipython")
        env["NOTEBOOKOS_HOST"] = self.name
        env.pop("NOTEBOOKOS_CLUSTER_FILE", None)
        logfile = open(proc.workdir / "replica.log", "ab")
        proc.popen = subprocess.Popen(
            [self.python, "-m", "notebookos.kernels.replica", "-f", str(conn_file),
             f"--ReplicaKernel.config_path={config_file}"],
            stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=proc.config.cwd or proc.workdir,
            start_new_session=True,
        )
        logfile.close()
        log.info("started replica %s/%d on %s (pid %d)", proc.config.kernel_id, proc.config.replica, self.name,
                 proc.popen.pid)
