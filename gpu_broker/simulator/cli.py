"""``notebookos simulate``: replay a training-event trace under scheduling policies and compare them."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from rich.console import Console

from ..scheduler.policies import POLICIES
from .costs import CostModel
from .engine import ClusterSpec
from .experiment import BUNDLED_TRACE, Experiment, run_experiment
from .report import PLOTS_NEED, can_plot, render_table, write_outputs
from .trace import TraceError
from .workload import SessionModel

_DEFAULT_CLUSTER = ClusterSpec()
_DEFAULT_MODEL = SessionModel()
_DEFAULT_COSTS = CostModel()


def add_session_arguments(parser: argparse.ArgumentParser, title: str) -> None:
    """The session model's options, in trace minutes; ``simulate`` and ``replay`` take the same ones."""
    sessions = parser.add_argument_group(title)
    sessions.add_argument(
        "--open-before-min",
        type=_minutes,
        default=_DEFAULT_MODEL.open_before_s / 60,
        help="a notebook opens this long before its first training event",
    )
    sessions.add_argument(
        "--idle-timeout-min",
        type=_minutes,
        default=_DEFAULT_MODEL.idle_timeout_s / 60,
        help="an idle culler closes a notebook this long after a training event ('inf': never)",
    )
    sessions.add_argument(
        "--close-after-min",
        type=_minutes,
        default=None,
        help="a notebook closes this long after its session's last event (default: the idle timeout)",
    )


def session_model(args: argparse.Namespace) -> SessionModel:
    """The SessionModel the options of :func:`add_session_arguments` describe."""
    return SessionModel(
        open_before_s=args.open_before_min * 60.0,
        idle_timeout_s=args.idle_timeout_min * 60.0,
        close_after_s=None if args.close_after_min is None else args.close_after_min * 60.0,
    )


def _minutes(text: str) -> float:
    """Minutes as a float; ``inf`` (or ``never``) for no limit."""
    if text.strip().lower() in ("inf", "never", "none"):
        return math.inf
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _policies(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        plural = "y" if len(unknown) == 1 else "ies"
        raise argparse.ArgumentTypeError(f"unknown polic{plural} {', '.join(unknown)}; known: {', '.join(POLICIES)}")
    if not names:
        raise argparse.ArgumentTypeError(f"no policy given; known: {', '.join(POLICIES)}")
    return names


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="replay a GPU training trace under scheduling policies",
        description=(
            "Replay a training-event trace (Sensei June format) on a simulated GPU cluster under each policy, "
            "and report GPU-hours, delays, migrations and scaling. Writes summary.json, summary.csv, "
            "timeseries.csv, settings.json and PNG plots to --out. Times in minutes unless stated."
        ),
        epilog="policies: " + "; ".join(f"{name}: {cls.summary}" for name, cls in POLICIES.items()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--trace", type=Path, default=BUNDLED_TRACE, help="trace CSV")
    parser.add_argument(
        "--policies",
        type=_policies,
        default=tuple(POLICIES),
        help=f"comma-separated, from: {', '.join(POLICIES)} (reservation always runs as the baseline)",
    )
    parser.add_argument("--out", type=Path, default=Path("simulation"), help="output directory")
    window = parser.add_argument_group("window")
    window.add_argument("--start-min", type=float, default=0.0, help="keep events submitted from this minute on")
    window.add_argument(
        "--hours",
        type=float,
        default=None,
        help="keep events submitted within this many hours of --start-min, and count GPU-hours "
        "only inside that window (default: to the end of the trace)",
    )
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--hosts", type=int, default=_DEFAULT_CLUSTER.hosts, help="hosts at the start")
    cluster.add_argument("--gpus-per-host", type=int, default=_DEFAULT_CLUSTER.host_gpus)
    cluster.add_argument("--min-hosts", type=int, default=_DEFAULT_CLUSTER.min_hosts)
    cluster.add_argument("--max-hosts", type=int, default=None, help="cap on hosts (default: unbounded)")
    cluster.add_argument(
        "--subscription-limit",
        type=float,
        default=_DEFAULT_CLUSTER.subscription_limit,
        help="max GPUs subscribed by replicas on a host / its GPUs",
    )
    cluster.add_argument("--tick-s", type=float, default=_DEFAULT_CLUSTER.tick_s, help="autoscaler period, seconds")
    add_session_arguments(parser, "session model (the trace does not record it)")
    costs = parser.add_argument_group("costs, seconds")
    costs.add_argument("--container-start-s", type=float, default=_DEFAULT_COSTS.container_start_s)
    costs.add_argument("--state-restore-s", type=float, default=_DEFAULT_COSTS.state_restore_s)
    costs.add_argument("--scale-out-s", type=float, default=_DEFAULT_COSTS.scale_out_s)
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.no_plots and not can_plot():
        print(f"notebookos simulate: {PLOTS_NEED}", file=sys.stderr)
        return 2
    try:
        experiment = Experiment(
            trace=args.trace,
            policies=args.policies,
            start_s=args.start_min * 60.0,
            hours=args.hours,
            cluster=ClusterSpec(
                hosts=args.hosts,
                host_gpus=args.gpus_per_host,
                min_hosts=args.min_hosts,
                max_hosts=args.max_hosts,
                subscription_limit=args.subscription_limit,
                tick_s=args.tick_s,
            ),
            model=session_model(args),
            costs=CostModel(args.container_start_s, args.state_restore_s, args.scale_out_s),
        )
        result = run_experiment(experiment, progress=not args.no_progress)
    except (TraceError, ValueError) as exc:
        print(f"notebookos simulate: {exc}", file=sys.stderr)  # plain: an error line must not be re-wrapped
        return 2
    written = write_outputs(args.out, result, plots=not args.no_plots)
    render_table(result.metrics(), result.wall_s, console=Console())
    print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0
