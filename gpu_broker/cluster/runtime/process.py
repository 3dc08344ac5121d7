"""Replicas as processes of the agent's machine, in sessions of their own so that they outlive the agent."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .base import LaunchSpec, ReplicaRuntime, RunningReplica, describe_exit

PID_FILE = "replica.pid"
LOG_FILE = "replica.log"
REPLICA_MODULE = "notebookos.kernels.replica"


class LocalProcess(RunningReplica):
    """A replica process: this agent's child (``popen``) or one a previous agent started (``adopted_pid``; not
    our child, so its exit status cannot be known)."""

    def __init__(self, popen: subprocess.Popen | None = None, adopted_pid: int | None = None) -> None:
        self.popen = popen
        self.adopted_pid = adopted_pid

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else self.adopted_pid

    @property
    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self.adopted_pid is not None and is_replica_process(self.adopted_pid)

    @property
    def exit_code(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    @property
    def exit_reason(self) -> str | None:
        if self.alive:
            return None
        return describe_exit(self.exit_code) or "ended (adopted: its exit status is unknown)"

    def signal(self, sig: int) -> None:
        if self.alive and self.pid is not None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float) -> bool:
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while self.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.alive


class ProcessRuntime(ReplicaRuntime):
    name = "process"

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python

    def launch(self, spec: LaunchSpec) -> LocalProcess:
        with open(spec.workdir / LOG_FILE, "ab") as logfile:
            popen = subprocess.Popen(
                list(spec.command),
                stdout=logfile,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **spec.settings},
                cwd=spec.cwd,
                start_new_session=True,
            )
        (spec.workdir / PID_FILE).write_text(str(popen.pid))
        return LocalProcess(popen=popen)

    def running(self, host: str, replicas_dir: Path) -> dict[Path, RunningReplica]:
        found: dict[Path, RunningReplica] = {}
        for pid_file in replicas_dir.glob(f"*/replica-*/{PID_FILE}"):
            try:
                pid = int(pid_file.read_text())
            except (OSError, ValueError):
                continue
            if is_replica_process(pid):
                found[pid_file.parent] = LocalProcess(adopted_pid=pid)
        return found


def is_replica_process(pid: int) -> bool:
    """Whether ``pid`` is a running replica process (not a pid the system has since given to something else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return REPLICA_MODULE.encode() in cmdline and status.rsplit(")", 1)[1].split()[0] != "Z"
