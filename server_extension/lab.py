"""``notebookos lab``: the embedded cluster plus JupyterLab, in one command.

Starts the cluster service on this machine (N logical hosts), points the notebookos kernelspec at it through
``NOTEBOOKOS_CLUSTER_FILE``, and runs JupyterLab in the foreground with the notebookos server extension (the REST
API under ``/api/notebookos/``) enabled. Arguments it does not know are passed to JupyterLab unchanged
(``--port``, ``--no-browser``, ``--IdentityProvider.token=...``), so it can be started headless for scripts and tests.
Stopping JupyterLab stops the cluster and every replica.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..gpu_broker.cluster.client import CLUSTER_FILE_ENV, ClusterClient

CLUSTER_START_TIMEOUT_S = 60.0
# Enables the notebookos server extension (the REST API under /api/notebookos/) in the Jupyter server started here;
# merged with the extensions Jupyter's config files enable.
ENABLE_EXTENSION_ARG = "--ServerApp.jpserver_extensions=notebookos.server_extension=True"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lab", help="start an embedded cluster and JupyterLab",
        description="Start an embedded notebookos cluster and JupyterLab. Unknown options go to JupyterLab.",
    )
    parser.add_argument("--hosts", type=int, default=4, help="logical hosts in the embedded cluster (default 4)")
    parser.add_argument("--gpus-per-host", type=int, default=None,
                        help="GPUs of each logical host (default: the GPUs NVML sees, else 1 virtual GPU)")
    parser.add_argument("--max-hosts", type=int, default=None,
                        help="let the autoscaler add logical hosts up to this many (default: --hosts, no scale-out)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="where replicas keep journals and the object store (default: a new temporary folder)")
    parser.set_defaults(func=run, accepts_extra=True)


def start_cluster(state_dir: Path, hosts: int, gpus_per_host: int | None = None,
                  extra_args: tuple[str, ...] = ()) -> tuple[subprocess.Popen, Path]:
    """Start the cluster service and wait until it answers; returns the process and its discovery file.
    ``gpus_per_host`` None: the GPUs NVML sees on this machine, else 1 virtual GPU per host."""
    discovery = state_dir / "cluster.json"
    discovery.unlink(missing_ok=True)
    # A session of its own: a Ctrl-C meant for JupyterLab (which asks for confirmation) must not stop the cluster
    # under it; the cluster is stopped when JupyterLab has exited.
    proc = subprocess.Popen([sys.executable, "-m", "notebookos.gpu_broker.cluster.service", "--state-dir", str(state_dir),
                             "--hosts", str(hosts), "--discovery-file", str(discovery),
                             *(("--gpus-per-host", str(gpus_per_host)) if gpus_per_host else ()), *extra_args],
                            start_new_session=True)
    deadline = time.monotonic() + CLUSTER_START_TIMEOUT_S
    while not discovery.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"notebookos: the cluster service did not start (exit code {proc.poll()})")
        time.sleep(0.05)
    ClusterClient.from_file(discovery)  # validates the file
    return proc, discovery


def run(args: argparse.Namespace) -> int:
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="notebookos-"))
    state_dir.mkdir(parents=True, exist_ok=True)
    extra = ("--max-hosts", str(args.max_hosts)) if args.max_hosts else ()
    cluster, discovery = start_cluster(state_dir, args.hosts, args.gpus_per_host, extra)
    env = dict(os.environ, **{CLUSTER_FILE_ENV: str(discovery)})
    lab_args = [ENABLE_EXTENSION_ARG, *args.extra]
    if os.geteuid() == 0 and "--allow-root" not in lab_args:
        lab_args.append("--allow-root")
    print(f"notebookos: embedded cluster of {args.hosts} hosts, state in {state_dir}", flush=True)
    lab = subprocess.Popen([sys.executable, "-m", "jupyterlab", *lab_args], env=env)
    signal.signal(signal.SIGTERM, lambda *_: lab.terminate())
    try:
        return lab.wait()
    except KeyboardInterrupt:
        lab.send_signal(signal.SIGINT)
        return lab.wait()
    finally:
        cluster.terminate()
        cluster.wait(30)
