"""A warm template that replica processes are forked from.

A replica started from scratch spends about a second importing (Python, ipykernel, IPython, pysyncobj, zmq, and
torch once its notebook imports it), and every replica holds its own copy of what those imports built: about 150 MiB
of private memory each with torch. A host agent instead starts this template once; it imports the replica's code and
the libraries notebooks load (``--preload``, torch by default) and then forks one child per replica the agent asks
for. A forked replica starts in tens of milliseconds and shares those pages with its siblings, copy on write;
``gc.freeze()`` before serving keeps the collector from writing to them (it would otherwise touch every object's
header at its first full collection and copy every page).

The agent talks to the template over a Unix socket in a private folder (one JSON line each way): a request names
the replica's arguments, environment, working folder, log file and exit file; the answer is the child's pid. The
children are the template's, not the agent's, so the template reaps them and writes each one's exit status into
its exit file (the status is written before the child is reaped, so a replica's pid disappears only after its exit
status can be read). The template exits when its agent does (end of file on its standard input); its children live
on, in sessions of their own, as replicas started from scratch do.

A forked child returns from :meth:`Template.serve` to :func:`main`, which runs the replica module as ``python -m``
would, so that it ends as such a process does: exit code, traceback, ``atexit`` handlers and flushed output alike.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

REPLICA_MODULE = "notebookos.kernels.replica"
TEMPLATE_MODULE = "notebookos.kernels.replica_template"
MAX_REQUEST_BYTES = 1 << 20
# What ipykernel imports only when a kernel starts (its debugger, IPython's completer helpers, the history's sqlite3):
# imported here, a forked replica's start skips them too (measured: 0.10 s to 0.045 s on this machine's 2 cores).
KERNEL_START_IMPORTS = (
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipykernel.debugger",
    "debugpy",
    "IPython.core.debugger",
    "IPython.core.completerlib",
    "IPython.extensions.storemagic",
    "psutil",
    "sqlite3",
    "tornado.platform.asyncio",
)


@dataclass(frozen=True)
class LaunchRequest:
    """One replica to fork: the arguments after ``python -m notebookos.kernels.replica``, its whole environment,
    its working folder, and the files its output and its exit status go to."""

    args: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    log: str
    exit_file: str

    @classmethod
    def from_json(cls, line: bytes) -> LaunchRequest:
        """ValueError, naming the problem, when the line is not a request."""
        body = json.loads(line)
        if not isinstance(body, dict):
            raise ValueError("a launch request is a JSON object")
        try:
            request = cls(tuple(body["args"]), dict(body["env"]), body["cwd"], body["log"], body["exit_file"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"a launch request needs args, env, cwd, log and exit_file: {err}") from None
        strings = [*request.args, *request.env, *request.env.values(), request.cwd, request.log, request.exit_file]
        if not all(isinstance(value, str) for value in strings):
            raise ValueError("every argument, variable, folder and file of a launch request is a string")
        return request

    def to_json(self) -> bytes:
        body = {"args": list(self.args), "env": self.env, "cwd": self.cwd, "log": self.log, "exit_file": self.exit_file}
        return json.dumps(body).encode() + b"\n"


class Template:
    """The serving loop: accept launch requests, fork, reap."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._exit_files: dict[int, str] = {}  # child pid -> where its exit status goes

    def serve(self) -> LaunchRequest:
        """Serve until the agent goes away (then exit); return only in a forked child, with its request."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound under another name and renamed: the socket's path exists only once it accepts, which is how the
        # agent knows the template is ready.
        bound = self.socket_path.with_name(self.socket_path.name + ".binding")
        bound.unlink(missing_ok=True)
        listener.bind(str(bound))
        listener.listen(16)
        os.rename(bound, self.socket_path)
        signal.signal(signal.SIGCHLD, self._reap)
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        selector.register(sys.stdin.fileno(), selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                if key.fileobj is listener:
                    request = self._answer(listener)
                    if request is not None:  # this is the child
                        selector.close()
                        listener.close()
                        return request
                elif not os.read(sys.stdin.fileno(), 4096):
                    self.socket_path.unlink(missing_ok=True)
                    sys.exit(0)

    def _answer(self, listener: socket.socket) -> LaunchRequest | None:
        """One connection: read its request, fork, answer with the pid (or the error). In the child, the request."""
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            try:
                request = LaunchRequest.from_json(_read_line(conn))
            except (OSError, ValueError) as err:
                _send(conn, {"error": f"bad launch request: {err}"})
                return None
            # SIGCHLD waits until the parent has noted where the child's exit status goes: a child that ends at once
            # is reaped only after that.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
            try:
                pid = os.fork()
            except OSError as err:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                _send(conn, {"error": f"cannot fork a replica: {err.strerror}"})
                return None
            if pid == 0:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                return request
            self._exit_files[pid] = request.exit_file
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            if not _send(conn, {"pid": pid}):
                # The agent gave up waiting and starts the replica from scratch: this one would hold its ports.
                os.kill(pid, signal.SIGKILL)
        return None

    def _reap(self, signum: int, frame: object) -> None:
        """Write each ended child's exit status (negative: the signal that killed it), then reap it."""
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
            exit_file = self._exit_files.pop(info.si_pid, None)
            if exit_file is not None:
                try:
                    written = Path(exit_file + ".tmp")
                    written.write_text(str(code))
                    written.replace(exit_file)
                except OSError:
                    pass  # its folder is gone: the replica was stopped and its folder removed
            os.waitpid(info.si_pid, 0)


def become_replica(request: LaunchRequest) -> None:
    """In the forked child: take the request's session, output, folder and environment, then run the replica
    module as ``python -m`` would."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    log = os.open(request.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.chdir(request.cwd)
    os.environ.clear()
    os.environ.update(request.env)
    # Python's ``random`` reseeds itself in a forked child; numpy's global generator does not, and every replica
    # forked from one template would draw the same numbers (a process started from scratch seeds it from the OS).
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    sys.argv = [REPLICA_MODULE, *request.args]
    runpy.run_module(REPLICA_MODULE, run_name="__main__", alter_sys=True)


def preload(modules: list[str]) -> None:
    """Import the replica's code, what a kernel's start imports, and ``modules``; a module that is not installed
    is skipped, saying so."""
    importlib.import_module(REPLICA_MODULE)
    for name in (*KERNEL_START_IMPORTS, *modules):
        try:
            importlib.import_module(name)
        except ImportError as err:
            print(f"notebookos replica template: not preloading {name}: {err}", file=sys.stderr, flush=True)
    gc.collect()
    gc.freeze()


def main() -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {TEMPLATE_MODULE}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", type=Path, required=True, help="the Unix socket to serve launch requests on")
    parser.add_argument("--preload", default="", help="modules to import before serving, comma-separated")
    args = parser.parse_args()
    preload([name for name in args.preload.split(",") if name.strip()])
    sys.stdout.flush()
    sys.stderr.flush()
    become_replica(Template(args.socket).serve())


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            raise ValueError("the connection closed before the end of the request")
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            raise ValueError(f"a request is at most {MAX_REQUEST_BYTES} bytes")
    return data


def _send(conn: socket.socket, body: dict[str, object]) -> bool:
    """Whether the answer reached the agent."""
    try:
        conn.sendall(json.dumps(body).encode() + b"\n")
    except OSError:
        return False
    return True


if __name__ == "__main__":
    main()
