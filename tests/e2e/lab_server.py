"""Start and stop a real JupyterLab server for the browser tests.

The server runs as a subprocess of this venv's ``jupyter lab`` with its own config, data and runtime folders under a
temporary directory, so nothing from the user's ``~/.jupyter`` leaks in. The venv's own ``share/jupyter`` and
``etc/jupyter`` (``sys.prefix``) stay visible: that is where the kernelspecs (``python3``, ``notebookos``) and the
server extension switches live.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import psutil

JUPYTER = Path(sys.prefix) / "bin" / "jupyter"
# The notebookos service waits 2 s after its last kernel before exiting (EPHEMERAL_GRACE_S in
# gpu_broker/cluster/service/cluster_service.py).
EPHEMERAL_EXIT_S = 10.0

# Environment variables that would point Jupyter at the user's own folders or config; the isolated environment
# replaces or drops them.
_LEAKY_ENV = (
    "JUPYTER_PATH",
    "JUPYTER_CONFIG_PATH",
    "JUPYTERLAB_SETTINGS_DIR",
    "JUPYTERLAB_WORKSPACES_DIR",
    "JUPYTER_PORT",
    "JUPYTER_PORT_RETRIES",
    "JUPYTER_TOKEN",
)

# JupyterLab user settings written into the isolated config folder. Without them JupyterLab asks, in a toast, whether
# to fetch news from the internet (there is no internet here, and the toast can cover what a test clicks).
_USER_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def isolated_jupyter_env(base: Path) -> dict[str, str]:
    """An environment whose Jupyter config/data/runtime folders live under ``base``; ``sys.prefix`` stays visible."""
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY_ENV}
    for name in ("config", "data", "runtime"):
        (base / name).mkdir(parents=True, exist_ok=True)
    env.update(
        JUPYTER_CONFIG_DIR=str(base / "config"),
        JUPYTER_DATA_DIR=str(base / "data"),
        JUPYTER_RUNTIME_DIR=str(base / "runtime"),
        JUPYTER_PLATFORM_DIRS="1",
        # The venv's bin first, so a kernelspec whose argv says `python` or `notebookos` finds this venv's.
        PATH=f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerStartError(RuntimeError):
    pass


@dataclass
class LabServer:
    """A running ``jupyter lab`` subprocess."""

    url: str  # base URL with a trailing slash, e.g. http://127.0.0.1:40123/
    token: str
    root_dir: Path
    base_dir: Path
    log_path: Path
    process: subprocess.Popen
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def lab_url(self, path: str = "lab") -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.url}{path.lstrip('/')}{sep}token={self.token}"

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        """Call the REST API with the token in the Authorization header; returns decoded JSON or None."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path.lstrip("/"),
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no server log>"

    def stop(self, timeout: float = 20.0) -> None:
        """Shut down the server and its kernels: ``POST /api/shutdown``, then SIGTERM, then SIGKILL.

        Every descendant process (kernels and whatever they started) is recorded first and killed afterwards if it
        outlived the server; kernels run in their own sessions, so killing a process group would miss them.
        """
        proc = self.process
        try:
            descendants = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        if proc.poll() is None:
            try:
                self.api("POST", "api/shutdown", timeout=timeout)
            except (urllib.error.URLError, OSError, ValueError):
                pass  # already going down, or not answering: the signals below take over
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=timeout)
        # Processes that detached from the tree (double-forked daemons, e.g. an embedded cluster) still carry this
        # server's unique runtime folder in their environment.
        runtime_dir = str(self.base_dir / "runtime")
        detached = []
        for p in psutil.process_iter():
            try:
                if p.pid != os.getpid() and p.environ().get("JUPYTER_RUNTIME_DIR") == runtime_dir:
                    detached.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        # An ephemeral notebookos cluster exits by itself a couple of seconds after its last kernel: give it that.
        _, still_running = psutil.wait_procs([*descendants, *detached], timeout=EPHEMERAL_EXIT_S)
        leftovers = {p.pid: p for p in still_running if _alive(p)}
        if leftovers:
            warnings.warn(
                "processes outlived the Jupyter server's shutdown and were killed: "
                + ", ".join(f"{pid} {_cmdline(p)}" for pid, p in leftovers.items()),
                stacklevel=2,
            )
        for p in leftovers.values():
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(list(leftovers.values()), timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())[:200]
    except psutil.Error:
        return "?"


def prepare_lab_dirs(base_dir: Path) -> tuple[Path, dict[str, str]]:
    """The server's root folder and an environment isolated from the user's Jupyter folders, with JupyterLab's user
    settings that keep its pages quiet in tests; shared by every start of a lab server here."""
    base_dir.mkdir(parents=True, exist_ok=True)
    root_dir = base_dir / "root"
    root_dir.mkdir(exist_ok=True)
    env = isolated_jupyter_env(base_dir)
    for rel, settings in _USER_SETTINGS.items():
        path = base_dir / "config" / "lab" / "user-settings" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    return root_dir, env


def start_lab_server(
    base_dir: Path,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 90.0,
    attempts: int = 3,
) -> LabServer:
    """Start ``jupyter lab`` on a free loopback port and return once ``/api/status`` answers.

    ``extra_args`` are appended to the command line (e.g. ``--ServerApp.jpserver_extensions=...``). The port is
    picked free then bound by the server with ``port_retries=0``: if another process grabs it in between, the server
    exits and the start is retried with a new port instead of silently serving elsewhere.
    """
    root_dir, env = prepare_lab_dirs(base_dir)
    last_error = ""
    for attempt in range(1, attempts + 1):
        port = _free_port()
        token = secrets.token_hex(24)
        log_path = base_dir / f"server-{attempt}.log"
        cmd = [
            str(JUPYTER),
            "lab",
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root_dir}",
            "--ServerApp.disable_check_xsrf=False",
            # No internet here: do not fetch the news feed nor check PyPI for updates.
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            *extra_args,
        ]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd,
                env=env,
                cwd=root_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl+C on pytest must not hit the server mid-teardown
            )
        server = LabServer(
            url=f"http://127.0.0.1:{port}/",
            token=token,
            root_dir=root_dir,
            base_dir=base_dir,
            log_path=log_path,
            process=proc,
            extra_args=tuple(extra_args),
        )
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                server.api("GET", "api/status", timeout=2)
                return server
            except (urllib.error.URLError, OSError, ValueError):
                pass
            # Poll interval only: returns at once if the server exits meanwhile.
            try:
                proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            server.stop()
            raise ServerStartError(
                f"jupyter lab did not answer /api/status within {startup_timeout:.0f}s\n"
                f"command: {' '.join(cmd)}\n--- server log ---\n{server.log_tail()}"
            )
        last_error = server.log_tail()
        if "already in use" not in last_error:
            break
    raise ServerStartError(
        f"jupyter lab exited during startup (exit code {proc.returncode})\n"
        f"command: {' '.join(cmd)}\n--- server log ---\n{last_error}"
    )
