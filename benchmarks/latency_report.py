"""Summaries, the console table, the CDF plot and the machine context of ``cell_latency.py``.

Kept apart from the measuring code so that changing how results look never risks changing what is measured.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

PERCENTILES = (50, 90, 99)


def write_results(out: Path, name: str, summary: dict[str, Any], raw: dict[str, Any]) -> Path:
    """Write ``name.json``, the summary a reader (and the repository) keeps, and ``name.raw.json``, the per-sample
    data every run rewrites (git ignores it): thousands of lines nobody reads in a diff. Returns the summary's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.raw.json").write_text(json.dumps(raw, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    path = out / f"{name}.json"
    path.write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return path


def summarize(samples_s: Sequence[float]) -> dict[str, float]:
    """Percentiles (linear interpolation, numpy's default), mean, min, max and count, in milliseconds."""
    ms = np.asarray(samples_s, dtype=float) * 1000.0
    if ms.size == 0:
        return {"n": 0}
    out = {f"p{p}": float(np.percentile(ms, p)) for p in PERCENTILES}
    out.update(mean=float(ms.mean()), min=float(ms.min()), max=float(ms.max()), n=int(ms.size))
    return out


@dataclass(frozen=True)
class Target:
    """One of the project's targets, and what was measured against it: ``measured`` must be at most ``limit``
    (or, with ``floor``, at least ``limit``)."""

    name: str
    limit: float
    measured: float
    unit: str
    floor: bool = False

    @property
    def met(self) -> bool:
        return self.measured >= self.limit if self.floor else self.measured <= self.limit

    def as_dict(self) -> dict[str, Any]:
        return {
            "limit": round(self.limit, 4),
            "measured": round(self.measured, 4),
            "unit": self.unit,
            "at_least" if self.floor else "at_most": True,
            "met": self.met,
        }


def _fmt(value: float | None, unit: str = "ms") -> str:
    if value is None:
        return "—"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "count":
        return str(int(value))
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def round_trip_table(
    kernels: dict[str, dict[str, dict[str, float]]], rows: Sequence[tuple[str, str]], baseline: str, candidate: str
) -> Table:
    """Both kernels side by side: p50/p90/p99 of each, then what the candidate adds at p50 and p99 and its ratio."""
    table = Table(title="Cell latency, ms (one client, loopback)", title_justify="left")
    table.add_column("metric")
    for name in (baseline, candidate):
        for p in PERCENTILES:
            table.add_column(f"{name}\np{p}", justify="right")
    table.add_column("added\np50", justify="right", style="bold")
    table.add_column("added\np99", justify="right", style="bold")
    table.add_column("ratio\np50", justify="right")
    for key, label in rows:
        base, cand = kernels[baseline].get(key, {}), kernels[candidate].get(key, {})
        cells = [_fmt(s.get(f"p{p}")) for s in (base, cand) for p in PERCENTILES]
        if base.get("n") and cand.get("n"):
            cells += [
                _fmt(cand["p50"] - base["p50"]),
                _fmt(cand["p99"] - base["p99"]),
                f"{cand['p50'] / base['p50']:.1f}×",
            ]
        else:
            cells += ["—", "—", "—"]
        table.add_row(label, *cells)
    return table


def breakdown_table(segments: dict[str, dict[str, dict[str, float]]], order: Sequence[str]) -> Table:
    """Median and p99 of each step of a trivial cell, per kernel: where the round trip's time goes."""
    table = Table(
        title="Where a trivial cell's time goes, ms (per-cell differences of arrival times)", title_justify="left"
    )
    table.add_column("step")
    for name in segments:
        table.add_column(f"{name}\np50", justify="right")
        table.add_column(f"{name}\np99", justify="right")
    for step in order:
        row = [step]
        for stats in segments.values():
            s = stats.get(step, {})
            row += [_fmt(s.get("p50")), _fmt(s.get("p99"))]
        table.add_row(*row)
    return table


def stats_table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    """One summary per row (label -> summarize() output): n, p50, p90, p99 and max."""
    table = Table(title=title, title_justify="left")
    table.add_column("what")
    for column in ("n", "p50", "p90", "p99", "max"):
        table.add_column(column, justify="right")
    for label, s in rows.items():
        table.add_row(label, str(s.get("n", 0)), *(_fmt(s.get(c)) for c in ("p50", "p90", "p99", "max")))
    return table


def targets_table(targets: Sequence[Target]) -> Table:
    table = Table(title="Targets", title_justify="left")
    for column in ("target", "limit", "measured", ""):
        table.add_column(column, justify="left" if column == "target" else "right")
    for t in targets:
        verdict = "[green]met[/green]" if t.met else "[red]MISSED[/red]"
        table.add_row(t.name, _fmt(t.limit, t.unit), _fmt(t.measured, t.unit), verdict)
    return table


@dataclass(frozen=True)
class Curve:
    """One empirical CDF of the plot: samples in seconds, and how to draw them."""

    label: str
    samples_s: Sequence[float]
    color: str
    linestyle: str = "-"


def plot_cdfs(
    path: Path, panels: Sequence[tuple[str, Sequence[Curve], Sequence[tuple[float, str]]]], title: str
) -> None:
    """Empirical CDFs on a log-scaled x axis, one panel per (heading, curves, vertical markers in ms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), constrained_layout=True)
    for ax, (heading, curves, markers) in zip(np.atleast_1d(axes), panels):
        for curve in curves:
            ms = np.sort(np.asarray(curve.samples_s, dtype=float) * 1000.0)
            if ms.size == 0:
                continue
            ax.step(
                ms,
                np.arange(1, ms.size + 1) / ms.size,
                where="post",
                color=curve.color,
                linestyle=curve.linestyle,
                label=f"{curve.label} (n={ms.size})",
            )
        for at_ms, label in markers:
            ax.axvline(at_ms, color="grey", linestyle=":", linewidth=1)
            ax.annotate(label, (at_ms, 0.02), rotation=90, fontsize=7, color="grey", ha="right", va="bottom")
        ax.set_xscale("log")
        ax.set_xlabel("ms after execute_request was sent (log scale)")
        ax.set_ylabel("fraction of cells")
        ax.set_ylim(0, 1.01)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(heading)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine_context() -> dict[str, Any]:
    """What the numbers depend on: CPUs, memory, load, versions and the code's commit."""
    import psutil

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in ("ipykernel", "jupyter_client", "pyzmq", "pysyncobj", "torch", "notebookos"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "git": _git_state(),
    }


def load_snapshot() -> dict[str, Any]:
    """Load average and the busiest other processes: the benchmark shares a 2-core machine with whatever runs.
    Processes by name only: their command lines carry this machine's paths (and at times tokens), which committed
    results must not."""
    import psutil

    procs = [p for p in psutil.process_iter(["pid", "name"]) if p.pid != os.getpid()]
    for p in procs:  # cpu_percent needs two readings; the first primes it
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(0.5)
    busiest = []
    for p in procs:
        try:
            busiest.append((p.cpu_percent(None), p.pid, p.info["name"] or "?"))
        except psutil.Error:
            continue
    busiest.sort(reverse=True)
    return {
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "busiest": [{"cpu_percent": c, "pid": pid, "cmd": cmd} for c, pid, cmd in busiest[:5] if c > 1.0],
    }


def _git_state() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    # Uncommitted edits to tracked files change what was measured; name them.
    return {"commit": head, "modified_tracked_files": [line[3:] for line in dirty.splitlines()]}


def print_tables(console: Console, *tables: Table) -> None:
    for table in tables:
        console.print(table)
        console.print()
