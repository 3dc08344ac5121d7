"""What an idle kernel costs, and how fast one starts and trains: notebookos against plain ipykernel, in one run.

For each kind, N kernels (default 20) are started one after another through jupyter_client, each runs
``import torch``, and then, with all N idle:

* **idle CPU per kernel** (% of one core): utime + stime from ``/proc/<pid>/stat`` of every process of every kernel,
  read at the start and end of a fixed window (``--idle-window-s``, default 30 s) after the kernels settled. A plain
  kernel is its ipykernel process. A notebookos kernel is its front (the provisioner's process) and its three
  replicas (pids from the cluster API, ``GET /kernels/<id>``), plus any process below them, **plus the cluster
  service's share**: the service process (and any process below it that is not a replica) divided by N. The
  headline is the mean over the N kernels (total CPU of the kind ÷ N); the JSON splits it into front, replicas and
  service share.
* **memory per kernel**: RSS and PSS summed over the same processes, from ``/proc/<pid>/smaps_rollup`` (PSS divides
  every shared page among the processes that map it, so summing PSS over processes counts each page once; RSS
  counts torch's shared libraries in every process). For notebookos the service's PSS ÷ N is added, as for CPU
  (its RSS is not: RSS does not add up). USS (private pages: what stopping the kernel frees) is reported too.
* **start to first output**: from ``KernelManager.start_kernel()`` until the ``stream`` output of
  ``print("first output")`` reaches the client, after ``wait_for_ready`` (as nbclient does). Kernels start one after
  another, each once the previous one has imported torch on every process (so a start does not overlap another
  kernel's background import); p50 over the N. For notebookos it includes placing the replicas through the cluster
  service (which is already running, as it would be in a lab) and the Raft leader election.
* **training steps/s**: a small single-threaded torch loop (``--train-threads``; the model of
  ``gpu_sharing.py``: 64→256→1 MLP, batch 256, SGD) run for ``--train-s`` seconds in one kernel, ``--train-reps``
  cells, while the other N - 1 idle; median of the cells. Steps are counted inside the cell, so the notebookos
  figure excludes the per-cell Raft election and state commit (those are ``cell_latency.py``'s subject) and shows
  what the front, the standbys and the other idle kernels take from a running cell. CPU of every process during the
  training cells is reported too.

The two kinds run in two phases, plain ipykernel first: every kernel of one kind is shut down (and for notebookos the
cluster service is started) before the other kind starts. So each kind's numbers describe a machine running N kernels
of that kind only: PSS shares torch's pages among the kernels of one kind, as on a real server, the training kernel
competes with idle kernels of its own kind only, and the peak memory is one kind's rather than both's. The price is
that load from other processes on this shared machine can differ between the phases: the load average and the
busiest other processes are recorded at the start and end of each phase.

Memory: the issue measured 245 MiB RSS / 178 MiB PSS per plain kernel and 812 MiB RSS / 547 MiB PSS per notebookos
kernel with torch imported; 20 notebookos kernels are about 11 GiB of PSS (80 processes), 20 plain ones 3.5 GiB, so
the default fits a 24 GiB machine phase by phase. A kernel is not started when the machine's available memory is
below ``--min-free-gib`` (default 3): the phase then goes on with the kernels it has and the JSON says so.

Writes benchmarks/results/footprint.json and benchmarks/results/footprint.png and prints the tables. Exits 1 when a
target is missed.

    .venv/bin/python benchmarks/footprint.py [--kernels 20] [--idle-window-s 30] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psutil
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.manager import KernelManager
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from cell_latency import children_output_to, isolate_jupyter, progress_bar, run_in_workdir
from latency_report import Target, load_snapshot, machine_context

RESULTS = Path(__file__).resolve().parent / "results"
PLAIN, NOTEBOOKOS = "python3", "notebookos"
LABELS = {PLAIN: "plain ipykernel", NOTEBOOKOS: "notebookos"}
KERNEL_START_TIMEOUT_S = 120.0
CELL_TIMEOUT_S = 120.0
TORCH_LOAD_TIMEOUT_S = 90.0
QUIET_CPU_FRACTION = 0.2  # a process is "done importing" once it uses less than this much of a core...
QUIET_INTERVAL_S = 0.5  # ...over this long
QUIET_TIMEOUT_S = 30.0
CLUSTER_HOSTS = 4
MIB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")

FIRST_OUTPUT_CELL = 'print("first output")'
IMPORT_CELL = "import torch"
# The model and step of gpu_sharing.py's training cells, in a function so that nothing but the function itself
# enters the namespace (and, for notebookos, the state deltas). Named without a leading underscore so that it is
# synced like any user function whichever replica runs the next cell.
TRAIN_SETUP_CELL = """\
def footprint_train(seconds, threads):
    import time
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        X = torch.randn(4096, 64)
        Y = X @ torch.randn(64, 1) + 0.1 * torch.randn(4096, 1)
        model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        steps = 0
        start = time.perf_counter()
        until = start + seconds
        while True:
            idx = torch.randint(0, X.shape[0], (256,))
            loss = torch.nn.functional.mse_loss(model(X[idx]), Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            now = time.perf_counter()
            if now >= until:
                return steps / (now - start)
    finally:
        torch.set_num_threads(previous)
print("steps/s %.3f" % footprint_train(1.0, {threads}))  # warm-up
"""
TRAIN_CELL = 'print("steps/s %.3f" % footprint_train({seconds}, {threads}))'

# The targets (issue 12, item 2) that this benchmark measures.
IDLE_CPU_LIMIT_PCT = 0.3  # % of a core per idle kernel
PSS_RATIO_LIMIT = 2.0  # × plain ipykernel's PSS per kernel
START_ADDED_LIMIT_S = 0.5  # p50 start to first output, added over plain ipykernel's
TRAIN_RATIO_FLOOR = 0.9  # steps/s, × plain ipykernel's


# ------------------------------------------------------------------------------------------------ /proc readers


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process (all its threads, live and exited), in clock ticks; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state is fields[0], utime fields[11]
    return int(fields[11]) + int(fields[12])


def memory_kib(pid: int) -> dict[str, int] | None:
    """Rss, Pss and Uss (Private_Clean + Private_Dirty) of a process in KiB, from its smaps_rollup."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in lines[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":"):
            values[parts[0][:-1]] = int(parts[1])
    return {
        "rss": values.get("Rss", 0),
        "pss": values.get("Pss", 0),
        "uss": values.get("Private_Clean", 0) + values.get("Private_Dirty", 0),
    }


def torch_loaded(pid: int) -> bool:
    """Whether the process has torch's C++ library mapped (it has imported torch, or is importing it)."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return any("libtorch" in line for line in maps)
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def wait_quiet(pids: Iterable[int], timeout: float = QUIET_TIMEOUT_S) -> bool:
    """Wait until every process uses under QUIET_CPU_FRACTION of a core over QUIET_INTERVAL_S (an import or a state
    apply is over); False on timeout."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = {pid: cpu_ticks(pid) for pid in pids}
        time.sleep(QUIET_INTERVAL_S)
        after = {pid: cpu_ticks(pid) for pid in pids}
        busy = [
            pid
            for pid in pids
            if before[pid] is not None
            and after[pid] is not None
            and (after[pid] - before[pid]) / CLK_TCK > QUIET_CPU_FRACTION * QUIET_INTERVAL_S
        ]
        if not busy:
            return True
    return False


# ------------------------------------------------------------------------------------------------ kernels


@dataclass
class Kernel:
    """One started kernel: its manager and client, what its start took, and its processes by role."""

    kind: str
    km: KernelManager
    kc: BlockingKernelClient
    ready_s: float  # start_kernel() → wait_for_ready() returned
    first_output_s: float  # start_kernel() → the first cell's stream output arrived
    roles: dict[int, str] = field(default_factory=dict)  # pid → "ipykernel" | "front" | "replica N" | "child of …"
    torch_pids: list[int] = field(default_factory=list)  # the processes that must import torch (not the front)

    def pids(self) -> list[int]:
        return list(self.roles)


@dataclass
class CellRun:
    stdout: str
    first_output: float | None  # perf_counter() when the first stdout output arrived
    status: str


def run_cell(kc: BlockingKernelClient, code: str, timeout: float = CELL_TIMEOUT_S) -> CellRun:
    """Execute ``code`` and wait for both its execute_reply and its idle status (the two travel on different
    sockets, in either order); the time the first stream output arrived is taken the moment it is received."""
    msg_id = kc.execute(code)
    deadline = time.monotonic() + timeout
    stdout: list[str] = []
    first_output: float | None = None
    reply: dict | None = None
    idle = False
    while not (idle and reply is not None):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"cell {code[:40]!r} did not finish within {timeout:.0f} s (reply: {reply is not None}, idle: {idle})"
            )
        if reply is None and kc.shell_channel.msg_ready():
            msg = kc.get_shell_msg(timeout=1)
            if msg["parent_header"].get("msg_id") == msg_id:
                reply = msg
            continue
        try:
            msg = kc.get_iopub_msg(timeout=0.05)
        except Exception:  # queue.Empty
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream" and content.get("name") == "stdout":  # not a notice the front writes to stderr
            if first_output is None:
                first_output = time.perf_counter()
            stdout.append(content["text"])
        elif kind == "status" and content["execution_state"] == "idle":
            idle = True
    status = reply["content"]["status"] if reply else "?"
    if status != "ok":
        raise RuntimeError(f"cell {code[:40]!r} failed: {reply['content'] if reply else None}")
    return CellRun("".join(stdout), first_output, status)


def cluster_get(discovery: Path, path: str) -> Any:
    cluster = json.loads(discovery.read_text())
    req = urllib.request.Request(f"{cluster['url']}{path}", headers={"Authorization": f"token {cluster['token']}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def start_kernel(kind: str, log: TextIO, discovery: Path | None) -> Kernel:
    """Start one kernel, time it to its first output, and find its processes."""
    km = KernelManager(kernel_name=kind)
    t0 = time.perf_counter()
    km.start_kernel(stdout=log, stderr=log)
    kc = km.client()
    try:
        kc.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
        kc.wait_for_ready(timeout=KERNEL_START_TIMEOUT_S)
        ready = time.perf_counter() - t0
        first = run_cell(kc, FIRST_OUTPUT_CELL, KERNEL_START_TIMEOUT_S)
    except BaseException:
        kc.stop_channels()
        shutdown([Kernel(kind, km, kc, 0.0, 0.0)])
        raise
    if first.first_output is None:
        raise RuntimeError(f"{kind}: the first cell printed nothing")
    kernel = Kernel(kind, km, kc, ready, first.first_output - t0)
    if kind == PLAIN:
        kernel.roles[km.provisioner.pid] = "ipykernel"
        kernel.torch_pids = [km.provisioner.pid]
    else:
        assert discovery is not None
        kernel.roles[km.provisioner.pid] = "front"
        for replica in cluster_get(discovery, f"/kernels/{km.kernel_id}")["replicas"]:
            kernel.roles[replica["pid"]] = f"replica {replica['replica']}"
            kernel.torch_pids.append(replica["pid"])
    refresh_children(kernel)
    return kernel


def refresh_children(kernel: Kernel) -> None:
    """Add any process below the kernel's own (none expected today) to its roles."""
    for pid, role in list(kernel.roles.items()):
        if not role.startswith("child"):
            for child in descendants(pid):
                kernel.roles.setdefault(child, f"child of {role}")


def import_torch(kernel: Kernel) -> dict[str, Any]:
    """Run ``import torch`` and wait until every process that runs user code has it loaded and went quiet (for
    notebookos: the executor ran the cell, the standbys applied its state). Returns how long that took."""
    t0 = time.perf_counter()
    run_cell(kernel.kc, IMPORT_CELL)
    cell_s = time.perf_counter() - t0
    deadline = time.monotonic() + TORCH_LOAD_TIMEOUT_S
    missing = list(kernel.torch_pids)
    while missing and time.monotonic() < deadline:
        missing = [pid for pid in missing if not torch_loaded(pid)]
        if missing:
            time.sleep(0.1)
    quiet = wait_quiet(kernel.pids())
    return {
        "cell_s": round(cell_s, 3),
        "loaded_everywhere_s": round(time.perf_counter() - t0, 3),
        "processes_without_torch": [kernel.roles[pid] for pid in missing],
        "quiet": quiet,
    }


def shutdown(kernels: Sequence[Kernel]) -> None:
    """Stop every kernel (at once: their state is of no further use), the front's cleanup removing its replicas."""
    for kernel in kernels:
        try:
            kernel.kc.stop_channels()
        except Exception:
            pass
        try:
            kernel.km.shutdown_kernel(now=True)
        except Exception as err:  # a kernel that will not stop must not keep the others running
            print(f"could not shut down a {kernel.kind} kernel: {err}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------ measuring


def ticks_of(pids: Iterable[int]) -> dict[int, int | None]:
    return {pid: cpu_ticks(pid) for pid in pids}


def cpu_pct(before: dict[int, int | None], after: dict[int, int | None], wall_s: float, pids: Iterable[int]) -> float:
    """% of one core the processes used between two readings (a process gone meanwhile counts as 0)."""
    ticks = sum(after[p] - before[p] for p in pids if before.get(p) is not None and after.get(p) is not None)
    return 100.0 * ticks / CLK_TCK / wall_s


def sleep_with_progress(progress: Progress, description: str, seconds: float) -> float:
    """Sleep ``seconds`` showing a bar; returns the wall seconds actually slept."""
    task = progress.add_task(description, total=round(seconds))
    start = time.perf_counter()
    end = start + seconds
    while (now := time.perf_counter()) < end:
        time.sleep(min(1.0, end - now))
        progress.update(task, completed=min(round(time.perf_counter() - start), round(seconds)))
    return time.perf_counter() - start


def service_pids(service_pid: int | None, kernels: Sequence[Kernel]) -> list[int]:
    """The cluster service and whatever runs below it that belongs to no kernel (the replicas do)."""
    if service_pid is None:
        return []
    owned = {pid for k in kernels for pid in k.pids()}
    return [service_pid, *(pid for pid in descendants(service_pid) if pid not in owned)]


def idle_cpu(kernels: Sequence[Kernel], service: Sequence[int], window_s: float, progress: Progress) -> dict[str, Any]:
    """CPU of every process over the idle window, per kernel and per role."""
    everyone = [pid for k in kernels for pid in k.pids()] + list(service)
    before = ticks_of(everyone)
    wall = sleep_with_progress(progress, "idle window", window_s)
    after = ticks_of(everyone)
    n = len(kernels)
    per_kernel = [cpu_pct(before, after, wall, k.pids()) for k in kernels]
    by_role: dict[str, float] = {}
    for k in kernels:
        for pid, role in k.roles.items():
            group = "replicas" if role.startswith("replica") else role
            by_role[group] = by_role.get(group, 0.0) + cpu_pct(before, after, wall, [pid]) / n
    service_total = cpu_pct(before, after, wall, service)
    if service:
        by_role["cluster service ÷ N"] = service_total / n
    gone = [pid for pid in everyone if after[pid] is None]
    return {
        "per_kernel_pct": statistics.fmean(per_kernel) + (service_total / n if service else 0.0),
        "kernel_processes_only_pct": statistics.fmean(per_kernel),
        "per_kernel_min_pct": min(per_kernel),
        "per_kernel_max_pct": max(per_kernel),
        "per_kernel_samples_pct": [round(v, 3) for v in per_kernel],
        "by_role_pct_per_kernel": {k: round(v, 4) for k, v in by_role.items()},
        "cluster_service_total_pct": round(service_total, 3) if service else None,
        "window_s": round(wall, 2),
        "processes": len(everyone),
        "processes_gone": len(gone),
    }


def memory(kernels: Sequence[Kernel], service: Sequence[int]) -> dict[str, Any]:
    """RSS, PSS and USS per kernel (MiB), summed over its processes; the service's PSS and USS ÷ N added."""
    n = len(kernels)
    rows = []
    by_role: dict[str, dict[str, float]] = {}
    for k in kernels:
        total = {"rss": 0, "pss": 0, "uss": 0}
        for pid, role in k.roles.items():
            m = memory_kib(pid) or {"rss": 0, "pss": 0, "uss": 0}
            group = "replicas" if role.startswith("replica") else role
            for key in total:
                total[key] += m[key]
                by_role.setdefault(group, {"rss": 0.0, "pss": 0.0, "uss": 0.0})[key] += m[key] / 1024 / n
        rows.append({key: v / 1024 for key, v in total.items()})
    svc = {"rss": 0, "pss": 0, "uss": 0}
    for pid in service:
        m = memory_kib(pid) or {"rss": 0, "pss": 0, "uss": 0}
        for key in svc:
            svc[key] += m[key]
    svc_mib = {key: v / 1024 for key, v in svc.items()}
    share = {"pss": svc_mib["pss"] / n, "uss": svc_mib["uss"] / n} if service else {"pss": 0.0, "uss": 0.0}
    if service:
        by_role["cluster service ÷ N"] = {"rss": svc_mib["rss"] / n, **share}
    mean = {key: statistics.fmean(r[key] for r in rows) for key in ("rss", "pss", "uss")}
    return {
        "rss_mib": mean["rss"],  # kernel processes only: RSS of a shared service does not divide
        "pss_mib": mean["pss"] + share["pss"],
        "uss_mib": mean["uss"] + share["uss"],
        "pss_kernel_processes_only_mib": mean["pss"],
        "pss_samples_mib": [round(r["pss"], 1) for r in rows],
        "by_role_mib_per_kernel": {role: {k: round(v, 1) for k, v in vals.items()} for role, vals in by_role.items()},
        "cluster_service_mib": {k: round(v, 1) for k, v in svc_mib.items()} if service else None,
    }


def training(
    kernels: Sequence[Kernel], service: Sequence[int], args: argparse.Namespace, progress: Progress
) -> dict[str, Any]:
    """Train in the first kernel while the others idle; steps/s per cell, and the CPU of every process meanwhile."""
    trainer = kernels[0]
    run_cell(trainer.kc, TRAIN_SETUP_CELL.format(threads=args.train_threads))
    wait_quiet([pid for k in kernels for pid in k.pids()])  # notebookos: the standbys applied the function
    everyone = [pid for k in kernels for pid in k.pids()] + list(service)
    rates = []
    task = progress.add_task(f"training ({LABELS[trainer.kind]})", total=args.train_reps)
    before = ticks_of(everyone)
    start = time.perf_counter()
    for _ in range(args.train_reps):
        out = run_cell(trainer.kc, TRAIN_CELL.format(seconds=args.train_s, threads=args.train_threads))
        rates.append(float(out.stdout.split()[-1]))
        progress.advance(task)
    wall = time.perf_counter() - start
    after = ticks_of(everyone)
    own = {role: cpu_pct(before, after, wall, [pid]) for pid, role in trainer.roles.items()}
    busiest = max(own, key=own.get)  # the process that trained: ipykernel, or the executor replica
    return {
        "steps_per_s": statistics.median(rates),
        "steps_per_s_samples": [round(r, 1) for r in rates],
        "cpu_pct_during_training": {
            "training process": round(own[busiest], 2),
            "rest of the training kernel": round(sum(v for r, v in own.items() if r != busiest), 2),
            "the other kernels": round(cpu_pct(before, after, wall, [pid for k in kernels[1:] for pid in k.pids()]), 2),
            "cluster service": round(cpu_pct(before, after, wall, service), 2),
        },
        "training_process_role": busiest,
        "cpu_pct_by_role_of_training_kernel": {r: round(v, 2) for r, v in own.items()},
    }


def run_phase(
    kind: str,
    args: argparse.Namespace,
    console: Console,
    log: TextIO,
    progress: Progress,
    discovery: Path | None = None,
    service_pid: int | None = None,
) -> dict[str, Any]:
    """Start N kernels of ``kind`` one after another, import torch in each, and measure them; stop them all."""
    result: dict[str, Any] = {"load": {"start": load_snapshot()}}
    kernels: list[Kernel] = []
    imports = []
    stopped_early = None
    task = progress.add_task(f"start + import torch ({LABELS[kind]})", total=args.kernels)
    try:
        for _ in range(args.kernels):
            free_gib = psutil.virtual_memory().available / 2**30
            if free_gib < args.min_free_gib:
                stopped_early = (
                    f"only {len(kernels)} of {args.kernels} {LABELS[kind]} kernels started: "
                    f"{free_gib:.1f} GiB available < --min-free-gib {args.min_free_gib}"
                )
                console.print(f"[yellow]{stopped_early}[/yellow]", highlight=False)
                break
            kernel = start_kernel(kind, log, discovery)
            kernels.append(kernel)
            imports.append(import_torch(kernel))
            refresh_children(kernel)
            progress.advance(task)
        if len(kernels) < 2:
            raise RuntimeError(f"{LABELS[kind]}: fewer than 2 kernels started")
        service = service_pids(service_pid, kernels)
        wait_quiet([pid for k in kernels for pid in k.pids()] + service)
        sleep_with_progress(progress, f"settling ({LABELS[kind]})", args.settle_s)
        for kernel in kernels:
            refresh_children(kernel)
        service = service_pids(service_pid, kernels)
        result["load"]["idle_window_start"] = {"loadavg": [round(x, 2) for x in os.getloadavg()]}
        result["idle_cpu"] = idle_cpu(kernels, service, args.idle_window_s, progress)
        result["memory"] = memory(kernels, service)
        result["training"] = training(kernels, service, args, progress)
        starts = [k.first_output_s for k in kernels]
        result["start"] = {
            "first_output_s_p50": statistics.median(starts),
            "first_output_s_samples": [round(s, 3) for s in starts],
            "ready_s_p50": statistics.median(k.ready_s for k in kernels),
            "ready_s_samples": [round(k.ready_s, 3) for k in kernels],
        }
        result["import_torch"] = {
            "cell_s_p50": statistics.median(i["cell_s"] for i in imports),
            "loaded_everywhere_s_p50": statistics.median(i["loaded_everywhere_s"] for i in imports),
            "processes_without_torch": sum(len(i["processes_without_torch"]) for i in imports),
            "processes_with_torch": sum(len(k.torch_pids) for k in kernels)
            - sum(len(i["processes_without_torch"]) for i in imports),
            "kernels_not_quiet_after_import": sum(not i["quiet"] for i in imports),
        }
        result["kernels"] = len(kernels)
        result["processes_per_kernel"] = statistics.fmean(len(k.roles) for k in kernels)
        result["stopped_early"] = stopped_early
        result["available_memory_gib_with_all_started"] = round(psutil.virtual_memory().available / 2**30, 1)
    finally:
        shutdown(kernels)
    result["load"]["end"] = load_snapshot()
    return result


def notebookos_phase(
    args: argparse.Namespace, console: Console, workdir: Path, log: TextIO, progress: Progress
) -> dict[str, Any]:
    """The notebookos phase: an embedded cluster of CLUSTER_HOSTS logical hosts (as cell_latency.py and the tests
    start it), the kernels, then the cluster stopped."""
    from notebookos.gpu_broker.cluster.client import CLUSTER_FILE_ENV
    from notebookos.gpu_broker.cluster.launcher import start_cluster, stop_cluster

    with children_output_to(log):
        proc, discovery = start_cluster(workdir / "cluster", hosts=CLUSTER_HOSTS)
    os.environ[CLUSTER_FILE_ENV] = str(discovery)
    try:
        return run_phase(NOTEBOOKOS, args, console, log, progress, discovery, proc.pid)
    finally:
        os.environ.pop(CLUSTER_FILE_ENV, None)
        stop_cluster(proc)


def measure(args: argparse.Namespace, console: Console, workdir: Path, log: TextIO) -> dict[str, Any]:
    with progress_bar(console) as progress:
        plain = run_phase(PLAIN, args, console, log, progress)
        notebookos = notebookos_phase(args, console, workdir, log, progress)
    return {PLAIN: plain, NOTEBOOKOS: notebookos}


# ------------------------------------------------------------------------------------------------ analysis


def analyse(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    plain, nb = raw[PLAIN], raw[NOTEBOOKOS]
    headline = {
        "idle_cpu_pct_per_kernel": nb["idle_cpu"]["per_kernel_pct"],
        "plain_idle_cpu_pct_per_kernel": plain["idle_cpu"]["per_kernel_pct"],
        "pss_mib_per_kernel": nb["memory"]["pss_mib"],
        "plain_pss_mib_per_kernel": plain["memory"]["pss_mib"],
        "rss_mib_per_kernel": nb["memory"]["rss_mib"],
        "plain_rss_mib_per_kernel": plain["memory"]["rss_mib"],
        "uss_mib_per_kernel": nb["memory"]["uss_mib"],
        "plain_uss_mib_per_kernel": plain["memory"]["uss_mib"],
        "start_s_p50": nb["start"]["first_output_s_p50"],
        "plain_start_s_p50": plain["start"]["first_output_s_p50"],
        "train_steps_per_s": nb["training"]["steps_per_s"],
        "plain_train_steps_per_s": plain["training"]["steps_per_s"],
    }
    headline["train_steps_ratio"] = headline["train_steps_per_s"] / headline["plain_train_steps_per_s"]
    headline = {k: round(v, 4) for k, v in headline.items()}
    targets = [
        Target("idle CPU per kernel (% of a core)", IDLE_CPU_LIMIT_PCT, headline["idle_cpu_pct_per_kernel"], "%"),
        Target(
            "PSS per kernel (MiB), ≤ 2× plain",
            PSS_RATIO_LIMIT * headline["plain_pss_mib_per_kernel"],
            headline["pss_mib_per_kernel"],
            "MiB",
        ),
        Target(
            "start to first output p50 (s), ≤ plain + 0.5 s",
            headline["plain_start_s_p50"] + START_ADDED_LIMIT_S,
            headline["start_s_p50"],
            "s",
        ),
        Target(
            "training steps/s, ≥ 0.9× plain",
            TRAIN_RATIO_FLOOR * headline["plain_train_steps_per_s"],
            headline["train_steps_per_s"],
            "steps/s",
            floor=True,
        ),
    ]
    return {
        **headline,
        "kernels": {PLAIN: plain["kernels"], NOTEBOOKOS: nb["kernels"]},
        "kernels_requested": args.kernels,
        "targets": {t.name: t.as_dict() for t in targets},
        "counting": {
            "idle_cpu": "mean over the kernels of utime+stime (/proc/<pid>/stat) of every process of the kernel over "
            "the idle window, % of one core; notebookos: front + 3 replicas + the cluster service's "
            "CPU ÷ N (kernel_processes_only_pct leaves the service out)",
            "memory": "mean over the kernels of the sum over its processes of /proc/<pid>/smaps_rollup Pss (Rss, "
            "Private_* for USS), MiB; notebookos PSS and USS include the cluster service's ÷ N, RSS does "
            "not; measured after the idle window, every kernel having imported torch",
            "start": "KernelManager.start_kernel() → wait_for_ready() → execute print(); until the stream output "
            "arrives; kernels started one after another, each once the previous one had imported torch "
            "everywhere; notebookos with its cluster service already running",
            "training": "median over --train-reps cells of steps/s counted inside the cell, in the first kernel "
            "while the other N-1 idle; one kind at a time (plain phase first, then notebookos)",
            "phases": "the two kinds run one after the other: each phase's N kernels are stopped before the next "
            "kind starts",
        },
        "phases": raw,
        "settings": {
            "kernels": args.kernels,
            "idle_window_s": args.idle_window_s,
            "settle_s": args.settle_s,
            "train_s": args.train_s,
            "train_reps": args.train_reps,
            "train_threads": args.train_threads,
            "min_free_gib": args.min_free_gib,
            "cluster_hosts": CLUSTER_HOSTS,
            "import_cell": IMPORT_CELL,
            "first_output_cell": FIRST_OUTPUT_CELL,
            "train_cell": TRAIN_CELL.format(seconds=args.train_s, threads=args.train_threads),
        },
        "machine": machine_context(),
        "_targets": targets,
    }


# ------------------------------------------------------------------------------------------------ report


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "—"


def summary_table(results: dict[str, Any]) -> Table:
    n = results["kernels"]
    table = Table(
        title=f"Per kernel, {n[PLAIN]} plain ipykernels vs {n[NOTEBOOKOS]} notebookos kernels, each idle "
        "after `import torch`",
        title_justify="left",
    )
    for column in ("per kernel", "plain ipykernel", "notebookos", "ratio", "target", "measured", ""):
        table.add_column(column, justify="left" if column in ("per kernel", "target") else "right")
    r = results
    targets = {t.name: t for t in r["_targets"]}

    def verdict(t: Target) -> str:
        return "[green]met[/green]" if t.met else "[red]MISSED[/red]"

    t_cpu, t_pss, t_start, t_train = targets.values()
    table.add_row(
        "idle CPU (% of a core)",
        f"{r['plain_idle_cpu_pct_per_kernel']:.3f}",
        f"{r['idle_cpu_pct_per_kernel']:.3f}",
        ratio(r["idle_cpu_pct_per_kernel"], r["plain_idle_cpu_pct_per_kernel"]),
        f"≤ {IDLE_CPU_LIMIT_PCT} %",
        f"{t_cpu.measured:.3f} %",
        verdict(t_cpu),
    )
    table.add_row(
        "memory, PSS (MiB)",
        f"{r['plain_pss_mib_per_kernel']:.0f}",
        f"{r['pss_mib_per_kernel']:.0f}",
        ratio(r["pss_mib_per_kernel"], r["plain_pss_mib_per_kernel"]),
        f"≤ {PSS_RATIO_LIMIT:.0f}× plain",
        ratio(r["pss_mib_per_kernel"], r["plain_pss_mib_per_kernel"]),
        verdict(t_pss),
    )
    table.add_row(
        "memory, RSS (MiB)",
        f"{r['plain_rss_mib_per_kernel']:.0f}",
        f"{r['rss_mib_per_kernel']:.0f}",
        ratio(r["rss_mib_per_kernel"], r["plain_rss_mib_per_kernel"]),
        "",
        "",
        "",
    )
    table.add_row(
        "memory, USS (MiB)",
        f"{r['plain_uss_mib_per_kernel']:.0f}",
        f"{r['uss_mib_per_kernel']:.0f}",
        ratio(r["uss_mib_per_kernel"], r["plain_uss_mib_per_kernel"]),
        "",
        "",
        "",
    )
    table.add_row(
        "start to first output, p50 (s)",
        f"{r['plain_start_s_p50']:.2f}",
        f"{r['start_s_p50']:.2f}",
        ratio(r["start_s_p50"], r["plain_start_s_p50"]),
        f"≤ plain + {START_ADDED_LIMIT_S} s",
        f"+{r['start_s_p50'] - r['plain_start_s_p50']:.2f} s",
        verdict(t_start),
    )
    table.add_row(
        "training steps/s (one kernel, others idle)",
        f"{r['plain_train_steps_per_s']:.0f}",
        f"{r['train_steps_per_s']:.0f}",
        f"{r['train_steps_ratio']:.2f}×",
        f"≥ {TRAIN_RATIO_FLOOR}× plain",
        f"{r['train_steps_ratio']:.2f}×",
        verdict(t_train),
    )
    return table


def breakdown_table(results: dict[str, Any]) -> Table:
    """Where notebookos's idle CPU and memory go, per kernel, by process role."""
    nb = results["phases"][NOTEBOOKOS]
    table = Table(title="notebookos per kernel by process (cluster service divided by N)", title_justify="left")
    for column in ("process", "idle CPU (% of a core)", "PSS (MiB)", "RSS (MiB)", "USS (MiB)"):
        table.add_column(column, justify="left" if column == "process" else "right")
    cpu, mem = nb["idle_cpu"]["by_role_pct_per_kernel"], nb["memory"]["by_role_mib_per_kernel"]
    for role in dict.fromkeys([*cpu, *mem]):
        m = mem.get(role, {})
        table.add_row(
            role,
            f"{cpu.get(role, float('nan')):.3f}",
            f"{m.get('pss', float('nan')):.0f}",
            f"{m.get('rss', float('nan')):.0f}",
            f"{m.get('uss', float('nan')):.0f}",
        )
    return table


def training_table(results: dict[str, Any]) -> Table:
    table = Table(title="CPU during the training cells (% of a core)", title_justify="left")
    table.add_column("process")
    for kind in (PLAIN, NOTEBOOKOS):
        table.add_column(LABELS[kind], justify="right")
    rows = results["phases"][PLAIN]["training"]["cpu_pct_during_training"]
    for key in rows:
        table.add_row(
            key,
            *(
                f"{results['phases'][kind]['training']['cpu_pct_during_training'][key]:.1f}"
                for kind in (PLAIN, NOTEBOOKOS)
            ),
        )
    return table


def plot(path: Path, results: dict[str, Any]) -> None:
    """Four bar panels, plain vs notebookos, each with its target drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = results
    nb_cpu = r["phases"][NOTEBOOKOS]["idle_cpu"]["by_role_pct_per_kernel"]
    colors = {PLAIN: "tab:blue", NOTEBOOKOS: "tab:orange"}
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.8), constrained_layout=True)
    names = [LABELS[PLAIN], LABELS[NOTEBOOKOS]]

    def bars(
        ax: Any, values: Sequence[float], title: str, unit: str, target: float, target_label: str, fmt: str = "{:.2f}"
    ) -> None:
        drawn = ax.bar(names, values, color=[colors[PLAIN], colors[NOTEBOOKOS]], zorder=2)
        for bar, value in zip(drawn, values):
            ax.annotate(
                fmt.format(value),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=9,
            )
        ax.axhline(target, color="grey", linestyle="--", linewidth=1)
        ax.annotate(
            target_label,
            (-0.45, target),
            fontsize=8,
            color="dimgrey",
            ha="left",
            va="bottom",
            zorder=3,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1},
        )
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.grid(True, axis="y", alpha=0.3)

    ax = axes[0]
    bars(
        ax,
        [r["plain_idle_cpu_pct_per_kernel"], r["idle_cpu_pct_per_kernel"]],
        "idle CPU per kernel",
        "% of one core (log scale)",
        IDLE_CPU_LIMIT_PCT,
        f"target ≤ {IDLE_CPU_LIMIT_PCT} %",
        "{:.3f}",
    )
    ax.set_yscale("log")
    ax.set_ylim(bottom=max(0.001, min(r["plain_idle_cpu_pct_per_kernel"], IDLE_CPU_LIMIT_PCT) / 3))
    split = ", ".join(f"{k} {v:.2f}" for k, v in nb_cpu.items())
    ax.set_xlabel(f"notebookos: {split}", fontsize=7, wrap=True)
    ax = axes[1]
    rss = [r["plain_rss_mib_per_kernel"], r["rss_mib_per_kernel"]]
    ax.bar(names, rss, fill=False, hatch="//", edgecolor="grey", linewidth=0.5, zorder=1)
    for x, value in enumerate(rss):
        ax.annotate(f"RSS {value:.0f}", (x, value), ha="center", va="bottom", fontsize=8, color="grey")
    bars(
        ax,
        [r["plain_pss_mib_per_kernel"], r["pss_mib_per_kernel"]],
        "memory per kernel (PSS; RSS hatched)",
        "MiB",
        PSS_RATIO_LIMIT * r["plain_pss_mib_per_kernel"],
        "target ≤ 2× plain PSS",
        "{:.0f}",
    )
    bars(
        axes[2],
        [r["plain_start_s_p50"], r["start_s_p50"]],
        "start to first output, p50",
        "s",
        r["plain_start_s_p50"] + START_ADDED_LIMIT_S,
        "target ≤ plain + 0.5 s",
    )
    bars(
        axes[3],
        [r["plain_train_steps_per_s"], r["train_steps_per_s"]],
        "training steps/s, others idle",
        "steps/s",
        TRAIN_RATIO_FLOOR * r["plain_train_steps_per_s"],
        "target ≥ 0.9× plain",
        "{:.0f}",
    )
    n = r["kernels"]
    fig.suptitle(
        f"Footprint: {n[PLAIN]} plain ipykernels vs {n[NOTEBOOKOS]} notebookos kernels, idle after "
        f"`import torch` ({os.cpu_count()} CPUs)"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: dict[str, Any], console: Console, out: Path) -> None:
    targets: list[Target] = results["_targets"]
    for table in (summary_table(results), breakdown_table(results), training_table(results)):
        console.print(table)
        console.print()
    results.pop("_targets")
    for kind in (PLAIN, NOTEBOOKOS):
        phase = results["phases"][kind]
        imp = phase["import_torch"]
        load = phase["load"]
        console.print(
            f"{LABELS[kind]}: {phase['kernels']} kernels, {phase['processes_per_kernel']:.0f} processes "
            f"each; import torch p50 {imp['cell_s_p50']:.2f} s (loaded everywhere "
            f"{imp['loaded_everywhere_s_p50']:.2f} s; {imp['processes_with_torch']} processes with torch, "
            f"{imp['processes_without_torch']} without); load average at start {load['start']['loadavg']}, "
            f"idle window {load['idle_window_start']['loadavg']}, end {load['end']['loadavg']}",
            highlight=False,
        )
        if phase["stopped_early"]:
            console.print(f"[yellow]{phase['stopped_early']}[/yellow]", highlight=False)
        busy = [p for p in load["start"]["busiest"] if p["cpu_percent"] >= 10.0]
        if busy:
            console.print(
                "[yellow]  other processes using CPU at the phase's start: "
                + "; ".join(f"{p['cpu_percent']:.0f}% {p['cmd']}" for p in busy)
                + "[/yellow]",
                highlight=False,
            )
    missed = [t.name for t in targets if not t.met]
    if missed:
        console.print(f"[red]targets missed: {', '.join(missed)}[/red]", highlight=False)
    out.mkdir(parents=True, exist_ok=True)
    (out / "footprint.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    plot(out / "footprint.png", results)
    console.print(f"wrote {out / 'footprint.json'} and {out / 'footprint.png'}", highlight=False)


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", type=int, default=20, help="idle kernels of each kind (default 20)")
    parser.add_argument("--idle-window-s", type=float, default=30.0, help="idle CPU window, seconds (default 30)")
    parser.add_argument(
        "--settle-s",
        type=float,
        default=10.0,
        help="wait after the last kernel went quiet before the idle window (default 10)",
    )
    parser.add_argument("--train-s", type=float, default=10.0, help="seconds per training cell (default 10)")
    parser.add_argument("--train-reps", type=int, default=3, help="training cells per kind (default 3)")
    parser.add_argument("--train-threads", type=int, default=1, help="torch threads of the training loop (1)")
    parser.add_argument(
        "--min-free-gib",
        type=float,
        default=3.0,
        help="start no kernel while less memory than this is available (default 3)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and PNG go")
    parser.add_argument("--keep", action="store_true", help="keep the temporary state dir and logs")
    args = parser.parse_args(argv)
    if args.kernels < 2:
        parser.error("--kernels must be at least 2 (one trains while the others idle)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 132)
    workdir = Path(tempfile.mkdtemp(prefix="notebookos-footprint-"))
    started = time.perf_counter()

    def run() -> dict[str, Any]:
        isolate_jupyter(workdir / "jupyter")
        console.print(
            f"{args.kernels} kernels of each kind; load average {os.getloadavg()[0]:.2f}, "
            f"{psutil.virtual_memory().available / 2**30:.1f} GiB available",
            highlight=False,
        )
        with open(workdir / "processes.log", "w") as log:
            raw = measure(args, console, workdir, log)
        results = analyse(raw, args)
        results["wall_s"] = round(time.perf_counter() - started, 1)
        report(results, console, args.out)
        console.print(f"total {results['wall_s']} s", highlight=False)
        return results

    return run_in_workdir(run, console, workdir, args.keep)


if __name__ == "__main__":
    sys.exit(main())
