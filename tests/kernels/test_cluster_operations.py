"""The scheduler's live decisions carried out on real replicas: every GPU busy (wait, then migrate), a lost replica
replaced on another host, a host drained under a running kernel, hosts added, resized and removed, and scale-out.

Each cluster here is the test module's own (4 logical hosts with 1 virtual GPU each: this machine has no GPU, so the
GPUs are virtual; placement, commitment, migration and the replicas are real), because these tests take hosts away.
"""

from __future__ import annotations

import os
import urllib.error
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from jupyter_client.manager import start_new_kernel

from notebookos.gpu_broker.cluster.client import CLUSTER_FILE_ENV
from notebookos.gpu_broker.cluster.launcher import start_cluster, stop_cluster

from .driver import Notebook, cluster_request, wait_until
from .test_gpu_sharing import SPEC, held_devices


@pytest.fixture(scope="module")
def gpu_spec(tmp_path_factory):
    """A kernelspec whose cells ask for one GPU each, on the Jupyter path for this module's kernels."""
    root = tmp_path_factory.mktemp("jupyter-path")
    target = root / "kernels" / "notebookos-1gpu"
    shutil.copytree(SPEC, target)
    spec = (target / "kernel.json").read_text().replace('"config": {}', '"config": {"gpus": 1}')
    assert '"gpus": 1' in spec
    (target / "kernel.json").write_text(spec)
    return root


@contextmanager
def running_cluster(state_dir: Path, gpu_spec: Path, hosts: int = 4, extra_args: tuple[str, ...] = ()):
    """(discovery file, start_notebook) of a cluster of our own; kernels started through it ask 1 GPU per cell."""
    proc, discovery = start_cluster(state_dir, hosts=hosts, gpus_per_host=1, extra_args=extra_args)
    saved = {k: os.environ.get(k) for k in (CLUSTER_FILE_ENV, "JUPYTER_PATH")}
    os.environ[CLUSTER_FILE_ENV] = str(discovery)
    os.environ["JUPYTER_PATH"] = str(gpu_spec)
    started: list[Notebook] = []

    def start_notebook() -> Notebook:
        km, kc = start_new_kernel(kernel_name="notebookos-1gpu", startup_timeout=120)
        started.append(Notebook(km, kc))
        return started[-1]

    try:
        yield str(discovery), start_notebook
    finally:
        for nb in started:
            nb.kc.stop_channels()
            nb.km.shutdown_kernel(now=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        stop_cluster(proc)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, jupyter_env, gpu_spec):
    with running_cluster(tmp_path_factory.mktemp("ops-cluster"), gpu_spec) as running:
        yield running


def kernel_of(cluster_file: str, nb: Notebook) -> dict:
    return cluster_request(cluster_file, "GET", f"/kernels/{nb.km.kernel_id}")


def events(cluster_file: str, **filters: str) -> list[dict]:
    query = "&".join(f"{k}={v}" for k, v in filters.items())
    return cluster_request(cluster_file, "GET", f"/events?{query}")["events"]


class HeldCell:
    """A cell holding its GPU until ``release()``: it prints first, so the test knows it runs."""

    def __init__(self, nb: Notebook, stop: Path) -> None:
        self.nb, self.stop, self.started, self.results = nb, stop, threading.Event(), []
        code = (
            f"import os, time\nprint('holding', flush=True)\nwhile not os.path.exists({str(stop)!r}):\n"
            "    time.sleep(0.05)"
        )
        self.thread = threading.Thread(
            target=lambda: self.results.append(nb.run(code, on_output=lambda _text: self.started.set()))
        )
        self.thread.start()
        assert self.started.wait(90), "the cell did not start"

    def release(self) -> None:
        self.stop.touch()
        self.thread.join(60)
        [res] = self.results
        assert res.status == "ok", (res.error, res.stderr)


def test_a_cell_finding_every_gpu_busy_waits_then_migrates_to_the_first_gpu_freed(cluster, tmp_path):
    cluster_file, start_notebook = cluster
    waiting_nb = start_notebook()
    busy = [start_notebook() for _ in range(4)]
    # Fifteen replicas started close together: no port is given to two of them.
    ports = [
        port
        for nb in [waiting_nb, *busy]
        for r in kernel_of(cluster_file, nb)["replicas"]
        for name, port in r["connection"].items()
        if name.endswith("_port")
    ]
    assert len(ports) == len(set(ports)) == 5 * 3 * 5
    held = [HeldCell(nb, tmp_path / f"stop-{i}") for i, nb in enumerate(busy)]
    assert len(held_devices(cluster_file)) == 4, "every GPU of the cluster should be committed"
    # The one GPU that is no use to the waiting kernel without a move: on the host where it has no replica.
    its_hosts = {r["host"] for r in kernel_of(cluster_file, waiting_nb)["replicas"]}
    [elsewhere] = [
        h["name"] for h in cluster_request(cluster_file, "GET", "/cluster")["hosts"] if h["name"] not in its_hosts
    ]
    holder = held_devices(cluster_file)[f"{elsewhere}:0"]
    result: list = []  # the waiting cell runs in the background, so that a GPU can be freed meanwhile
    runner = threading.Thread(
        target=lambda: result.append(
            waiting_nb.run("import os\nprint('ran on', os.environ['NOTEBOOKOS_HOST'])", timeout=120)
        )
    )
    runner.start()
    wait_until(lambda: cluster_request(cluster_file, "GET", "/cluster")["pending_cells"] == 1, "the cell to queue")
    next(h for h, nb in zip(held, busy) if nb.km.kernel_id == holder).release()
    runner.join(120)
    [res] = result
    assert res.status == "ok", (res.error, res.stderr)
    assert "notebookos: waiting for 1 GPU(s)" in res.stderr
    assert "moving replica" in res.stderr and f"to {elsewhere}" in res.stderr
    assert res.stdout.strip() == f"ran on {elsewhere}"
    decisions = [e["data"]["kind"] for e in events(cluster_file, kernel=waiting_nb.km.kernel_id, kind="decision")]
    assert decisions[-2:] == ["queued", "migrate"]
    last = kernel_of(cluster_file, waiting_nb)["cell"]
    assert last["state"] == "done" and last["decision"] == "migrate" and last["host"] == elsewhere
    assert last["submitted"] < last["started"] <= last["ended"]
    # Its GPU was committed only once the moved replica had caught up on its new host.
    kinds = [e["kind"] for e in events(cluster_file, kernel=waiting_nb.km.kernel_id)]
    ready = kinds.index("replica_ready")
    assert kinds[ready - 1 : ready + 2] == ["decision", "replica_ready", "execution_started"]
    for h, nb in zip(held, busy):
        if nb.km.kernel_id != holder:
            h.release()


def test_a_killed_replica_is_replaced_on_another_host_with_the_state_intact(cluster):
    cluster_file, start_notebook = cluster
    nb = start_notebook()
    assert nb.run("log = ['before']").status == "ok"  # a GPU cell: the scheduler knows its executor
    before = kernel_of(cluster_file, nb)
    victim = next(r for r in before["replicas"] if r["role"] == "standby")
    cluster_request(cluster_file, "POST", f"/kernels/{nb.km.kernel_id}/replicas/{victim['replica']}/kill")
    assert nb.run("%gpus 0\nlog.append('while one is down')").status == "ok"

    def replaced():
        r = kernel_of(cluster_file, nb)["replicas"][victim["replica"]]
        return r if r["alive"] and r["state"] == "ready" and r["host"] != victim["host"] else None

    new = wait_until(replaced, "the lost replica to be replaced on another host")
    assert new["host"] not in {r["host"] for r in before["replicas"]}
    assert new["restarts"] == victim["restarts"] + 1
    kinds = [e["kind"] for e in events(cluster_file, kernel=nb.km.kernel_id)]
    assert "replica_killed" in kinds and "replica_lost" in kinds and "replica_replaced" in kinds
    # The replacement carries the whole state: a cell run on it sees every committed change.
    assert nb.value("log", replica=victim["replica"]) == ["before", "while one is down"]


def test_draining_a_host_moves_its_replicas_away_with_no_cell_lost(cluster, tmp_path):
    cluster_file, start_notebook = cluster
    nb = start_notebook()
    assert nb.run("%gpus 0\ncount = 0").status == "ok"
    # A cell runs while the host of one of the replicas is drained: the scheduler does not know which replica runs
    # it (the kernel asks for no GPU now), so it may be the one moved; either way the cell completes.
    standby = kernel_of(cluster_file, nb)["replicas"][0]
    drained = standby["host"]
    held = HeldCell(nb, tmp_path / "stop")
    host = cluster_request(cluster_file, "POST", f"/hosts/{drained}/drain")
    assert host["state"] == "draining"
    held.release()
    assert nb.run("%gpus 0\ncount += 1").status == "ok"
    wait_until(
        lambda: (
            next(h for h in cluster_request(cluster_file, "GET", "/cluster")["hosts"] if h["name"] == drained)[
                "replicas"
            ]
            == 0
        ),
        "the drained host to hold no replica",
    )
    replicas = kernel_of(cluster_file, nb)["replicas"]
    assert drained not in {r["host"] for r in replicas}
    moved = next(r for r in replicas if r["replica"] == standby["replica"])
    wait_until(
        lambda: kernel_of(cluster_file, nb)["replicas"][standby["replica"]]["state"] == "ready",
        "the moved replica to catch up",
    )
    assert nb.value("count", replica=moved["replica"]) == 1
    assert any(e["kind"] == "host_drained" for e in events(cluster_file, host=drained))
    # Drained, it can be removed; a new host takes its place.
    cluster_request(cluster_file, "DELETE", f"/hosts/{drained}")
    assert drained not in {h["name"] for h in cluster_request(cluster_file, "GET", "/cluster")["hosts"]}
    added = cluster_request(cluster_file, "POST", "/hosts", {})
    assert added["state"] == "active" and added["gpus"] == 1


def test_operator_host_changes_are_checked_and_logged(cluster):
    cluster_file, _ = cluster
    name = cluster_request(cluster_file, "GET", "/cluster")["hosts"][0]["name"]
    resized = cluster_request(cluster_file, "PATCH", f"/hosts/{name}", {"gpus": 2})
    assert resized["gpus"] == 2 and [d["device"] for d in resized["devices"]] == [0, 1]
    assert any(e["kind"] == "host_resized" and e["data"]["gpus"] == 2 for e in events(cluster_file, host=name))
    cluster_request(cluster_file, "PATCH", f"/hosts/{name}", {"gpus": 1})
    with pytest.raises(Exception) as refused:  # a host with replicas cannot be removed without draining
        cluster_request(cluster_file, "DELETE", f"/hosts/{name}")
    assert getattr(refused.value, "code", None) == 409
    assert "drain it first" in refused.value.read().decode()


def test_a_kernel_that_finds_no_room_scales_the_cluster_out(tmp_path, jupyter_env, gpu_spec):
    """Subscription limit 1 on 3 hosts of 1 GPU: one 1-GPU kernel fills them; the next one's replicas need three
    more hosts, which the autoscaler asks the local provider for (up to --max-hosts 6) before placing them."""
    args = ("--subscription-limit", "1", "--max-hosts", "6")
    with running_cluster(tmp_path / "state", gpu_spec, hosts=3, extra_args=args) as (cluster_file, start_notebook):
        first = start_notebook()
        second = start_notebook()
        hosts = cluster_request(cluster_file, "GET", "/cluster")["hosts"]
        assert len(hosts) == 6
        first_hosts = {r["host"] for r in kernel_of(cluster_file, first)["replicas"]}
        second_hosts = {r["host"] for r in kernel_of(cluster_file, second)["replicas"]}
        assert len(second_hosts) == 3 and not first_hosts & second_hosts
        kinds = [e["kind"] for e in events(cluster_file)]
        assert "placement_deferred" in kinds and "scale_out_requested" in kinds
        assert kinds.count("host_added") == 6  # three at start, three for the second kernel
        metrics = cluster_request(cluster_file, "GET", "/metrics", text=True)
        assert 'notebookos_scale_events_total{direction="out"} 3.0' in metrics
        assert second.run("print('runs')").stdout == "runs\n"
        # A seventh host is past the provider's limit: refused with what to do.
        with pytest.raises(urllib.error.HTTPError) as refused:
            cluster_request(cluster_file, "POST", "/hosts", {})
        assert refused.value.code == 409 and "--max-hosts" in refused.value.read().decode()


def test_under_the_reservation_policy_a_kernel_holds_its_gpu_for_its_whole_life(tmp_path, jupyter_env, gpu_spec):
    """The baseline the GPU-sharing benchmark compares with, run live: one replica per kernel (a one-node Raft
    group), its GPU committed from start to shutdown, and a kernel that finds no free GPU refused with the reason."""
    args = ("--policy", "reservation")
    with running_cluster(tmp_path / "state", gpu_spec, hosts=2, extra_args=args) as (cluster_file, start_notebook):
        nb = start_notebook()
        [replica] = kernel_of(cluster_file, nb)["replicas"]
        assert held_devices(cluster_file) == {f"{replica['host']}:0": nb.km.kernel_id}  # idle, and holding it
        assert nb.run("x = 41").status == "ok"
        assert nb.run("x + 1").result == "42"
        assert held_devices(cluster_file) == {f"{replica['host']}:0": nb.km.kernel_id}
        start_notebook()
        assert len(held_devices(cluster_file)) == 2
        with pytest.raises(RuntimeError, match="only 0 distinct host"):
            start_notebook()
