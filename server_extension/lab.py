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
from pathlib import Path

from ..gpu_broker.cluster.client import CLUSTER_FILE_ENV, ClusterError
from ..gpu_broker.cluster.launcher import start_cluster

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


def run(args: argparse.Namespace) -> int:
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="notebookos-"))
    state_dir.mkdir(parents=True, exist_ok=True)
    extra = ("--max-hosts", str(args.max_hosts)) if args.max_hosts else ()
    try:
        cluster, discovery = start_cluster(state_dir, args.hosts, args.gpus_per_host, extra)
    except ClusterError as err:
        print(f"notebookos: {err}", file=sys.stderr)
        return 1
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
