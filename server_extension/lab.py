"""``notebookos lab``: the embedded cluster plus JupyterLab, in one command.

Starts the cluster service on this machine (N logical hosts), points the notebookos kernelspec at it through
``NOTEBOOKOS_CLUSTER_FILE``, and runs JupyterLab in the foreground with the notebookos server extension (the REST
API under ``/api/notebookos/``) enabled. Arguments it does not know are passed to JupyterLab unchanged
(``--port``, ``--no-browser``, ``--IdentityProvider.token=...``), so it can be started headless for scripts and tests.
Stopping JupyterLab (Ctrl-C, SIGTERM to this command, or JupyterLab's own shut down) stops the cluster and every
replica, and removes the temporary state folder. Everything logs in Jupyter's format, at ``--log-level``.

With ``--state-dir`` kernels outlive a JupyterLab that is killed or crashes: JupyterLab runs with the persistent
kernel manager and session database under ``STATE/jupyter`` (kernel_persistence.py), the cluster is left running, and
the kernel fronts wait ``--kernel-grace`` seconds for ``notebookos lab --state-dir STATE`` to take them back; that
command finds the running cluster through ``STATE/cluster.json`` and uses it rather than starting another.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..gpu_broker.cluster.client import CLUSTER_FILE_ENV, ClusterClient, ClusterError
from ..gpu_broker.cluster.join_token import TokenError
from ..gpu_broker.cluster.launcher import name_remote_cluster, start_cluster, stop_cluster
from ..gpu_broker.cluster.options import LOG_LEVELS, configure_logging, gpu_count, hosts_problem, log_level
from ..gpu_broker.cluster.tls import TLSError
from ..gpu_broker.scheduler.policies import LIVE_POLICY, POLICIES
from ..kernels.watched_process import WatchedProcess

# Enables the notebookos server extension (the REST API under /api/notebookos/) in the Jupyter server started here,
# merged with the extensions Jupyter's config files enable. Installing the package enables it already
# (etc/jupyter/jupyter_server_config.d/notebookos.json); this keeps the one-command start whole where that switch is
# missing (an editable install without `make`) or was turned off.
ENABLE_EXTENSION_ARG = "--ServerApp.jpserver_extensions=notebookos.server_extension=True"
# How long kernels outlive a killed or crashed JupyterLab by default: time for a supervisor (systemd's Restart=) or a
# person who sees the terminal to start it again. Meanwhile the replicas keep their memory and their place on the
# hosts, but no GPU: GPUs are bound per cell, and a cell that was running gives them back when it ends.
DEFAULT_KERNEL_GRACE_S = 300.0
# Under --state-dir: the kernel records, their lock and the session database of the Jupyter server.
JUPYTER_STATE = "jupyter"
CLUSTER_STOP_S = 30.0
# A cluster service that dies while JupyterLab runs is started again on its state folder (it takes its kernels
# back), checked this often; one that dies this many times within the window is left down, with a message.
CLUSTER_WATCH_S = 0.5
CLUSTER_RESTARTS, CLUSTER_RESTART_WINDOW_S = 5, 60.0

log = logging.getLogger("notebookos")  # in Jupyter's format, as JupyterLab's lines and the cluster service's


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lab",
        help="start an embedded cluster and JupyterLab",
        description="Start an embedded notebookos cluster and JupyterLab. Unknown options go to JupyterLab.",
    )
    parser.add_argument(
        "--hosts",
        type=int,
        default=4,
        help="logical hosts in the embedded cluster (default 4): 3 or more, as each kernel runs 3 "
        "replicas on 3 hosts; 0: none, only the hosts whose agents join (see --listen)",
    )
    parser.add_argument(
        "--gpus-per-host",
        type=gpu_count,
        default=None,
        help="GPUs of each logical host: a slice of the GPUs NVML sees (default: an equal share), "
        "else virtual GPUs (default 1); 0: hosts without GPUs, for kernels that need none",
    )
    parser.add_argument(
        "--log-level",
        type=log_level,
        default="INFO",
        metavar="LEVEL",
        help=f"how much JupyterLab, the cluster service and this command log: "
        f"{', '.join(LOG_LEVELS)} (default INFO), all in Jupyter's format",
    )
    parser.add_argument(
        "--max-hosts",
        type=int,
        default=None,
        help="let the autoscaler add logical hosts up to this many (default: --hosts, no scale-out)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where replicas keep journals and the object store, and JupyterLab its kernels and "
        "sessions: kernels outlive a killed or crashed JupyterLab, and this command with the "
        "same folder takes them back (default: a new temporary folder, removed on exit, and "
        "nothing outlives JupyterLab)",
    )
    parser.add_argument(
        "--kernel-grace",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --state-dir: how long kernels wait, after JupyterLab is killed or crashes, for "
        "this command to take them back before they shut down "
        f"(default {DEFAULT_KERNEL_GRACE_S:.0f})",
    )
    network = parser.add_argument_group("a cluster of several machines")
    network.add_argument(
        "--listen",
        default=None,
        metavar="ADDR:PORT",
        help="the cluster service listens here, so that agents on GPU machines can join it",
    )
    network.add_argument(
        "--join-token-file", type=Path, default=None, help="the token agents join with (created, mode 0600, if missing)"
    )
    network.add_argument(
        "--tls-auto",
        action="store_true",
        help="the cluster service speaks TLS with a CA it makes (the join token file pins it)",
    )
    network.add_argument(
        "--tls-name",
        action="append",
        default=[],
        metavar="NAME",
        help="with --tls-auto: another name agents reach the cluster service by (repeatable)",
    )
    network.add_argument(
        "--object-store",
        default=None,
        metavar="URL",
        help="an object store every host reaches, e.g. redis://10.0.0.1:6379/0",
    )
    network.add_argument(
        "--cluster",
        default=None,
        metavar="URL",
        help="use the cluster service at URL (`notebookos cluster`) instead of starting one",
    )
    network.add_argument(
        "--cluster-token-file",
        type=Path,
        default=None,
        help="with --cluster: the file holding its token (its join token works)",
    )
    network.add_argument(
        "--cluster-ca",
        type=Path,
        default=None,
        metavar="FILE",
        help="with --cluster: the CA (PEM) its https is verified against (default: the one its "
        "token pins, else the system's)",
    )
    parser.set_defaults(func=run, accepts_extra=True)


def _cluster_options(args: argparse.Namespace) -> tuple[str, ...]:
    """The service options ``notebookos lab`` passes through to the cluster it starts."""
    pairs = (
        ("--max-hosts", args.max_hosts),
        ("--listen", args.listen),
        ("--join-token-file", args.join_token_file),
        ("--object-store", args.object_store),
        *(("--tls-name", name) for name in args.tls_name),
    )
    options = tuple(item for flag, value in pairs if value is not None for item in (flag, str(value)))
    return options + ("--log-level", args.log_level) + (("--tls-auto",) if args.tls_auto else ())


def run(args: argparse.Namespace) -> int:
    if (args.cluster is None) != (args.cluster_token_file is None):
        print("notebookos: --cluster and --cluster-token-file go together", file=sys.stderr)
        return 2
    if args.cluster is None and (problem := hosts_problem(args.hosts, POLICIES[LIVE_POLICY].replicas)):
        print(f"notebookos: {problem}", file=sys.stderr)
        return 2
    persistent = args.state_dir is not None
    if args.kernel_grace is not None and (not persistent or args.kernel_grace < 0):
        print(
            "notebookos: --kernel-grace takes seconds (0 or more) and needs --state-dir, where a restarted "
            "JupyterLab finds its kernels",
            file=sys.stderr,
        )
        return 2
    grace = DEFAULT_KERNEL_GRACE_S if args.kernel_grace is None else args.kernel_grace
    configure_logging(args.log_level)
    state_dir = (args.state_dir or Path(tempfile.mkdtemp(prefix="notebookos-"))).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _run_in(state_dir, args, grace)
    finally:
        if not persistent:  # a temporary folder: the cluster that used it has stopped with JupyterLab
            shutil.rmtree(state_dir, ignore_errors=True)


def _run_in(state_dir: Path, args: argparse.Namespace, grace: float) -> int:
    """``notebookos lab`` on its state folder, once the options are checked."""
    persistent = args.state_dir is not None
    if persistent:
        # Imported here: it loads Jupyter Server, which the other subcommands of `notebookos` do without.
        from .kernel_persistence import StateFolderBusy, lock_state_folder

        try:
            lock_state_folder(state_dir / JUPYTER_STATE).close()  # fail before touching the cluster it uses
        except StateFolderBusy as err:
            print(f"notebookos: {err}", file=sys.stderr)
            return 1
    cluster: LocalCluster | None = None
    try:
        if args.cluster:
            discovery = state_dir / "cluster.json"
            name_remote_cluster(discovery, args.cluster, args.cluster_token_file, args.cluster_ca)
            where = f"the cluster at {args.cluster}"
        else:
            cluster = LocalCluster.running(state_dir / "cluster.json") if persistent else None
            if cluster is not None:
                where = (
                    f"the cluster already running for this state folder (pid {cluster.pid}; its options stand, "
                    "not these)"
                )
            else:
                cluster = LocalCluster.start(state_dir, args)
                where = f"a cluster of {args.hosts} logical hosts" + (
                    f", agents join at {args.listen}" if args.listen else ""
                )
            discovery = cluster.discovery
            cluster.keep_running(state_dir, args)
    except (ClusterError, TokenError, TLSError) as err:
        print(f"notebookos: {err}", file=sys.stderr)
        return 1
    env = dict(os.environ, **{CLUSTER_FILE_ENV: str(discovery)})
    lab_args = [
        ENABLE_EXTENSION_ARG,
        f"--log-level={args.log_level}",
        *(_persistence_args(state_dir, grace) if persistent else ()),
        *args.extra,
    ]
    if os.geteuid() == 0 and "--allow-root" not in lab_args:
        lab_args.append("--allow-root")
    log.info("%s, state in %s", where, state_dir)
    code: int | None = None  # stays None if JupyterLab could not be run
    asked_to_stop = False
    try:
        code, asked_to_stop = _run_jupyterlab(lab_args, env)
        return code
    finally:
        # JupyterLab shut its kernels down when it was stopped, or exited 0; otherwise (killed, crashed) its kernels
        # outlive it under --state-dir, and so must the cluster that runs their replicas.
        outlive = persistent and code not in (None, 0) and not asked_to_stop
        if outlive and code is not None and (cluster is None or cluster.kernels()):
            log.warning(
                "JupyterLab %s; its kernels keep running for %g s: run `notebookos lab --state-dir %s` again "
                "to reconnect to them",
                _how_it_ended(code),
                grace,
                state_dir,
            )
        elif cluster is not None:
            cluster.stop()


def _persistence_args(state_dir: Path, grace: float) -> list[str]:
    """JupyterLab's options for kernels that outlive it: the persistent kernel manager and session database under
    the state folder, and the fronts' grace period."""
    folder = state_dir / JUPYTER_STATE
    return [
        "--ServerApp.kernel_manager_class=notebookos.server_extension.kernel_persistence.PersistentKernelManager",
        f"--PersistentKernelManager.persistence_dir={folder}",
        f"--SessionManager.database_filepath={folder / 'sessions.db'}",
        f"--NotebookOSProvisioner.restart_grace_s={grace}",
    ]


def _run_jupyterlab(lab_args: list[str], env: dict[str, str]) -> tuple[int, bool]:
    """Run JupyterLab in the foreground: its exit status, and whether this command asked it to stop (SIGTERM to
    this command, or Ctrl-C: the terminal sends JupyterLab one, which asks to confirm, and this command the second)."""
    lab = subprocess.Popen([sys.executable, "-m", "jupyterlab", *lab_args], env=env)
    asked = False

    def terminate(*_: object) -> None:
        nonlocal asked
        asked = True
        lab.terminate()

    signal.signal(signal.SIGTERM, terminate)
    try:
        return lab.wait(), asked
    except KeyboardInterrupt:
        lab.send_signal(signal.SIGINT)
        return lab.wait(), True


def _how_it_ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


@dataclass
class LocalCluster:
    """The cluster service on this machine whose hosts run the kernels of this ``notebookos lab``: started here
    (``process``), or by an earlier ``notebookos lab`` on the same state folder whose JupyterLab died, leaving it
    running for the kernels that outlived it (no ``process``: not our child)."""

    discovery: Path
    pid: int
    process: subprocess.Popen | None = None
    watched: WatchedProcess | None = None  # the service an earlier run left, followed through a pidfd
    _stopping: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None

    @classmethod
    def start(cls, state_dir: Path, args: argparse.Namespace) -> LocalCluster:
        process, discovery = start_cluster(state_dir, args.hosts, args.gpus_per_host, _cluster_options(args))
        return cls(discovery, process.pid, process)

    @classmethod
    def running(cls, discovery: Path) -> LocalCluster | None:
        """The service the discovery file names, if it runs on this machine (a pid: not a remote one) and answers."""
        try:
            pid = json.loads(discovery.read_text())["pid"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(pid, int) or not asyncio.run(ClusterClient.from_file(discovery).alive()):
            return None
        return cls(discovery, pid, watched=WatchedProcess(pid))

    def kernels(self) -> int:
        """How many kernels it runs (0 when it does not answer: nothing is left to keep it for)."""
        try:
            return len(asyncio.run(ClusterClient.from_file(self.discovery).describe())["kernels"])
        except (ClusterError, OSError, ValueError, KeyError, TypeError):
            return 0

    def keep_running(self, state_dir: Path, args: argparse.Namespace) -> None:
        """Restart the service, on a thread of its own, whenever it dies while JupyterLab runs (a crash, the OOM
        killer): started on its state folder, it takes its hosts and kernels back, and listens where the kernel
        fronts wait for it. Not after :meth:`stop`, nor once it died CLUSTER_RESTARTS times within a minute."""

        def watch() -> None:
            restarts: deque[float] = deque(maxlen=CLUSTER_RESTARTS)
            while not self._stopping.wait(CLUSTER_WATCH_S):
                if self._alive():
                    continue
                if len(restarts) == CLUSTER_RESTARTS and time.monotonic() - restarts[0] < CLUSTER_RESTART_WINDOW_S:
                    log.error(
                        "the cluster service died %d times within %.0f s; not starting it again (its log is above)",
                        CLUSTER_RESTARTS,
                        CLUSTER_RESTART_WINDOW_S,
                    )
                    return
                restarts.append(time.monotonic())
                log.warning("the cluster service (pid %d) died; starting it again on %s", self.pid, state_dir)
                try:
                    self.process, self.discovery = start_cluster(
                        state_dir, args.hosts, args.gpus_per_host, _cluster_options(args), discovery=self.discovery
                    )
                except ClusterError as err:
                    log.error("%s", err)
                    continue
                self.pid = self.process.pid
                if self.watched is not None:  # the service an earlier run left is gone: ours from now on
                    self.watched.close()
                    self.watched = None

        self._watcher = threading.Thread(target=watch, name="notebookos-cluster-watch", daemon=True)
        self._watcher.start()

    def _alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self.watched is not None and self.watched.alive()

    def stop(self) -> None:
        """SIGTERM (the service stops its replicas), SIGKILL if it has not exited within CLUSTER_STOP_S."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()  # a restart under way finishes first, so that its process is the one stopped
        if self.process is not None:
            stop_cluster(self.process, CLUSTER_STOP_S)
            return
        if self.watched is None:
            return
        service = self.watched
        try:
            service.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + CLUSTER_STOP_S
            while service.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            if service.alive():
                service.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass  # gone already
        finally:
            service.close()
