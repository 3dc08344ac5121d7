"""A Jupyter command (``jupyter server``, ``jupyter lab``) run as a real process on loopback, for tests of what
installing the package does to every Jupyter server of the environment.

Its config, data and runtime folders are temporary and every ``JUPYTER_*`` variable of the test process is left
out, so only what the environment itself installs (``<prefix>/etc/jupyter``, ``<prefix>/share/jupyter``) and the
command line configure it. It listens on a port of its choosing (``--ServerApp.port=0``), which is read from the
line it logs when it starts.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
_SERVING = re.compile(r"(http://127\.0\.0\.1:\d+/)")


@dataclass
class JupyterProcess:
    argv: list[str]
    token: str
    process: subprocess.Popen
    url: str = ""  # http://127.0.0.1:PORT/ once it serves
    log: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None  # appends the rest of its output to ``log``

    def get(self, path: str) -> tuple[int, str]:
        """GET ``path`` (relative to the base URL) with the token: the status and the body."""
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except urllib.error.URLError as err:
            raise AssertionError(
                f"GET {path}: {err.reason} (exit status {self.process.poll()}):\n{self.output()}"
            ) from None

    def output(self) -> str:
        return "\n".join(self.log)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (Jupyter shuts its kernels and extensions down), SIGKILL if it has not exited in ``timeout``;
        its exit status, once its output is all in ``log``."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.reader is not None:
            self.reader.join()
        return self.process.returncode


def start_jupyter(
    command: Sequence[str], home: Path, token: str, extra_args: Sequence[str] = (), env: dict[str, str] | None = None
) -> JupyterProcess:
    """Start ``command`` (e.g. ``[".venv/bin/jupyter", "server"]``) and return once it serves; AssertionError with
    its output if it exits or does not serve within START_TIMEOUT_S."""
    base = {k: v for k, v in (env if env is not None else os.environ).items() if not k.startswith("JUPYTER")}
    for name in ("config", "data", "runtime", "root"):
        (home / name).mkdir(parents=True, exist_ok=True)
    base.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        PYTHONUNBUFFERED="1",
    )
    argv = [
        *command,
        "--no-browser",
        "--allow-root",
        "--ServerApp.ip=127.0.0.1",
        "--ServerApp.port=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={home / 'root'}",
        *extra_args,
    ]
    process = subprocess.Popen(
        argv,
        env=base,
        cwd=home / "root",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = JupyterProcess(argv, token, process)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    running = False
    while not server.url:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            server.stop()
            raise AssertionError(
                f"{' '.join(argv)} did not serve within {START_TIMEOUT_S:.0f} s:\n{server.output()}"
            ) from None
        if line is None:
            process.wait()
            raise AssertionError(f"{' '.join(argv)} exited with {process.returncode}:\n{server.output()}") from None
        server.log.append(line)
        running = running or "is running at" in line  # the URL follows on the next line
        if running and (found := _SERVING.search(line)):
            server.url = found.group(1)

    # Jupyter logs its URL before its event loop runs, and binds the port on that loop: connect until it accepts.
    port = int(server.url.rsplit(":", 1)[1].strip("/"))
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                server.stop()
                raise AssertionError(f"{' '.join(argv)} logged {server.url} but does not listen there") from None
            try:
                process.wait(timeout=0.05)  # the retry interval, cut short if it exits
            except subprocess.TimeoutExpired:
                continue
            raise AssertionError(f"{' '.join(argv)} exited with {process.returncode}:\n{server.output()}") from None

    def keep_reading() -> None:  # the rest of its output, for a failing test's message
        while (line := lines.get()) is not None:
            server.log.append(line)

    server.reader = threading.Thread(target=keep_reading, daemon=True)
    server.reader.start()
    return server
