"""The cluster service crashes (SIGKILL) and is started again on its state folder: kernels run on untouched, the
GPUs a running cell holds stay committed to it, and a cell submitted during the outage waits with a notice, then
runs. A real service process, real replicas and a real kernel front; the GPUs are the cluster's virtual ones."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from jupyter_client.manager import start_new_kernel

from notebookos.gpu_broker.cluster.client import CLUSTER_FILE_ENV
from notebookos.gpu_broker.cluster.launcher import start_cluster, stop_cluster

from .driver import CellResult, Notebook, cluster_request, kill, wait_until

OUTAGE_NOTICE = "the cluster service does not answer"


class Background:
    """A cell run on a thread of its own, so the test can act while it runs; ``seen`` is set once its output
    contains ``watch_for``."""

    def __init__(self, notebook: Notebook, code: str, watch_for: str | None = None) -> None:
        self.seen = threading.Event()
        self.result: CellResult | None = None
        self.error: BaseException | None = None
        self._output = ""

        def on_output(text: str) -> None:
            self._output += text
            if watch_for and watch_for in self._output:
                self.seen.set()

        def run() -> None:
            try:
                self.result = notebook.run(code, on_output=on_output)
            except BaseException as err:  # reported by finish()
                self.error = err

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def finish(self, timeout: float = 120) -> CellResult:
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        assert self.result is not None, f"the cell did not finish within {timeout} s"
        return self.result


@pytest.fixture
def own_cluster(jupyter_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A cluster service of this test's own (the test kills it), with 3 logical hosts of one virtual GPU each.
    Yields a function that starts it (again) on the same state folder."""
    state = tmp_path / "cluster"
    procs = []

    def start():
        proc, discovery = start_cluster(state, hosts=3, gpus_per_host=1, log_path=tmp_path / "cluster.log")
        procs.append(proc)
        monkeypatch.setenv(CLUSTER_FILE_ENV, str(discovery))
        return proc, str(discovery)

    yield start
    stop_cluster(procs[-1])


def test_a_restarted_service_takes_back_kernels_and_commitments(own_cluster, tmp_path: Path):
    first, discovery = own_cluster()
    km, kc = start_new_kernel(kernel_name="notebookos", startup_timeout=120)
    notebook = Notebook(km, kc)
    try:
        kernel = f"/kernels/{km.kernel_id}"
        assert notebook.run("x = 41").status == "ok"
        before = cluster_request(discovery, "GET", "/cluster")
        replica_pids = [r["pid"] for r in cluster_request(discovery, "GET", kernel)["replicas"]]

        # A cell holding a GPU when the service dies keeps it: the restarted service knows it is committed.
        flag = tmp_path / "go"
        holding = Background(
            notebook, f"%gpus 1\nimport os, time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.05)\nx += 1"
        )
        wait_until(
            lambda: (cluster_request(discovery, "GET", kernel)["allocation"] or {}).get("state") == "committed",
            "the cell's GPU to be committed",
        )
        first.kill()
        first.wait()
        second, _ = own_cluster()
        restored = cluster_request(discovery, "GET", kernel)
        assert restored["allocation"]["state"] == "committed", restored["allocation"]
        assert [r["pid"] for r in restored["replicas"]] == replica_pids  # the replicas ran on, untouched
        after = cluster_request(discovery, "GET", "/cluster")
        assert after["pid"] == second.pid != before["pid"]
        assert after["started_at"] > before["started_at"]
        flag.touch()
        assert holding.finish().status == "ok"
        wait_until(
            lambda: cluster_request(discovery, "GET", kernel)["allocation"] is None,
            "the cell's GPU to be given back to the restarted service",
        )
        assert all(
            d["state"] == "idle" for h in cluster_request(discovery, "GET", "/cluster")["hosts"] for d in h["devices"]
        )

        # A cell submitted while the service is down waits, says so, and runs once it is back.
        second.kill()
        second.wait()
        waiting = Background(notebook, "%gpus 1\nprint(x + 1)", watch_for=OUTAGE_NOTICE)
        assert waiting.seen.wait(60), "the cell never said that it waits for the cluster service"
        own_cluster()
        result = waiting.finish()
        assert result.status == "ok", result.error
        assert result.stdout.strip().splitlines()[-1] == "43"
        events = cluster_request(discovery, "GET", "/events?kind=cluster_restored")["events"]
        assert len(events) == 2 and events[-1]["data"]["kernels"] == 1
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def test_a_commitment_whose_executor_died_meanwhile_is_given_back(own_cluster, tmp_path: Path):
    """The executor of a GPU cell dies while the service is down: the restarted service does not take its devices
    back for it (the replica is gone), and the front re-runs the cell elsewhere, on GPUs granted anew."""
    first, discovery = own_cluster()
    km, kc = start_new_kernel(kernel_name="notebookos", startup_timeout=120)
    notebook = Notebook(km, kc)
    try:
        kernel = f"/kernels/{km.kernel_id}"
        flag = tmp_path / "go"
        holding = Background(
            notebook,
            f"%gpus 1\nimport os, time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.05)\nprint('done')",
        )
        wait_until(
            lambda: (cluster_request(discovery, "GET", kernel)["allocation"] or {}).get("state") == "committed",
            "the cell's GPU to be committed",
        )
        described = cluster_request(discovery, "GET", kernel)
        executor = described["allocation"]["replica"]
        first.kill()
        first.wait()
        kill(next(r["pid"] for r in described["replicas"] if r["replica"] == executor))
        own_cluster()
        dropped = cluster_request(discovery, "GET", f"/events?kind=commitment_dropped&kernel={km.kernel_id}")["events"]
        assert len(dropped) == 1, dropped
        flag.touch()
        result = holding.finish()
        assert result.status == "ok" and result.stdout.strip().endswith("done"), (result.stdout, result.stderr)
        assert "re-running it" in result.stderr
        wait_until(
            lambda: cluster_request(discovery, "GET", kernel)["allocation"] is None, "the re-run's GPU to be given back"
        )
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
