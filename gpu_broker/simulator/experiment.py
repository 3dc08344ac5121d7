"""One experiment: a trace, a window, a cluster, a session model and costs, run under several policies.

Shared by the ``notebookos simulate`` command and ``benchmarks/simulate_june.py`` so that both report the same
numbers for the same settings.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..scheduler.policies import POLICIES, make_policy
from .costs import CostModel
from .engine import ClusterSpec, Simulation
from .metrics import PolicyResult
from .trace import load_trace, reconstruct_sessions, select_window
from .workload import SessionModel, SessionPlan, plan_session

# Package data (pyproject.toml), so that an installed wheel replays it as a checkout does.
BUNDLED_TRACE = Path(__file__).resolve().parent / "data" / "sensei_june_60sec.csv"
BASELINE = "reservation"


@dataclass(frozen=True)
class Experiment:
    trace: Path = BUNDLED_TRACE
    policies: tuple[str, ...] = tuple(POLICIES)
    start_s: float = 0.0
    hours: float | None = None  # None: to the end of the trace
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    model: SessionModel = field(default_factory=SessionModel)
    costs: CostModel = field(default_factory=CostModel)

    def __post_init__(self) -> None:
        unknown = [p for p in self.policies if p not in POLICIES]
        if unknown:
            raise ValueError(
                f"unknown polic{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; known: {', '.join(POLICIES)}"
            )
        if not self.policies:
            raise ValueError("no policy to run")
        if self.hours is not None and self.hours <= 0:
            raise ValueError("hours must be positive")

    @property
    def window(self) -> tuple[float, float | None]:
        return self.start_s, None if self.hours is None else self.start_s + self.hours * 3600.0

    def settings(self) -> dict[str, object]:
        """Every setting of the run, JSON-ready (an unbounded time is written as "inf")."""
        settings: dict[str, object] = {
            "trace": str(self.trace),
            "policies": list(self.policies),
            "window_start_s": self.start_s,
            "window_hours": self.hours,
            "cluster": asdict(self.cluster),
            "session_model": asdict(self.model),
            "costs": asdict(self.costs),
        }
        return {k: _finite(v) for k, v in settings.items()}


def _finite(value: object) -> object:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return value


@dataclass
class ExperimentResult:
    experiment: Experiment
    results: dict[str, PolicyResult]  # the requested policies, in order
    wall_s: dict[str, float]
    baseline_provisioned_h: float

    def metrics(self) -> dict[str, dict[str, float | int | None]]:
        return {name: r.metrics(self.baseline_provisioned_h) for name, r in self.results.items()}


def load_workload(experiment: Experiment) -> list[SessionPlan]:
    sessions = reconstruct_sessions(load_trace(experiment.trace))
    selected = select_window(sessions, *experiment.window)
    if not selected:
        raise ValueError(f"{experiment.trace}: no training event is submitted in the chosen window")
    return [plan_session(s, experiment.model) for s in selected]


def run_policy(experiment: Experiment, plans: list[SessionPlan], name: str, progress: bool) -> PolicyResult:
    total = sum(p.event_count for p in plans)
    with tqdm(total=total, desc=f"{name:>16}", unit="event", disable=not progress, mininterval=0.5) as bar:
        simulation = Simulation(
            plans,
            make_policy(name),
            experiment.cluster,
            experiment.model,
            experiment.costs,
            experiment.window,
            on_event_done=lambda: bar.update(1),
        )
        return simulation.run()


def run_experiment(experiment: Experiment, progress: bool = True) -> ExperimentResult:
    """Run every requested policy; reservation also runs (unreported) when not requested, as the baseline."""
    plans = load_workload(experiment)
    results: dict[str, PolicyResult] = {}
    wall: dict[str, float] = {}
    for name in dict.fromkeys((*experiment.policies, BASELINE)):
        began = time.perf_counter()
        results[name] = run_policy(experiment, plans, name, progress)
        wall[name] = time.perf_counter() - began
    baseline = results[BASELINE].recorder.provisioned_gpu_s / 3600.0
    if BASELINE not in experiment.policies:
        del results[BASELINE], wall[BASELINE]
    return ExperimentResult(experiment, results, wall, baseline)
