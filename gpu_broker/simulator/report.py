"""Report an experiment: a terminal table, summary.json, CSV files and PNG plots.

The plots need matplotlib, which only the ``sim`` extra installs (``pip install 'notebookos[sim]'``); it is imported
when a plot is drawn, so everything else works without it.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from .experiment import ExperimentResult
from .metrics import PolicyResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOTS_NEED = "the PNG plots need matplotlib: pip install 'notebookos[sim]', or pass --no-plots"

Metrics = dict[str, dict[str, float | int | None]]

# (metric key, column header, format)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("gpu_hours_provisioned", "GPU-h provisioned", "{:,.0f}"),
    ("gpu_hours_committed", "GPU-h committed", "{:,.0f}"),
    ("gpu_hours_saved_vs_reservation", "saved vs reservation", "{:,.0f}"),
    ("started_without_wait", "started at once", "{:.1%}"),
    ("delay_p50_s", "p50 s", "{:.1f}"),
    ("delay_p90_s", "p90 s", "{:.1f}"),
    ("delay_p99_s", "p99 s", "{:.1f}"),
    ("delay_max_s", "max s", "{:.0f}"),
    ("migrations", "migrations", "{:,}"),
    ("scale_outs", "scale-outs", "{:,}"),
    ("peak_hosts", "peak hosts", "{}"),
)


def _cell(value: float | int | None, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def render_table(metrics: Metrics, wall_s: dict[str, float] | None = None, console: Console | None = None) -> None:
    table = Table(title="Simulated policies", show_lines=False)
    table.add_column("policy", style="bold")
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="right")
    if wall_s is not None:
        table.add_column("wall s", justify="right")
    for name, row in metrics.items():
        cells = [_cell(row[key], fmt) for key, _, fmt in COLUMNS]
        if wall_s is not None:
            cells.append(f"{wall_s[name]:.1f}")
        table.add_row(name, *cells)
    console = console or Console()
    if not console.is_terminal:  # a pipe or a file: do not squeeze the table into 80 columns
        console = Console(file=console.file, width=200)
    console.print(table)


def write_summary_json(path: Path, metrics: Metrics) -> None:
    path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")


def write_summary_csv(path: Path, metrics: Metrics) -> None:
    keys = list(next(iter(metrics.values())))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["policy", *keys])
        for name, row in metrics.items():
            writer.writerow([name, *(row[k] for k in keys)])


def step_means(times: list[float], values: list[int], edges: np.ndarray) -> np.ndarray:
    """Time-weighted mean of a step function (value ``values[i]`` from ``times[i]`` on) over each bin."""
    t = np.asarray(times, dtype=float)
    v = np.asarray(values, dtype=float)
    cumulative = np.concatenate([[0.0], np.cumsum(v[:-1] * np.diff(t))])
    k = np.clip(np.searchsorted(t, edges, side="right") - 1, 0, len(t) - 1)
    integral = cumulative[k] + v[k] * (edges - t[k])
    return np.diff(integral) / np.diff(edges)


def _bins(result: PolicyResult, bins: int) -> np.ndarray:
    rec = result.recorder
    start = max(rec.window_start_s, rec.times[0])
    end = result.end_s if rec.window_end_s is None else min(rec.window_end_s, result.end_s)
    return np.linspace(start, max(end, start + 1.0), bins + 1)


def gpu_series(result: PolicyResult, bins: int = 720) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hours since the window start, mean provisioned GPUs, mean committed GPUs) per bin."""
    rec = result.recorder
    edges = _bins(result, bins)
    hours = (edges[:-1] - rec.window_start_s) / 3600.0
    return hours, step_means(rec.times, rec.provisioned, edges), step_means(rec.times, rec.committed, edges)


def write_timeseries_csv(path: Path, results: dict[str, PolicyResult]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["policy", "hours", "provisioned_gpus", "committed_gpus"])
        for name, result in results.items():
            for row in zip(*gpu_series(result)):
                writer.writerow([name, *(f"{x:.3f}" for x in row)])


def can_plot() -> bool:
    """Whether matplotlib is installed (else the plots are refused with PLOTS_NEED)."""
    return importlib.util.find_spec("matplotlib") is not None


def _figure(**kwargs: Any) -> Figure:  # matplotlib's Figure options
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def plot_delay_cdf(path: Path, results: dict[str, PolicyResult]) -> None:
    fig = _figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    right = max([1.0, *(max(r.recorder.delays_s, default=0.0) for r in results.values())]) * 1.2
    for name, result in results.items():
        delays = np.sort(np.asarray(result.recorder.delays_s, dtype=float))
        share = np.arange(1, delays.size + 1) / delays.size
        # start at (0, 0) and run on to the right edge, so that a policy with no delay at all shows as a line at 1
        xs = np.concatenate([[0.0], delays, [right]])
        ys = np.concatenate([[0.0], share, [1.0]])
        ax.step(xs, ys, where="post", label=name)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(0, right)
    ax.set_ylim(0, 1.04)
    ax.set_xlabel("delay from submission to start of a training event (s, symlog)")
    ax.set_ylabel("share of training events")
    ax.set_title("Delay CDF per policy")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=110)


def plot_gpus_over_time(path: Path, results: dict[str, PolicyResult]) -> None:
    fig = _figure(figsize=(9, 1.9 * len(results) + 0.8))
    axes = fig.subplots(len(results), 1, sharex=True, sharey=True, squeeze=False)[:, 0]
    for ax, (name, result) in zip(axes, results.items()):
        hours, provisioned, committed = gpu_series(result)
        days = hours / 24.0 if hours[-1] > 72 else None
        x = hours if days is None else days
        ax.fill_between(x, provisioned, step="post", alpha=0.3, label="provisioned")
        ax.plot(x, committed, drawstyle="steps-post", linewidth=0.8, label="committed")
        ax.set_title(name, loc="left", fontsize=10)
        ax.set_ylabel("GPUs")
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("days" if hours[-1] > 72 else "hours")
    fig.suptitle("Provisioned vs committed GPUs over time")
    fig.savefig(path, dpi=110)


def write_outputs(out: Path, run: ExperimentResult, plots: bool = True) -> list[Path]:
    """summary.json, summary.csv, timeseries.csv, settings.json and (with ``plots``) the two PNGs."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = run.metrics()
    written = [out / "summary.json", out / "summary.csv", out / "timeseries.csv", out / "settings.json"]
    write_summary_json(written[0], metrics)
    write_summary_csv(written[1], metrics)
    write_timeseries_csv(written[2], run.results)
    written[3].write_text(json.dumps(run.experiment.settings(), indent=2) + "\n", encoding="utf-8")
    if plots:
        written += [out / "delay_cdf.png", out / "gpus_over_time.png"]
        plot_delay_cdf(written[-2], run.results)
        plot_gpus_over_time(written[-1], run.results)
    return written
