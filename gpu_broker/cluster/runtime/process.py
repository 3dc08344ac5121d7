"""Replicas as processes of the agent's machine, in sessions of their own so that they outlive the agent: forked
from the warm replica template (``template.py``) once it is ready, started from scratch before that or without one."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from ....kernels.replica_template import REPLICA_MODULE, TEMPLATE_MODULE
from .base import LaunchSpec, ReplicaRuntime, RunningReplica, describe_exit
from .template import DEFAULT_PRELOAD, ReplicaTemplate, TemplateError, shared_template

log = logging.getLogger(__name__)

PID_FILE = "replica.pid"
LOG_FILE = "replica.log"
EXIT_FILE = "replica.exit"  # a forked replica's exit status, written by its template
# How long a forked replica seen gone waits for its template to write its exit status, and then to reap it.
EXIT_STATUS_WAIT_S = 1.0


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


class ForkedReplica(RunningReplica):
    """A replica forked by the template: the template's child, not the agent's. Its exit status comes from its exit
    file, which the template writes before it reaps the child."""

    def __init__(self, pid: int, exit_file: Path) -> None:
        self._pid = pid
        self.exit_file = exit_file

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def alive(self) -> bool:
        return not self.exit_file.exists() and is_replica_process(self._pid)

    @property
    def exit_code(self) -> int | None:
        if self.alive:
            return None
        deadline = time.monotonic() + EXIT_STATUS_WAIT_S  # seen gone an instant before its status was written
        while True:
            try:
                return int(self.exit_file.read_text())
            except (OSError, ValueError):
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.02)

    @property
    def exit_reason(self) -> str | None:
        if self.alive:
            return None
        return describe_exit(self.exit_code) or "ended (its exit status is unknown: its template ended first)"

    def signal(self, sig: int) -> None:
        if self.alive:
            try:
                os.kill(self._pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float) -> bool:
        """Whether it ended within ``timeout``. The template writes the exit status, then reaps the child: both are
        waited for too (briefly). A process on its way out is no replica any more to ``/proc`` (its command line is
        gone) an instant before it is a zombie, and before its status is written; a stop that returned then let the
        kernel's next replica in the same folder (a start placed again at once) find this one's status as its own,
        and pass for dead. So when a stop returns, the status is written and the pid is gone, as a Popen's is."""
        deadline = time.monotonic() + timeout
        while self.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.alive:
            return False
        settled_by = time.monotonic() + EXIT_STATUS_WAIT_S
        while (not self.exit_file.exists() or _zombie(self._pid)) and time.monotonic() < settled_by:
            time.sleep(0.01)
        return True


class ProcessRuntime(ReplicaRuntime):
    """``preload``: what the replica template imports before forking replicas (None: no template, every replica
    starts from scratch)."""

    name = "process"

    def __init__(self, python: str = sys.executable, preload: tuple[str, ...] | None = DEFAULT_PRELOAD) -> None:
        self.python = python
        self.template: ReplicaTemplate | None = None if preload is None else shared_template(python, preload)

    def launch(self, spec: LaunchSpec) -> RunningReplica:
        running: RunningReplica | None = self._fork(spec) if self.template is not None else None
        if running is None:
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
            running = LocalProcess(popen=popen)
        (spec.workdir / PID_FILE).write_text(str(running.pid))
        return running

    def _fork(self, spec: LaunchSpec) -> ForkedReplica | None:
        """The replica forked from the template; None (start it from scratch) while the template is not ready or
        when the command is not the replica's."""
        assert self.template is not None
        prefix = (self.python, "-m", REPLICA_MODULE)
        if spec.command[:3] != prefix or not self.template.ready:
            return None
        exit_file = spec.workdir / EXIT_FILE
        try:
            pid = self.template.fork(
                spec.command[3:], {**os.environ, **spec.settings}, spec.cwd, spec.workdir / LOG_FILE, exit_file
            )
        except TemplateError as err:
            log.warning("starting replica %s/%d from scratch: %s", spec.kernel_id, spec.replica, err)
            return None
        return ForkedReplica(pid, exit_file)

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


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def is_replica_process(pid: int) -> bool:
    """Whether ``pid`` is a running replica process (started from scratch, or forked from the template, whose
    command line it carries), not a pid the system has since given to something else."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    ours = any(module.encode() in cmdline.split(b"\0") for module in (REPLICA_MODULE, TEMPLATE_MODULE))
    return ours and not _zombie(pid)
