"""``benchmarks/scale.py``, small: a real cluster service driven by 10 synthetic agents and 50 kernels through the
benchmark's own code must run to the end and write its summary with every figure the report reads. Timings are the
benchmark's to judge, not this test's: a loaded machine may miss the latency target."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import scale  # noqa: E402

PHASES = ("registration", "placement", "execution", "release", "heartbeats")


@pytest.mark.timeout(120)
def test_a_small_scale_run_writes_its_summary(tmp_path: Path) -> None:
    status = scale.main(["--hosts", "10", "--kernels", "50", "--executions", "100", "--out", str(tmp_path)])

    summary = json.loads((tmp_path / "scale.json").read_text())
    assert status in (0, 1)  # 1: a target missed, which is a measurement, not a failure of the run
    assert (tmp_path / "scale.png").stat().st_size > 0 and (tmp_path / "scale.raw.json").exists()
    for phase in PHASES:
        assert {"requests", "failed", "latency_ms"} <= set(summary[phase]), phase
        assert summary[phase]["failed"] == 0, summary[phase]["errors"]
    assert summary["placement"]["requests"] == 50 and summary["execution"]["requests"] == 100
    assert {"p50", "p99", "max"} <= set(summary["placement"]["latency_ms"])
    assert summary["registration"]["agents"] == 10 and summary["registration"]["wall_s"] > 0
    assert summary["listed_by_service"] == {"hosts": 10, "kernels": 50}
    assert summary["agent_calls"]["start"] == 150  # 3 replicas per kernel, each started by its host's agent
    assert set(summary["cpu"]) == {"registration", "placement", "execution"}
    assert summary["service"]["rss_mib"] > 0 and summary["generator"]["cpu_s_total"] > 0
    assert all("met" in target for target in summary["targets"].values())
