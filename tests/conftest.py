"""Shared fixtures: an isolated Jupyter environment and one embedded notebookos cluster per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def jupyter_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runtime and config dirs of our own, so tests never touch (or find) a developer's running clusters."""
    root = tmp_path_factory.mktemp("jupyter")
    for var, sub in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_CONFIG_DIR", "config"), ("IPYTHONDIR", "ipython")):
        (root / sub).mkdir()
        os.environ[var] = str(root / sub)
    return root


@pytest.fixture(scope="session")
def cluster_file(jupyter_env: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real embedded cluster service (4 logical hosts) shared by the session's kernels."""
    from notebookos.gpu_broker.cluster.client import CLUSTER_FILE_ENV
    from notebookos.gpu_broker.cluster.launcher import start_cluster, stop_cluster

    state = tmp_path_factory.mktemp("cluster")
    # --journal: tests compare the live scheduler's decisions with a replay on the simulator's core.
    proc, discovery = start_cluster(state, hosts=4, extra_args=("--journal",))
    os.environ[CLUSTER_FILE_ENV] = str(discovery)
    yield str(discovery)
    del os.environ[CLUSTER_FILE_ENV]
    stop_cluster(proc)
