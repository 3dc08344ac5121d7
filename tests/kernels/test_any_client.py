"""The kernelspec works from a plain Jupyter client with no cluster configured, and cleans up after itself."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
from pathlib import Path

import nbformat
import psutil
from jupyter_client.connect import port_names
from nbclient import NotebookClient

from notebookos.gpu_broker.cluster.client import CLUSTER_FILE_ENV, discovery_file
from notebookos.gpu_broker.cluster.ports import EPHEMERAL_RANGE_FILE, default_range, front_range
from notebookos.kernels.provisioner import NotebookOSProvisioner

from .driver import cluster_kernel, replicas_of, wait_until

EXIT_DEADLINE_S = 30


def test_nbclient_runs_a_notebook_on_an_on_demand_cluster_that_exits_after(jupyter_env, tmp_path, monkeypatch):
    monkeypatch.delenv(CLUSTER_FILE_ENV, raising=False)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import torch\nw = torch.ones(3) * 2"),
        nbformat.v4.new_code_cell("print(float(w.sum()))"),
    ]
    client = NotebookClient(
        nb, kernel_name="notebookos", timeout=120, startup_timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    )
    seen: dict = {}

    def remember_cluster(**_kwargs) -> None:
        seen.update(json.loads(discovery_file().read_text()), kernel_id=client.km.kernel_id)

    client.on_cell_executed = remember_cluster
    client.execute()
    assert nb.cells[1].outputs[0]["text"].strip() == "6.0"
    # The embedded cluster started for this client goes away once its last kernel is gone.
    cluster = psutil.Process(seen["pid"]) if psutil.pid_exists(seen["pid"]) else None
    if cluster is not None:
        cluster.wait(EXIT_DEADLINE_S)
    assert not Path(discovery_file()).exists()
    assert not [p.pid for p in psutil.process_iter() if _readable(p) and seen["kernel_id"] in " ".join(p.cmdline())]


def _readable(p: psutil.Process) -> bool:
    try:
        p.cmdline()
        return True
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def test_provisioner_info_round_trip_lets_another_manager_clean_up(notebook):
    """A Jupyter server that restarts re-creates provisioners from their saved info; the copy must still be able
    to remove the kernel's replicas."""
    original = notebook.km.provisioner
    info = asyncio.run(original.get_provisioner_info())
    copy = NotebookOSProvisioner(kernel_id=notebook.km.kernel_id, kernel_spec=original.kernel_spec)
    asyncio.run(copy.load_provisioner_info(info))
    assert len(replicas_of(notebook)) == 3
    asyncio.run(copy.cleanup(restart=False))
    wait_until(lambda: _kernel_gone(notebook.km.kernel_id), "the replicas to be removed", deadline_s=30)


def _kernel_gone(kernel_id: str) -> bool:
    try:
        cluster_kernel(os.environ["NOTEBOOKOS_CLUSTER_FILE"], kernel_id)
    except urllib.error.HTTPError as err:
        return err.code == 404
    return False


def test_the_fronts_ports_come_from_below_the_range_the_system_hands_out(notebook):
    """jupyter_client's own choice (bind port 0, let go, the front binds it later) is a port of the ephemeral range,
    which any outgoing connection of the machine may take in between: the front then dies at its start."""
    info = notebook.km.get_connection_info()
    ports = [info[name] for name in port_names]
    low, high = (int(v) for v in EPHEMERAL_RANGE_FILE.read_text().split())
    assert len(set(ports)) == len(port_names)
    assert all(port in front_range() and not low <= port <= high for port in ports), ports
    assert not set(ports) & set(default_range())  # never a port the cluster may give a replica
