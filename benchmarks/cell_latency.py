"""Cell latency of notebookos against plain ipykernel, side by side in one run, both through jupyter_client.

Measures, for a trivial cell (``x = 1``):

* the round trip from sending execute_request to receiving the execute_reply ("reply"), and to receiving the
  ``idle`` status for it ("idle": the cell is over; for notebookos its state delta is committed by then);
* submit to execution start: from send to the ``execute_input`` IOPub message. ipykernel publishes it just before
  it runs the code; notebookos's executor publishes it at once when it ran the previous cell, else after its
  election has committed in the kernel's Raft log. (``busy`` is recorded too, but the notebookos front holds each
  replica's busy until it knows the executor, so for notebookos busy says nothing that execute_input does not.)

and, for notebookos only, how long after the send a cell's state delta has been applied on BOTH standbys, read
from the ``applied_at`` wall-clock stamp each standby publishes on its own IOPub (``notebookos_state_applied``):
a small delta (``x = <new int>``) and a 100 MB float32 tensor changed in place (``t.add_(1)``; the tensor is made
once beforehand, so the timing is of the sync, not of ``torch.ones`` or ``torch.randn``, and every sample has new
bytes, so the content-addressed object store cannot skip the write).

While the replicas' IOPub is tapped (sync phases), the executor's own busy, execute_input and idle split each
notebookos cell into front relay, executor election and run-plus-commit. Trivial cells of both kernels run in
alternating blocks, so load from other processes on this shared 2-core machine lands on both. An execute_reply that
never arrives (its idle did) is counted as lost, not waited on. CPU per cell of every process is reported too.

Writes benchmarks/results/cell_latency.json and benchmarks/results/cell_latency.png and prints the tables. Exits
1 when a target is missed or a reply was lost.

    .venv/bin/python benchmarks/cell_latency.py [--trivial 300] [--small 100] [--tensor 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import psutil
import zmq
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.manager import KernelManager
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from latency_probe import CellTiming, ProbeTimeout, ReplicaTap, TimedClient
from latency_report import (
    Curve,
    Target,
    breakdown_table,
    load_snapshot,
    machine_context,
    plot_cdfs,
    print_tables,
    round_trip_table,
    stats_table,
    summarize,
    targets_table,
    write_results,
)

RESULTS = Path(__file__).resolve().parent / "results"
PLAIN, NOTEBOOKOS = "python3", "notebookos"
TRIVIAL_CELL = "x = 1"
TENSOR_SETUP = "import torch\nt = torch.ones(25_000_000)  # float32: 100 MB"
TENSOR_CELL = "t.add_(1)"  # in place: bumps t._version, so the whole 100 MB is synced again; new bytes each time
CELL_TIMEOUT_S = 60.0
TENSOR_TIMEOUT_S = 120.0
KERNEL_START_TIMEOUT_S = 120.0
WARMUP_CELLS = 15
# A process using this much CPU when the run starts is named in a warning: it competes with the kernels.
FOREIGN_CPU_WARN_PERCENT = 10.0

# The project's targets (added over plain ipykernel; CPU; standby sync); the paper's figures are for context.
ADDED_P50_LIMIT_MS = 4.0
ADDED_P99_LIMIT_MS = 15.0
CPU_PER_CELL_RATIO_LIMIT = 2.0  # a trivial cell's CPU across the front and the three replicas, over plain ipykernel's
PLAIN_CPU_NAME = "ipykernel"  # the plain kernel's process in the CPU accounting
SMALL_SYNC_P90_LIMIT_MS = 15.0
TENSOR_SYNC_LIMIT_S = 1.0
PAPER_SMALL_SYNC = {"p90_ms": 54.79, "p99_ms": 268.25}


# ----------------------------------------------------------------------------------------------- environment


def isolate_jupyter(root: Path) -> None:
    """Runtime, config and IPython dirs of our own, so the run neither finds nor disturbs anyone's kernels or
    clusters (the provisioner would otherwise reuse a cluster named in the user's runtime dir)."""
    for var, sub in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_CONFIG_DIR", "config"), ("IPYTHONDIR", "ipython")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(root / sub)


@contextlib.contextmanager
def children_output_to(log: TextIO) -> Iterator[None]:
    """Point this process's stdout and stderr file descriptors at ``log`` while children are spawned.

    ``start_cluster`` starts the cluster service with inherited stdout/stderr and the service logs every request
    at INFO; inherited, those lines would tear through the progress bar and tables. Only the descriptors the child
    inherits are swapped, for the duration of the spawn.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


@contextlib.contextmanager
def running_cluster(state_dir: Path, log: TextIO) -> Iterator[Path]:
    """An embedded notebookos cluster of 4 logical hosts, as tests/conftest.py starts it; stopped on exit."""
    from notebookos.gpu_broker.cluster.client import CLUSTER_FILE_ENV
    from notebookos.gpu_broker.cluster.launcher import start_cluster

    with children_output_to(log):
        proc, discovery = start_cluster(state_dir, hosts=4)
    os.environ[CLUSTER_FILE_ENV] = str(discovery)
    try:
        yield discovery
    finally:
        os.environ.pop(CLUSTER_FILE_ENV, None)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_kernel(kernel_name: str, log: TextIO) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    """A kernel of ``kernel_name`` with a ready blocking client (shell and IOPub only; no heartbeat thread)."""
    km = KernelManager(kernel_name=kernel_name)
    km.start_kernel(stdout=log, stderr=log)
    kc = km.client()
    try:
        kc.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
        kc.wait_for_ready(timeout=KERNEL_START_TIMEOUT_S)
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def replicas_of(discovery: Path, kernel_id: str) -> list[dict[str, Any]]:
    """The kernel's replicas (index, host, pid, connection) from the cluster API."""
    cluster = json.loads(discovery.read_text())
    req = urllib.request.Request(
        f"{cluster['url']}/kernels/{kernel_id}", headers={"Authorization": f"token {cluster['token']}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["replicas"]


# ------------------------------------------------------------------------------------------------- measuring


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def run_checked(
    client: TimedClient, code: str, timeout: float = CELL_TIMEOUT_S, tap: ReplicaTap | None = None
) -> CellTiming:
    """One cell that must succeed: a failed cell would time the error path, not the one we mean to measure.

    A cell whose reply never came (``reply_lost``) is kept: it ran, its idle came, and the loss itself is a result.
    """
    timing = client.execute(code, timeout, tap)
    if timing.status != "ok" and not timing.reply_lost:
        raise RuntimeError(f"cell {code!r} ended with status {timing.status!r}")
    return timing


def warm_up(clients: dict[str, TimedClient], cells: int) -> dict[str, list[CellTiming]]:
    """The first cells of a kernel pay for imports and, on notebookos, for the Raft leader election; keep them
    out of the samples, but return them so the cold start can be reported."""
    return {name: [run_checked(client, TRIVIAL_CELL) for _ in range(cells)] for name, client in clients.items()}


def interleaved_round_trips(
    clients: dict[str, TimedClient], per_kernel: int, block: int, progress: Progress
) -> dict[str, list[CellTiming]]:
    """``per_kernel`` trivial cells on each kernel, in alternating blocks of ``block``.

    Alternating blocks (and which kernel goes first) lets both kernels see the same machine: this 2-core box is
    shared, and load that comes and goes would otherwise land on one kernel's samples only. The price is that the
    idle notebookos kernel's background work (Raft ticks, heartbeats) runs during the plain kernel's blocks too.
    """
    timings: dict[str, list[CellTiming]] = {name: [] for name in clients}
    task = progress.add_task("trivial cells (both kernels)", total=per_kernel * len(clients))
    names = list(clients)
    round_no = 0
    while any(len(t) < per_kernel for t in timings.values()):
        order = names if round_no % 2 == 0 else names[::-1]
        for name in order:
            client = clients[name]
            client.drain()
            for _ in range(min(block, per_kernel - len(timings[name]))):
                timings[name].append(run_checked(client, TRIVIAL_CELL))
                progress.advance(task)
        round_no += 1
    return timings


def open_tap(
    client: TimedClient, replicas: Sequence[dict[str, Any]], ctx: zmq.Context, attempts: int = 5
) -> ReplicaTap:
    """Subscribe to every replica's IOPub and prove the subscriptions are live with a cell whose state both
    standbys announce (a SUB socket misses what is published before its subscription reaches the publisher)."""
    tap = ReplicaTap(ctx, replicas, client.session)
    time.sleep(0.3)
    for attempt in range(attempts):
        try:
            run_checked(client, f"_sync_probe = {attempt}", timeout=5.0, tap=tap)
            return tap
        except ProbeTimeout:
            continue
    tap.close()
    raise RuntimeError("the replicas' state-applied announcements never arrived; is STATE_APPLIED published?")


def timed_cells(
    client: TimedClient,
    codes: Sequence[str],
    description: str,
    progress: Progress,
    timeout: float = CELL_TIMEOUT_S,
    tap: ReplicaTap | None = None,
) -> list[CellTiming]:
    """Run ``codes`` one by one with a progress bar; with ``tap``, each waits until both standbys applied it."""
    task = progress.add_task(description, total=len(codes))
    timings = []
    for code in codes:
        timings.append(run_checked(client, code, timeout, tap))
        progress.advance(task)
    return timings


class CpuMeter:
    """CPU seconds used by a set of processes between two readings (the front, each replica): a cheap first
    answer to "where does the time go" without attaching a profiler."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.start = self._read()
        self.wall = time.perf_counter()

    def _read(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            try:
                t = proc.cpu_times()
                out[name] = t.user + t.system
            except psutil.Error:
                out[name] = float("nan")
        return out

    def used(self) -> tuple[dict[str, float], float]:
        """CPU seconds per process since construction, and the wall seconds elapsed."""
        now = self._read()
        return {name: now[name] - self.start[name] for name in now}, time.perf_counter() - self.wall


def cpu_per_cell(pids: dict[str, int], run: Callable[[], int], idle_s: float = 2.0) -> dict[str, Any]:
    """CPU milliseconds each process spends per cell of ``run`` (which returns how many cells each kernel ran),
    after taking off what it burns while the kernel is idle (measured first, for ``idle_s``)."""
    idle = CpuMeter(pids)
    time.sleep(idle_s)
    idle_used, idle_wall = idle.used()
    busy = CpuMeter(pids)
    cells = run()
    busy_used, busy_wall = busy.used()
    idle_rate = {name: idle_used[name] / idle_wall for name in pids}
    return {
        "idle_cpu_percent": {name: round(100 * rate, 2) for name, rate in idle_rate.items()},
        "cpu_ms_per_cell": {
            name: round(1000 * (busy_used[name] - idle_rate[name] * busy_wall) / cells, 3) for name in pids
        },
        "cells": cells,
    }


def cpu_ratio(cpu_ms_per_cell: dict[str, float]) -> float:
    """A trivial cell's CPU across the notebookos kernel's processes (front and replicas) over plain ipykernel's."""
    plain = cpu_ms_per_cell[PLAIN_CPU_NAME]
    return sum(ms for name, ms in cpu_ms_per_cell.items() if name != PLAIN_CPU_NAME) / plain


# ------------------------------------------------------------------------------------------------- analysis


def deltas(timings: Sequence[CellTiming], later: str, earlier: str | None = None) -> list[float]:
    """Per cell, seconds between two arrivals (or from the send when ``earlier`` is None); cells lacking one of
    them are left out."""
    out = []
    for t in timings:
        b = getattr(t, later)
        a = 0.0 if earlier is None else getattr(t, earlier)
        if a is not None and b is not None:
            out.append(b - a)
    return out


ROUND_TRIP_ROWS = (
    ("roundtrip_reply", "round trip to execute_reply"),
    ("roundtrip_idle", "round trip to idle status"),
    ("start_execute_input", "send → execute_input (start)"),
    ("start_busy", "send → busy status"),
)
STEPS = (
    ("send → busy", "busy", None),
    ("busy → execute_input", "execute_input", "busy"),
    ("execute_input → reply", "reply", "execute_input"),
    ("reply → idle", "idle", "reply"),
)


def round_trip_stats(timings: Sequence[CellTiming]) -> dict[str, dict[str, float]]:
    return {
        "roundtrip_reply": summarize(deltas(timings, "reply")),
        "roundtrip_idle": summarize(deltas(timings, "idle")),
        "start_execute_input": summarize(deltas(timings, "execute_input")),
        "start_busy": summarize(deltas(timings, "busy")),
    }


def step_stats(timings: Sequence[CellTiming]) -> dict[str, dict[str, float]]:
    return {label: summarize(deltas(timings, later, earlier)) for label, later, earlier in STEPS}


# Steps of a notebookos cell as seen at its executor (through a ReplicaTap) and at the client. Each takes a cell
# and its executor's arrival times (seconds after send) and returns seconds.
EXECUTOR_STEPS: tuple[tuple[str, Callable[[CellTiming, dict[str, float]], float]], ...] = (
    ("send → executor's busy (front relay + replica dispatch)", lambda t, ex: ex["busy"]),
    ("executor's busy → its execute_input (election, if one is held)", lambda t, ex: ex["execute_input"] - ex["busy"]),
    ("executor's execute_input → its idle (run, reply, state commit)", lambda t, ex: ex["idle"] - ex["execute_input"]),
    ("executor's execute_input → client's (front relay)", lambda t, ex: t.execute_input - ex["execute_input"]),
    ("executor's idle → client's idle (front relay)", lambda t, ex: t.idle - ex["idle"]),
    ("executor's idle → applied on both standbys", lambda t, ex: t.synced() - ex["idle"]),
)


def executor_steps(timings: Sequence[CellTiming]) -> dict[str, dict[str, float]]:
    """Split notebookos cells at the executor's own IOPub messages: what the front adds, what the election adds,
    what running and committing the cell takes. Cells whose executor or arrivals are unknown are left out."""
    samples: dict[str, list[float]] = {label: [] for label, _ in EXECUTOR_STEPS}
    for t in timings:
        ex = t.replica_seen.get(t.executor) if t.executor is not None else None
        if not ex or t.execute_input is None or not {"busy", "execute_input", "idle"} <= ex.keys():
            continue
        for label, step in EXECUTOR_STEPS:
            samples[label].append(step(t, ex))
    return {label: summarize(values) for label, values in samples.items()}


def sync_samples(timings: Sequence[CellTiming]) -> dict[str, list[float]]:
    """Per cell, seconds from send until the state was applied on the last standby, plus a breakdown: until the
    executor's idle, and from that idle to the last standby's apply (negative when a standby beat the idle)."""
    synced = [t.synced() for t in timings]
    return {
        "synced": synced,
        "first_standby": [min(t.standby_applied().values()) for t in timings],
        "reply": [t.reply for t in timings],
        "idle": [t.idle for t in timings],
        "idle_to_last_standby": [s - t.idle for s, t in zip(synced, timings)],
        # A standby's applied_at must precede our receipt of its announcement; if not, the clocks disagree.
        "clock_skew_violations": [
            sum(1 for r, at in t.standby_applied().items() if at > t.applied_seen[r] + 1e-3) for t in timings
        ],
    }


def message_order(raw: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per kernel, over every cell of the run: how many replies never came, and how many came after the idle.

    Jupyter does not order messages across the shell and IOPub channels, so a reply after the idle is legal; a
    reply that never comes is not (clients wait for it).
    """
    cells: dict[str, list[CellTiming]] = {name: list(t) for name, t in raw["warmup"].items()}
    for name, timings in raw["trivial"].items():
        cells[name] += timings
    cells[NOTEBOOKOS] += [*raw["small"], raw["tensor_setup"][NOTEBOOKOS], *raw["tensor"]]
    cells[PLAIN] += [raw["tensor_setup"][PLAIN], *raw["tensor_plain"]]
    return {
        name: {
            "cells": len(ts),
            "replies_lost": sum(t.reply_lost for t in ts),
            "reply_after_idle": sum(1 for t in ts if t.reply is not None and t.reply > t.idle),
        }
        for name, ts in cells.items()
    }


def timing_rows(timings: Sequence[CellTiming]) -> list[dict[str, Any]]:
    """Raw per-cell arrivals for the JSON, in milliseconds after the send (``at_replicas``: arrivals straight from
    each replica's IOPub, for the phases that tap them)."""

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 3)

    rows = []
    for t in timings:
        row = {
            "busy": ms(t.busy),
            "execute_input": ms(t.execute_input),
            "reply": ms(t.reply),
            "idle": ms(t.idle),
            "reply_lost": t.reply_lost,
            "executor": t.executor,
        }
        if t.replica_seen:
            row["standbys_applied"] = {str(r): ms(v) for r, v in t.standby_applied().items()}
            row["at_replicas"] = {str(r): {k: ms(v) for k, v in seen.items()} for r, seen in t.replica_seen.items()}
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trivial", type=int, default=300, help="trivial cells per kernel (default 300)")
    parser.add_argument("--block", type=int, default=10, help="trivial cells per kernel per alternation (10)")
    parser.add_argument("--small", type=int, default=100, help="small-delta sync samples (default 100)")
    parser.add_argument("--tensor", type=int, default=10, help="100 MB tensor sync samples (default 10)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and PNG go")
    parser.add_argument("--keep", action="store_true", help="keep the temporary state dir and logs")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, console: Console, workdir: Path, log: TextIO) -> dict[str, Any]:
    """Start both kernels, run every phase, and return the raw timings plus CPU accounting and load context."""
    raw: dict[str, Any] = {"load": {"start": load_snapshot()}}
    with (
        running_cluster(workdir / "cluster", log) as discovery,
        running_kernel(PLAIN, log) as (plain_km, plain_kc),
        running_kernel(NOTEBOOKOS, log) as (nb_km, nb_kc),
    ):
        clients = {PLAIN: TimedClient(plain_kc), NOTEBOOKOS: TimedClient(nb_kc)}
        replicas = replicas_of(discovery, nb_km.kernel_id)
        console.print(
            f"notebookos kernel {nb_km.kernel_id}: replicas on "
            + ", ".join(f"{r['host']} (pid {r['pid']})" for r in replicas),
            highlight=False,
        )
        raw["warmup"] = warm_up(clients, WARMUP_CELLS)
        pids = {
            PLAIN_CPU_NAME: plain_km.provisioner.pid,
            "notebookos front": nb_km.provisioner.pid,
            **{f"replica {r['replica']}": r["pid"] for r in replicas},
        }
        with progress_bar(console) as progress:
            trivial: dict[str, list[CellTiming]] = {}

            def trivial_phase() -> int:
                trivial.update(interleaved_round_trips(clients, args.trivial, args.block, progress))
                return len(trivial[NOTEBOOKOS])

            raw["cpu"] = cpu_per_cell(pids, trivial_phase)
            raw["trivial"] = trivial
            raw["load"]["after_trivial"] = {"loadavg": [round(x, 2) for x in os.getloadavg()]}
            ctx = zmq.Context.instance()
            tap = open_tap(clients[NOTEBOOKOS], replicas, ctx)
            try:
                raw["small"] = timed_cells(
                    clients[NOTEBOOKOS],
                    [f"x = {i + 2}" for i in range(args.small)],
                    "small-delta sync (notebookos)",
                    progress,
                    tap=tap,
                )
                raw["tensor_setup"] = {
                    NOTEBOOKOS: run_checked(clients[NOTEBOOKOS], TENSOR_SETUP, TENSOR_TIMEOUT_S, tap),
                    PLAIN: run_checked(clients[PLAIN], TENSOR_SETUP, TENSOR_TIMEOUT_S),
                }
                raw["tensor"] = timed_cells(
                    clients[NOTEBOOKOS],
                    [TENSOR_CELL] * args.tensor,
                    "100 MB tensor sync (notebookos)",
                    progress,
                    TENSOR_TIMEOUT_S,
                    tap,
                )
                raw["tensor_plain"] = timed_cells(
                    clients[PLAIN],
                    [TENSOR_CELL] * args.tensor,
                    "100 MB tensor cell (ipykernel)",
                    progress,
                    TENSOR_TIMEOUT_S,
                )
            finally:
                tap.close()
        raw["replicas"] = [{k: r[k] for k in ("replica", "host", "pid")} for r in replicas]
    raw["load"]["end"] = load_snapshot()
    return raw


def analyse(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Turn raw timings into the summary, the targets and the JSON document."""
    kernels = {name: round_trip_stats(t) for name, t in raw["trivial"].items()}
    steps = {name: step_stats(t) for name, t in raw["trivial"].items()}
    small, tensor = sync_samples(raw["small"]), sync_samples(raw["tensor"])
    sync = {
        "small_delta": summarize(small["synced"]),
        "small_delta_first_standby": summarize(small["first_standby"]),
        "small_delta_executor_idle": summarize(small["idle"]),
        "small_delta_idle_to_last_standby": summarize(small["idle_to_last_standby"]),
        "tensor_100mb": summarize(tensor["synced"]),
        "tensor_100mb_executor_reply": summarize(tensor["reply"]),
        "tensor_100mb_executor_idle": summarize(tensor["idle"]),
        "tensor_100mb_idle_to_last_standby": summarize(tensor["idle_to_last_standby"]),
        "tensor_100mb_plain_ipykernel_idle": summarize(deltas(raw["tensor_plain"], "idle")),
    }
    executor_view = {"small_delta": executor_steps(raw["small"]), "tensor_100mb": executor_steps(raw["tensor"])}
    order = message_order(raw)
    plain_idle, nb_idle = kernels[PLAIN]["roundtrip_idle"], kernels[NOTEBOOKOS]["roundtrip_idle"]
    plain_reply, nb_reply = kernels[PLAIN]["roundtrip_reply"], kernels[NOTEBOOKOS]["roundtrip_reply"]
    headline = {
        "added_roundtrip_p50_ms": nb_idle["p50"] - plain_idle["p50"],
        "added_roundtrip_p90_ms": nb_idle["p90"] - plain_idle["p90"],
        "added_roundtrip_p99_ms": nb_idle["p99"] - plain_idle["p99"],
        "added_reply_roundtrip_p50_ms": nb_reply["p50"] - plain_reply["p50"],
        "added_reply_roundtrip_p90_ms": nb_reply["p90"] - plain_reply["p90"],
        "added_reply_roundtrip_p99_ms": nb_reply["p99"] - plain_reply["p99"],
        "added_start_p50_ms": (
            kernels[NOTEBOOKOS]["start_execute_input"]["p50"] - kernels[PLAIN]["start_execute_input"]["p50"]
        ),
        "added_start_p99_ms": (
            kernels[NOTEBOOKOS]["start_execute_input"]["p99"] - kernels[PLAIN]["start_execute_input"]["p99"]
        ),
        "small_delta_sync_p50_ms": sync["small_delta"]["p50"],
        "small_delta_sync_p90_ms": sync["small_delta"]["p90"],
        "small_delta_sync_p99_ms": sync["small_delta"]["p99"],
        "tensor_100mb_sync_s": sync["tensor_100mb"]["p50"] / 1000,
        "tensor_100mb_sync_max_s": sync["tensor_100mb"]["max"] / 1000,
        "notebookos_replies_lost": order[NOTEBOOKOS]["replies_lost"],
        "cpu_per_cell_ratio": cpu_ratio(raw["cpu"]["cpu_ms_per_cell"]),
    }
    targets = [
        Target("added round trip p50 (to idle)", ADDED_P50_LIMIT_MS, headline["added_roundtrip_p50_ms"], "ms"),
        Target("added round trip p99 (to idle)", ADDED_P99_LIMIT_MS, headline["added_roundtrip_p99_ms"], "ms"),
        Target("small-delta sync p90", SMALL_SYNC_P90_LIMIT_MS, headline["small_delta_sync_p90_ms"], "ms"),
        Target("100 MB tensor on both standbys (median)", TENSOR_SYNC_LIMIT_S, headline["tensor_100mb_sync_s"], "s"),
        Target("100 MB tensor on both standbys (worst)", TENSOR_SYNC_LIMIT_S, headline["tensor_100mb_sync_max_s"], "s"),
        Target("CPU per trivial cell (× plain)", CPU_PER_CELL_RATIO_LIMIT, headline["cpu_per_cell_ratio"], "ratio"),
        Target("notebookos execute_replies lost", 0, headline["notebookos_replies_lost"], "count"),
    ]
    cold = {
        name: {
            "first_cell_idle_ms": round(t[0].idle * 1000, 3),
            "first_cell_start_ms": round((t[0].execute_input or float("nan")) * 1000, 3),
        }
        for name, t in raw["warmup"].items()
    }
    setup = raw["tensor_setup"]
    return {
        **headline,
        "targets": {t.name: t.as_dict() for t in targets},
        "paper_small_delta_sync": PAPER_SMALL_SYNC,
        "kernels": kernels,
        "steps": steps,
        "executor_view": executor_view,
        "sync": sync,
        "message_order": order,
        "clock_skew_violations": sum(small["clock_skew_violations"]) + sum(tensor["clock_skew_violations"]),
        "cold_start": cold,
        "tensor_setup_ms": {
            "notebookos_synced": round(setup[NOTEBOOKOS].synced() * 1000, 1),
            "notebookos_idle": round(setup[NOTEBOOKOS].idle * 1000, 1),
            "plain_idle": round(setup[PLAIN].idle * 1000, 1),
        },
        "cpu": raw["cpu"],
        "settings": {
            "trivial_per_kernel": args.trivial,
            "block": args.block,
            "small_delta": args.small,
            "tensor": args.tensor,
            "warmup_cells": WARMUP_CELLS,
            "trivial_cell": TRIVIAL_CELL,
            "small_cell": "x = <n>, a new int each sample",
            "tensor_setup": TENSOR_SETUP,
            "tensor_cell": TENSOR_CELL,
            "roundtrip_definition": "added_roundtrip_* compare the round trip to the idle status (the "
            "cell is over); added_reply_roundtrip_* the one to execute_reply",
            "start_definition": "send → execute_input on the client's IOPub",
            "sync_definition": "max over both standbys of (applied_at - time.time() at send)",
        },
        "replicas": raw["replicas"],
        "machine": {**machine_context(), "load": raw["load"]},
        "samples_ms": {
            "trivial": {name: timing_rows(t) for name, t in raw["trivial"].items()},
            "small_delta": timing_rows(raw["small"]),
            "tensor_100mb": timing_rows(raw["tensor"]),
            "tensor_100mb_plain": timing_rows(raw["tensor_plain"]),
        },
        "_targets": targets,
    }


def cdf_panels(raw: dict[str, Any]) -> list[tuple[str, list[Curve], list[tuple[float, str]]]]:
    """What the PNG shows: both kernels' round trips and execution start (one colour per kernel, one line style
    per measure), and notebookos' sync delays against their targets."""
    colors = {PLAIN: "tab:blue", NOTEBOOKOS: "tab:orange"}
    measures = (("idle", "-", "idle"), ("reply", "--", "reply"), ("execute_input", ":", "execute_input"))
    round_trips = [
        Curve(f"{name}: send → {label}", deltas(timings, attr), colors[name], style)
        for name, timings in raw["trivial"].items()
        for attr, style, label in measures
    ]
    sync = [
        Curve("small delta (x = n)", [t.synced() for t in raw["small"]], "tab:green"),
        Curve("100 MB tensor (t.add_(1))", [t.synced() for t in raw["tensor"]], "tab:red"),
    ]
    return [
        ("Trivial cell: round trip and execution start", round_trips, []),
        (
            "notebookos: state applied on both standbys",
            sync,
            [
                (SMALL_SYNC_P90_LIMIT_MS, "small-delta p90 target"),
                (TENSOR_SYNC_LIMIT_S * 1000, "tensor target"),
                (PAPER_SMALL_SYNC["p90_ms"], "paper p90"),
                (PAPER_SMALL_SYNC["p99_ms"], "paper p99"),
            ],
        ),
    ]


def report(results: dict[str, Any], raw: dict[str, Any], console: Console, out: Path) -> None:
    """Tables on the console, the JSON and the CDF plot on disk."""
    targets: list[Target] = results.pop("_targets")
    sync_labels = {
        "small_delta": "small delta: send → applied on both",
        "small_delta_first_standby": "small delta: send → first standby",
        "small_delta_executor_idle": "small delta: send → executor idle",
        "small_delta_idle_to_last_standby": "small delta: idle → last standby",
        "tensor_100mb": "100 MB tensor: send → applied on both",
        "tensor_100mb_executor_reply": "100 MB tensor: send → reply",
        "tensor_100mb_executor_idle": "100 MB tensor: send → executor idle",
        "tensor_100mb_idle_to_last_standby": "100 MB tensor: idle → last standby",
        "tensor_100mb_plain_ipykernel_idle": "same cell on plain ipykernel (idle)",
    }
    print_tables(
        console,
        round_trip_table(results["kernels"], ROUND_TRIP_ROWS, PLAIN, NOTEBOOKOS),
        breakdown_table(results["steps"], [label for label, _, _ in STEPS]),
        stats_table(
            "State sync to both standbys (notebookos), ms from send",
            {label: results["sync"][key] for key, label in sync_labels.items()},
        ),
        stats_table(
            "notebookos small-delta cells split at the executor's own IOPub, ms",
            results["executor_view"]["small_delta"],
        ),
        stats_table(
            "notebookos 100 MB tensor cells split at the executor's own IOPub, ms",
            results["executor_view"]["tensor_100mb"],
        ),
        targets_table(targets),
    )
    for name, order in results["message_order"].items():
        style = "red" if order["replies_lost"] else "default"
        console.print(
            f"[{style}]{name}: {order['replies_lost']} execute_reply lost of {order['cells']} cells; "
            f"{order['reply_after_idle']} replies arrived after the idle status[/{style}]",
            highlight=False,
        )
    cpu = results["cpu"]
    console.print(
        "CPU ms per trivial cell, by process (idle background taken off): "
        + ", ".join(f"{k} {v:.2f}" for k, v in cpu["cpu_ms_per_cell"].items())
        + "; idle background (% of a core): "
        + ", ".join(f"{k} {v:.1f}" for k, v in cpu["idle_cpu_percent"].items()),
        highlight=False,
    )
    load = results["machine"]["load"]
    foreign = [p for p in load["start"]["busiest"] if p["cpu_percent"] >= FOREIGN_CPU_WARN_PERCENT]
    if foreign:
        console.print(
            f"[yellow]other processes were using CPU when the run started (this is a {os.cpu_count()}-CPU "
            "machine; percentiles, p99 above all, move with their load): "
            + "; ".join(f"{p['cpu_percent']:.0f}% {p['cmd'][:60]}" for p in foreign)
            + "[/yellow]",
            highlight=False,
        )
    console.print(
        f"paper (NotebookOS, ASPLOS '26) small-delta sync: p90 {PAPER_SMALL_SYNC['p90_ms']} ms, "
        f"p99 {PAPER_SMALL_SYNC['p99_ms']} ms; load average at start {load['start']['loadavg']}, "
        f"at end {load['end']['loadavg']}",
        highlight=False,
    )
    raw_samples = {"samples_ms": results.pop("samples_ms")}
    write_results(out, "cell_latency", results, raw_samples)
    plot_cdfs(
        out / "cell_latency.png",
        cdf_panels(raw),
        f"notebookos vs ipykernel, trivial cell `{TRIVIAL_CELL}` ({os.cpu_count()} CPUs, loopback)",
    )
    console.print(f"wrote {out / 'cell_latency.json'} and {out / 'cell_latency.png'}", highlight=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 132)  # piped: wide enough for the tables
    workdir = Path(tempfile.mkdtemp(prefix="notebookos-bench-"))
    started = time.perf_counter()

    def run() -> dict[str, Any]:
        isolate_jupyter(workdir / "jupyter")
        with open(workdir / "processes.log", "w") as log:
            raw = measure(args, console, workdir, log)
        results = analyse(raw, args)
        results["wall_s"] = round(time.perf_counter() - started, 1)
        report(results, raw, console, args.out)
        console.print(f"total {results['wall_s']} s", highlight=False)
        return results

    return run_in_workdir(run, console, workdir, args.keep)


def run_in_workdir(
    run: Callable[[], dict[str, Any]],
    console: Console,
    workdir: Path,
    keep: bool,
    reported: tuple[type[BaseException], ...] = (),
) -> int:
    """Run a benchmark whose processes log into ``workdir``: the folder goes afterwards unless ``keep``, or the run
    failed (then the console says where it is). A ``reported`` failure (the product failed under the benchmark) is
    told in one line; any other propagates. The exit status: 0 when every target of ``run``'s results was met."""
    try:
        results = run()
    except reported as failure:
        console.print(f"[red]{failure}; logs are in {workdir}[/red]", highlight=False)
        keep = True
        return 1
    except BaseException:
        console.print(f"[red]failed; logs are in {workdir}[/red]")
        keep = True
        raise
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(t["met"] for t in results["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
