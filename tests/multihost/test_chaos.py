"""The chaos run of ``benchmarks/chaos.py``, short: a notebook of 36 cells whose replicas run on machines of their
own, under one fault of each kind (replica killed, machine powered off, machine cut off, cluster service killed,
Jupyter server killed), must show the user exactly what plain ipykernel shows, cell by cell, and end with the same
namespace on every replica. The run, the faults and the comparison are the benchmark's own code."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import chaos  # noqa: E402

CELLS = 36
SEED = 4  # a plan with faults while a cell runs and before one, on the executor and on a standby
# A failover costs the user about a second; a cell still running after this long under one fault is a hang.
CELL_TIMEOUT_S = 30.0


@pytest.mark.timeout(240)
def test_a_notebook_under_one_fault_of_each_kind_shows_what_ipykernel_shows(
    network_namespaces: None, tmp_path: Path
) -> None:
    settings = chaos.Settings(cells=CELLS, faults=len(chaos.FAULT_KINDS), seed=SEED, cell_timeout_s=CELL_TIMEOUT_S)
    console = Console(file=io.StringIO(), width=200)
    outcome = chaos.run_chaos(settings, tmp_path, console)
    summary = chaos.summarize(outcome)
    chaos.print_summary(summary, console)
    printed = console.file.getvalue()  # type: ignore[attr-defined]

    assert outcome.failure is None, printed
    assert summary["mismatches"] == 0, printed
    assert summary["faults_injected"] == dict.fromkeys(chaos.FAULT_KINDS, 1), printed
    faults = {f["kind"]: f for f in summary["faults"]}
    assert all(f["confirmed"] for f in faults.values()), printed
    assert "replica_killed" in " ".join(faults["replica"]["evidence"]["events"])
    assert "host_lost" in " ".join(faults["host"]["evidence"]["events"])
    assert faults["partition"]["evidence"]["front_saw_loss"]
    service = faults["service"]["evidence"]
    assert service["service_pid_after"] != service["service_pid_before"]
    jupyter = faults["jupyter"]["evidence"]
    assert jupyter["jupyterlab_pid_after"] != jupyter["jupyterlab_pid_before"]
    assert outcome.reference and len(outcome.runs) == CELLS and len(outcome.digests) == 4  # the kernel, each replica
