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
from ..gpu_broker.cluster.join_token import TokenError, read_token
from ..gpu_broker.cluster.launcher import start_cluster, write_remote_discovery_file
from ..gpu_broker.cluster.tls import TLSError, fetch_pinned_ca

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
                        help="GPUs of each logical host: a slice of the GPUs NVML sees (default: an equal share), "
                             "else virtual GPUs (default 1)")
    parser.add_argument("--max-hosts", type=int, default=None,
                        help="let the autoscaler add logical hosts up to this many (default: --hosts, no scale-out)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="where replicas keep journals and the object store (default: a new temporary folder)")
    network = parser.add_argument_group("a cluster of several machines")
    network.add_argument("--listen", default=None, metavar="ADDR:PORT",
                         help="the cluster service listens here, so that agents on GPU machines can join it")
    network.add_argument("--join-token-file", type=Path, default=None,
                         help="the token agents join with (created, mode 0600, if missing)")
    network.add_argument("--tls-auto", action="store_true",
                         help="the cluster service speaks TLS with a CA it makes (the join token file pins it)")
    network.add_argument("--tls-name", action="append", default=[], metavar="NAME",
                         help="with --tls-auto: another name agents reach the cluster service by (repeatable)")
    network.add_argument("--object-store", default=None, metavar="URL",
                         help="an object store every host reaches, e.g. redis://10.0.0.1:6379/0")
    network.add_argument("--cluster", default=None, metavar="URL",
                         help="use the cluster service at URL (`notebookos cluster`) instead of starting one")
    network.add_argument("--cluster-token-file", type=Path, default=None,
                         help="with --cluster: the file holding its token (its join token works)")
    network.add_argument("--cluster-ca", type=Path, default=None, metavar="FILE",
                         help="with --cluster: the CA (PEM) its https is verified against (default: the one its "
                              "token pins, else the system's)")
    parser.set_defaults(func=run, accepts_extra=True)


def _cluster_options(args: argparse.Namespace) -> tuple[str, ...]:
    """The service options ``notebookos lab`` passes through to the cluster it starts."""
    pairs = (("--max-hosts", args.max_hosts), ("--listen", args.listen), ("--join-token-file", args.join_token_file),
             ("--object-store", args.object_store), *(("--tls-name", name) for name in args.tls_name))
    options = tuple(item for flag, value in pairs if value is not None for item in (flag, str(value)))
    return options + (("--tls-auto",) if args.tls_auto else ())


def run(args: argparse.Namespace) -> int:
    if (args.cluster is None) != (args.cluster_token_file is None):
        print("notebookos: --cluster and --cluster-token-file go together", file=sys.stderr)
        return 2
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="notebookos-"))
    state_dir.mkdir(parents=True, exist_ok=True)
    cluster: subprocess.Popen | None = None
    try:
        if args.cluster:
            discovery = state_dir / "cluster.json"
            token = read_token(args.cluster_token_file)
            # The CA to verify the service against: given, or pinned by the token (fetched and checked), or none
            # (the system's CAs).
            ca_pem = (args.cluster_ca.read_text() if args.cluster_ca else
                      fetch_pinned_ca(args.cluster, token.ca_pin) if token.ca_pin else None)
            write_remote_discovery_file(discovery, args.cluster, token.secret, ca_pem)
            where = f"the cluster at {args.cluster}"
        else:
            cluster, discovery = start_cluster(state_dir, args.hosts, args.gpus_per_host, _cluster_options(args))
            where = f"a cluster of {args.hosts} logical hosts" + (f", agents join at {args.listen}" if args.listen
                                                                  else "")
    except (ClusterError, TokenError, TLSError) as err:
        print(f"notebookos: {err}", file=sys.stderr)
        return 1
    env = dict(os.environ, **{CLUSTER_FILE_ENV: str(discovery)})
    lab_args = [ENABLE_EXTENSION_ARG, *args.extra]
    if os.geteuid() == 0 and "--allow-root" not in lab_args:
        lab_args.append("--allow-root")
    print(f"notebookos: {where}, state in {state_dir}", flush=True)
    lab = subprocess.Popen([sys.executable, "-m", "jupyterlab", *lab_args], env=env)
    signal.signal(signal.SIGTERM, lambda *_: lab.terminate())
    try:
        return lab.wait()
    except KeyboardInterrupt:
        lab.send_signal(signal.SIGINT)
        return lab.wait()
    finally:
        if cluster is not None:
            cluster.terminate()
            cluster.wait(30)
