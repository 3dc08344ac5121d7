"""GPU sharing: the same notebook workload under the ``reservation`` policy and under ``notebookos``, in one run.

N notebooks (default 8) run a setup cell (torch, a small MLP, synthetic data), then alternate think time and short
training cells (trained for a scheduled 1-2 s), from one seeded schedule shared by both policies. Each policy gets a
fresh embedded cluster service; the notebooks are real kernels (jupyter_client) of a copy of the ``notebookos``
kernelspec whose provisioner asks for 1 GPU. notebookos gets 4 hosts x 1 GPU for 8 notebooks: "four notebooks share
two GPUs" is 2 per GPU, and a kernel's three replicas need three distinct hosts. reservation (one replica holding its
GPU from start to shutdown; a kernel without a free GPU is refused) gets one GPU per notebook, and a capacity check
counts how many of the notebooks it can start at all on the notebookos pool.

Measured per policy:

* GPU-seconds held: ``notebookos_gpu_seconds_committed_total`` over the whole run and over the workload window (end
  of the last setup cell to the end of the last training cell), cross-checked with the scheduler's events (per cell
  grant -> release; under reservation kernel placed -> closed);
* cells that started without waiting: the scheduler's first decision for the cell was LEAD (not QUEUED, not
  MIGRATE), cross-checked with the kernels' stderr notices ("notebookos: waiting for ...", "notebookos: moving");
* submit -> execution start. Client side: send of execute_request -> ``execute_input`` on IOPub, which the executor
  publishes once it holds its GPU and the election has committed (as in ``cell_latency.py``). Scheduler side: the
  cell's first decision -> ``execution_started``, which for a migrated cell follows the moved replica's
  ``replica_ready``. Migrated cells are also shown apart.

A kernel that does not start, a replica lost or never ready, or a failed cell ends the run: the script says why,
keeps the logs, writes no results and exits 1. Views that disagree are printed, recorded under ``problems`` in the
JSON, and exit 1 too. Without a GPU the hosts carry virtual GPUs (accounting, placement, queueing, migration and
binding are the real calls) and torch trains on the CPU. Writes benchmarks/results/gpu_sharing.json and .png.

    .venv/bin/python benchmarks/gpu_sharing.py [--notebooks 8] [--cells 6] [--seed 1] [--hosts 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any, TextIO

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from cell_latency import children_output_to, isolate_jupyter
from latency_report import load_snapshot, machine_context, summarize, write_results

from notebookos.gpu_broker.cluster.client import CLUSTER_FILE_ENV, ClusterClient
from notebookos.gpu_broker.scheduler.policies import POLICIES
from notebookos.gpu_broker.cluster.inventory import nvml_gpu_count
from notebookos.gpu_broker.cluster.launcher import start_cluster

RESULTS = Path(__file__).resolve().parent / "results"
KERNEL_NAME = "notebookos-bench-1gpu"
GPUS_PER_NOTEBOOK = 1
KERNEL_START_TIMEOUT_S = 180.0
READY_TIMEOUT_S = 90.0
CELL_TIMEOUT_S = 240.0
# Setup cells in flight at once. A standby replica imports torch when it applies the setup cell's state, so 8 setup
# cells at once are 24 torch imports on this machine's 2 CPUs, enough to starve the replicas' Raft heartbeats. A
# CPU limit of this machine, not a product one: the kernels themselves are all launched at once.
SETUP_CONCURRENCY = 2
REFERENCE, CANDIDATE = "reservation", "notebookos"
GPU_SECONDS = "notebookos_gpu_seconds_committed_total"
WAIT_NOTICE, MOVE_NOTICE = "notebookos: waiting for", "notebookos: moving"

SETUP_CELL = """\
import time
import torch
torch.set_num_threads(1)  # {notebooks} notebooks share {cpus} CPUs
torch.manual_seed({seed})
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
X = torch.randn(4096, 64, device=device)
Y = X @ torch.randn(64, 1, device=device) + 0.1 * torch.randn(4096, 1, device=device)
model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1)).to(device)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
steps_total = 0
print(f"model on {{device}}")
"""

# Trains for a scheduled time rather than a number of steps: the GPU time a cell asks for is then the same under
# every policy, whatever else the two CPUs are doing; the steps it managed are reported as a load check.
TRAIN_CELL = """\
# training cell {index}: {seconds:.2f} s
until = time.perf_counter() + {seconds:.3f}
steps = 0
while time.perf_counter() < until:
    idx = torch.randint(0, X.shape[0], (256,), device=device)
    loss = torch.nn.functional.mse_loss(model(X[idx]), Y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    steps += 1
steps_total += steps
last_loss = loss.item()
del idx, loss
print(f"trained {{steps}} steps, loss {{last_loss:.4f}}")
"""
STEPS_RE = re.compile(r"trained (\d+) steps")


class Failure(RuntimeError):
    """The product failed under the benchmark (a kernel, a replica or a cell): reported, exit status 1."""


def schedule(args: argparse.Namespace) -> list[list[tuple[float, float]]]:
    """Per notebook, per training cell: (think time before it, training time), from one seeded generator."""
    rng = random.Random(args.seed)
    return [
        [(round(rng.uniform(*args.think), 3), round(rng.uniform(*args.train), 3)) for _ in range(args.cells)]
        for _ in range(args.notebooks)
    ]


@dataclass(frozen=True)
class ClusterSize:
    policy: str
    hosts: int
    gpus_per_host: int

    @property
    def gpus(self) -> int:
        return self.hosts * self.gpus_per_host

    def describe(self) -> dict[str, Any]:
        return {**asdict(self), "gpus": self.gpus, "replicas_per_kernel": POLICIES[self.policy].replicas}


def write_kernelspec(root: Path) -> None:
    """A copy of the installed ``notebookos`` kernelspec whose provisioner asks for 1 GPU per kernel, on a
    JUPYTER_PATH of our own (as tests/kernels/test_gpu_sharing.py does)."""
    source = Path(KernelSpecManager().get_kernel_spec("notebookos").resource_dir)
    target = root / "kernels" / KERNEL_NAME
    shutil.copytree(source, target)
    spec = json.loads((target / "kernel.json").read_text())
    spec["metadata"]["kernel_provisioner"]["config"] = {"gpus": GPUS_PER_NOTEBOOK}
    (target / "kernel.json").write_text(json.dumps(spec))
    os.environ["JUPYTER_PATH"] = str(root)


async def together(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run concurrently; the first failure cancels the rest (an ExceptionGroup), so no cell outlives its kernel."""
    async with asyncio.TaskGroup() as group:
        for c in coros:
            group.create_task(c)


class Cluster:
    """One fresh cluster service of ``size``, named in $NOTEBOOKOS_CLUSTER_FILE for the kernels we start."""

    def __init__(self, size: ClusterSize, state_dir: Path, log: TextIO) -> None:
        with children_output_to(log):  # the service logs every request: not over the progress bar
            self.proc, self.discovery = start_cluster(
                state_dir, size.hosts, size.gpus_per_host, ("--policy", size.policy)
            )
        self.api = ClusterClient.from_file(self.discovery)
        os.environ[CLUSTER_FILE_ENV] = str(self.discovery)

    async def gpu_seconds(self) -> float:
        text = await self.api.request("GET", "/metrics", text=True)
        return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == GPU_SECONDS)

    async def replicas_ready(self, kernel_id: str) -> None:
        """Wait until every replica has caught up with its group, so that the setup cells (and the first executor
        election) do not measure replicas still starting. Failure if one is lost or never gets there."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            states = [(r["replica"], r["host"], r["state"]) for r in (await self.api.kernel(kernel_id))["replicas"]]
            if all(s == "ready" for _, _, s in states):
                return
            if any(s == "lost" for _, _, s in states) or time.monotonic() > deadline:
                raise Failure(
                    f"kernel {kernel_id}: a replica was lost, or not all were ready after "
                    f"{READY_TIMEOUT_S:.0f} s: (replica, host, state) {states}"
                )
            await asyncio.sleep(0.25)

    def save_replica_logs(self, target: Path) -> None:
        """Copy every replica's log out of the cluster's state dir (it goes with the kernel at shutdown)."""
        for path in (self.discovery.parent / "hosts").glob("*/*/replica-*/replica.log"):
            dest = target / path.parent.parent.name / f"{path.parent.parent.parent.name}-{path.parent.name}.log"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)

    def stop(self) -> None:
        os.environ.pop(CLUSTER_FILE_ENV, None)
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class CellRun:
    """One cell as the client saw it; times are ``time.time()`` (the cluster's event log uses the same clock)."""

    notebook: int
    index: int  # 0: the setup cell; 1..: training cells
    train_s: float
    sent: float = 0.0
    execute_input: float | None = None
    idle: float | None = None
    steps: int | None = None
    notices: list[str] = field(default_factory=list)

    def noticed(self, prefix: str) -> bool:
        return any(n.startswith(prefix) for n in self.notices)

    @property
    def start_delay(self) -> float | None:
        return None if self.execute_input is None else self.execute_input - self.sent


class Notebook:
    """One kernel of the benchmark's kernelspec, driven like a notebook: one cell at a time."""

    def __init__(self, index: int, log: TextIO) -> None:
        self.index, self.log = index, log
        self.km = AsyncKernelManager(kernel_name=KERNEL_NAME)
        self.kc: Any = None

    async def start(self) -> None:
        try:
            await self.km.start_kernel(stdout=self.log, stderr=self.log)
            self.kc = self.km.client()
            self.kc.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
            await self.kc.wait_for_ready(timeout=KERNEL_START_TIMEOUT_S)
        except Exception as err:  # the provisioner's RuntimeError carries the scheduler's reason
            raise Failure(f"notebook {self.index}: the kernel did not start: {err}") from err

    async def run(self, cell: CellRun, code: str) -> CellRun:
        """Send the cell and follow it to its reply; Failure unless it ran to ``ok``."""
        where, cell.sent = f"notebook {self.index} cell {cell.index}", time.time()
        msg_id = self.kc.execute(code, allow_stdin=False, stop_on_error=True)
        deadline = time.monotonic() + CELL_TIMEOUT_S
        stdout = error = ""
        while cell.idle is None:
            if time.monotonic() > deadline:
                raise Failure(f"{where}: not idle within {CELL_TIMEOUT_S:.0f} s (notices {cell.notices})")
            try:
                m = await self.kc.get_iopub_msg(timeout=5.0)
            except Empty:
                if not await self.km.is_alive():
                    raise Failure(f"{where}: the kernel died") from None
                continue
            if m["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = m["msg_type"], m["content"]
            if kind == "status" and content["execution_state"] == "idle":
                cell.idle = time.time()
            elif kind == "execute_input" and cell.execute_input is None:
                cell.execute_input = time.time()
            elif kind == "stream" and content["name"] == "stdout":
                stdout += content["text"]
            elif kind == "stream" and content["text"].startswith("notebookos:"):
                cell.notices.append(content["text"].strip())
            elif kind == "error":
                error = f"{content['ename']}: {content['evalue']}"
        reply = await self.kc.get_shell_msg(timeout=max(1.0, deadline - time.monotonic()))
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = await self.kc.get_shell_msg(timeout=max(1.0, deadline - time.monotonic()))
        if reply["content"]["status"] != "ok" or error:
            raise Failure(f"{where}: {reply['content']['status']} {error} (notices {cell.notices})")
        found = STEPS_RE.search(stdout)
        cell.steps = int(found.group(1)) if found else None
        return cell

    async def shutdown(self, now: bool = False) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
            self.kc = None
        if self.km.has_kernel:  # jupyter_client asks, waits, then kills
            await self.km.shutdown_kernel(now=now)


@dataclass
class PolicyRun:
    size: ClusterSize
    cells: list[CellRun]
    kernel_ids: list[str]
    events: list[dict[str, Any]]
    counter: dict[str, float]  # GPU-seconds counter at window start, window end, and once every kernel closed
    times: dict[str, float]  # wall-clock marks of the phases


async def run_policy(
    size: ClusterSize, args: argparse.Namespace, workdir: Path, log: TextIO, progress: Progress, task: TaskID
) -> PolicyRun:
    """Start the cluster and every notebook at once, wait for every replica to be ready, run the setup cells
    (SETUP_CONCURRENCY at a time), then the workload with every notebook at once; then shut everything down,
    reading the counter at each boundary. A Failure ends the run with the kernels and the cluster stopped."""
    times = {"cluster_start": time.time()}
    cluster = Cluster(size, workdir / f"cluster-{size.policy}", log)
    (workdir / f"kernels-{size.policy}").mkdir()
    kernel_logs = [open(workdir / f"kernels-{size.policy}" / f"notebook-{i}.log", "w") for i in range(args.notebooks)]
    notebooks = [Notebook(i, kernel_logs[i]) for i in range(args.notebooks)]
    plan = schedule(args)
    cells: list[CellRun] = []
    counter: dict[str, float] = {}
    setups = asyncio.Semaphore(SETUP_CONCURRENCY)

    def phase(name: str, description: str) -> None:
        times[name] = time.time()
        progress.update(task, description=f"{size.policy}: {description}")

    async def setup(nb: Notebook) -> None:
        async with setups:
            code = SETUP_CELL.format(notebooks=args.notebooks, cpus=os.cpu_count(), seed=args.seed)
            cells.append(await nb.run(CellRun(nb.index, 0, 0.0), code))
            progress.advance(task)

    async def work(nb: Notebook) -> None:
        for k, (think, train) in enumerate(plan[nb.index], start=1):
            await asyncio.sleep(think)
            cells.append(await nb.run(CellRun(nb.index, k, train), TRAIN_CELL.format(index=k, seconds=train)))
            progress.advance(task)

    try:
        phase("kernels_start", f"starting {len(notebooks)} kernels")
        await together(nb.start() for nb in notebooks)
        await together(cluster.replicas_ready(nb.km.kernel_id) for nb in notebooks)
        phase("kernels_ready", "setup cells")
        await together(setup(nb) for nb in notebooks)
        phase("window_start", "workload")
        counter["window_start"] = await cluster.gpu_seconds()
        await together(work(nb) for nb in notebooks)
        phase("window_end", "shutting down")
        counter["window_end"] = await cluster.gpu_seconds()
        await together(nb.shutdown() for nb in notebooks)
        deadline = time.monotonic() + 30
        while (await cluster.api.request("GET", "/cluster"))["kernels"] and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        phase("kernels_closed", "done")
        counter["session"] = await cluster.gpu_seconds()
        events = (await cluster.api.request("GET", "/events"))["events"]
    except BaseException:
        with contextlib.suppress(Exception):
            cluster.save_replica_logs(workdir / f"replica-logs-{size.policy}")
        raise
    finally:
        await asyncio.gather(*(nb.shutdown(now=True) for nb in notebooks), return_exceptions=True)
        cluster.stop()
        for f in kernel_logs:
            f.close()
    times["cluster_stopped"] = time.time()
    return PolicyRun(
        size,
        sorted(cells, key=lambda c: (c.notebook, c.index)),
        [nb.km.kernel_id for nb in notebooks],
        events,
        counter,
        times,
    )


async def capacity_check(
    size: ClusterSize, notebooks: int, workdir: Path, log: TextIO, progress: Progress, task: TaskID
) -> dict[str, Any]:
    """How many of the notebooks ``reservation`` can start at all on ``size``, started one by one (a refusal is
    what this measures, not a Failure of the run)."""
    cluster, started, refused = Cluster(size, workdir / "cluster-capacity", log), [], []
    try:
        for nb in (Notebook(i, log) for i in range(notebooks)):
            try:
                await nb.start()
                started.append(nb)
            except Failure as err:
                await nb.shutdown(now=True)
                if "could not place" not in str(err):  # not a refusal: the kernel failed
                    raise
                refused.append(str(err))
            progress.advance(task)
    finally:
        await asyncio.gather(*(nb.shutdown(now=True) for nb in started), return_exceptions=True)
        cluster.stop()
    return {
        **size.describe(),
        "notebooks": notebooks,
        "started": len(started),
        "refused": len(refused),
        "first_refusal": refused[0][:600] if refused else None,
    }


def scheduler_cells(events: Sequence[dict[str, Any]], kernel_id: str) -> list[dict[str, Any]]:
    """The kernel's cells as the scheduler saw them, in order, from its event log: the request (first decision),
    the grant (a decision that is not ``queued``), ``replica_ready`` (migrations), ``execution_started`` and
    ``released``."""
    cells: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for e in events:
        if e["kernel"] != kernel_id:
            continue
        if e["kind"] == "decision":
            kind = e["data"].get("kind")
            if not current or current["released"] is not None:
                current = {
                    "submitted": e["time"],
                    "first_decision": kind,
                    "granted": None,
                    "grant_kind": None,
                    "replica_ready": None,
                    "started": None,
                    "released": None,
                    "gpus": e["data"].get("gpus", 0),
                }
                cells.append(current)
            if kind != "queued":
                current["granted"], current["grant_kind"] = e["time"], kind
        elif current and e["kind"] in ("replica_ready", "execution_started", "released"):
            current[{"execution_started": "started"}.get(e["kind"], e["kind"])] = e["time"]
    return cells


def held_intervals(run: PolicyRun) -> list[tuple[float, float, int]]:
    """When GPUs were committed, per the event log: under a reservation policy from a kernel's placement to its
    close, otherwise from each cell's grant (pre-commit, which the counter counts too) to its release."""
    end = run.times["kernels_closed"]
    if POLICIES[run.size.policy].holds_gpus:
        closed = {e["kernel"]: e["time"] for e in run.events if e["kind"] == "kernel_closed"}
        return [
            (e["time"], closed.get(e["kernel"], end), GPUS_PER_NOTEBOOK)
            for e in run.events
            if e["kind"] == "kernel_placed"
        ]
    return [
        (c["granted"], c["released"] or end, c["gpus"])
        for kernel in run.kernel_ids
        for c in scheduler_cells(run.events, kernel)
        if c["granted"] is not None
    ]


def clipped(intervals: Sequence[tuple[float, float, int]], start: float, end: float) -> float:
    return sum(max(0.0, min(b, end) - max(a, start)) * g for a, b, g in intervals)


def levels(intervals: Sequence[tuple[float, float, int]]) -> list[tuple[float, int]]:
    """The step function (time, level) of overlapping weighted intervals."""
    out, level = [], 0
    for at, step in sorted([(a, g) for a, _, g in intervals] + [(b, -g) for _, b, g in intervals]):
        level += step
        out.append((at, level))
    return out


def analyse_policy(run: PolicyRun) -> dict[str, Any]:
    t, problems = run.times, []
    window, training = (t["window_start"], t["window_end"]), [c for c in run.cells if c.index > 0]
    sched: list[dict[str, Any]] = []
    for nb, kernel in enumerate(run.kernel_ids):
        seen, mine = scheduler_cells(run.events, kernel), [c for c in run.cells if c.notebook == nb]
        if len(seen) != len(mine):
            problems.append(f"notebook {nb}: {len(mine)} cells run, {len(seen)} in the scheduler's events")
        sched += [
            {
                **s,
                "notebook": nb,
                "index": c.index,
                "client_delay": c.start_delay,
                "scheduler_delay": s["started"] - s["submitted"] if s["started"] else None,
            }
            for c, s in zip(mine, seen)
            if c.index > 0
        ]
    at_once = [s for s in sched if s["first_decision"] == "lead"]
    queued = [s for s in sched if s["first_decision"] == "queued"]
    migrated = [s for s in sched if s["grant_kind"] == "migrate"]
    intervals = held_intervals(run)
    gpu_s = {
        "counter_run": run.counter["session"],
        "counter_window": run.counter["window_end"] - run.counter["window_start"],
        "events_run": clipped(intervals, t["cluster_start"], t["cluster_stopped"]),
        "events_window": clipped(intervals, *window),
    }
    # The counter advances at every scheduling-core call (at least once a second): one tick of the whole pool at
    # each end is the most the two views may differ by.
    for scope in ("run", "window"):
        if abs(gpu_s[f"counter_{scope}"] - gpu_s[f"events_{scope}"]) > 2 * run.size.gpus:
            problems.append(
                f"GPU-seconds ({scope}): counter {gpu_s[f'counter_{scope}']:.1f}, events {gpu_s[f'events_{scope}']:.1f}"
            )
    for prefix, chosen, what in ((WAIT_NOTICE, queued, "queued"), (MOVE_NOTICE, migrated, "migrated")):
        if {(c.notebook, c.index) for c in training if c.noticed(prefix)} != {
            (s["notebook"], s["index"]) for s in chosen
        }:
            problems.append(f"the cells with a {prefix!r} notice are not the cells the scheduler {what}")
    problems += [
        f"notebook {s['notebook']} cell {s['index']}: migrated, but no replica_ready before it started"
        for s in migrated
        if not s["replica_ready"] or not s["started"] or s["replica_ready"] > s["started"]
    ]
    if run.events and run.events[0]["seq"] != 1:
        problems.append(f"the event log dropped its first {run.events[0]['seq'] - 1} events (capacity)")
    steps_rate = [c.steps / c.train_s for c in training if c.steps]
    return {
        "cluster": run.size.describe(),
        "cells": {
            "training": len(training),
            "started_without_waiting": len(at_once),
            "queued": len(queued),
            "started_without_waiting_fraction": len(at_once) / len(sched),
            "migrated": len(migrated),
        },
        "gpu_seconds": {
            **gpu_s,
            "scheduled_training": sum(c.train_s for c in training),
            "client_execute_input_to_idle_window": sum(
                c.idle - c.execute_input for c in training if c.idle and c.execute_input
            ),
            "mean_gpus_held_window": gpu_s["events_window"] / (window[1] - window[0]),
        },
        "delay_client_ms": summarize([c.start_delay for c in training if c.start_delay is not None]),
        "delay_scheduler_ms": summarize([s["scheduler_delay"] for s in sched if s["scheduler_delay"] is not None]),
        "delay_migrated_cells_ms": {
            side: summarize([s[f"{side}_delay"] for s in migrated if s[f"{side}_delay"]])
            for side in ("client", "scheduler")
        },
        "training_steps_per_s": {"p50": statistics.median(steps_rate), "min": min(steps_rate), "max": max(steps_rate)},
        "wall_s": {
            "kernels_start": t["kernels_ready"] - t["kernels_start"],
            "window": window[1] - window[0],
            "setup": t["window_start"] - t["kernels_ready"],
            "shutdown": t["kernels_closed"] - t["window_end"],
            "total": t["cluster_stopped"] - t["cluster_start"],
        },
        "problems": problems,
        "cells_detail": [{**asdict(c), "start_delay": c.start_delay} for c in run.cells],
        "scheduler_detail": sched,
    }


def pick(r: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        r = r.get(key) if isinstance(r, dict) else None
    return r


def show(v: Any, spec: str) -> str:
    """``ms``: milliseconds (as ``summarize`` gives them), as seconds when long; ``s``: seconds; else a format
    spec."""
    if v is None:
        return "—"
    if spec == "ms":
        return f"{v / 1000:.2f} s" if v >= 1000 else f"{v:.0f} ms" if v >= 10 else f"{v:.2f} ms"
    return f"{v:.1f} s" if spec == "s" else format(v, spec)


# label, where in a policy's results (several joined by " / "), format (see ``show``), whether the ratio is shown
ROWS = (
    ("GPUs in the pool", "cluster.gpus", "d", True),
    ("GPU-seconds, whole run (counter)", "gpu_seconds.counter_run", ".1f", True),
    ("  same, from the scheduler's events", "gpu_seconds.events_run", ".1f", False),
    ("GPU-seconds, workload window (counter Δ)", "gpu_seconds.counter_window", ".1f", True),
    ("  same window, from the scheduler's events", "gpu_seconds.events_window", ".1f", False),
    ("  same window, client Σ execute_input→idle", "gpu_seconds.client_execute_input_to_idle_window", ".1f", False),
    ("  scheduled training time (the floor)", "gpu_seconds.scheduled_training", ".1f", False),
    ("mean GPUs held in the window", "gpu_seconds.mean_gpus_held_window", ".2f", True),
    ("cells started without waiting", "cells.started_without_waiting_fraction", ".0%", True),
    ("cells queued / migrated (scheduler)", "cells.queued / cells.migrated", "d", False),
    ("submit → start p50 (client)", "delay_client_ms.p50", "ms", True),
    ("submit → start p99 (client)", "delay_client_ms.p99", "ms", True),
    ("submit → start p50 (scheduler)", "delay_scheduler_ms.p50", "ms", True),
    ("submit → start p99 (scheduler)", "delay_scheduler_ms.p99", "ms", True),
    (
        "  migrated cells p50 (client / scheduler)",
        "delay_migrated_cells_ms.client.p50 / delay_migrated_cells_ms.scheduler.p50",
        "ms",
        False,
    ),
    (
        "  migrated cells max (client / scheduler)",
        "delay_migrated_cells_ms.client.max / delay_migrated_cells_ms.scheduler.max",
        "ms",
        False,
    ),
    ("training steps per second, median", "training_steps_per_s.p50", ".0f", False),
    ("wall: workload window", "wall_s.window", "s", True),
    ("wall: total (cluster start to stop)", "wall_s.total", "s", True),
)


def comparison(results: dict[str, dict[str, Any]], notebooks: int) -> tuple[Table, dict[str, float | None]]:
    """Both policies side by side, with notebookos / reservation where a ratio means something."""
    table = Table(title=f"GPU sharing, {notebooks} notebooks, same seeded schedule", title_justify="left")
    for name in ("metric", REFERENCE, CANDIDATE, f"{CANDIDATE}\n/ {REFERENCE}"):
        table.add_column(name, justify="left" if name == "metric" else "right")
    ratios: dict[str, float | None] = {}
    for label, paths, spec, with_ratio in ROWS:
        ref, cand = ([pick(results[p], path) for path in paths.split(" / ")] for p in (REFERENCE, CANDIDATE))
        if with_ratio:
            ratios[label] = cand[0] / ref[0] if ref[0] and cand[0] is not None else None
        table.add_row(
            label,
            *(" / ".join(show(v, spec) for v in vs) for vs in (ref, cand)),
            "" if not with_ratio else "—" if ratios[label] is None else f"{ratios[label]:.2f}×",
        )
    return table, ratios


def plot(path: Path, runs: dict[str, PolicyRun], title: str) -> None:
    """GPUs held over time per policy, with cells waiting for their GPU (request to start, a migration's catch-up
    included) beneath, both from the event log; time from the start of each policy's workload window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_wait) = plt.subplots(
        2, 1, figsize=(11, 6.5), sharex=True, height_ratios=(3, 1), constrained_layout=True
    )
    for (name, run), color in zip(runs.items(), ("tab:red", "tab:blue")):
        origin = run.times["window_start"]
        waiting = [
            (c["submitted"], c["started"] or c["submitted"], 1)
            for kernel in run.kernel_ids
            for c in scheduler_cells(run.events, kernel)
            if c["first_decision"] != "lead"
        ]
        for axis, intervals, label in (
            (ax, held_intervals(run), f"GPUs held ({run.size.gpus} in its pool)"),
            (ax_wait, waiting, "cells waiting for a GPU"),
        ):
            steps = [(run.times["cluster_start"], 0), *levels(intervals)]
            steps.append((run.times["cluster_stopped"], steps[-1][1]))
            axis.step(
                [a - origin for a, _ in steps],
                [lv for _, lv in steps],
                where="post",
                color=color,
                label=f"{name}: {label}",
            )
        ax.axhline(run.size.gpus, color=color, linestyle=":", linewidth=1)
        ax.axvspan(0, run.times["window_end"] - origin, color=color, alpha=0.06)
    ax.set_ylabel("GPUs committed")
    ax_wait.set_ylabel("cells waiting")
    ax_wait.set_xlabel("seconds from the start of the workload window (shaded: the window)")
    ax.set_title(title)
    for axis in (ax, ax_wait):
        axis.yaxis.get_major_locator().set_params(integer=True)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8, loc="upper right")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--notebooks", type=int, default=8, help="notebooks (kernels) per policy (default 8)")
    add("--cells", type=int, default=6, help="training cells per notebook (default 6)")
    add("--seed", type=int, default=1, help="seed of the think/training schedule (default 1)")
    add(
        "--think",
        type=float,
        nargs=2,
        default=(3.0, 9.0),
        metavar=("MIN", "MAX"),
        help="think time before each training cell, uniform, seconds (default 3 9)",
    )
    add(
        "--train",
        type=float,
        nargs=2,
        default=(1.0, 2.0),
        metavar=("MIN", "MAX"),
        help="training time of each cell, uniform, seconds (default 1 2)",
    )
    add("--hosts", type=int, default=4, help="hosts of the notebookos cluster (default 4)")
    add("--gpus-per-host", type=int, default=1, help="virtual GPUs per host (default 1)")
    add("--out", type=Path, default=RESULTS, help="where the JSON and PNG go")
    add("--keep", action="store_true", help="keep the temporary state dir and logs")
    args = parser.parse_args(argv)
    if args.hosts < 3:
        parser.error("a notebookos kernel needs three hosts for its three replicas: --hosts 3 or more")
    return args


async def measure(
    args: argparse.Namespace, sizes: dict[str, ClusterSize], workdir: Path, log: TextIO, progress: Progress
) -> tuple[dict[str, PolicyRun], dict[str, Any]]:
    """Both policies, then the capacity check. Cancelled on SIGTERM as asyncio.run cancels it on Ctrl-C, so the
    kernels and the cluster in use are shut down either way (``run_policy``'s finally)."""
    task = asyncio.current_task()
    assert task is not None
    with contextlib.suppress(NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    bars = {p: progress.add_task(f"{p}: waiting", total=args.notebooks * (args.cells + 1)) for p in sizes}
    check = progress.add_task(f"{REFERENCE} on the {CANDIDATE} pool: starts", total=args.notebooks)
    runs = {p: await run_policy(size, args, workdir, log, progress, bars[p]) for p, size in sizes.items()}
    shared = ClusterSize(REFERENCE, args.hosts, args.gpus_per_host)
    return runs, await capacity_check(shared, args.notebooks, workdir, log, progress, check)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 140, highlight=False)
    shared = ClusterSize(CANDIDATE, args.hosts, args.gpus_per_host)
    reserved = ClusterSize(
        REFERENCE, math.ceil(args.notebooks * GPUS_PER_NOTEBOOK / args.gpus_per_host), args.gpus_per_host
    )
    sizes = {REFERENCE: reserved, CANDIDATE: shared}  # reservation: one GPU per notebook, or it refuses kernels
    note = (
        f"{args.notebooks} notebooks asking {GPUS_PER_NOTEBOOK} GPU each; notebookos: {shared.hosts} hosts × "
        f"{shared.gpus_per_host} GPU ({args.notebooks * GPUS_PER_NOTEBOOK / shared.gpus:.1f} notebooks per GPU); "
        f"reservation: {reserved.hosts} hosts × {reserved.gpus_per_host} GPU"
    )
    real = nvml_gpu_count()
    gpu_note = (
        f"this machine has {real} GPU(s) (NVML), but the hosts carry virtual GPUs"
        if real
        else "this machine has no GPU: the hosts carry virtual GPUs; torch trains on the CPU"
    )
    console.print(f"[bold]GPU sharing: {REFERENCE}, {CANDIDATE}[/bold] — {gpu_note}\n{note}")
    console.print(
        f"workload: {args.cells} training cells per notebook after a setup cell; think time U{args.think} s,"
        f" training U{args.train} s, seed {args.seed}; {os.cpu_count()} CPUs"
    )
    workdir = Path(tempfile.mkdtemp(prefix="notebookos-gpu-sharing-"))
    started = time.perf_counter()
    load_start = load_snapshot()
    busy = "".join(
        f"; {p['cpu_percent']:.0f}% {p['cmd'][:70]}" for p in load_start["busiest"] if p["cpu_percent"] >= 10
    )
    if busy or load_start["loadavg"][0] > (os.cpu_count() or 1) / 2:
        console.print(
            f"[yellow]the machine is not idle (load average {load_start['loadavg']}{busy}): delays and "
            "training steps move with that load[/yellow]"
        )
    columns = (TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        isolate_jupyter(workdir / "jupyter")
        write_kernelspec(workdir / "jupyter-path")
        with open(workdir / "processes.log", "w") as log, Progress(*columns, console=console) as progress:
            runs, capacity = asyncio.run(measure(args, sizes, workdir, log, progress))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print(f"[red]interrupted; every kernel and cluster was stopped; logs are in {workdir}[/red]")
        return 130
    except Exception as err:
        failures = list(err.exceptions) if isinstance(err, ExceptionGroup) else [err]  # from ``together``
        if not all(isinstance(e, Failure) for e in failures):
            traceback.print_exc()
        for e in failures:
            console.print(f"[red]{type(e).__name__}: {e}[/red]")
        console.print(f"[red]no results written; kernel, replica and cluster logs are in {workdir}[/red]")
        return 1
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)

    results = {name: analyse_policy(run) for name, run in runs.items()}
    table, ratios = comparison(results, args.notebooks)
    console.print(table)
    console.print(
        f"capacity check: under {REFERENCE}, on the {CANDIDATE} pool ({capacity['hosts']} hosts × "
        f"{capacity['gpus_per_host']} GPU), {capacity['started']} of {capacity['notebooks']} notebooks could "
        f"start; the first refusal: {capacity['first_refusal']}"
    )
    problems = [f"{name}: {p}" for name, r in results.items() for p in r["problems"]]
    for p in problems:
        console.print(f"[red]{p}[/red]")
    wall = round(time.perf_counter() - started, 1)
    document = {
        "description": "\n\n".join(__doc__.split("\n\n")[:2]),
        "method": "\n\n".join(__doc__.split("\n\n")[2:4]),
        "gpus": gpu_note,
        "sizing": note,
        "settings": {
            **{k: getattr(args, k) for k in ("notebooks", "cells", "seed", "think", "train")},
            "gpus_per_notebook": GPUS_PER_NOTEBOOK,
            "setup_concurrency": SETUP_CONCURRENCY,
            "setup_cell": SETUP_CELL,
            "training_cell": TRAIN_CELL,
        },
        "schedule": schedule(args),
        "policies": results,
        "ratios_vs_reservation": ratios,
        "capacity_check": capacity,
        "problems": problems,
        "machine": {**machine_context(), "load": {"start": load_start, "end": load_snapshot()}},
        "wall_s": wall,
    }
    detail = {
        name: {key: policy.pop(key) for key in ("cells_detail", "scheduler_detail")} for name, policy in results.items()
    }
    write_results(args.out, "gpu_sharing", document, {"policies": detail})
    plot(
        args.out / "gpu_sharing.png",
        runs,
        f"GPUs held over time, {args.notebooks} notebooks, same seeded schedule ({gpu_note.split(':')[0]})",
    )
    console.print(f"wrote {args.out / 'gpu_sharing.json'} and {args.out / 'gpu_sharing.png'}; total {wall} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
