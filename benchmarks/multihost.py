"""notebookos across machines: cell latency, recovery from a host loss, and journal size, in one run.

The other benchmarks run every replica on one loopback interface. Here the replicas run on separate simulated
machines (network namespaces with their own address and private tmpfs disk, ``tests/multihost/hosts.py``), each
host run by a ``notebookos agent`` that joined a cluster service listening on the bridge, as on a real cluster.
That shows what loopback hides: Raft and the kernel front talking over a real (virtual) network, a machine that
dies with its disk, and a replacement that must rebuild the kernel's state from its peers. Measured:

1. Round trip of a trivial cell (``x = 1``), send of execute_request to execute_reply and to the idle status,
   through jupyter_client, on (a) plain ipykernel, (b) notebookos on the embedded cluster (4 logical hosts on
   loopback) and (c) notebookos with its three replicas on three agents' machines. The three kernels run in
   blocks whose order rotates, so the load of this shared machine lands on all of them. p50/p90/p99 and ratios.
2. Executor host loss -> first output of the next cell: a kernel holds small state and a 100 MB tensor on all three
   replicas; the machine of the replica that ran the last cell is powered off (``kill_host``), ``print(x)`` is sent
   at once, and the time from the power-off to that cell's first stream output is taken. Target <= 3 s.
3. Same power-off -> three live replicas again: until the cluster's ``GET /kernels/{id}`` lists three replicas in
   state ``ready``, one of them on a spare machine (which had to fetch the 100 MB tensor from its peers). Target
   <= 30 s. Each repetition of 2 and 3 uses a fresh kernel; every power-off costs the pool one machine, so the pool
   has a spare for each, and the next kernel starts only once the cluster has declared the dead machine lost (also
   timed): before that, the cluster may still place replicas there.
4. Journal size and replacement time against notebook length: after L cells of ``x += 1``, each replica's Raft
   journal and compaction dump are read on its host's private disk (through ``/proc/<replica pid>/root``), then a
   standby's machine is powered off and the time until its replacement is ``ready`` is taken. With log compaction
   (the executor snapshots the namespace every ``snapshot_every`` cells; pysyncobj compacts a journal of
   ``compact_after`` entries into a dump) the journal stays bounded; ``--compact-after 1000000000`` turns compaction
   off in the kernels of the run, for a baseline.

Parts (c), 2, 3 and 4 need root (network namespaces); without it they are skipped with the reason and the run
exits 0. A kernel that does not start, a replica never ready or a failed cell ends the run with exit status 1 and
keeps the logs. Writes benchmarks/results/multihost.json and multihost.png; exits 1 when a target is missed.

    .venv/bin/python benchmarks/multihost.py [--cells 200] [--repetitions 3] [--lengths 100,500,1000]
                                             [--compact-after ENTRIES]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.manager import KernelManager
from pysyncobj.journal import FIRST_RECORD_OFFSET, LAST_RECORD_OFFSET_OFFSET
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from cell_latency import isolate_jupyter, progress_bar, run_checked, run_in_workdir, running_cluster, running_kernel
from latency_probe import CellTiming, TimedClient
from latency_report import PERCENTILES, Target, load_snapshot, machine_context, print_tables, summarize, targets_table

from notebookos.gpu_broker.cluster.client import CLUSTER_FILE_ENV
from notebookos.gpu_broker.cluster.host_agent import JOURNAL_FILE
from notebookos.gpu_broker.cluster.launcher import start_cluster
from notebookos.kernels.replica_config import COMPACT_AFTER_ENV, ReplicaConfig
from notebookos.replication.snapshots import dump_path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for the test harness
from tests.kernels.driver import CellResult, Notebook, cluster_request  # noqa: E402
from tests.multihost.hosts import Host, NetworkHosts, available  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PLAIN, EMBEDDED, MULTIHOST = "plain", "embedded", "multihost"
KERNEL_LABELS = {
    PLAIN: "a: ipykernel (loopback)",
    EMBEDDED: "b: notebookos, embedded cluster (loopback)",
    MULTIHOST: "c: notebookos, 3 machines (netns)",
}
RATIOS = (("b/a", EMBEDDED, PLAIN), ("c/a", MULTIHOST, PLAIN), ("c/b", MULTIHOST, EMBEDDED))
MEASURES = (("idle", "send → idle status"), ("reply", "send → execute_reply"))

TRIVIAL_CELL = "x = 1"
STATE_CELL = "import torch\nx = 41\nsmall = {'count': 1}\nbig = torch.arange(13_107_200, dtype=torch.int64)  # 100 MiB"
STATE_CHECK = "[x, small['count'], int(big[-1])]"
STATE_EXPECTED = [41, 1, 13_107_199]
PROBE_CELL = "print(x)"
EXECUTOR_HOST = "__import__('os').environ['NOTEBOOKOS_HOST']"
LENGTH_CELL = "x += 1"

FIRST_OUTPUT_LIMIT_S = 3.0
THREE_READY_LIMIT_S = 30.0
AGENT_DIR = "agent"  # each agent's --state-dir, under its host's private disk
JOIN_DEADLINE_S = 60.0
READY_DEADLINE_S = 90.0
REPLACEMENT_DEADLINE_S = 120.0
POLL_S = 0.1
CELL_TIMEOUT_S = 120.0
SHUTDOWN_WAIT_S = 30.0

T = TypeVar("T")


class Failure(RuntimeError):
    """The product failed under the benchmark (a kernel, a replica, a cell): reported, exit status 1."""


def wait_for(predicate: Callable[[], T | None], what: str, deadline_s: float) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; Failure after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(POLL_S)
    raise Failure(f"timed out after {deadline_s:.0f} s waiting for {what}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(SHUTDOWN_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------------------------ the pool


@dataclass
class Pool:
    """A cluster service in the root namespace with one agent per simulated machine."""

    hosts: NetworkHosts
    discovery: Path

    def kernel(self, kernel_id: str) -> dict[str, Any]:
        return cluster_request(str(self.discovery), "GET", f"/kernels/{kernel_id}")

    def listed_hosts(self) -> set[str]:
        return {h["name"] for h in cluster_request(str(self.discovery), "GET", "/cluster")["hosts"]}

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts.hosts if h.name == name)

    def ready_replicas(self, kernel_id: str) -> list[dict[str, Any]]:
        """The kernel's three replicas, once all of them have caught up with their group."""

        def all_ready() -> list[dict[str, Any]] | None:
            replicas = self.kernel(kernel_id)["replicas"]
            return replicas if len(replicas) == 3 and all(r["state"] == "ready" for r in replicas) else None

        return wait_for(all_ready, f"kernel {kernel_id}'s three replicas to be ready", READY_DEADLINE_S)


@contextlib.contextmanager
def agent_pool(count: int, workdir: Path, host_timeout: float | None) -> Iterator[Pool]:
    """``count`` machines, each running an agent with 1 (virtual) GPU, joined to a cluster service that listens on
    the bridge; as tests/multihost/test_agents.py sets them up. Everything is stopped and deleted on exit."""
    token_file = workdir / "join-token"  # written by the service, read by the agents
    with NetworkHosts(count) as hosts:
        options = ["--listen", f"{hosts.cluster_address}:0", "--join-token-file", str(token_file)]
        if host_timeout is not None:
            options += ["--host-timeout", str(host_timeout)]
        (workdir / "pool").mkdir()
        proc, discovery = start_cluster(
            workdir / "pool", 0, extra_args=tuple(options), log_path=workdir / "pool-cluster.log"
        )
        try:
            url = json.loads(discovery.read_text())["url"]
            for host in hosts.hosts:
                hosts.spawn(
                    host,
                    [
                        sys.executable,
                        "-m",
                        "notebookos.server_extension.cli",
                        "agent",
                        "--join",
                        url,
                        "--join-token-file",
                        str(token_file),
                        "--name",
                        host.name,
                        "--address",
                        host.address,
                        "--gpus",
                        "1",
                        "--state-dir",
                        str(host.state_dir / AGENT_DIR),
                    ],
                    log_path=workdir / f"agent-{host.name}.log",
                )
            pool = Pool(hosts, discovery)
            wait_for(lambda: len(pool.listed_hosts()) == count, f"{count} agents to join", JOIN_DEADLINE_S)
            yield pool
        finally:
            stop(proc)


@contextlib.contextmanager
def notebookos_kernel(discovery: Path, log: TextIO) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    """A notebookos kernel placed by the cluster of ``discovery`` (the provisioner reads the variable at start)."""
    os.environ[CLUSTER_FILE_ENV] = str(discovery)
    with running_kernel("notebookos", log) as kernel:
        yield kernel


# ------------------------------------------------------------------------------------------- round trips


def interleaved_round_trips(
    clients: dict[str, TimedClient], per_kernel: int, block: int, progress: Progress
) -> dict[str, list[CellTiming]]:
    """``per_kernel`` trivial cells on each kernel in blocks of ``block``, the kernels' order rotating each round,
    so load from other processes on this shared machine lands on all of them and none always goes first."""
    timings: dict[str, list[CellTiming]] = {name: [] for name in clients}
    task = progress.add_task(f"trivial cells ({len(clients)} kernels)", total=per_kernel * len(clients))
    names = list(clients)
    for round_no in range(math.ceil(per_kernel / block)):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            clients[name].drain()
            for _ in range(min(block, per_kernel - len(timings[name]))):
                timings[name].append(run_checked(clients[name], TRIVIAL_CELL))
                progress.advance(task)
    return timings


def round_trip_phase(
    args: argparse.Namespace, console: Console, workdir: Path, log: TextIO, pool: Pool | None
) -> dict[str, list[CellTiming]]:
    """Kernels (a), (b) and, with a pool, (c) side by side: warm-up cells, then the interleaved samples."""
    with contextlib.ExitStack() as stack:
        kernels = {PLAIN: stack.enter_context(running_kernel("python3", log))}
        embedded = stack.enter_context(running_cluster(workdir / "embedded", log))
        kernels[EMBEDDED] = stack.enter_context(notebookos_kernel(embedded, log))
        if pool is not None:
            kernels[MULTIHOST] = stack.enter_context(notebookos_kernel(pool.discovery, log))
            hosts = [r["host"] for r in pool.ready_replicas(kernels[MULTIHOST][0].kernel_id)]
            console.print(f"kernel (c): replicas on {', '.join(hosts)}", highlight=False)
        clients = {name: TimedClient(kc) for name, (_, kc) in kernels.items()}
        for client in clients.values():
            for _ in range(args.warmup):
                run_checked(client, TRIVIAL_CELL)
        with progress_bar(console) as progress:
            return interleaved_round_trips(clients, args.cells, args.block, progress)


def deltas(timings: Sequence[CellTiming], attr: str) -> list[float]:
    """Seconds from send to ``attr`` (``idle`` or ``reply``) per cell; a cell lacking it (a lost reply) is left out."""
    return [getattr(t, attr) for t in timings if getattr(t, attr) is not None]


# -------------------------------------------------------------------------------------------- host loss


class ReplacementWatch(threading.Thread):
    """Follows a kernel and the pool in the cluster's API from a machine's power-off until three replicas of the
    kernel are ready again, one of them on a machine none of its original replicas ran on, and the cluster has
    declared the dead machine lost (no longer lists it: until then it may place new replicas there). Records, in
    seconds after ``origin`` (``time.perf_counter()`` of the power-off): when the replica on the dead machine was
    first shown lost or no longer listed, when a replica on a spare machine first appeared, when all three were
    ready, and when the machine was declared lost."""

    def __init__(self, pool: Pool, kernel_id: str, lost: Host, originals: set[str], origin: float) -> None:
        super().__init__(name="replacement-watch", daemon=True)
        self.pool, self.kernel_id, self.lost, self.originals, self.origin = pool, kernel_id, lost, originals, origin
        self.replica_lost_s: float | None = None
        self.replacement_started_s: float | None = None
        self.three_ready_s: float | None = None
        self.host_lost_s: float | None = None
        self.replacement: dict[str, Any] | None = None

    def run(self) -> None:
        while (elapsed := time.perf_counter() - self.origin) < REPLACEMENT_DEADLINE_S:
            try:
                self._observe(elapsed)
            except OSError:  # the service is busy with the loss; ask again
                pass
            if self.three_ready_s is not None and self.host_lost_s is not None:
                return
            time.sleep(POLL_S)

    def _observe(self, elapsed: float) -> None:
        if self.host_lost_s is None and self.lost.name not in self.pool.listed_hosts():
            self.host_lost_s = elapsed
        if self.three_ready_s is not None:
            return
        replicas = self.pool.kernel(self.kernel_id)["replicas"]
        on_lost = [r for r in replicas if r["host"] == self.lost.name]
        spare = next((r for r in replicas if r["host"] not in self.originals), None)
        if self.replica_lost_s is None and all(r["state"] == "lost" for r in on_lost):
            self.replica_lost_s = elapsed
        if self.replacement_started_s is None and spare is not None:
            self.replacement_started_s = elapsed
        if spare is not None and not on_lost and len(replicas) == 3 and all(r["state"] == "ready" for r in replicas):
            self.three_ready_s, self.replacement = elapsed, spare

    def outcome(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Wait for the watch to end: the replacement (as the API lists it) and the timings. Failure if it never
        got ready or the machine was never declared lost."""
        self.join(REPLACEMENT_DEADLINE_S + 10)
        if self.replacement is None or self.host_lost_s is None:
            raise Failure(
                f"kernel {self.kernel_id}, {REPLACEMENT_DEADLINE_S:.0f} s after {self.lost.name}'s "
                f"power-off: replacement ready: {self.replacement is not None}; machine declared lost: "
                f"{self.host_lost_s is not None}"
            )
        return self.replacement, {
            "replacement_host": self.replacement["host"],
            "replica_lost_s": _round(self.replica_lost_s),
            "replacement_started_s": _round(self.replacement_started_s),
            "three_ready_s": _round(self.three_ready_s),
            "host_declared_lost_s": _round(self.host_lost_s),
        }


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def power_off(pool: Pool, kernel_id: str, host: Host, originals: set[str]) -> ReplacementWatch:
    """Kill ``host`` as a power cut would, with a watch on the kernel's replacement started at that instant."""
    watch = ReplacementWatch(pool, kernel_id, host, originals, time.perf_counter())
    watch.start()
    pool.hosts.kill_host(host)
    return watch


def checked(result: CellResult, code: str) -> CellResult:
    if result.status != "ok":
        raise Failure(f"cell {code!r} failed: {result.error}; stderr {result.stderr!r}")
    return result


def executor_loss(pool: Pool, log: TextIO) -> dict[str, Any]:
    """One repetition of parts 2 and 3 on a fresh kernel: state on every replica, the executor's machine powered
    off, ``print(x)`` sent at once; kill -> first output, and kill -> three ready replicas."""
    with notebookos_kernel(pool.discovery, log) as (km, kc):
        notebook = Notebook(km, kc)
        placed = pool.ready_replicas(km.kernel_id)
        checked(notebook.run(STATE_CELL, timeout=CELL_TIMEOUT_S), STATE_CELL)
        for replica in placed:  # every replica holds the state (and has imported torch) before the loss
            if notebook.value(STATE_CHECK, replica=replica["replica"]) != STATE_EXPECTED:
                raise Failure(f"replica {replica['replica']} on {replica['host']} lacks the kernel's state")
        executor = pool.host(notebook.value(EXECUTOR_HOST))
        first_output: dict[str, float] = {}
        watch = power_off(pool, km.kernel_id, executor, {r["host"] for r in placed})
        sent = time.perf_counter()
        result = checked(
            notebook.run(
                PROBE_CELL,
                timeout=CELL_TIMEOUT_S,
                on_output=lambda _: first_output.setdefault("at", time.perf_counter()),
            ),
            PROBE_CELL,
        )
        if result.stdout.strip() != "41":
            raise Failure(f"{PROBE_CELL!r} printed {result.stdout!r} after the host loss, not 41")
        _, recovery = watch.outcome()
    return {
        "executor_host": executor.name,
        "kill_s": round(sent - watch.origin, 3),
        "first_output_s": round(first_output["at"] - watch.origin, 3),
        "front_notice": result.stderr.strip() or None,
        **recovery,
    }


# ------------------------------------------------------------------------------------------ journal size


def journal_stats(pool: Pool, kernel_id: str, replica: dict[str, Any]) -> dict[str, int]:
    """A replica's Raft journal and compaction dump, read on its machine's private disk through the replica
    process's root.

    pysyncobj's journal file grows by doubling and never shrinks (compaction rewrites it in place), so its size on
    disk overstates the log: ``bytes`` is the end of its last record (kept in the file's header), ``file_bytes``
    what the file occupies, ``entries`` its records. ``dump_bytes``: the dump compaction writes beside it (the
    latest namespace snapshot and the entries after it), 0 before the first compaction.
    """
    host = pool.host(replica["host"])
    journal = (
        Path(f"/proc/{replica['pid']}/root")
        / host.state_dir.relative_to("/")
        / AGENT_DIR
        / "replicas"
        / kernel_id
        / f"replica-{replica['replica']}"
        / JOURNAL_FILE
    )
    data = journal.read_bytes()
    end = struct.unpack_from("<I", data, LAST_RECORD_OFFSET_OFFSET)[0]
    entries, offset = 0, FIRST_RECORD_OFFSET
    while offset < end:
        offset += struct.unpack_from("<I", data, offset)[0] + 8  # size, record, size
        entries += 1
    try:
        dump_bytes = Path(dump_path(str(journal))).stat().st_size
    except FileNotFoundError:
        dump_bytes = 0
    return {"entries": entries, "bytes": end, "file_bytes": len(data), "dump_bytes": dump_bytes}


def notebook_length(pool: Pool, length: int, log: TextIO, progress: Progress) -> dict[str, Any]:
    """Part 4 for one notebook length: ``length`` cells, the journals, then a standby's machine powered off."""
    with notebookos_kernel(pool.discovery, log) as (km, kc):
        notebook, client = Notebook(km, kc), TimedClient(kc)
        placed = pool.ready_replicas(km.kernel_id)
        run_checked(client, "x = 0")
        task = progress.add_task(f"{length} cells of `{LENGTH_CELL}`", total=length)
        for _ in range(length):
            run_checked(client, LENGTH_CELL)
            progress.advance(task)
        if notebook.value("x") != length:
            raise Failure(f"x is not {length} after {length} cells of {LENGTH_CELL!r}")
        executor = notebook.value(EXECUTOR_HOST)
        journals = {r["host"]: journal_stats(pool, km.kernel_id, r) for r in placed}
        standby = pool.host(next(r["host"] for r in placed if r["host"] != executor))
        watch = power_off(pool, km.kernel_id, standby, {r["host"] for r in placed})
        replacement, recovery = watch.outcome()
        replacement_journal = journal_stats(pool, km.kernel_id, replacement)
    largest = max(journals.values(), key=lambda j: j["bytes"] + j["dump_bytes"])
    return {
        "cells": length,
        "journal_entries": largest["entries"],
        "journal_bytes": largest["bytes"],
        "journal_file_bytes": largest["file_bytes"],
        "dump_bytes": largest["dump_bytes"],
        "journals_by_host": journals,
        "killed_standby_host": standby.name,
        **recovery,
        "replacement_journal": replacement_journal,
    }


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200, help="trivial cells per kernel (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up cells per kernel, not counted (20)")
    parser.add_argument("--block", type=int, default=10, help="cells per kernel per rotation (10)")
    parser.add_argument("--repetitions", type=int, default=3, help="executor host losses, one kernel each (3)")
    parser.add_argument(
        "--lengths",
        type=lambda s: [int(n) for n in s.split(",") if n],
        default=[100, 500, 1000],
        help="notebook lengths for the journal part, comma-separated (100,500,1000)",
    )
    parser.add_argument(
        "--compact-after",
        type=int,
        default=None,
        metavar="ENTRIES",
        help="journal entries that trigger log compaction in this run's kernels (default: the "
        "product's); a huge value turns compaction off, for a baseline",
    )
    parser.add_argument(
        "--host-timeout",
        type=float,
        default=None,
        help="the cluster's host-loss detection in seconds (default: the service's own, 5 s)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and PNG go")
    parser.add_argument("--keep", action="store_true", help="keep the temporary state dir and logs")
    return parser.parse_args(argv)


def measure(
    args: argparse.Namespace, console: Console, workdir: Path, log: TextIO, skipped: str | None
) -> dict[str, Any]:
    """Every part, in one run; the pool of machines lives through all of them (each power-off costs one)."""
    raw: dict[str, Any] = {"host_loss": [], "lengths": []}
    machines = 4 + args.repetitions + len(args.lengths)  # 3 replicas and a spare, plus one per power-off
    with contextlib.ExitStack() as stack:
        pool = None if skipped else stack.enter_context(agent_pool(machines, workdir, args.host_timeout))
        raw["round_trips"] = round_trip_phase(args, console, workdir, log, pool)
        if pool is None:
            return raw
        with progress_bar(console) as progress:
            task = progress.add_task("executor host loss (100 MB state)", total=args.repetitions)
            for _ in range(args.repetitions):
                raw["host_loss"].append(executor_loss(pool, log))
                progress.advance(task)
            for length in args.lengths:
                raw["lengths"].append(notebook_length(pool, length, log, progress))
    return raw


def seconds_summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "max": round(max(values), 3), "n": len(values)}


def analyse(raw: dict[str, Any], args: argparse.Namespace, skipped: str | None) -> dict[str, Any]:
    """Summaries, ratios and targets: the JSON document (samples stay out of it; the PNG shows them)."""
    round_trips = {name: {m: summarize(deltas(t, m)) for m, _ in MEASURES} for name, t in raw["round_trips"].items()}
    ratios = {
        label: {
            m: {f"p{p}": round(round_trips[num][m][f"p{p}"] / round_trips[den][m][f"p{p}"], 2) for p in PERCENTILES}
            for m, _ in MEASURES
        }
        for label, num, den in RATIOS
        if num in round_trips
    }
    losses = raw["host_loss"]
    targets = []
    if losses:
        targets = [
            Target(
                "executor host loss → first output (worst)",
                FIRST_OUTPUT_LIMIT_S,
                max(r["first_output_s"] for r in losses),
                "s",
            ),
            Target(
                "host loss → 3 ready replicas, 100 MB (worst)",
                THREE_READY_LIMIT_S,
                max(r["three_ready_s"] for r in losses),
                "s",
            ),
        ]
    return {
        "skipped_multihost": skipped,
        "round_trip_ms": {KERNEL_LABELS[name]: stats for name, stats in round_trips.items()},
        "ratios": ratios,
        "host_loss": {
            "repetitions": losses,
            "first_output_s": seconds_summary([r["first_output_s"] for r in losses]) if losses else None,
            "three_ready_s": seconds_summary([r["three_ready_s"] for r in losses]) if losses else None,
        },
        "notebook_length": raw["lengths"],
        "targets": {t.name: t.as_dict() for t in targets},
        "settings": {
            "cells": args.cells,
            "warmup": args.warmup,
            "block": args.block,
            "repetitions": args.repetitions,
            "lengths": args.lengths,
            "host_timeout_s": args.host_timeout or "service default (5 s)",
            "trivial_cell": TRIVIAL_CELL,
            "state_cell": STATE_CELL,
            "probe_cell": PROBE_CELL,
            "length_cell": LENGTH_CELL,
            "agents": "1 virtual GPU each; kernels ask for none",
            "compaction": compaction_settings(),
        },
        "_targets": targets,
    }


def compaction_settings() -> dict[str, int]:
    """What the kernels' replicas use: ReplicaConfig's defaults read the environment, which the clusters inherit."""
    return {
        f.name: f.default_factory()
        for f in dataclasses.fields(ReplicaConfig)  # type: ignore[misc]
        if f.name in ("snapshot_every", "compact_after")
    }


def round_trip_tables(results: dict[str, Any]) -> list[Table]:
    stats = results["round_trip_ms"]
    legend = "; ".join(f"{m}: {label}" for m, label in MEASURES)
    table = Table(title=f"Trivial cell `{TRIVIAL_CELL}` round trip, ms ({legend})", title_justify="left")
    table.add_column("kernel", no_wrap=True)
    table.add_column("n", justify="right")
    for m, _ in MEASURES:
        for p in PERCENTILES:
            table.add_column(f"{m}\np{p}", justify="right")
    for kernel, by_measure in stats.items():
        table.add_row(
            kernel,
            str(by_measure["idle"]["n"]),
            *(f"{by_measure[m][f'p{p}']:.2f}" for m, _ in MEASURES for p in PERCENTILES),
        )
    ratios = Table(title="Ratios of the percentiles", title_justify="left")
    ratios.add_column("ratio")
    for m, _ in MEASURES:
        for p in PERCENTILES:
            ratios.add_column(f"{m}\np{p}", justify="right")
    for name, by_measure in results["ratios"].items():
        ratios.add_row(name, *(f"{by_measure[m][f'p{p}']:.2f}×" for m, _ in MEASURES for p in PERCENTILES))
    return [table, ratios]


def _secs(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def host_loss_table(losses: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="Executor host loss, 100 MB namespace: seconds after the power-off", title_justify="left")
    for column in (
        "rep",
        "executor → replacement",
        "print(x) sent",
        "first output",
        "replica lost",
        "replacement started",
        "3 ready",
        "host declared lost",
    ):
        table.add_column(column, justify="left" if column.startswith("executor") else "right")
    for index, r in enumerate(losses, 1):
        table.add_row(
            str(index),
            f"{r['executor_host']} → {r['replacement_host']}",
            _secs(r["kill_s"]),
            _secs(r["first_output_s"]),
            _secs(r["replica_lost_s"]),
            _secs(r["replacement_started_s"]),
            _secs(r["three_ready_s"]),
            _secs(r["host_declared_lost_s"]),
        )
    return table


def journal_table(lengths: Sequence[dict[str, Any]], compaction: dict[str, int]) -> Table:
    table = Table(
        title=f"Journal vs notebook length (snapshot every {compaction['snapshot_every']} cells, compaction "
        f"at {compaction['compact_after']} entries); standby host loss → replacement, s",
        title_justify="left",
    )
    for column in (
        "cells",
        "entries",
        "journal bytes",
        "journal file",
        "dump bytes",
        "replacement's journal+dump",
        "replacement started",
        "3 ready",
    ):
        table.add_column(column, justify="right")
    for r in lengths:
        replacement = r["replacement_journal"]
        table.add_row(
            str(r["cells"]),
            str(r["journal_entries"]),
            f"{r['journal_bytes']:,}",
            f"{r['journal_file_bytes']:,}",
            f"{r['dump_bytes']:,}",
            f"{replacement['bytes'] + replacement['dump_bytes']:,}",
            _secs(r["replacement_started_s"]),
            _secs(r["three_ready_s"]),
        )
    return table


def plot(path: Path, raw: dict[str, Any], skipped: str | None) -> None:
    """Round-trip CDFs of every kernel; journal size and replacement time against notebook length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (cdf, growth) = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    for name, timings in raw["round_trips"].items():
        ms = np.sort(np.asarray(deltas(timings, "idle")) * 1000.0)
        cdf.step(ms, np.arange(1, ms.size + 1) / ms.size, where="post", label=f"{KERNEL_LABELS[name]} (n={ms.size})")
    cdf.set(
        xscale="log",
        xlabel="ms from execute_request to idle (log scale)",
        ylabel="fraction of cells",
        ylim=(0, 1.01),
        title=f"Trivial cell `{TRIVIAL_CELL}` round trip",
    )
    cdf.grid(True, which="both", alpha=0.3)
    cdf.legend(fontsize=8, loc="lower right")
    lengths = raw["lengths"]
    if lengths:
        cells = [r["cells"] for r in lengths]
        growth.plot(
            cells, [r["journal_bytes"] / 2**10 for r in lengths], "o-", color="tab:blue", label="journal (used)"
        )
        growth.plot(
            cells,
            [(r["journal_bytes"] + r["dump_bytes"]) / 2**10 for r in lengths],
            "^:",
            color="tab:cyan",
            label="journal + compaction dump",
        )
        growth.set(
            xlabel=f"cells run ({LENGTH_CELL})",
            ylabel="KiB on a replica's disk",
            title="Journal and replacement time vs notebook length",
        )
        right = growth.twinx()
        right.plot(cells, [r["three_ready_s"] for r in lengths], "s--", color="tab:red", label="replacement ready")
        right.set_ylabel("standby host loss → 3 ready replicas, s")
        right.set_ylim(bottom=0)
        growth.set_ylim(bottom=0)
        growth.legend(handles=growth.get_lines() + right.get_lines(), fontsize=8, loc="upper left")
        growth.grid(True, alpha=0.3)
    else:
        growth.text(0.5, 0.5, f"multi-host parts skipped:\n{skipped}", ha="center", va="center", wrap=True)
        growth.set_axis_off()
    fig.suptitle(f"notebookos across machines (network namespaces, {os.cpu_count()} CPUs)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(results: dict[str, Any], raw: dict[str, Any], console: Console, out: Path) -> None:
    targets: list[Target] = results.pop("_targets")
    tables = round_trip_tables(results)
    if raw["host_loss"]:
        tables += [host_loss_table(raw["host_loss"])]
    if raw["lengths"]:
        tables += [journal_table(raw["lengths"], results["settings"]["compaction"])]
    if targets:
        tables += [targets_table(targets)]
    print_tables(console, *tables)
    if results["skipped_multihost"]:
        console.print(
            f"[yellow]skipped (c) and the host-loss and journal parts: {results['skipped_multihost']}[/yellow]",
            highlight=False,
        )
    load = results["machine"]["load"]
    console.print(f"load average at start {load['start']['loadavg']}, at end {load['end']['loadavg']}", highlight=False)
    out.mkdir(parents=True, exist_ok=True)
    (out / "multihost.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    plot(out / "multihost.png", raw, results["skipped_multihost"])
    console.print(f"wrote {out / 'multihost.json'} and {out / 'multihost.png'}", highlight=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compact_after is not None:  # read by the cluster services this run starts, when they place replicas
        os.environ[COMPACT_AFTER_ENV] = str(args.compact_after)
    console = Console(width=None if sys.stdout.isatty() else 140)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-ups: processes, namespaces
    skipped = available()
    if skipped:
        console.print(f"[yellow]multi-host parts need network namespaces: {skipped}[/yellow]", highlight=False)
    workdir = Path(tempfile.mkdtemp(prefix="notebookos-multihost-"))
    started = time.perf_counter()

    def run() -> dict[str, Any]:
        isolate_jupyter(workdir / "jupyter")
        load_start = load_snapshot()
        with open(workdir / "processes.log", "w") as log:
            raw = measure(args, console, workdir, log, skipped)
        results = analyse(raw, args, skipped)
        results["machine"] = {**machine_context(), "load": {"start": load_start, "end": load_snapshot()}}
        results["wall_s"] = round(time.perf_counter() - started, 1)
        report(results, raw, console, args.out)
        console.print(f"total {results['wall_s']} s", highlight=False)
        return results

    return run_in_workdir(run, console, workdir, args.keep, reported=(Failure,))


if __name__ == "__main__":
    sys.exit(main())
