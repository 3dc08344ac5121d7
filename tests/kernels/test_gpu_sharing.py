"""GPUs per cell on a live embedded cluster: 4 hosts with 1 virtual GPU each (this machine has no GPU, so the
hosts' GPUs are virtual: the accounting, placement and binding calls are real, torch runs on the CPU)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import start_new_kernel

from notebookos.gpu_broker.scheduler.journal import CoreCall, outcome_json, replay
from notebookos.gpu_broker.scheduler.policies import make_policy
from notebookos.gpu_broker.simulator.costs import CostModel
from notebookos.gpu_broker.simulator.engine import ClusterSpec, Simulation
from notebookos.gpu_broker.simulator.workload import SessionModel

from .driver import Notebook, cluster_request, replicas_of, wait_until

SPEC = Path(KernelSpecManager().get_kernel_spec("notebookos").resource_dir)


@pytest.fixture
def gpu_kernelspec(tmp_path, monkeypatch):
    """A kernelspec whose cells each ask for one GPU (the provisioner's `gpus` setting)."""
    target = tmp_path / "kernels" / "notebookos-1gpu"
    shutil.copytree(SPEC, target)
    spec = json.loads((target / "kernel.json").read_text())
    spec["display_name"] = "Python 3 (notebookos, 1 GPU)"
    spec["metadata"]["kernel_provisioner"]["config"] = {"gpus": 1}
    (target / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    return "notebookos-1gpu"


@pytest.fixture
def gpu_notebooks(gpu_kernelspec, cluster_file):
    started: list[Notebook] = []

    def start() -> Notebook:
        km, kc = start_new_kernel(kernel_name=gpu_kernelspec, startup_timeout=120)
        started.append(Notebook(km, kc))
        return started[-1]

    yield start
    for nb in started:
        nb.kc.stop_channels()
        nb.km.shutdown_kernel(now=True)


def held_devices(cluster_file: str) -> dict[str, str]:
    """host:device -> kernel id, for every GPU committed now, as the cluster reports it."""
    hosts = cluster_request(cluster_file, "GET", "/cluster")["hosts"]
    return {f"{h['name']}:{d['device']}": d["kernel"] for h in hosts for d in h["devices"] if d["kernel"]}


def run_until_released(nb: Notebook, started: threading.Event, results: list) -> None:
    """A cell that holds its GPU until the test says so, printing first so the test knows it runs."""
    code = "%gpus\nimport time\nwhile not __import__('os').path.exists(STOP):\n    time.sleep(0.05)"
    results.append(nb.run(code, on_output=lambda text: started.set()))


def test_gpu_committed_during_the_cell_and_idle_right_after(gpu_notebooks, cluster_file, tmp_path):
    nb = gpu_notebooks()
    stop = tmp_path / "stop"
    assert nb.run(f"STOP = {str(stop)!r}").status == "ok"
    started, results = threading.Event(), []
    runner = threading.Thread(target=run_until_released, args=(nb, started, results))
    runner.start()
    assert started.wait(60)
    during = held_devices(cluster_file)
    stop.touch()
    runner.join(60)
    assert list(during.values()) == [nb.km.kernel_id]
    [res] = results
    assert res.status == "ok", res.error
    assert "this cell holds GPU(s) [0] on host-" in res.stdout
    assert held_devices(cluster_file) == {}


def test_three_kernels_run_at_once_and_a_fourth_cell_gets_the_last_gpu(gpu_notebooks, cluster_file, tmp_path):
    stop = tmp_path / "stop"
    notebooks = [gpu_notebooks() for _ in range(4)]
    for nb in notebooks:
        assert nb.run(f"STOP = {str(stop)!r}").status == "ok"
    threads, results = [], []
    for nb in notebooks[:3]:
        started = threading.Event()
        t = threading.Thread(target=run_until_released, args=(nb, started, results))
        t.start()
        assert started.wait(60)
        threads.append(t)
    held = held_devices(cluster_file)
    assert sorted(held.values()) == sorted(nb.km.kernel_id for nb in notebooks[:3])
    # Every GPU of the fourth kernel's replica hosts may be busy: it migrates a replica or waits, then runs.
    fourth = notebooks[3].run("%gpus\nprint('ran')")
    assert fourth.status == "ok", (fourth.error, fourth.stderr)
    assert "ran" in fourth.stdout
    assert "this cell holds GPU(s) [0] on host-" in fourth.stdout
    stop.touch()
    for t in threads:
        t.join(60)
    assert all(r.status == "ok" for r in results)
    wait_until(lambda: held_devices(cluster_file) == {}, "every GPU to be idle again", deadline_s=10)
    # The migrated replica, if any, still carries the kernel's state.
    assert notebooks[3].value("STOP") == str(stop)


def test_asking_for_more_gpus_than_any_host_has_fails_at_once_with_what_to_do(gpu_notebooks):
    nb = gpu_notebooks()
    assert nb.run("%gpus 2").status == "ok"
    res = nb.run("print('never')", timeout=30)
    assert res.status == "error"
    assert "asks for 2 GPU(s) but the largest host has 1" in res.error
    assert "never" not in res.stdout
    assert nb.run("%gpus 0").status == "ok"
    assert nb.run("%gpus").stdout.strip().endswith("this cell holds no GPU")


def test_a_replica_migrated_on_request_keeps_the_state_and_runs_cells_on_its_new_host(notebook, cluster_file):
    assert notebook.run("import os\nmodel = {'w': [1, 2, 3]}").status == "ok"
    replicas = replicas_of(notebook)
    free = next(h for h in ("host-1", "host-2", "host-3", "host-4") if h not in {r["host"] for r in replicas})
    moving = replicas[0]
    moved = cluster_request(
        cluster_file, "POST", f"/kernels/{notebook.km.kernel_id}/replicas/{moving['replica']}/migrate", {"host": free}
    )
    assert moved["replicas"][moving["replica"]]["host"] == free
    assert moved["replicas"][moving["replica"]]["pid"] != moving["pid"]

    def on_new_host():
        res = notebook.run("os.environ['NOTEBOOKOS_HOST'], model['w']", replica=moving["replica"])
        return res if res.result and free in res.result else None

    res = wait_until(on_new_host, "a cell to run on the migrated replica")
    assert res.result == f"('{free}', [1, 2, 3])"


def test_the_simulators_core_replaying_the_live_calls_decides_the_same(gpu_notebooks, cluster_file):
    """The live cluster and the simulator share the scheduling core: replaying every call the live cluster made
    (placements, grants, releases, ticks, with their times) on a core built the way the simulator builds it gives
    the same decisions, event by event."""
    nb = gpu_notebooks()
    assert nb.run("x = 1").status == "ok"
    assert nb.run("%gpus\nx + 1").status == "ok"
    journal = cluster_request(cluster_file, "GET", "/scheduler/journal")
    calls = [CoreCall(c["method"], tuple(c["args"]), c["now"]) for c in journal["calls"]]
    assert {"add_host", "place_kernel", "request_execution", "release"} <= {c.method for c in calls}
    config = journal["config"]
    simulation = Simulation(
        [],
        make_policy(journal["policy"]),
        ClusterSpec(
            hosts=0,
            host_gpus=config["host_gpus"],
            min_hosts=config["min_hosts"],
            max_hosts=config["max_hosts"],
            subscription_limit=config["subscription_limit"],
        ),
        SessionModel(),
        CostModel(),
        (0.0, None),
    )
    replayed = [outcome_json(o) for o in replay(calls, simulation.core)]
    assert replayed == journal["outcomes"]
