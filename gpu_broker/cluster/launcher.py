"""Starting the cluster service as a process of its own, and finding (or starting) the one a Jupyter client uses.

``notebookos lab``, the tests and the benchmarks start a cluster service with :func:`start_cluster`; a provisioner
with no cluster configured calls :func:`ensure_cluster`, which starts an ephemeral one through the same function
that exits once its last kernel is gone, so any Jupyter client (jupyter_client, nbclient, papermill, VS Code) can
use the notebookos kernelspec with nothing else running. The service writes its discovery file (URL, token, pid)
only once it is listening, so the file's presence means "serving".
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jupyter_core.paths import secure_write

from .client import ClusterClient, ClusterError, discovery_file
from .join_token import read_token
from .tls import fetch_pinned_ca

SERVICE_MODULE = "notebookos.gpu_broker.cluster.service"
START_TIMEOUT_S = 60.0
START_POLL_S = 0.05
BUSY_RETRIES = 5  # alive() checks (5 s time-out each, 1 s apart) of a cluster whose process still runs
_LOCK_WAITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notebookos-cluster-lock")


def start_cluster(
    state_dir: Path,
    hosts: int,
    gpus_per_host: int | None = None,
    extra_args: tuple[str, ...] = (),
    discovery: Path | None = None,
    log_path: Path | None = None,
) -> tuple[subprocess.Popen, Path]:
    """Start a cluster service and wait until it serves; returns the process and its discovery file.

    ``gpus_per_host`` None: the GPUs NVML sees on this machine, else 1 virtual GPU per host. ``discovery``: where the
    service writes its discovery file (default ``state_dir/cluster.json``). ``log_path``: where its output goes
    (default: inherited). The service runs in a session of its own: a Ctrl-C meant for JupyterLab (which asks for
    confirmation) must not stop the cluster under it. ClusterError if it exits or does not serve in time.
    """
    discovery = discovery or state_dir / "cluster.json"
    discovery.unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-m",
        SERVICE_MODULE,
        "--state-dir",
        str(state_dir),
        "--hosts",
        str(hosts),
        "--discovery-file",
        str(discovery),
        *(("--gpus-per-host", str(gpus_per_host)) if gpus_per_host is not None else ()),
        *extra_args,
    ]
    output = open(log_path, "ab") if log_path else None
    try:
        proc = subprocess.Popen(
            argv,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        if output:
            output.close()
    where = f"; see {log_path}" if log_path else ""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not discovery.exists():
        if proc.poll() is not None:
            raise ClusterError(f"the notebookos cluster service exited at start (code {proc.returncode}){where}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise ClusterError(f"the notebookos cluster service did not start within {START_TIMEOUT_S:.0f} s{where}")
        time.sleep(START_POLL_S)
    ClusterClient.from_file(discovery)  # validates the file
    return proc, discovery


def stop_cluster(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Stop a service started by :func:`start_cluster`: SIGTERM (it stops its replicas), SIGKILL after ``grace_s``."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def ensure_cluster(n_hosts: int = 4) -> ClusterClient:
    """The live cluster named by the discovery file, or a new ephemeral one started for this caller.

    Callers in other processes (and other kernels starting in this one) take turns through a file lock, waited for
    on a thread of its own: on asyncio's shared executor, many kernels starting at once would fill every thread
    with lock waits and starve the name lookups of the very check that the cluster is alive.
    """
    path = discovery_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path.with_suffix(".lock"), "w")
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(_LOCK_WAITER, fcntl.flock, lock, fcntl.LOCK_EX)
        if path.exists():
            client = ClusterClient.from_file(path)
            if _names_remote_cluster(path):
                if await client.alive():
                    return client
                raise ClusterError(
                    f"the notebookos cluster at {client.url} (named in {path}) does not answer: "
                    "start it on its machine (notebookos cluster --listen ADDR:PORT "
                    "--join-token-file F) and check that this machine can reach it"
                )
            for _ in range(BUSY_RETRIES):
                if await client.alive():
                    return client
                if not _process_exists(path):
                    break
                await asyncio.sleep(1.0)  # busy rather than gone: never start a second cluster over a live one
            else:
                raise ClusterError(
                    f"the notebookos cluster named in {path} runs but has not answered for "
                    f"{BUSY_RETRIES * 6} s; see its log (cluster.log in its state folder)"
                )
            path.unlink(missing_ok=True)
        state_dir = Path(tempfile.mkdtemp(prefix="notebookos-cluster-"))
        await loop.run_in_executor(
            _LOCK_WAITER,
            lambda: start_cluster(
                state_dir, n_hosts, extra_args=("--ephemeral",), discovery=path, log_path=state_dir / "cluster.log"
            ),
        )
        return ClusterClient.from_file(path)
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def write_remote_discovery_file(path: Path, url: str, token: str, ca_pem: str | None = None) -> None:
    """Name a cluster service that runs elsewhere (``notebookos lab --cluster``): no pid, so it is never replaced
    by an on-demand local cluster when it does not answer. ``ca_pem``: the CA to verify it against."""
    with secure_write(str(path)) as f:
        json.dump({"url": url, "token": token, "pid": None, "ca_pem": ca_pem}, f)


def name_remote_cluster(path: Path, url: str, token_file: Path, ca_file: Path | None = None) -> None:
    """Write the discovery file of the cluster service at ``url`` from its token file: the CA to verify it against
    is ``ca_file``, else the one the token pins (fetched and checked against the pin), else none (the system's
    CAs). TokenError or TLSError, saying what is wrong, when the token or the CA will not do."""
    token = read_token(token_file)
    ca_pem = ca_file.read_text() if ca_file else fetch_pinned_ca(url, token.ca_pin) if token.ca_pin else None
    write_remote_discovery_file(path, url, token.secret, ca_pem)


def _names_remote_cluster(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("pid", 0) is None
    except (OSError, ValueError, AttributeError):
        return False


def _process_exists(path: Path) -> bool:
    """Whether the process that wrote the discovery file still runs."""
    try:
        os.kill(int(json.loads(path.read_text())["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True
