"""Replay the whole Sensei June trace (30,909 training events, ~30 days) under every scheduling policy.

Prints each policy's wall time and the results table, and writes benchmarks/results/simulate_june.json plus the
delay-CDF and GPUs-over-time plots (PNG) next to it. Settings are the simulator's stated defaults (see
docs/simulator.md); run ``notebookos simulate --help`` for the same experiment with other settings.

    .venv/bin/python benchmarks/simulate_june.py [--img-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from notebookos.gpu_broker.simulator.experiment import Experiment, run_experiment
from notebookos.gpu_broker.simulator.report import plot_delay_cdf, plot_gpus_over_time, render_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BUDGET_S = 60.0  # per policy, on a 2-core machine


def portable(path: Path) -> str:
    """A file of this repository as a path from its root (the committed results name no machine's folders); any
    other file by its name alone."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-dir", type=Path, default=RESULTS, help="where the PNG plots go")
    args = parser.parse_args()
    console = Console()
    experiment = Experiment()
    run = run_experiment(experiment, progress=True)
    metrics = run.metrics()
    for name, seconds in run.wall_s.items():
        flag = "" if seconds < BUDGET_S else f"  OVER the {BUDGET_S:.0f} s budget"
        console.print(f"{name:>16}: {seconds:6.1f} s wall{flag}", highlight=False)
    render_table(metrics, run.wall_s, console)
    RESULTS.mkdir(parents=True, exist_ok=True)
    args.img_dir.mkdir(parents=True, exist_ok=True)
    settings = experiment.settings()
    settings["trace"] = portable(experiment.trace)
    payload = {"settings": settings, "wall_s": run.wall_s, "policies": metrics}
    (RESULTS / "simulate_june.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    plot_delay_cdf(args.img_dir / "simulate_june_delay_cdf.png", run.results)
    plot_gpus_over_time(args.img_dir / "simulate_june_gpus_over_time.png", run.results)
    console.print(f"wrote {RESULTS / 'simulate_june.json'} and plots in {args.img_dir}", highlight=False)
    return 0 if all(s < BUDGET_S for s in run.wall_s.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
