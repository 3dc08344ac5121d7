"""The contract between a host agent and the runtime that runs its replicas.

The agent decides everything about a replica (its folder, ports, configuration, command line and environment);
a runtime only starts that command somewhere, watches it, signals it, and finds the replicas still running after
the agent itself was restarted.
"""

from __future__ import annotations

import abc
import signal
from dataclasses import dataclass
from pathlib import Path

from ....kernels.protocol import REPLICA_EXIT_REASONS


@dataclass(frozen=True)
class LaunchSpec:
    """One replica to start: its identity, the command, and what it needs from the machine.

    ``settings``: the environment variables the agent sets for it (a process also inherits the agent's own).
    ``paths``: folders the replica reads and writes besides ``workdir`` (its objects, the notebook's folder).
    """

    host: str
    kernel_id: str
    replica: int
    workdir: Path
    command: tuple[str, ...]
    settings: dict[str, str]
    cwd: str
    paths: tuple[str, ...] = ()


class RunningReplica(abc.ABC):
    """A started replica, as its runtime sees it."""

    @property
    @abc.abstractmethod
    def pid(self) -> int | None:
        """Its process id on this machine while it runs (a container's main process included)."""

    @property
    @abc.abstractmethod
    def alive(self) -> bool: ...

    @property
    @abc.abstractmethod
    def exit_code(self) -> int | None:
        """How it ended (negative: killed by that signal), once it has; None while it runs or when unknown."""

    @property
    @abc.abstractmethod
    def exit_reason(self) -> str | None:
        """Why it ended, in words an operator acts on (an exit code, a signal, the OOM killer); None while it
        runs."""

    @abc.abstractmethod
    def signal(self, sig: int) -> None:
        """Send ``sig`` to it; nothing if it has ended."""

    @abc.abstractmethod
    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for it to end; whether it has."""

    def discard(self) -> None:  # noqa: B027 - optional: a process leaves nothing behind
        """Release what is left of it once it has ended and is not needed any more (a container)."""


class ReplicaRuntime(abc.ABC):
    """Starts replicas and finds the running ones again."""

    name: str
    python: str  # the Python that runs a replica, where the runtime runs it

    @abc.abstractmethod
    def launch(self, spec: LaunchSpec) -> RunningReplica:
        """Start the replica; raises RuntimeError with the reason when it cannot."""

    @abc.abstractmethod
    def running(self, host: str, replicas_dir: Path) -> dict[Path, RunningReplica]:
        """The replicas of ``host`` (folders under ``replicas_dir``) that a previous agent started and that still
        run, by folder."""


def describe_exit(code: int | None) -> str | None:
    """An exit status in words: 'exited with code 1', 'killed by SIGKILL'."""
    if code is None:
        return None
    if code in REPLICA_EXIT_REASONS:
        return f"exited with code {code}: {REPLICA_EXIT_REASONS[code]}"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"
