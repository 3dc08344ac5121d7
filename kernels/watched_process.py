"""Watching a process that is not our child until it exits.

The kernel front watches the Jupyter server that manages it, a restarted server watches the fronts it adopted, and
``notebookos lab`` watches a cluster service an earlier run left behind: none of them is the watcher's child, so
``Popen.wait`` cannot be used.
"""

from __future__ import annotations

import os
import select
import signal


class WatchedProcess:
    """A process that is not our child, watched until it exits (a Jupyter server, for the front; an adopted front,
    for a restarted server; a cluster service started by an earlier ``notebookos lab``).

    Through a pidfd where the OS has them (Linux 5.3+): it reports the exit even of a zombie nobody reaps (orphans
    of a killed server go to an init that may never reap them), and a later process that reuses the pid is never
    taken for it. Elsewhere, by signal 0.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd: int | None = None
        self._exited = False
        try:
            self._fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._exited = True
        except (AttributeError, OSError):
            pass  # no pidfds on this system: signal 0 it is

    def alive(self) -> bool:
        if self._exited:
            return False
        if self._fd is not None:
            self._exited = bool(select.select([self._fd], [], [], 0)[0])
        else:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                self._exited = True
            except PermissionError:
                pass  # it exists, as another user's process
        return not self._exited

    def send_signal(self, signum: int) -> None:
        """ProcessLookupError once it has exited (or is no longer watched: its pid may be another's by then)."""
        if self._exited:
            raise ProcessLookupError(f"process {self.pid} has exited")
        if self._fd is not None:
            signal.pidfd_send_signal(self._fd, signum)
        else:
            os.kill(self.pid, signum)

    def close(self) -> None:
        """Stop watching: alive() is False from then on."""
        self._exited = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
