"""The agent's side of the replica template (``kernels/replica_template.py``): start it and ask it to fork
replicas (``process.ForkedReplica`` follows a forked one).

One template serves every host agent of a process (the embedded cluster runs several): what differs between hosts
(the environment, the folders) travels in each request. It starts with the first replica launched and is ready a
couple of seconds later, once it has imported what it preloads; replicas launched before that start from scratch.
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

from ....kernels.replica_template import TEMPLATE_MODULE, LaunchRequest
from .base import describe_exit

log = logging.getLogger(__name__)

FORK_TIMEOUT_S = 10.0
DEFAULT_PRELOAD = ("torch",)  # what most notebooks on a GPU pool import; skipped where it is not installed


class TemplateError(RuntimeError):
    """The template could not fork a replica; the agent starts it from scratch instead."""


class ReplicaTemplate:
    """One template process of ``python`` with ``preload`` imported."""

    def __init__(self, python: str, preload: tuple[str, ...]) -> None:
        self.python = python
        self.preload = preload
        self._folder: Path | None = None  # made when it starts: an agent that launches nothing leaves nothing
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ReplicaTemplate({self.python!r}, preload={self.preload!r})"

    @property
    def socket_path(self) -> Path:
        """Where the template accepts launch requests (in a private folder made at its start)."""
        if self._folder is None:
            raise RuntimeError("the replica template has not been started")
        return self._folder / "template.sock"

    @property
    def ready(self) -> bool:
        """Started, alive and accepting launch requests; starts it when it is not running."""
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._start()
                return False
            return self.socket_path.exists()

    def _start(self) -> None:
        if self._process is not None:
            log.warning(
                "the replica template (pid %d) %s; starting another",
                self._process.pid,
                describe_exit(self._process.returncode),
            )
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="notebookos-template-"))  # 0700: only this user connects
        self.socket_path.unlink(missing_ok=True)
        # Its standard input is its lifeline: the template exits when this process does and the pipe closes.
        self._process = subprocess.Popen(
            [
                self.python,
                "-m",
                TEMPLATE_MODULE,
                "--socket",
                str(self.socket_path),
                "--preload",
                ",".join(self.preload),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.info(
            "started the replica template (pid %d, preloading %s)",
            self._process.pid,
            ", ".join(self.preload) or "nothing but the replica's code",
        )

    def fork(self, args: tuple[str, ...], env: dict[str, str], cwd: str, logfile: Path, exit_file: Path) -> int:
        """Have the template fork a replica, whose exit status it will write into ``exit_file``; its pid.
        TemplateError with the reason when it cannot."""
        exit_file.unlink(missing_ok=True)  # from this folder's previous replica
        request = LaunchRequest(args, env, cwd, str(logfile), str(exit_file))
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(FORK_TIMEOUT_S)
                conn.connect(str(self.socket_path))
                conn.sendall(request.to_json())
                answer = json.loads(conn.makefile("rb").readline() or b"{}")
        except (OSError, ValueError) as err:
            raise TemplateError(f"the replica template did not answer: {err}") from err
        if "pid" not in answer:
            raise TemplateError(answer.get("error", "the replica template closed the connection"))
        return int(answer["pid"])

    def close(self) -> None:
        """Stop the template (its forked replicas go on)."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None and process.poll() is None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


_shared: dict[tuple[str, tuple[str, ...]], ReplicaTemplate] = {}
_shared_lock = threading.Lock()


def shared_template(python: str, preload: tuple[str, ...]) -> ReplicaTemplate:
    """The process's template for ``python`` and ``preload``, made at the first call and stopped at exit."""
    with _shared_lock:
        key = (python, preload)
        if key not in _shared:
            _shared[key] = ReplicaTemplate(python, preload)
            atexit.register(_shared[key].close)
        return _shared[key]
