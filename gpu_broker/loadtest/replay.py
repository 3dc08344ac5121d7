"""``notebookos replay``: drive a real notebookos cluster with a time-scaled slice of a trace, and measure it.

The simulator replays a trace through the scheduling core on a virtual clock; this command replays a slice of the
same trace against the **real system**, through the same APIs JupyterLab uses, so that the two can be compared:

* The trace is read, split into sessions and into notebooks exactly as ``notebookos simulate`` does
  (:mod:`.trace`, :mod:`.workload`): the events *submitted* in ``[--start-min, --start-min + --minutes)``, the first
  ``--max-sessions`` sessions by first submission, and the same session model (open before, idle timeout, close
  after).
* Every trace time is divided by ``--time-scale`` (trace seconds per replay second; 60 plays one trace minute in one
  second). Each notebook becomes a Jupyter session with the ``notebookos`` kernel (``POST /api/sessions``) opened at
  its scaled open time; a setup cell imports torch and builds a small MLP; each training event becomes a cell that
  trains that model on random data until its scaled duration is up, sent over the kernel websocket. As in the
  simulator, the first cell is submitted ``open before`` after the notebook opened and each later one the
  (scaled) think time after the previous cell's reply, so a late start shifts the rest of the session. Notebooks
  close (``DELETE /api/sessions/<id>``) at their scaled close time. Sessions run concurrently.
* Each training cell asks for its event's GPUs, as a user would: before a cell whose event wants another number
  than the kernel asks for now, a cell of only ``%gpus N`` (which holds no GPU itself) changes the kernel's request,
  and the cell then waits for the scheduler's grant like any notebook's. The lab this command starts has
  ``--gpus-per-host`` GPUs per logical host (virtual ones where the machine has none), so cells of concurrent
  sessions contend for them: a cell may wait in the queue, or move to another host first (a migration).
* Per cell it measures, on this machine's monotonic clock: submit -> ``execute_input`` (the cell's start: the
  kernel front forwards nothing of a cell before the scheduler granted its GPUs and its replicas elected the
  executor), submit -> reply, and reply -> idle (the executor's state delta is committed to the Raft log before its
  idle status). After the run it counts the scheduler's decisions on the replayed kernels from the server's
  ``/api/notebookos/events``: cells granted at once, queued, migrated.

So the live delays are GPU waiting (queueing, migrations) plus the replication path (front fan-out, Raft
election, state commit) and this machine's CPU contention: every cell trains on the CPU where the machine has no
GPU. ``--compare-simulator`` runs the simulator's ``notebookos`` policy on the same sessions, on the same
``--hosts`` x ``--gpus-per-host`` cluster, and prints both summaries side by side; the simulator's delays are GPU
waiting in trace seconds, also shown divided by the time scale.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from tornado.websocket import WebSocketClosedError

from ..simulator.cli import add_session_arguments, session_model
from ..simulator.experiment import BUNDLED_TRACE
from ..simulator.metrics import delay_stats
from .lab_driver import Execution, JupyterRest, KernelChannel, LabError, OwnLab
from ..simulator.trace import TraceError, TraceEvent, load_trace, reconstruct_sessions, select_window
from ..simulator.workload import SessionModel, SessionPlan, plan_session

# A cell counts as started without waiting when its submit -> execute_input delay is at most this (wall seconds):
# well above the replication path's own cost on an idle machine (tens of milliseconds), well below anything a user
# would call waiting.
DEFAULT_WAIT_THRESHOLD_S = 0.5
RESULT_TAG = "notebookos_replay"
DEFAULT_GPUS_PER_HOST = 8  # the simulator's default host, so that a slice of the June trace fits (up to 8 GPUs)
LIVE_NOTE = (
    "live delays: each cell asks the scheduler for its event's GPUs, so they include GPU waiting (queued "
    "cells, migrations) as well as the replication, election and state path and this machine's CPU "
    "contention (cells train on the CPU where the machine has no GPU)"
)

SETUP_CODE = """\
import json, time
import torch
torch.set_num_threads(1)
torch.manual_seed({seed})
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
"""

# The kernel's GPU request for its following cells (the replica's `%gpus` magic). A cell of nothing but `%gpus`
# lines binds no GPU, so changing the request never waits for GPUs itself.
GPUS_CODE = "%gpus {gpus}"

TRAIN_CODE = """\
# notebookos replay: trace line {line}, job {job_id}, {gpus} GPU(s), {duration_min:g} trace minutes
started = time.time()
device = "cuda" if torch.cuda.is_available() else "cpu"  # "cuda" is the GPU bound to this cell
model.to(device)
deadline = time.perf_counter() + {run_s!r}
steps = 0
while True:
    x = torch.randn(256, 32, device=device)
    loss = torch.nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
    opt.zero_grad()
    loss.backward()
    opt.step()
    steps += 1
    if time.perf_counter() >= deadline:
        break
print(json.dumps({{"{tag}": {{"started": started, "ended": time.time(), "steps": steps, "loss": loss.item()}}}}))
"""


# ------------------------------------------------------------------------------------------- schedule


@dataclass(frozen=True, slots=True)
class CellSchedule:
    index: int  # position in its notebook
    event: TraceEvent
    think_s: float  # replay seconds from the previous event's reply to this one's submission (0: session's first)
    run_s: float  # replay seconds the cell trains for
    nominal_submit_s: float  # replay clock, if nothing ever waited (the trace's own submit time, scaled)


@dataclass(frozen=True, slots=True)
class NotebookSchedule:
    name: str  # the simulator's kernel id, e.g. s12-n0
    session_id: int
    position: int  # index among its session's notebooks
    open_s: float  # replay clock, nominal
    open_before_s: float  # replay seconds from opening to the first submission
    close_after_s: float  # replay seconds from the last cell's reply to closing
    cells: tuple[CellSchedule, ...]

    @property
    def nominal_close_s(self) -> float:
        last = self.cells[-1]
        return last.nominal_submit_s + last.run_s + self.close_after_s


@dataclass(frozen=True, slots=True)
class SessionSchedule:
    session_id: int
    notebooks: tuple[NotebookSchedule, ...]


def select_plans(
    trace: Path, start_min: float, minutes: float | None, max_sessions: int | None, model: SessionModel
) -> list[SessionPlan]:
    """The simulator's sessions of the window (events submitted in it), the first ``max_sessions`` by first
    submission, planned into notebooks with the simulator's session model."""
    start_s = start_min * 60.0
    end_s = None if minutes is None else start_s + minutes * 60.0
    selected = select_window(reconstruct_sessions(load_trace(trace)), start_s, end_s)
    if not selected:
        raise ValueError(f"{trace}: no training event is submitted in the chosen window")
    selected.sort(key=lambda s: (s.events[0].submit_s, s.session_id))
    if max_sessions is not None:
        selected = selected[:max_sessions]
    return [plan_session(s, model) for s in selected]


def build_schedule(plans: list[SessionPlan], model: SessionModel, time_scale: float) -> list[SessionSchedule]:
    """Scale the plans to the replay clock: every trace duration divided by ``time_scale``, and time 0 when the
    first notebook opens (``open_before`` ahead of the earliest first submission)."""
    if not time_scale > 0 or not math.isfinite(time_scale):
        raise ValueError("the time scale must be a positive number")
    if not plans:
        raise ValueError("no session to replay")
    origin = min(p.first_submit_s for p in plans) - model.open_before_s
    schedules = []
    for plan in plans:
        notebooks = []
        for position, notebook in enumerate(plan.notebooks):
            last = position == len(plan.notebooks) - 1
            cells = tuple(
                CellSchedule(
                    i,
                    c.event,
                    c.think_s / time_scale,
                    c.event.duration_s / time_scale,
                    (c.event.submit_s - origin) / time_scale,
                )
                for i, c in enumerate(notebook.cells)
            )
            notebooks.append(
                NotebookSchedule(
                    name=notebook.kernel_id,
                    session_id=plan.session_id,
                    position=position,
                    open_s=cells[0].nominal_submit_s - model.open_before_s / time_scale,
                    open_before_s=model.open_before_s / time_scale,
                    close_after_s=(model.closes_after_s if last else model.idle_timeout_s) / time_scale,
                    cells=cells,
                )
            )
        schedules.append(SessionSchedule(plan.session_id, tuple(notebooks)))
    return schedules


def next_notebook_open_s(previous_reply_s: float, following: NotebookSchedule) -> float:
    """When a session's next notebook opens, on the replay clock: as in the simulator, ``open_before`` ahead of
    its first submission, which comes the think time after the previous notebook's last reply."""
    return previous_reply_s + following.cells[0].think_s - following.open_before_s


# --------------------------------------------------------------------------------------------- records


@dataclass
class EventRecord:
    session_id: int
    notebook: str
    cell: int
    trace_line: int
    job_id: str
    gpus: int
    trace_submit_min: float
    trace_duration_min: float
    run_s: float
    nominal_submit_s: float
    planned_submit_s: float | None = None  # by the think-time rule, from the actual previous reply
    submitted_s: float | None = None
    late_s: float | None = None  # submitted after the planned time (the notebook's kernel was not ready)
    start_delay_s: float | None = None  # submit -> execute_input
    busy_delay_s: float | None = None  # submit -> busy status
    reply_delay_s: float | None = None  # submit -> execute_reply
    idle_delay_s: float | None = None  # submit -> idle status (state committed)
    overhead_s: float | None = None  # submit -> reply, minus run_s: what the platform added to the cell
    commit_s: float | None = None  # reply -> idle
    code_start_delay_s: float | None = None  # submit -> the cell's own time.time() at its first line (same host)
    steps: int | None = None
    status: str = "not run"
    error: str | None = None

    @property
    def ran(self) -> bool:
        return self.status == "ok" and bool(self.steps)


@dataclass
class NotebookRecord:
    name: str
    session_id: int
    kernel_id: str | None = None
    opened_s: float | None = None
    kernel_ready_s: float | None = None  # POST /api/sessions -> kernel_info answered
    setup_s: float | None = None  # the setup cell (imports torch), submit -> idle
    closed_s: float | None = None
    error: str | None = None


@dataclass
class Replay:
    rest: JupyterRest
    schedule: list[SessionSchedule]
    cell_timeout_s: float = 300.0
    log: Console | None = None
    events: list[EventRecord] = field(default_factory=list)
    notebooks: list[NotebookRecord] = field(default_factory=list)
    origin: float = 0.0
    # the scheduler's decisions on the replayed kernels by kind (lead, migrate, queued, ...); None: not readable
    decisions: dict[str, int] | None = None

    def now(self) -> float:
        return time.monotonic() - self.origin

    async def sleep_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            await asyncio.sleep(delay)

    def say(self, text: str) -> None:
        if self.log is not None:
            self.log.print(f"[dim]{self.now():8.2f}s[/dim] {text}", highlight=False)

    async def run(self) -> None:
        for session in self.schedule:
            for notebook in session.notebooks:
                self.notebooks.append(NotebookRecord(notebook.name, notebook.session_id))
                for cell in notebook.cells:
                    e = cell.event
                    self.events.append(
                        EventRecord(
                            notebook.session_id,
                            notebook.name,
                            cell.index,
                            e.line,
                            e.job_id,
                            e.gpus,
                            e.submit_s / 60.0,
                            e.duration_s / 60.0,
                            cell.run_s,
                            cell.nominal_submit_s,
                        )
                    )
        self.origin = time.monotonic()
        await asyncio.gather(*(self._session(s) for s in self.schedule))
        self.decisions = await self._decisions()

    async def _decisions(self) -> dict[str, int] | None:
        """Count the scheduler's decisions on the replayed kernels (``GET /api/notebookos/events``): every cell
        that asked for GPUs has one grant (``lead`` or ``migrate``), and a ``queued`` one before it if it waited.
        None when the server does not show them (another user's server, a log that has moved on)."""
        counts: dict[str, int] = {}
        try:
            for notebook in self.notebooks:
                if notebook.kernel_id is not None:
                    for record in await self.rest.events(notebook.kernel_id, kind="decision"):
                        kind = str((record.get("data") or {}).get("kind", "unknown"))
                        counts[kind] = counts.get(kind, 0) + 1
        except LabError as err:
            self.say(f"[yellow]the scheduler's decisions are not readable: {escape(str(err))}[/yellow]")
            return None
        return counts

    async def _session(self, session: SessionSchedule) -> None:
        open_at = session.notebooks[0].open_s
        for notebook in session.notebooks:
            last_reply = await self._notebook(notebook, open_at)
            following = notebook.position + 1
            if following < len(session.notebooks):
                base = last_reply if last_reply is not None else self.now()
                open_at = next_notebook_open_s(base, session.notebooks[following])

    async def _notebook(self, plan: NotebookSchedule, open_at: float) -> float | None:
        record = next(n for n in self.notebooks if n.name == plan.name)
        events = [e for e in self.events if e.notebook == plan.name]
        await self.sleep_until(open_at)
        record.opened_s = self.now()
        session_id = channel = None
        last_reply: float | None = None
        try:
            created = await self.rest.create_session(f"{plan.name}-{os.getpid()}")
            session_id, record.kernel_id = created["id"], created["kernel"]["id"]
            channel = await KernelChannel.connect(self.rest, record.kernel_id)
            await channel.kernel_info()
            record.kernel_ready_s = self.now() - record.opened_s
            setup = await channel.run(SETUP_CODE.format(seed=plan.session_id), self.cell_timeout_s)
            if setup.status != "ok" or setup.idle is None:
                raise LabError(f"the setup cell failed: {setup.status}: {setup.error}")
            record.setup_s = setup.idle - setup.submitted
            self.say(f"{plan.name}: kernel ready in {record.kernel_ready_s:.2f} s, setup {record.setup_s:.2f} s")
            planned = open_at + plan.open_before_s
            requested = 0  # the kernelspec's GPUs per cell
            running: list[tuple[EventRecord, Execution]] = []
            for cell, event in zip(plan.cells, events):
                if cell.index > 0:
                    if last_reply is None:  # set by the cell before, in this loop
                        raise RuntimeError(f"{plan.name} cell {cell.index}: no reply from the cell before")
                    planned = last_reply + cell.think_s
                if cell.event.gpus != requested:  # within the think time, before the cell is due
                    changed = await channel.run(GPUS_CODE.format(gpus=cell.event.gpus), self.cell_timeout_s)
                    if changed.status != "ok":
                        raise LabError(f"%gpus {cell.event.gpus} failed: {changed.status}: {changed.error}")
                    requested = cell.event.gpus
                await self.sleep_until(planned)
                execution = await channel.execute(
                    TRAIN_CODE.format(
                        line=cell.event.line,
                        job_id=cell.event.job_id,
                        gpus=cell.event.gpus,
                        duration_min=cell.event.duration_s / 60.0,
                        run_s=cell.run_s,
                        tag=RESULT_TAG,
                    )
                )
                event.planned_submit_s = planned
                event.submitted_s = execution.submitted - self.origin
                event.late_s = max(0.0, event.submitted_s - planned)
                event.status = "submitted"
                await execution.wait_reply(cell.run_s + self.cell_timeout_s)
                _measure(event, execution, final=False)
                running.append((event, execution))
                last_reply = (execution.reply - self.origin) if execution.reply is not None else self.now()
                self.say(
                    f"{plan.name} cell {cell.index}: {event.status}, start {_fmt(event.start_delay_s)} s, "
                    f"reply {_fmt(event.reply_delay_s)} s, trains {cell.run_s:.2f} s"
                )
                if event.status != "ok":
                    for skipped in events[cell.index + 1 :]:
                        skipped.error = f"not run: cell {cell.index} of this notebook failed"
                    break  # stop_on_error: Jupyter aborts what a user would have queued behind it
            for event, execution in running:  # the idle of the last cell (its state commit) may still be coming
                await execution.wait_done(self.cell_timeout_s)
                _measure(event, execution, final=True)
            await self.sleep_until((last_reply if last_reply is not None else self.now()) + plan.close_after_s)
        except (LabError, KeyError, TypeError, OSError, WebSocketClosedError) as err:
            record.error = f"{type(err).__name__}: {err}" if not isinstance(err, LabError) else str(err)
            self.say(f"[red]{plan.name}: {escape(record.error)}[/red]")
            for event in events:
                if event.status in ("not run", "submitted"):
                    event.status, event.error = "not run", event.error or str(err)
        finally:
            if channel is not None:
                channel.close()
            if session_id is not None:
                try:
                    await self.rest.delete_session(session_id)
                except LabError as err:
                    record.error = record.error or f"closing: {err}"
            record.closed_s = self.now()
        return last_reply


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _measure(event: EventRecord, ex: Execution, final: bool) -> None:
    """Fill ``event`` from what came back; ``final`` once the idle status came (all output is in by then)."""

    def since(t: float | None) -> float | None:
        return None if t is None else t - ex.submitted

    event.start_delay_s = since(ex.started)
    event.busy_delay_s = since(ex.busy)
    event.reply_delay_s = since(ex.reply)
    event.idle_delay_s = since(ex.idle)
    if ex.reply is not None:
        event.overhead_s = ex.reply - ex.submitted - event.run_s
    if ex.reply is not None and ex.idle is not None:
        event.commit_s = ex.idle - ex.reply
    event.status = ex.status or "submitted"
    event.error = ex.error
    result = _cell_result(ex.stdout)
    if result is not None:
        event.steps = int(result.get("steps", 0))
        event.code_start_delay_s = float(result["started"]) - ex.submitted_wall
    if final and event.status == "ok" and not event.steps:
        event.status, event.error = "error", "the cell replied ok but printed no training result"


def _cell_result(stdout: list[str]) -> dict | None:
    for line in "".join(stdout).splitlines():
        if RESULT_TAG in line:
            try:
                return json.loads(line)[RESULT_TAG]
            except (ValueError, KeyError):
                return None
    return None


# --------------------------------------------------------------------------------------------- summary


def _pct(values: list[float | None], q: float) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.percentile(v, q)) if v else None


def summarize(
    events: list[EventRecord],
    notebooks: list[NotebookRecord],
    threshold_s: float,
    sessions: int,
    decisions: dict[str, int] | None = None,
) -> dict:
    """The live run's numbers; ``decisions``: the scheduler's decisions on its kernels by kind (None: unknown)."""
    ran = [e for e in events if e.ran]
    summary: dict = {
        "events": len(events),
        "events_run": len(ran),
        "events_failed": len(events) - len(ran),
        "sessions": sessions,
        "notebooks": len(notebooks),
        "wait_threshold_s": threshold_s,
        **delay_stats([e.start_delay_s for e in ran if e.start_delay_s is not None], threshold_s),
        "overhead_p50_s": _pct([e.overhead_s for e in ran], 50),
        "overhead_p99_s": _pct([e.overhead_s for e in ran], 99),
        "commit_p50_s": _pct([e.commit_s for e in ran], 50),
        "commit_p99_s": _pct([e.commit_s for e in ran], 99),
        "late_submissions": sum(1 for e in ran if (e.late_s or 0.0) > threshold_s),
        "kernel_ready_p50_s": _pct([n.kernel_ready_s for n in notebooks], 50),
        "kernel_ready_max_s": _pct([n.kernel_ready_s for n in notebooks], 100),
        "gpu_decisions": decisions,
    }
    return summary


def simulate_same(
    plans: list[SessionPlan],
    model: SessionModel,
    start_min: float,
    minutes: float | None,
    hosts: int,
    gpus_per_host: int,
    time_scale: float,
) -> dict:
    """The simulator's ``notebookos`` policy on the same sessions and session model, on a fixed cluster of
    ``hosts`` x ``gpus_per_host`` with the simulator's default costs. Delays in trace seconds, and divided by the
    time scale for the replay clock."""
    from ..scheduler.policies import make_policy
    from ..simulator.costs import CostModel
    from ..simulator.engine import ClusterSpec, Simulation

    start_s = start_min * 60.0
    cluster = ClusterSpec(hosts=hosts, host_gpus=gpus_per_host, min_hosts=hosts, max_hosts=hosts)
    window = (start_s, None if minutes is None else start_s + minutes * 60.0)
    result = Simulation(plans, make_policy("notebookos"), cluster, model, CostModel(), window).run()
    delays = result.recorder.delays_s
    metrics = result.metrics(None)
    return {
        "policy": "notebookos",
        "cluster": asdict(cluster),
        "costs": asdict(CostModel()),
        "events": metrics["training_events"],
        "trace_seconds": {**delay_stats(delays), "started_without_wait_rule": "delay == 0 (simulator)"},
        "replay_seconds": delay_stats([d / time_scale for d in delays]),
        "migrations": metrics["migrations"],
        "gpu_hours_committed": metrics["gpu_hours_committed"],
        "delays_s": delays,
    }


# ---------------------------------------------------------------------------------------------- output

EVENT_FIELDS = [f.name for f in EventRecord.__dataclass_fields__.values()]


def write_outputs(
    out: Path, report: dict, events: list[EventRecord], plots: bool, simulator: dict | None, time_scale: float
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "replay.json", out / "replay.csv"]
    written[0].write_text(json.dumps(report, indent=2, default=_json_default) + "\n", encoding="utf-8")
    with written[1].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=EVENT_FIELDS)
        writer.writeheader()
        for event in events:
            writer.writerow(asdict(event))
    if plots:
        written.append(out / "delay_cdf.png")
        plot_delay_cdf(written[-1], events, simulator, time_scale)
    return written


def _json_default(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return "inf"
    raise TypeError(f"not JSON serializable: {value!r}")


def plot_delay_cdf(path: Path, events: list[EventRecord], simulator: dict | None, time_scale: float) -> None:
    from matplotlib.figure import Figure

    def live(key: str) -> list[float]:
        return [getattr(e, key) for e in events if e.ran and getattr(e, key) is not None]

    series = {
        "live: submit → execution start": live("start_delay_s"),
        "live: submit → reply, minus training time": live("overhead_s"),
        "live: reply → idle (state committed)": live("commit_s"),
    }
    if simulator is not None:
        series[f"simulator notebookos, delay ÷ {time_scale:g}"] = [d / time_scale for d in simulator["delays_s"]]
    fig = Figure(figsize=(7.5, 4.4), layout="constrained")
    ax = fig.add_subplot()
    right = max([0.01, *(max(v, default=0.0) for v in series.values())]) * 1.3
    for label, values in series.items():
        if not values:
            continue
        d = np.sort(np.maximum(np.asarray(values, dtype=float), 0.0))
        xs = np.concatenate([[0.0], d, [right]])
        ys = np.concatenate([[0.0], np.arange(1, d.size + 1) / d.size, [1.0]])
        ax.step(xs, ys, where="post", label=label)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(0, right)
    ax.set_ylim(0, 1.04)
    ax.set_xlabel("replay seconds (wall clock, symlog)")
    ax.set_ylabel("share of training events")
    ax.set_title(f"notebookos replay: {len(series[next(iter(series))])} cells, time scale {time_scale:g}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=110)


SUMMARY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("events", "events", "{:,}"),
    ("started_without_wait", "started at once", "{:.1%}"),
    ("delay_p50_s", "p50 s", "{:.3f}"),
    ("delay_p90_s", "p90 s", "{:.3f}"),
    ("delay_p99_s", "p99 s", "{:.3f}"),
    ("delay_max_s", "max s", "{:.3f}"),
    ("delay_mean_s", "mean s", "{:.3f}"),
)


def render(summary: dict, simulator: dict | None, time_scale: float, console: Console) -> None:
    if not console.is_terminal:
        console = Console(file=console.file, width=200)
    table = Table(title=f"notebookos replay (time scale {time_scale:g}: trace seconds per replay second)")
    table.add_column("run", style="bold")
    for _, header, _ in SUMMARY_COLUMNS:
        table.add_column(header, justify="right")
    table.add_column("sessions", justify="right")

    def row(name: str, values: dict, events: int, sessions: object) -> None:
        cells = [("n/a" if values.get(k) is None else fmt.format(values[k])) for k, _, fmt in SUMMARY_COLUMNS[1:]]
        table.add_row(name, f"{events:,}", *cells, str(sessions))

    row(
        f"live, wall s (at once: ≤ {summary['wait_threshold_s']:g} s)",
        summary,
        summary["events_run"],
        summary["sessions"],
    )
    if simulator is not None:
        row(
            "simulator notebookos, trace s (at once: 0 s)",
            simulator["trace_seconds"],
            simulator["events"],
            summary["sessions"],
        )
        row(
            f"simulator notebookos, ÷ {time_scale:g} (at once: 0 s)",
            simulator["replay_seconds"],
            simulator["events"],
            summary["sessions"],
        )
    console.print(table)
    extra = (
        f"ran {summary['events_run']}/{summary['events']} cells in {summary['notebooks']} notebooks; "
        f"submit → reply minus training time p50 {_fmt(summary['overhead_p50_s'])} s, "
        f"state commit (reply → idle) p50 {_fmt(summary['commit_p50_s'])} s, "
        f"p99 {_fmt(summary['commit_p99_s'])} s; kernel ready p50 {_fmt(summary['kernel_ready_p50_s'])} s"
    )
    console.print(extra, highlight=False)
    decisions = summary.get("gpu_decisions")
    if decisions is not None:
        console.print(
            "live scheduler decisions on these kernels: "
            + (
                ", ".join(f"{count} {kind}" for kind, count in sorted(decisions.items()))
                or "none (no cell asked for GPUs)"
            ),
            highlight=False,
        )
    console.print(f"note: {LIVE_NOTE}", style="yellow", highlight=False)
    if simulator is not None:
        c = simulator["cluster"]
        console.print(
            f"simulator: notebookos policy on a fixed {c['hosts']} x {c['host_gpus']}-GPU cluster, "
            f"default costs; its delays are GPU waiting (migration, queueing), "
            f"{simulator['migrations']} migration(s)",
            highlight=False,
        )


# ------------------------------------------------------------------------------------------------ CLI


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="replay a time-scaled trace slice against a real notebookos cluster and measure delays",
        description=(
            "Replay the sessions of a trace window against a real notebookos Jupyter server (its own headless "
            "`notebookos lab` unless --url is given): each training event becomes a cell that trains a small "
            "torch model for the event's duration divided by --time-scale, asking for the event's GPUs (%gpus). "
            "Measures submit -> execution start (GPU waiting included), submit -> reply and the state commit of "
            "every cell, and counts the scheduler's decisions (granted at once, queued, migrated); writes "
            "replay.json, replay.csv and delay_cdf.png to --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--trace", type=Path, default=BUNDLED_TRACE, help="trace CSV (Sensei June format)")
    parser.add_argument("--start-min", type=float, default=0.0, help="keep events submitted from this trace minute")
    parser.add_argument(
        "--minutes",
        type=float,
        default=60.0,
        help="keep events submitted within this many trace minutes of --start-min",
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=4,
        help="replay at most this many sessions of the window (the earliest first)",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=60.0,
        help="trace seconds per replay second (60: a trace minute lasts one second)",
    )
    parser.add_argument("--out", type=Path, default=Path("replay"), help="output directory")
    server = parser.add_argument_group("server (default: start a headless `notebookos lab` and stop it after)")
    server.add_argument("--url", default=None, help="base URL of a running Jupyter server with the notebookos kernel")
    server.add_argument("--token", default=None, help="its token; $JUPYTER_TOKEN when not given")
    server.add_argument("--hosts", type=int, default=4, help="logical hosts of the lab this command starts")
    server.add_argument(
        "--gpus-per-host",
        "--sim-gpus-per-host",
        dest="gpus_per_host",
        type=int,
        default=DEFAULT_GPUS_PER_HOST,
        help="GPUs of each host: of the lab this command starts (a slice of the machine's GPUs, "
        "else virtual ones), and of the simulated cluster of --compare-simulator",
    )
    add_session_arguments(parser, "session model, trace minutes (as notebookos simulate)")
    parser.add_argument(
        "--wait-threshold-s",
        type=float,
        default=DEFAULT_WAIT_THRESHOLD_S,
        help="a live cell 'started at once' if submit -> execution start is at most this (wall s)",
    )
    parser.add_argument(
        "--cell-timeout-s", type=float, default=300.0, help="give up on a cell this long after its training time"
    )
    parser.add_argument(
        "--compare-simulator",
        action="store_true",
        help="also run the simulator's notebookos policy on the same sessions, side by side",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip delay_cdf.png")
    parser.add_argument("--quiet", action="store_true", help="no per-cell progress lines")
    parser.set_defaults(func=run)


def settings_of(args: argparse.Namespace, model: SessionModel) -> dict:
    return {
        "trace": str(args.trace),
        "start_min": args.start_min,
        "minutes": args.minutes,
        "max_sessions": args.max_sessions,
        "time_scale": args.time_scale,
        "server": args.url or f"own notebookos lab, {args.hosts} hosts of {args.gpus_per_host} GPUs",
        "session_model": asdict(model),
        "wait_threshold_s": args.wait_threshold_s,
        "cell_code": TRAIN_CODE.format(line="L", job_id="J", gpus="G", duration_min=0, run_s=0.0, tag=RESULT_TAG),
        "gpus_code": GPUS_CODE.format(gpus="G"),
        "setup_code": SETUP_CODE.format(seed="<session id>"),
    }


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    if not console.is_terminal:  # a log file: one line per cell, not wrapped at 80 columns
        console = Console(stderr=True, width=160)
    try:
        if args.max_sessions is not None and args.max_sessions < 1:
            raise ValueError("--max-sessions must be at least 1")
        model = session_model(args)
        plans = select_plans(args.trace, args.start_min, args.minutes, args.max_sessions, model)
        schedule = build_schedule(plans, model, args.time_scale)
        if args.compare_simulator or not args.url:  # a cell asking more GPUs than any host has would wait forever
            widest = max(n.gpus for p in plans for n in p.notebooks)
            if widest > args.gpus_per_host or args.hosts < 3:
                raise ValueError(
                    f"the replay needs at least 3 hosts of at least {widest} GPUs (the widest "
                    f"request of the slice); got {args.hosts} x {args.gpus_per_host}"
                )
    except (TraceError, ValueError) as exc:
        print(f"notebookos replay: {exc}", file=sys.stderr)
        return 2
    span = max(n.nominal_close_s for s in schedule for n in s.notebooks)
    console.print(
        f"replaying {sum(p.event_count for p in plans)} training events of {len(plans)} session(s) "
        f"({sum(len(s.notebooks) for s in schedule)} notebooks) at time scale {args.time_scale:g}: "
        f"about {span:.0f} s",
        highlight=False,
    )
    began = time.monotonic()
    try:
        replay = asyncio.run(_replay(args, schedule, None if args.quiet else console))
    except LabError as exc:
        print(f"notebookos replay: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("notebookos replay: interrupted; nothing written", file=sys.stderr)
        return 130
    wall = time.monotonic() - began
    summary = summarize(replay.events, replay.notebooks, args.wait_threshold_s, len(plans), replay.decisions)
    summary["wall_s"] = wall
    simulator = None
    if args.compare_simulator:
        simulator = simulate_same(
            plans, model, args.start_min, args.minutes, args.hosts, args.gpus_per_host, args.time_scale
        )
    report = {
        "settings": settings_of(args, model),
        "note": LIVE_NOTE,
        "summary": summary,
        "events": [asdict(e) for e in replay.events],
        "notebooks": [asdict(n) for n in replay.notebooks],
    }
    if simulator is not None:
        report["simulator"] = {k: v for k, v in simulator.items() if k != "delays_s"}
    written = write_outputs(args.out, report, replay.events, not args.no_plots, simulator, args.time_scale)
    render(summary, simulator, args.time_scale, Console())
    print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0 if summary["events_failed"] == 0 else 1


async def _replay(args: argparse.Namespace, schedule: list[SessionSchedule], log: Console | None) -> Replay:
    lab = None
    if args.url:
        rest = JupyterRest(args.url, args.token if args.token is not None else os.environ.get("JUPYTER_TOKEN", ""))
        await rest.status()
    else:
        lab = OwnLab(
            Path(tempfile.mkdtemp(prefix="notebookos-replay-")), hosts=args.hosts, gpus_per_host=args.gpus_per_host
        )
        if log is not None:
            log.print(
                f"starting notebookos lab ({args.hosts} hosts of {args.gpus_per_host} GPUs) on {lab.url}, "
                f"log {lab.log_path}",
                highlight=False,
            )
        rest = await lab.start()
    replay = None
    try:
        replay = Replay(rest, schedule, args.cell_timeout_s, log)
        await replay.run()
        return replay
    finally:
        if lab is not None:
            lab.stop()
            if replay is not None and all(e.ran for e in replay.events):
                shutil.rmtree(lab.workdir, ignore_errors=True)
            else:  # keep the lab's log and the replicas' journals for a look
                print(f"notebookos replay: the lab's log and state are kept in {lab.workdir}", file=sys.stderr)
