"""The ``notebookos`` command line as a user meets it, run as real processes: a quick ``--help`` and ``--version``,
``--hosts`` and ``--gpus-per-host`` taken at their word or refused with why, temporary state folders gone on exit,
and one log format under ``notebookos lab``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import re
import secrets
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from notebookos.gpu_broker.cluster.client import CLUSTER_FILE_ENV, ClusterClient
from notebookos.gpu_broker.cluster.launcher import start_cluster, stop_cluster
from notebookos.server_extension import cli

from ..jupyter_process import start_jupyter

NOTEBOOKOS = [sys.executable, "-m", "notebookos.server_extension.cli"]
# What `notebookos --help` must not load: the cluster's and the simulator's libraries, Jupyter Server.
HEAVY = ("matplotlib", "torch", "numpy", "jupyter_server", "tornado", "notebookos.gpu_broker")
# Jupyter's log line: `[I 2026-01-01 12:00:00.123 ServerApp] ...`
JUPYTER_LINE = re.compile(r"^\[[DIWEC] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} [\w.]+\] ")
REFUSAL = "each kernel runs as 3 replicas on 3 different hosts"


def notebookos(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*NOTEBOOKOS, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_help_lists_every_command_and_imports_none_of_them() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *NOTEBOOKOS[1:], "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for name, _ in cli.SUBCOMMANDS.values():
        assert re.search(rf"^\s+{name}\s", done.stdout, re.M), done.stdout
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    loaded = sorted(m for m in imported if m.startswith(HEAVY))
    assert not loaded, f"`notebookos --help` imports {loaded}"


def test_the_summaries_in_help_are_the_commands_own() -> None:
    """``--help`` shows summaries kept in cli.py, so that it need not import the commands: they must not drift."""
    for module_name, (name, summary) in cli.SUBCOMMANDS.items():
        subparsers = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module_name).add_parser(subparsers)
        assert [(a.dest, a.help) for a in subparsers._choices_actions] == [(name, summary)], module_name


def test_version() -> None:
    done = notebookos("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"notebookos {version('notebookos')}"


@pytest.mark.parametrize("command", ["lab", "cluster"])
@pytest.mark.parametrize("hosts", ["1", "2"])
def test_one_or_two_hosts_are_refused_with_why(command: str, hosts: str, tmp_path: Path) -> None:
    done = notebookos(command, "--hosts", hosts, env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert done.returncode == 2, done.stderr
    assert REFUSAL in done.stderr and "--hosts 0" in done.stderr and "--hosts 3 or more" in done.stderr
    assert not list(tmp_path.iterdir()), "a refused command left a state folder behind"


def test_gpus_per_host_0_means_hosts_without_gpus(tmp_path: Path) -> None:
    process, discovery = start_cluster(tmp_path / "state", hosts=3, gpus_per_host=0)
    try:
        cluster = asyncio.run(ClusterClient.from_file(discovery).request("GET", "/cluster"))
    finally:
        stop_cluster(process)
    assert [(h["name"], h["gpus"]) for h in cluster["hosts"]] == [("host-1", 0), ("host-2", 0), ("host-3", 0)]


def test_cluster_removes_its_temporary_state_folder_on_exit(tmp_path: Path) -> None:
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    service = subprocess.Popen([*NOTEBOOKOS, "cluster", "--hosts", "3"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        for line in service.stderr:  # type: ignore[union-attr]
            if "notebookos cluster (notebookos policy) with 3 hosts" in line:
                assert JUPYTER_LINE.match(line), line
                break
        [state] = (tmp_path / "tmp").iterdir()
        assert state.name.startswith("notebookos-cluster-") and (state / "cluster.json").exists()
    finally:
        service.terminate()
        service.communicate(timeout=60)
    assert service.returncode == 0
    assert not state.exists()


def test_lab_logs_in_jupyters_format_and_removes_its_temporary_state_folder(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != CLUSTER_FILE_ENV}
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    lab = start_jupyter(
        [*NOTEBOOKOS, "lab", "--hosts", "3", "--log-level", "debug"], tmp_path / "lab", secrets.token_hex(16), env=env
    )
    try:
        assert lab.get("api/notebookos/cluster")[0] == 200
    finally:
        code = lab.stop(timeout=60)
    assert code == 0, lab.output()
    [started] = [line for line in lab.log if "a cluster of 3 logical hosts, state in" in line]
    state = Path(started.rsplit(" ", 1)[1])
    assert state.parent == tmp_path / "tmp" and not state.exists(), lab.output()
    # This command's lines, the cluster service's and JupyterLab's (at --log-level DEBUG) share one format.
    ours = [line for line in lab.log if " notebookos" in line.split("]")[0]]
    assert any("notebookos.gpu_broker.cluster.service" in line for line in ours), lab.output()
    assert ours and all(JUPYTER_LINE.match(line) for line in ours), "\n".join(ours)
    assert any(line.startswith("[D ") and "ServerApp]" in line for line in lab.log), lab.output()
