"""``notebookos simulate`` end to end, through the product's real ``main``."""

from __future__ import annotations

import csv
import json

import pytest

from notebookos.server_extension import cli

from broker_helpers import DATA

REQUIRED = {
    "gpu_hours_provisioned",
    "gpu_hours_committed",
    "gpu_hours_saved_vs_reservation",
    "started_without_wait",
    "delay_p50_s",
    "delay_p90_s",
    "delay_p99_s",
    "migrations",
    "scale_outs",
    "peak_hosts",
}
# tiny_session.csv on a fixed 3 x 8 cluster, with the costs and session model of test_sim_policies.py
FIXED = [
    "--hosts",
    "3",
    "--gpus-per-host",
    "8",
    "--min-hosts",
    "3",
    "--max-hosts",
    "3",
    "--open-before-min",
    "5",
    "--idle-timeout-min",
    "15",
    "--container-start-s",
    "60",
    "--state-restore-s",
    "30",
    "--scale-out-s",
    "120",
    "--no-progress",
]


SIMULATE = "notebookos.gpu_broker.simulator.cli"


def test_simulate_is_registered_in_the_notebookos_command():
    assert SIMULATE in cli.SUBCOMMANDS, "server_extension/cli.py must list the simulate subcommand"


@pytest.fixture
def main():
    """The real entry point and parser."""
    return cli.main


def test_simulate_writes_summary_csv_and_plots(main, tmp_path):
    out = tmp_path / "out"
    code = main(
        [
            "simulate",
            "--trace",
            str(DATA / "tiny_session.csv"),
            "--policies",
            "notebookos,batch",
            "--out",
            str(out),
            *FIXED,
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["notebookos", "batch"]  # reservation ran as the baseline, unreported
    for row in summary.values():
        assert REQUIRED <= set(row)
    nbos, batch = summary["notebookos"], summary["batch"]
    assert nbos["gpu_hours_committed"] == pytest.approx(110 / 60)  # 2x30 + 2x20 + 1x10 GPU-minutes
    assert nbos["gpu_hours_saved_vs_reservation"] == pytest.approx(0)  # same fixed cluster, same run length
    assert batch["delay_p50_s"] == 90 and batch["started_without_wait"] == 0
    with (out / "summary.csv").open() as handle:
        assert [row["policy"] for row in csv.DictReader(handle)] == ["notebookos", "batch"]
    for png in ("delay_cdf.png", "gpus_over_time.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    settings = json.loads((out / "settings.json").read_text())
    assert settings["costs"]["container_start_s"] == 60 and settings["session_model"]["idle_timeout_s"] == 900


def test_without_policies_every_policy_runs(main, tmp_path):
    assert (
        main(["simulate", "--trace", str(DATA / "tiny_session.csv"), "--out", str(tmp_path), "--no-plots", *FIXED]) == 0
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"reservation", "batch", "notebookos", "lcp", "notebookos-plus"}


def test_window_keeps_its_events_and_counts_gpu_hours_inside_it(main, tmp_path):
    # events at 10 and 50 fall in [0, 60); the one at 200 does not; cost is counted until minute 60 only
    assert (
        main(
            [
                "simulate",
                "--trace",
                str(DATA / "tiny_session.csv"),
                "--policies",
                "reservation",
                "--start-min",
                "0",
                "--hours",
                "1",
                "--out",
                str(tmp_path),
                "--no-plots",
                *FIXED,
            ]
        )
        == 0
    )
    reservation = json.loads((tmp_path / "summary.json").read_text())["reservation"]
    assert reservation["training_events"] == 2
    assert reservation["gpu_hours_provisioned"] == pytest.approx(24 * 55 / 60)
    assert reservation["gpu_hours_committed"] == pytest.approx(2 * 55 / 60)


def test_a_bad_trace_fails_with_the_line_number(main, tmp_path, capsys):
    code = main(["simulate", "--trace", str(DATA / "negative_duration.csv"), "--out", str(tmp_path), "--no-progress"])
    assert code == 2
    assert "negative_duration.csv line 4: duration '-3' is negative" in capsys.readouterr().err
    assert not (tmp_path / "summary.json").exists()


def test_an_unknown_policy_is_a_usage_error(main, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["simulate", "--policies", "notebookos,fastest", "--out", str(tmp_path)])
    assert exited.value.code == 2
    assert "unknown policy fastest" in capsys.readouterr().err
