"""Chaos run: a long notebook on a multi-host cluster under random faults, compared cell by cell with ipykernel.

The product's promise is that a notebook on notebookos behaves as on plain ipykernel while its replicas, machines,
network, cluster service and Jupyter server fail underneath it (one fault at a time: a majority of a kernel's
replicas always survives). This run checks that promise end to end on real processes:

1. **The notebook** (:func:`generate_notebook`, deterministic from ``--seed``): a setup cell seeding torch and
   ``random`` and building a tiny linear model, SGD with momentum and a fixed data set; then a few hundred cells
   mixing training steps (printing the loss to 6 digits), in-place mutations of lists, nested dicts and a custom
   object, small tensors and tensors of 4 to 12 MB changed in place, functions and a class defined and called
   later, stdout and stderr prints, values that cannot be pickled (a generator, a lock, an open temporary file:
   used within their cell only, never by a later cell, since they do not survive a failover by design), cells
   raising exceptions (one after mutating state), draws from an explicit ``torch.Generator`` kept in the
   namespace and draws from the global RNGs seeded in the first cell. Some training cells are slow (they print
   ``start`` and sleep about a second first), so that a fault can land while a cell runs. Every output is
   deterministic: no timings, ids or addresses.
2. **The cluster**: machines made of network namespaces (``tests/multihost/hosts.py``), each running a
   ``notebookos agent``, a cluster service on the bridge, and ``notebookos lab --cluster URL --state-dir S`` in the
   root namespace. Both kernels are driven as JupyterLab drives them: REST for the sessions, the kernel websocket for
   cells (:class:`LabKernel`). The notebookos kernel asks for ``--gpus`` (virtual) GPUs per cell, by default 1, so
   that each cell goes through the scheduler, which then names the cell's executor, and a service outage stalls
   cells as it does a GPU notebook's; with ``--gpus 0`` the scheduler is out of the cells' path, and a fault aimed
   at "the executor" hits a replica by index instead.
3. **The faults** (:func:`plan_faults`, seeded): ``--faults`` of the ``--kinds`` at random cells, before the cell
   is sent or, for slow cells, once it has printed ``start``: ``replica`` (the cluster API's fault drill, ``POST
   /kernels/{id}/replicas/{n}/kill``), ``host`` (the machine of a replica powered off with its disk; a fresh agent
   is started on a new machine at the same address once the cluster has declared the old one lost), ``partition``
   (a replica's machine unplugged for 1.5 to 8 s: shorter or longer than the cluster's 5 s host time-out),
   ``service`` (SIGKILL to the cluster service, started again at once on its state folder) and ``jupyter``
   (SIGKILL to JupyterLab, ``notebookos lab`` started again on the same state folder, the notebook's websocket
   reconnected; only between cells, since the outputs of a cell running while the server is down are lost with
   the server in plain Jupyter too). The target replica is the executor or a standby, drawn by the plan. Before
   each fault the run waits until the previous one is over (link back, machine replaced, service or server back)
   and the kernel has three ready replicas that its front uses again (its log says so).
4. **The comparison**: the same notebook first runs on plain ipykernel (``python3``) in the same Jupyter server.
   Each cell's stdout, stderr, execute_result text/plain, error name and value, and reply status must be equal;
   lines the notebookos front and replicas add to stderr on purpose (``notebookos: ...`` notices: a re-run after
   a failover, names that will not survive one, a wait for the cluster service) are taken out first and counted.
   A last cell prints a digest of every user variable that can be pickled (tensors by dtype, shape and bytes;
   modules and optimizers by state_dict; objects by their attributes; functions by bytecode): it runs on the
   kernel as any cell, then pinned on each replica, and each digest must equal ipykernel's (the unpicklable
   values are left out on both sides: notebookos loses them at a failover by design).

Printed: faults injected by kind (each with what shows it happened: events in the cluster's log, pids that
changed, the front's view), cells re-run after a failover, mismatches (target 0) with what differed, and the longest
pause a user saw: the largest (notebookos − ipykernel) time of one cell, from its submission, or from the fault
injected just before it, to its idle status. Writes benchmarks/results/chaos.json (summary) and chaos.png (time of
every cell on both kernels, faults marked). Exits 1 on a mismatch or when the product fails under the run (a
cell that never ends, a kernel that never recovers); without root and network namespaces it says why and exits 0.

    .venv/bin/python benchmarks/chaos.py [--cells 300] [--faults 20] [--seed 1] [--gpus 1]
                                         [--kinds replica,host,partition,service,jupyter] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

import psutil
import websocket
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from cell_latency import isolate_jupyter, progress_bar
from latency_report import load_snapshot, machine_context, print_tables
from multihost import AGENT_DIR, JOIN_DEADLINE_S, Failure, stop, wait_for

from notebookos.gpu_broker.cluster.launcher import start_cluster

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for the test harness
from tests.e2e.lab_server import isolated_jupyter_env  # noqa: E402
from tests.kernels.driver import cluster_request  # noqa: E402
from tests.multihost.hosts import Host, NetworkHosts, available  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FAULT_KINDS = ("replica", "host", "partition", "service", "jupyter")
KERNEL = "notebookos-chaos"  # the notebookos kernelspec, asking for --gpus GPUs per cell
REFERENCE_KERNEL = "python3"
NOTICE = "notebookos: "  # how every line the front or a replica adds to a cell's stderr on purpose begins
RERUN_NOTICE = "re-running it"  # kernels/front.py, when the replica running a cell was lost
SERVICE_WAIT_NOTICE = "the cluster service does not answer"
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")  # a process's log line

MACHINES = 5  # three replicas, a machine to replace one on, and one more while a dead machine is replaced
GPUS_PER_MACHINE = 1
HOST_TIMEOUT_S = 5.0  # the service's default: a machine silent this long is lost
PARTITION_S = (1.5, 8.0)  # around HOST_TIMEOUT_S: some partitions heal in time, some cost the machine
KERNEL_GRACE_S = 120.0  # how long a front waits for a restarted Jupyter server
CELL_TIMEOUT_S = 180.0
RECOVERY_DEADLINE_S = 120.0
LAB_START_S = 90.0
SESSION_START_S = 180.0
SLOW_CELL_S = (0.8, 1.6)
WATCH_S = 0.25  # how often recovery is checked while cells run
PER_CELL_EVENTS = {"decision", "execution_started", "released"}  # a GPU cell's own, in the cluster's event log


# ------------------------------------------------------------------------------------------------ the notebook


@dataclass(frozen=True)
class NotebookCell:
    """One cell of the generated notebook. ``slow`` cells print ``start`` and then run for about a second, so a
    fault can be injected while they run."""

    index: int
    kind: str
    source: str
    slow: bool = False


# Relative frequency of each kind of cell after the setup cell.
CELL_WEIGHTS = {
    "train": 24,
    "list": 11,
    "dict": 11,
    "object": 5,
    "small_tensor": 7,
    "big_tensor": 8,
    "function": 6,
    "print": 8,
    "unpicklable": 6,
    "error": 5,
    "generator_rng": 5,
    "global_rng": 4,
}
SLOW_FRACTION = 0.12
MAX_BIG_TENSORS = 3

SETUP_CELL = """\
import random, sys, tempfile, threading, time
import torch
torch.manual_seed({seed})
random.seed({seed})
X = torch.randn(256, 8)
w_true = torch.randn(8, 1)
y = X @ w_true + 0.05 * torch.randn(256, 1)
model = torch.nn.Linear(8, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
loss_fn = torch.nn.MSELoss()
g = torch.Generator().manual_seed({seed})
step, losses, items, registry = 0, [], [], {{}}
class Tally:
    def __init__(self):
        self.total = 0
        self.seen = []
    def add(self, value):
        self.total += value
        self.seen.append(value)
        return self.total
tally = Tally()
print('ready', tuple(X.shape), round(float(w_true.sum()), 6))"""

TRAIN_CELL = """\
for _ in range({steps}):
    i = (step * 32) % 256
    opt.zero_grad()
    loss = loss_fn(model(X[i:i + 32]), y[i:i + 32])
    loss.backward()
    opt.step()
    step += 1
    losses.append(round(loss.item(), 6))
print('step', step, 'loss', f'{{loss.item():.6f}}')"""

SLOW_PREFIX = "print('start', flush=True)\ntime.sleep({seconds})\n"

# The last cell: a digest of every user variable that can be pickled, as JSON on one line. Its own names begin
# with "_", so it leaves nothing the digest would list.
DIGEST_CELL = """\
import hashlib as _hashlib, json as _json, pickle as _pickle, types as _types
def _digest(value):
    if isinstance(value, torch.Tensor):
        data = value.detach().contiguous()
        return f'tensor {data.dtype} {tuple(data.shape)} ' + _hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16]
    if isinstance(value, (torch.nn.Module, torch.optim.Optimizer, torch.Generator)):
        state = value.get_state() if isinstance(value, torch.Generator) else value.state_dict()
        return {'type': type(value).__name__, 'state': _digest(state)}
    if isinstance(value, dict):
        return {repr(k): _digest(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_digest(v) for v in value]
    if isinstance(value, _types.FunctionType):
        return {'function': value.__name__, 'defaults': repr(value.__defaults__),
                'code': _hashlib.sha256(value.__code__.co_code).hexdigest()[:16]}
    if isinstance(value, type):
        return {'class': value.__name__, 'methods': sorted(k for k in vars(value) if not k.startswith('__'))}
    if hasattr(value, '__dict__'):
        return {'object': type(value).__name__, 'attributes': _digest(vars(value))}
    return repr(value)
def _replicable(value):
    try:
        _pickle.dumps(value)
    except Exception:
        return False
    return True
print(_json.dumps({_name: _digest(_value) for _name, _value in sorted(globals().items())
                   if not _name.startswith('_') and _name not in ('In', 'Out', 'exit', 'quit', 'get_ipython')
                   and not isinstance(_value, _types.ModuleType)
                   and (isinstance(_value, (_types.FunctionType, type)) or _replicable(_value))}, sort_keys=True))"""


class _NotebookWriter:
    """Writes cells one by one, remembering what earlier cells defined so that later ones use only that."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.serial = 0  # makes each new name unique
        self.big: list[str] = []
        self.functions: list[str] = []

    def cell(self, kind: str) -> str:
        self.serial += 1
        return getattr(self, f"_{kind}")()

    def _train(self) -> str:
        return TRAIN_CELL.format(steps=self.rng.randint(1, 4))

    def _list(self) -> str:
        n, v = self.serial, self.rng.randint(-50, 50)
        return self.rng.choice(
            [
                f"items.append({v})\nitems.extend([{v} * 2, {n}])\nprint(len(items), items[-3:])",
                f"if items:\n    items[{n} % len(items)] = {v}\nprint(sum(items), len(items))",
                "items.sort()\nprint(items[:3], items[-3:])",
                "popped = items.pop(0) if items else None\nprint('popped', popped, len(items))",
            ]
        )

    def _dict(self) -> str:
        n = self.serial
        return self.rng.choice(
            [
                f"registry['k{n}'] = {{'step': step, 'hits': 0, 'tags': ['t{n}']}}\nprint(sorted(registry)[-3:])",
                f"for key in sorted(registry)[:{self.rng.randint(1, 4)}]:\n    registry[key]['hits'] += 1\n"
                f"    registry[key]['tags'].append('h{n}')\n"
                "print({k: v['hits'] for k, v in sorted(registry.items())[:3]})",
                "registry.pop(sorted(registry)[0], None) if registry else None\nlen(registry)",
            ]
        )

    def _object(self) -> str:
        return f"print(tally.add({self.rng.randint(1, 9)}), len(tally.seen))"

    def _small_tensor(self) -> str:
        n = self.serial
        return self.rng.choice(
            [
                f"t{n} = torch.linspace(0, 1, 5) * step\nt{n}",
                "round(float(model.weight.detach().abs().sum()), 6), round(float(model.bias.detach()), 6)",
                "opt.state_dict()['param_groups'][0]['lr'], len(opt.state_dict()['state'])",
            ]
        )

    def _big_tensor(self) -> str:
        if self.big and (len(self.big) >= MAX_BIG_TENSORS or self.rng.random() < 0.5):
            name = self.rng.choice(self.big)
            if self.rng.random() < 0.3:
                self.big.remove(name)
                return f"del {name}\nprint(sorted(k for k in globals() if k.startswith('big')))"
            stride, add = self.rng.randint(2, 9), self.rng.randint(1, 5)
            return f"{name}.add_({add})\n{name}[::{stride}] *= 2\nprint(int({name}.sum()), int({name}[-1]))"
        name, size = f"big{self.serial}", self.rng.randint(500_000, 1_500_000)
        self.big.append(name)
        if self.rng.random() < 0.5:  # float64 holding integers: its sum is exact, whatever the summation order
            source = f"{name} = torch.full(({size},), {self.rng.randint(1, 9)}.0, dtype=torch.float64)"
        else:
            source = f"{name} = torch.arange({size}, dtype=torch.int64) * {self.rng.randint(1, 9)}"
        return (
            f"{source}\nprint({name}.numel(), int({name}.sum()), "
            f"f'{{{name}.element_size() * {name}.numel() / 2**20:.1f}} MiB')"
        )

    def _function(self) -> str:
        if self.functions and self.rng.random() < 0.6:
            return f"print({self.rng.choice(self.functions)}(items[-3:]))"
        name = f"scale{self.serial}"
        self.functions.append(name)
        return (
            f"def {name}(values, k={self.rng.randint(2, 7)}):\n    return [v * k for v in values]\n"
            f"print({name}([1, 2, 3]))"
        )

    def _print(self) -> str:
        return self.rng.choice(
            [
                "print(f'step {step}, {len(losses)} losses, last {losses[-1] if losses else None}')\n"
                "print('items', len(items), 'registry', len(registry), file=sys.stderr)",
                "losses[-3:]",
                "sorted(registry)[:4]",
                "print('\\n'.join(f'{i}: {v}' for i, v in enumerate(items[-4:])))",
            ]
        )

    def _unpicklable(self) -> str:
        n = self.serial
        return self.rng.choice(
            [
                f"gen{n} = (i * i for i in range({self.rng.randint(3, 9)}))\n"
                f"print(next(gen{n}), next(gen{n}), sum(gen{n}))",
                f"lock{n} = threading.Lock()\nwith lock{n}:\n    print('locked', lock{n}.locked())\n"
                f"print('released', lock{n}.locked())",
                f"fh{n} = tempfile.TemporaryFile('w+')\nfh{n}.write('line {n}\\n' * 3)\nfh{n}.seek(0)\n"
                f"print(fh{n}.read().count('line'))",
            ]
        )

    def _error(self) -> str:
        n, v = self.serial, self.rng.randint(1, 99)
        return self.rng.choice(
            [
                "items[10 ** 6]",
                f"registry['missing{n}']",
                f"items.append({v})\nraise RuntimeError('cell {n} failed after appending {v}')",
                "1 / (step - step)",
            ]
        )

    def _generator_rng(self) -> str:
        return "print(torch.randint(0, 1000, (4,), generator=g).tolist())"

    def _global_rng(self) -> str:
        return "print(torch.randint(0, 1000, (3,)).tolist(), random.randint(0, 999))"


def generate_notebook(seed: int, cells: int) -> list[NotebookCell]:
    """``cells`` cells (the setup cell first), the same for the same seed; the digest cell is not among them."""
    rng = random.Random(seed)
    writer = _NotebookWriter(rng)
    notebook = [NotebookCell(0, "setup", SETUP_CELL.format(seed=seed))]
    kinds, weights = zip(*CELL_WEIGHTS.items())
    for index in range(1, cells):
        kind = rng.choices(kinds, weights)[0]
        source = writer.cell(kind)
        slow = kind == "train" and rng.random() < SLOW_FRACTION * sum(weights) / CELL_WEIGHTS["train"]
        if slow:
            source = SLOW_PREFIX.format(seconds=round(rng.uniform(*SLOW_CELL_S), 2)) + source
        notebook.append(NotebookCell(index, kind, source, slow))
    return notebook


# --------------------------------------------------------------------------------------------- cell outputs


@dataclass
class CellRun:
    """What a user saw of one cell, and when (``time.monotonic()``). Lines beginning ``notebookos: `` on stderr
    are the product's notices, kept apart in ``notices``; a ``clear_output`` clears what came before it, as in
    JupyterLab (the front clears a cell it re-runs)."""

    submitted: float
    stdout: str = ""
    stderr: str = ""
    result: str | None = None
    error: str | None = None
    status: str | None = None
    notices: list[str] = field(default_factory=list)
    replied: float | None = None
    idle: float | None = None
    waited_from: float | None = None  # when the user began to wait: a fault injected just before, else submitted

    def take(self, msg: dict[str, Any], now: float) -> None:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            if content["name"] == "stderr" and content["text"].startswith(NOTICE):
                self.notices.append(content["text"])
            else:
                setattr(self, content["name"], getattr(self, content["name"]) + content["text"])
        elif kind == "clear_output":
            self.stdout, self.stderr, self.result, self.error = "", "", None, None
        elif kind == "execute_result":
            self.result = content["data"].get("text/plain")
        elif kind == "error":
            self.error = f"{content['ename']}: {content['evalue']}"
        elif kind == "execute_reply":
            self.status, self.replied = content["status"], now
        elif kind == "status" and content["execution_state"] == "idle":
            self.idle = now

    @property
    def done(self) -> bool:
        return self.replied is not None and self.idle is not None

    @property
    def seconds(self) -> float:
        """From when the user began to wait to the idle status."""
        assert self.idle is not None
        return self.idle - (self.waited_from if self.waited_from is not None else self.submitted)

    @property
    def reruns(self) -> int:
        return sum(RERUN_NOTICE in notice for notice in self.notices)

    def visible(self) -> dict[str, str | None]:
        return {
            "status": self.status,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "result": self.result,
            "error": self.error,
        }


FINAL = -1  # the cell index of a mismatch in the final namespace


@dataclass(frozen=True)
class Mismatch:
    """One output field of a cell that differs from ipykernel's, or one variable whose final digest does."""

    cell: int
    kind: str
    what: str
    expected: str
    got: str
    note: str = ""
    notices: tuple[str, ...] = ()  # what the product told the user in that cell


def compare_cell(cell: NotebookCell, expected: CellRun, got: CellRun) -> list[Mismatch]:
    """Every visible field that differs. A stderr difference made only of log records is named as such: a
    process's log line in a user's cell."""
    found = []
    for what, value in expected.visible().items():
        other = got.visible()[what]
        if other != value:
            leaked = what == "stderr" and _without_log_lines(other or "") == (value or "")
            found.append(
                Mismatch(
                    cell.index,
                    cell.kind,
                    what,
                    repr(value),
                    repr(other),
                    "only log records added to the cell's stderr" if leaked else "",
                    tuple(got.notices),
                )
            )
    return found


def _without_log_lines(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not LOG_RECORD.match(line))


def compare_digests(label: str, expected: CellRun, got: CellRun) -> list[Mismatch]:
    """The variables whose digest differs (or that one side lacks); the digest cell's own failure, if any."""
    try:
        want, have = json.loads(expected.stdout), json.loads(got.stdout)
    except ValueError:
        return [Mismatch(FINAL, label, "digest", expected.stdout[:200], f"{got.stdout[:200]!r} {got.error}")]
    return [
        Mismatch(FINAL, label, f"variable {name}", json.dumps(want.get(name))[:200], json.dumps(have.get(name))[:200])
        for name in sorted(want.keys() | have.keys())
        if want.get(name) != have.get(name)
    ]


# ------------------------------------------------------------------------------------ the Jupyter server


@dataclass
class Lab:
    """``notebookos lab --cluster URL --state-dir S`` on this machine: JupyterLab using the pool's cluster service,
    whose kernels outlive it (a new run on the same state folder takes them back). Every run uses the same port and
    token, as a supervisor restarting it would."""

    workdir: Path
    cluster_url: str
    token_file: Path
    gpus: int = 1  # per cell, for the notebookos kernels it starts
    port: int = 0
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    wrapper: subprocess.Popen[bytes] | None = None
    runs: int = 0

    def __post_init__(self) -> None:
        self.env = isolated_jupyter_env(self.workdir / "jupyter")
        self.root = self.workdir / "notebooks"
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or _free_port()
        _write_kernelspec(Path(self.env["JUPYTER_DATA_DIR"]), self.gpus)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def log(self, run: int) -> Path:
        """The output of run ``run``; the kernel fronts that run starts write their log there too, for their life."""
        return self.workdir / f"lab-{run}.log"

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "notebookos.server_extension.cli",
            "lab",
            "--cluster",
            self.cluster_url,
            "--cluster-token-file",
            str(self.token_file),
            "--state-dir",
            str(self.workdir / "state"),
            "--kernel-grace",
            str(KERNEL_GRACE_S),
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        with open(self.log(self.runs), "ab") as out:
            self.wrapper = subprocess.Popen(
                argv,
                env=self.env,
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.runs += 1
        wait_for(self._serving, f"JupyterLab to answer (see {self.log(self.runs - 1)})", LAB_START_S)

    def _serving(self) -> bool:
        assert self.wrapper is not None
        if self.wrapper.poll() is not None:
            raise Failure(f"notebookos lab exited with status {self.wrapper.returncode}; see {self.log(self.runs - 1)}")
        try:
            self.api("GET", "api/status")
        except OSError:
            return False
        return True

    def jupyterlab(self) -> psutil.Process:
        """JupyterLab's process: the wrapper's child that holds the kernels, sessions and the fronts' parent link."""
        assert self.wrapper is not None
        return next(p for p in psutil.Process(self.wrapper.pid).children() if "jupyterlab" in p.cmdline())

    def kill_jupyterlab(self) -> int:
        """SIGKILL JupyterLab, as a crash; the wrapper sees it die and exits, leaving the kernels running. Its pid."""
        assert self.wrapper is not None
        process = self.jupyterlab()
        process.send_signal(signal.SIGKILL)
        self.wrapper.wait(LAB_START_S)
        return process.pid

    def stop(self) -> None:
        if self.wrapper is not None and self.wrapper.poll() is None:
            stop(self.wrapper)

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        req = urllib.request.Request(
            f"{self.url}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def open_notebook(self, name: str, kernel: str) -> LabKernel:
        """A notebook session with a new kernel (``POST /api/sessions``), its websocket connected."""
        session = self.api(
            "POST",
            "api/sessions",
            {"path": f"{name}.ipynb", "name": f"{name}.ipynb", "type": "notebook", "kernel": {"name": kernel}},
            timeout=SESSION_START_S,
        )
        notebook = LabKernel(self, session["id"], session["kernel"]["id"])
        notebook.connect()
        return notebook


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _write_kernelspec(data_dir: Path, gpus: int) -> None:
    """The notebookos kernelspec asking for ``gpus`` GPUs per cell, in the lab's own Jupyter data folder."""
    import notebookos.kernels

    spec = json.loads((Path(notebookos.kernels.__file__).parent / "kernelspec" / "kernel.json").read_text())
    spec["display_name"] = f"Python 3 (notebookos, {gpus} GPU per cell)"
    spec["metadata"]["kernel_provisioner"]["config"] = {"gpus": gpus}
    folder = data_dir / "kernels" / KERNEL
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1))


@dataclass
class LabKernel:
    """One notebook's kernel, driven as JupyterLab drives it: cells over the kernel's websocket (JSON protocol)."""

    lab: Lab
    session_id: str
    kernel_id: str
    ws: websocket.WebSocket | None = None

    def connect(self) -> None:
        """Open the kernel's websocket (again: after the server was restarted)."""
        self.close()
        url = f"ws://127.0.0.1:{self.lab.port}/api/kernels/{self.kernel_id}/channels?session_id={uuid.uuid4().hex}"
        self.ws = websocket.create_connection(url, header=[f"Authorization: token {self.lab.token}"], timeout=30)

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def run(
        self,
        code: str,
        on_stdout: Callable[[], None] | None = None,
        replica: int | None = None,
        timeout: float = CELL_TIMEOUT_S,
    ) -> CellRun:
        """Send a cell and collect its outputs until its reply and idle status. ``on_stdout`` is called at its
        first stdout output (the cell is running); ``replica`` pins the cell on that replica."""
        assert self.ws is not None
        msg_id = uuid.uuid4().hex
        metadata = {} if replica is None else {"notebookos_replica": replica}
        self.ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "execute_request",
                        "username": "chaos",
                        "session": self.session_id,
                        "version": "5.3",
                        "date": datetime.now(UTC).isoformat(),
                    },
                    "parent_header": {},
                    "metadata": metadata,
                    "channel": "shell",
                    "buffers": [],
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": True,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                }
            )
        )
        run = CellRun(time.monotonic())
        deadline = run.submitted + timeout
        while not run.done:
            msg = self._receive(deadline, run)
            if msg is None or (msg.get("parent_header") or {}).get("msg_id") != msg_id:
                continue
            had_output = bool(run.stdout)
            run.take(msg, time.monotonic())
            if on_stdout is not None and run.stdout and not had_output:
                on_stdout()
        return run

    def _receive(self, deadline: float, run: CellRun) -> dict[str, Any] | None:
        assert self.ws is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Failure(
                f"a cell did not finish within {deadline - run.submitted:.0f} s (its stdout so far "
                f"{run.stdout[-200:]!r}, notices {run.notices})"
            )
        self.ws.settimeout(remaining)
        try:
            raw = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return None
        except (websocket.WebSocketConnectionClosedException, OSError) as err:
            raise Failure(f"the kernel websocket closed under a cell: {err}") from None
        return json.loads(raw) if isinstance(raw, str) else None

    def shutdown(self) -> None:
        self.close()
        with contextlib.suppress(OSError):
            self.lab.api("DELETE", f"api/sessions/{self.session_id}")


# -------------------------------------------------------------------------------------------------- the pool


class Pool:
    """Machines (network namespaces) each running an agent, the cluster service on the bridge, and a lab using it:
    every piece a fault kills, and what starts it again."""

    def __init__(self, hosts: NetworkHosts, workdir: Path) -> None:
        self.hosts = hosts
        self.workdir = workdir
        self.token_file = workdir / "join-token"
        self.service_dir = workdir / "service"
        self.service_dir.mkdir()
        self.service: subprocess.Popen[bytes] | None = None
        self.cluster_file = workdir / "cluster-api.json"  # the service's URL and token, which its restarts keep
        self.url = ""
        self.lab: Lab | None = None

    def start_service(self) -> None:
        """Start the cluster service (again: on its state folder it takes back its hosts and kernels)."""
        self.service, discovery = start_cluster(
            self.service_dir,
            0,
            log_path=self.workdir / "service.log",
            extra_args=(
                "--listen",
                f"{self.hosts.cluster_address}:0",
                "--join-token-file",
                str(self.token_file),
                "--host-timeout",
                str(HOST_TIMEOUT_S),
            ),
        )
        self.cluster_file.write_text(discovery.read_text())
        self.url = json.loads(discovery.read_text())["url"]

    def kill_service(self) -> int:
        """SIGKILL the service, as a crash; its pid."""
        assert self.service is not None
        self.service.kill()
        self.service.wait()
        return self.service.pid

    def start_agent(self, host: Host) -> None:
        self.hosts.spawn(
            host,
            [
                sys.executable,
                "-m",
                "notebookos.server_extension.cli",
                "agent",
                "--join",
                self.url,
                "--join-token-file",
                str(self.token_file),
                "--name",
                host.name,
                "--address",
                host.address,
                "--gpus",
                str(GPUS_PER_MACHINE),
                "--state-dir",
                str(host.state_dir / AGENT_DIR),
            ],
            log_path=self.workdir / f"agent-{host.name}.log",
        )

    def request(self, method: str, path: str) -> Any:
        return cluster_request(str(self.cluster_file), method, path)

    def listed(self) -> dict[str, dict[str, Any]]:
        return {h["name"]: h for h in self.request("GET", "/cluster")["hosts"]}

    def all_machines_active(self) -> bool:
        """Every machine joined, reachable and taking replicas: the pool has room to replace a replica."""
        listed = self.listed()
        return set(listed) == {h.name for h in self.hosts.hosts} and all(
            h["state"] == "active" and h["reachable"] for h in listed.values()
        )

    def replicas(self, kernel_id: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/kernels/{kernel_id}")["replicas"]

    def events(self, since: int) -> list[dict[str, Any]]:
        return self.request("GET", f"/events?since={since}")["events"]

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts.hosts if h.name == name)


@contextlib.contextmanager
def running_pool(workdir: Path, machines: int, gpus: int) -> Iterator[Pool]:
    """The pool with every agent joined and the lab answering; everything stopped on exit."""
    with NetworkHosts(machines) as hosts:
        pool = Pool(hosts, workdir)
        pool.start_service()
        try:
            for host in hosts.hosts:
                pool.start_agent(host)
            wait_for(pool.all_machines_active, f"{machines} agents to join", JOIN_DEADLINE_S)
            pool.lab = Lab(workdir / "lab", pool.url, pool.token_file, gpus)
            pool.lab.start()
            yield pool
        finally:
            if pool.lab is not None:
                pool.lab.stop()
            if pool.service is not None:
                stop(pool.service)


def keep_replica_logs(pool: Pool) -> None:
    """Copy the replicas' logs off the machines' private disks (which go with the run) into the run's folder:
    what a failure is diagnosed from. The disks of machines powered off are gone, as on real hardware."""
    for host in pool.hosts.hosts:
        disk = pool.hosts.disk(host)
        for log in disk.glob(f"{AGENT_DIR}/replicas/*/replica-*/replica.log") if disk is not None else ():
            target = pool.workdir / "replicas" / host.name / f"{log.parent.parent.name}-{log.parent.name}.log"
            target.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copyfile(log, target)


# ---------------------------------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class PlannedFault:
    """A fault of the plan. ``during``: injected once the cell has printed (it runs), else just before it is sent.
    ``target``: 0 the executor (of the running or the last cell), 1 or 2 a standby. ``duration_s``: partitions."""

    kind: str
    cell: int
    during: bool
    target: int
    duration_s: float = 0.0


def plan_faults(notebook: Sequence[NotebookCell], kinds: Sequence[str], count: int, seed: int) -> list[PlannedFault]:
    """``count`` faults spread over the notebook (one in each of ``count`` equal stretches, never at the setup
    cell), kinds taken in turn from a shuffled list holding each kind equally often; the same for the same seed."""
    rng = random.Random(seed * 7919 + 1)
    order = [kinds[i % len(kinds)] for i in range(count)]
    rng.shuffle(order)
    first, stretch = 2, (len(notebook) - 2) / max(count, 1)
    faults = []
    for n, kind in enumerate(order):
        cells = notebook[first + int(n * stretch) : first + int((n + 1) * stretch)]
        if not cells:
            raise ValueError(f"{count} faults do not fit in {len(notebook)} cells")
        slow = [c for c in cells if c.slow]
        during = kind != "jupyter" and bool(slow) and rng.random() < 0.6
        cell = rng.choice(slow if during else cells)
        duration = round(rng.uniform(*PARTITION_S), 1) if kind == "partition" else 0.0
        faults.append(PlannedFault(kind, cell.index, during, rng.choice((0, 0, 1, 2)), duration))
    return faults


@dataclass
class FaultRecord:
    """A fault as injected: on what, when (seconds since the notebook began), how long until the pool and kernel
    were whole again, and what shows that it happened (``confirmed``: the evidence the kind calls for)."""

    planned: PlannedFault
    target: str = ""
    injected_s: float = 0.0
    recovered_s: float | None = None
    events_since: int = 0  # the cluster's event log before the fault
    evidence: dict[str, Any] = field(default_factory=dict)
    confirmed: bool = False


class FrontLog:
    """The kernel front's view of its replicas, from its log (it logs each loss, return, replacement and catch-up).

    The run must not fault a second replica before the front uses the first one (or its replacement) again: with
    one replica lost in its view and a second killed, the front would rightly give up the kernel, a failure the
    harness would have caused. The cluster's "ready" comes up to half a second before the front hears of it."""

    LINE = re.compile(r"notebookos\.front replica (\d+) on \S+ (lost|answers again|replaced by|has caught up)")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.state: dict[int, str] = {}  # replica index -> "lost" | "joining" | "ok"
        self.losses = 0

    def read(self) -> None:
        with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as log:
            log.seek(self.offset)
            data = log.read()
            end = data.rfind(b"\n") + 1
            self.offset += end
            for match in self.LINE.finditer(data[:end].decode(errors="replace")):
                self._take(int(match.group(1)), match.group(2))

    def _take(self, index: int, event: str) -> None:
        if event == "lost":
            self.losses += 1
            self.state[index] = "lost"
        elif event == "replaced by":
            self.state[index] = "joining"
        elif event == "has caught up" or self.state.get(index) != "joining":  # a joining member answering is not back
            self.state[index] = "ok"

    def all_in_use(self) -> bool:
        self.read()
        return all(state == "ok" for state in self.state.values())


class Chaos:
    """Injects the planned faults into one kernel of the pool, one at a time. After each, a thread of its own
    starts again what the fault killed (the notebook goes on meanwhile; after a Jupyter kill the notebook first
    reconnects) and watches until the pool and the kernel are whole again: that time is the fault's recovery."""

    def __init__(self, pool: Pool, kernel: LabKernel, front_log: FrontLog, console: Console) -> None:
        self.pool, self.kernel, self.front_log, self.console = pool, kernel, front_log, console
        self.records: list[FaultRecord] = []
        self.started = time.monotonic()
        self._aftermath: threading.Thread | None = None
        self._aftermath_error: BaseException | None = None
        self._seq = self._latest_seq()

    # -------------------------------------------------------------------------------------- one fault

    def inject(self, fault: PlannedFault) -> float:
        """Inject now (before its cell, or from the cell's first output); the time the user began to wait."""
        record = FaultRecord(fault, injected_s=time.monotonic() - self.started)
        self.records.append(record)
        record.events_since = self._seq
        try:
            repair = getattr(self, f"_{fault.kind}")(record)
        except OSError as err:
            raise Failure(f"injecting {fault}: {err}") from None
        self.console.print(
            f"cell {fault.cell}: {fault.kind} {'while it runs' if fault.during else 'before it'} → {record.target}",
            highlight=False,
        )
        self._aftermath = threading.Thread(
            target=self._recover, args=(record, repair), name="chaos-aftermath", daemon=True
        )
        self._aftermath.start()
        return self.started + record.injected_s

    def _replica(self, record: FaultRecord) -> None:
        replica = self._target_replica(record)
        record.target = f"replica {replica['replica']} on {replica['host']}"
        self.pool.request("POST", f"/kernels/{self.kernel.kernel_id}/replicas/{replica['replica']}/kill")

    def _host(self, record: FaultRecord) -> Callable[[], None]:
        replica = self._target_replica(record)
        host = self.pool.host(replica["host"])
        record.target = f"{host.name} (replica {replica['replica']})"
        self.pool.hosts.kill_host(host)
        return lambda: self._replace_machine(host)

    def _partition(self, record: FaultRecord) -> Callable[[], None]:
        replica = self._target_replica(record)
        host = self.pool.host(replica["host"])
        record.target = f"{host.name} (replica {replica['replica']}) for {record.planned.duration_s:g} s"
        record.evidence["front_losses_before"] = self._front_losses()
        self.pool.hosts.link_down(host)
        return lambda: self._heal(host, record.planned.duration_s)

    def _service(self, record: FaultRecord) -> Callable[[], None]:
        record.evidence["service_pid_before"] = self.pool.kill_service()
        record.target = f"cluster service (pid {record.evidence['service_pid_before']})"
        return self.pool.start_service

    def _jupyter(self, record: FaultRecord) -> None:
        lab = self.pool.lab
        assert lab is not None
        record.evidence["jupyterlab_pid_before"] = lab.kill_jupyterlab()
        record.target = f"JupyterLab (pid {record.evidence['jupyterlab_pid_before']})"
        lab.start()
        record.evidence["jupyterlab_pid_after"] = lab.jupyterlab().pid
        record.evidence["kernels_listed"] = [k["id"] for k in lab.api("GET", "api/kernels")]
        record.evidence["sessions_listed"] = [s["id"] for s in lab.api("GET", "api/sessions")]
        if self.kernel.kernel_id not in record.evidence["kernels_listed"]:
            raise Failure(
                f"the restarted Jupyter server did not restore kernel {self.kernel.kernel_id} "
                f"(it lists {record.evidence['kernels_listed']}); see {lab.log(lab.runs - 1)}"
            )
        self.kernel.connect()

    def _target_replica(self, record: FaultRecord) -> dict[str, Any]:
        """The executor of the running or last cell, or the planned standby. The cluster knows the executor of a
        kernel asking for GPUs (the scheduler chose it); of one asking none, the planned target is a replica
        index, whichever replica ran the cell."""
        replicas = self.pool.replicas(self.kernel.kernel_id)
        executor = next((r for r in replicas if r["role"] == "executor"), None)
        if executor is None:
            target = replicas[record.planned.target]
        else:
            standbys = [r for r in replicas if r is not executor]
            target = executor if record.planned.target == 0 else standbys[record.planned.target - 1]
        record.evidence["replica"] = {
            "index": target["replica"],
            "host": target["host"],
            "pid": target["pid"],
            "role": target["role"],
        }
        return target

    # ---------------------------------------------------------------------------------------- aftermath

    def _recover(self, record: FaultRecord, repair: Callable[[], None] | None) -> None:
        """Repair, then watch until whole; the recovery time and the evidence go into ``record``."""
        try:
            if repair is not None:
                repair()
            self._watch_until_whole(f"the pool and kernel to recover from {record.planned}")
            record.recovered_s = round(time.monotonic() - self.started - record.injected_s, 2)
            self._confirm(record)
        except BaseException as err:  # reported by wait_whole, on the notebook's thread
            self._aftermath_error = err

    def _replace_machine(self, host: Host) -> None:
        """Once the cluster has declared the dead machine lost, a new one comes up at its address (empty disk)."""
        wait_for(
            lambda: host.name not in self.pool.listed(),
            f"{host.name} to be declared lost",
            HOST_TIMEOUT_S + RECOVERY_DEADLINE_S,
        )
        self.pool.hosts.link_up(host)
        self.pool.start_agent(host)

    def _heal(self, host: Host, duration_s: float) -> None:
        """The fault's length, not a wait for anything: the cable stays out ``duration_s``."""
        threading.Event().wait(duration_s)
        self.pool.hosts.link_up(host)

    def wait_whole(self) -> None:
        """Until the last fault's aftermath is over (or, before any, the kernel has three ready replicas): the
        next fault may then take a replica away. Failure if that never comes: the product did not recover."""
        if self._aftermath is None:
            self._watch_until_whole("the kernel's three replicas to be ready")
            return
        self._aftermath.join(HOST_TIMEOUT_S + 3 * RECOVERY_DEADLINE_S)
        if self._aftermath.is_alive():
            raise Failure(f"no recovery from {self.records[-1].planned} in time")
        if self._aftermath_error is not None:
            error, self._aftermath_error = self._aftermath_error, None
            raise Failure(str(error)) if not isinstance(error, Failure) else error
        self._aftermath = None

    def _watch_until_whole(self, what: str) -> None:
        """Every machine active, and three ready replicas that the kernel's front uses. Polled gently
        (``WATCH_S``): the notebook's cells run meanwhile on the same two cores."""
        deadline = time.monotonic() + RECOVERY_DEADLINE_S
        while not self._whole():
            if time.monotonic() > deadline:
                raise Failure(f"timed out after {RECOVERY_DEADLINE_S:.0f} s waiting for {what}")
            time.sleep(WATCH_S)

    def _whole(self) -> bool:
        try:
            if not self.pool.all_machines_active():
                return False
            replicas = self.pool.replicas(self.kernel.kernel_id)
        except (OSError, ValueError):  # the service is starting
            return False
        return len(replicas) == 3 and all(r["state"] == "ready" for r in replicas) and self.front_log.all_in_use()

    # ---------------------------------------------------------------------------------------- evidence

    def _confirm(self, record: FaultRecord) -> None:
        """What the cluster, the front and the processes show of the fault, and whether it is what the kind
        calls for: a replica killed and replaced; a machine declared lost and a replica moved off it; a front
        that lost the cut-off replica; a service with a new pid that restored its state; a new JupyterLab that
        restored the kernel."""
        events = self.pool.events(record.events_since)
        self._seq = max([self._seq, *(e["seq"] for e in events)])
        kernel_events = [
            e for e in events if e.get("kernel") in (None, self.kernel.kernel_id) and e["kind"] not in PER_CELL_EVENTS
        ]
        record.evidence["events"] = [f"{e['kind']} {e.get('host') or ''}".strip() for e in kernel_events]
        kinds = {e["kind"] for e in kernel_events}
        replicas = {r["replica"]: r for r in self.pool.replicas(self.kernel.kernel_id)}
        kind = record.planned.kind
        if kind in ("replica", "host", "partition"):
            before = record.evidence["replica"]
            after = replicas[before["index"]]
            record.evidence["replica_after"] = {"host": after["host"], "pid": after["pid"]}
        if kind == "replica":
            record.confirmed = "replica_killed" in kinds and after["pid"] != before["pid"]
        elif kind == "host":
            record.confirmed = "host_lost" in kinds and after["host"] != before["host"]
        elif kind == "partition":
            record.evidence["front_saw_loss"] = self._front_losses() > record.evidence["front_losses_before"]
            record.evidence["host_declared_lost"] = "host_lost" in kinds
            record.confirmed = record.evidence["front_saw_loss"]
        elif kind == "service":
            record.evidence["service_pid_after"] = self.pool.request("GET", "/cluster")["pid"]
            record.confirmed = (
                "cluster_restored" in kinds
                and record.evidence["service_pid_after"] != record.evidence["service_pid_before"]
            )
        elif kind == "jupyter":
            record.confirmed = (
                record.evidence["jupyterlab_pid_after"] != record.evidence["jupyterlab_pid_before"]
                and self.kernel.kernel_id in record.evidence["kernels_listed"]
                and self.kernel.session_id in record.evidence["sessions_listed"]
            )

    def _front_losses(self) -> int:
        self.front_log.read()
        return self.front_log.losses

    def _latest_seq(self) -> int:
        return max([0, *(e["seq"] for e in self.pool.events(0))])


# ----------------------------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Settings:
    """What one run does: the notebook (cells, seed), the faults (how many, of which kinds, seed), the kernel."""

    cells: int = 300
    faults: int = 20
    kinds: tuple[str, ...] = FAULT_KINDS
    seed: int = 1
    cell_timeout_s: float = CELL_TIMEOUT_S  # a cell running longer is a hang: the run stops there
    gpus: int = 1  # per cell: 1 puts every cell through the scheduler, which names its executor; 0 does not


@dataclass
class Outcome:
    """Everything the run observed; :func:`summarize` turns it into numbers."""

    settings: Settings
    notebook: list[NotebookCell]
    plan: list[PlannedFault]
    reference: list[CellRun] = field(default_factory=list)
    runs: list[CellRun] = field(default_factory=list)
    reference_digest: CellRun | None = None
    digests: dict[str, CellRun] = field(default_factory=dict)  # "kernel", "replica 0", ... -> the digest cell's run
    faults: list[FaultRecord] = field(default_factory=list)
    failure: str | None = None
    wall_s: float = 0.0


def run_chaos(settings: Settings, workdir: Path, console: Console) -> Outcome:
    """The whole run: the pool, the notebook on ipykernel, then on notebookos under the planned faults."""
    notebook = generate_notebook(settings.seed, settings.cells)
    plan = plan_faults(notebook, settings.kinds, settings.faults, settings.seed)
    outcome = Outcome(settings, notebook, plan)
    started = time.monotonic()
    with running_pool(workdir, MACHINES, settings.gpus) as pool, progress_bar(console) as progress:
        assert pool.lab is not None
        reference = pool.lab.open_notebook("reference", REFERENCE_KERNEL)
        try:
            outcome.reference = run_cells(reference, notebook, progress, "ipykernel (reference)")
            outcome.reference_digest = reference.run(DIGEST_CELL)
        finally:
            reference.shutdown()
        kernel = pool.lab.open_notebook("chaos", KERNEL)
        try:
            chaos = Chaos(pool, kernel, FrontLog(pool.lab.log(0)), progress.console)
            outcome.faults = chaos.records
            try:
                chaos.wait_whole()
                run_under_faults(kernel, notebook, plan, chaos, progress, settings.cell_timeout_s, outcome.runs)
                chaos.wait_whole()
                outcome.digests = final_digests(kernel, pool)
            except Failure as failure:
                outcome.failure = str(failure)
        finally:
            keep_replica_logs(pool)  # a kernel's replicas take their folders with them
            kernel.shutdown()
    outcome.wall_s = round(time.monotonic() - started, 1)
    return outcome


def run_cells(kernel: LabKernel, notebook: Sequence[NotebookCell], progress: Progress, label: str) -> list[CellRun]:
    task = progress.add_task(label, total=len(notebook))
    runs = []
    for cell in notebook:
        runs.append(kernel.run(cell.source))
        progress.advance(task)
    return runs


def run_under_faults(
    kernel: LabKernel,
    notebook: Sequence[NotebookCell],
    plan: Sequence[PlannedFault],
    chaos: Chaos,
    progress: Progress,
    cell_timeout_s: float,
    runs: list[CellRun],
) -> None:
    """The notebook, each planned fault injected at its cell once the previous one is over, each cell's run added
    to ``runs`` as it ends (what ran is kept if a cell fails the run). A cell after a fault injected before it
    counts its time from the fault (the user pressed run as it struck)."""
    task = progress.add_task("notebookos under faults", total=len(notebook))
    at = {fault.cell: fault for fault in plan}
    for cell in notebook:
        fault = at.get(cell.index)
        waited_from = None
        if fault is not None:
            chaos.wait_whole()
            if not fault.during:
                waited_from = chaos.inject(fault)
        trigger = _once(lambda fault=fault: chaos.inject(fault)) if fault is not None and fault.during else None
        try:
            run = kernel.run(cell.source, on_stdout=trigger, timeout=cell_timeout_s)
        except Failure as failure:
            raise Failure(f"cell {cell.index} ({cell.kind}): {failure}") from None
        if waited_from is not None:
            run.waited_from = min(waited_from, run.submitted)
        runs.append(run)
        progress.advance(task)


def _once(action: Callable[[], object]) -> Callable[[], None]:
    """``action`` on the first call only: a cell re-run after a failover prints ``start`` again."""
    done = False

    def call() -> None:
        nonlocal done
        if not done:
            done = True
            action()

    return call


def final_digests(kernel: LabKernel, pool: Pool) -> dict[str, CellRun]:
    """The digest cell on the kernel as any cell, then pinned on each replica: every replica must hold the state."""
    digests = {"kernel": kernel.run(DIGEST_CELL)}
    for replica in pool.replicas(kernel.kernel_id):
        digests[f"replica {replica['replica']} ({replica['host']})"] = kernel.run(
            DIGEST_CELL, replica=replica["replica"]
        )
    return digests


# -------------------------------------------------------------------------------------------------- results


def mismatches(outcome: Outcome) -> list[Mismatch]:
    found = [
        m
        for cell, ref, got in zip(outcome.notebook, outcome.reference, outcome.runs)
        for m in compare_cell(cell, ref, got)
    ]
    if outcome.reference_digest is not None:
        for label, digest in outcome.digests.items():
            found += compare_digests(f"final namespace, {label}", outcome.reference_digest, digest)
    return found


def longest_pause(outcome: Outcome) -> dict[str, Any] | None:
    """The cell whose time on notebookos exceeds its time on ipykernel the most."""
    extra = [
        (got.seconds - ref.seconds, cell, got)
        for cell, ref, got in zip(outcome.notebook, outcome.reference, outcome.runs)
    ]
    if not extra:
        return None
    seconds, cell, got = max(extra, key=lambda e: e[0])
    fault = next((f for f in outcome.plan if f.cell == cell.index), None)
    return {
        "extra_s": round(seconds, 2),
        "cell": cell.index,
        "cell_s": round(got.seconds, 2),
        "fault": None if fault is None else f"{fault.kind} {'during' if fault.during else 'before'} the cell",
    }


def first_mismatch(outcome: Outcome, found: Sequence[Mismatch]) -> dict[str, Any] | None:
    """The earliest cell that differs and the last fault before it: where to look first, since a wrong state
    makes every later cell that reads it differ too."""
    cells = [m for m in found if m.cell != FINAL]
    if not cells:
        return None
    first = min(cells, key=lambda m: m.cell)
    fault = max((f for f in outcome.plan if f.cell <= first.cell), key=lambda f: f.cell, default=None)
    return {
        "cell": first.cell,
        "kind": first.kind,
        "what": first.what,
        "after_fault": None
        if fault is None
        else f"{fault.kind} {'during' if fault.during else 'before'} cell {fault.cell}",
    }


def summarize(outcome: Outcome) -> dict[str, Any]:
    """The numbers of the run: the JSON document and what the tables print."""
    found = mismatches(outcome)
    injected = Counter(r.planned.kind for r in outcome.faults)
    runs = outcome.runs
    return {
        "settings": asdict(outcome.settings) | {"machines": MACHINES, "host_timeout_s": HOST_TIMEOUT_S},
        "cells_planned": len(outcome.notebook),
        "cells_run": len(runs),
        "cell_kinds": dict(Counter(c.kind for c in outcome.notebook)),
        "faults_planned": len(outcome.plan),
        "faults_injected": dict(injected),
        "faults_confirmed": sum(r.confirmed for r in outcome.faults),
        "cells_rerun": sum(run.reruns > 0 for run in runs),
        "reruns": sum(run.reruns for run in runs),
        "cells_waiting_for_service": sum(any(SERVICE_WAIT_NOTICE in n for n in run.notices) for run in runs),
        "notices": sum(len(run.notices) for run in runs),
        "mismatches": len(found),
        "mismatched_cells": len({m.cell for m in found if m.cell != FINAL}),
        "mismatches_by_cell_kind": dict(Counter(m.kind for m in found)),
        "first_mismatch": first_mismatch(outcome, found),
        "mismatch_details": [asdict(m) for m in found[:50]],
        "longest_pause": longest_pause(outcome),
        "longest_cell_s": {
            "notebookos": round(max((r.seconds for r in runs), default=0.0), 2),
            "ipykernel": round(max((r.seconds for r in outcome.reference), default=0.0), 2),
        },
        "faults": [fault_summary(r, outcome) for r in outcome.faults],
        "failure": outcome.failure,
        "wall_s": outcome.wall_s,
    }


def fault_summary(record: FaultRecord, outcome: Outcome) -> dict[str, Any]:
    """A fault, with the time its cell took on notebookos and how much longer that was than on ipykernel."""
    index = record.planned.cell
    cell_s = outcome.runs[index].seconds if index < len(outcome.runs) else None
    return {
        "kind": record.planned.kind,
        "cell": index,
        "during_cell": record.planned.during,
        "target": record.target,
        "injected_s": round(record.injected_s, 2),
        "recovered_s": record.recovered_s,
        "cell_s": None if cell_s is None else round(cell_s, 2),
        "cell_extra_s": None if cell_s is None else round(cell_s - outcome.reference[index].seconds, 2),
        "confirmed": record.confirmed,
        "evidence": record.evidence,
    }


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="Chaos run: notebookos under faults vs plain ipykernel", title_justify="left")
    table.add_column("what")
    table.add_column("result", justify="right")
    pause, first = summary["longest_pause"], summary["first_mismatch"]
    rows = [
        ("cells run (planned)", f"{summary['cells_run']} ({summary['cells_planned']})"),
        ("faults injected (confirmed)", f"{sum(summary['faults_injected'].values())} ({summary['faults_confirmed']})"),
        *((f"  {kind}", str(n)) for kind, n in sorted(summary["faults_injected"].items())),
        ("cells re-run after a failover", str(summary["cells_rerun"])),
        ("cells that waited for the cluster service", str(summary["cells_waiting_for_service"])),
        ("mismatches: output fields and final variables (target 0)", str(summary["mismatches"])),
        ("  cells with a mismatch", str(summary["mismatched_cells"])),
        *(
            (f"  {kind if kind.startswith('final') else f'in {kind} cells'}", str(n))
            for kind, n in sorted(summary["mismatches_by_cell_kind"].items())
        ),
        (
            "first mismatch",
            "—"
            if first is None
            else f"cell {first['cell']} ({first['kind']}, {first['what']}), after {first['after_fault'] or 'no fault'}",
        ),
        (
            "longest pause: cell time over ipykernel's",
            "—"
            if pause is None
            else f"{pause['extra_s']:.2f} s (cell {pause['cell']}, {pause['fault'] or 'no fault'})",
        ),
        (
            "longest cell, notebookos / ipykernel",
            f"{summary['longest_cell_s']['notebookos']:.2f} s / {summary['longest_cell_s']['ipykernel']:.2f} s",
        ),
        ("wall time", f"{summary['wall_s']:.0f} s"),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def faults_table(summary: dict[str, Any]) -> Table:
    table = Table(
        title="Faults (seconds since the notebook began; recovered: until 3 ready replicas in use)",
        title_justify="left",
    )
    numeric = ("cell", "at", "recovered", "cell time", "over ipykernel")
    for column in ("cell", "kind", "when", "target", *numeric[1:], "confirmed", "cluster events"):
        table.add_column(column, justify="right" if column in numeric else "left", overflow="fold")
    for f in summary["faults"]:
        table.add_row(
            str(f["cell"]),
            f["kind"],
            "during" if f["during_cell"] else "before",
            f["target"],
            f"{f['injected_s']:.1f}",
            _secs(f["recovered_s"]),
            _secs(f["cell_s"]),
            _secs(f["cell_extra_s"]),
            "yes" if f["confirmed"] else "[red]no[/red]",
            ", ".join(f["evidence"].get("events", [])),
        )
    return table


def _secs(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def mismatch_table(summary: dict[str, Any]) -> Table:
    table = Table(title="Mismatches (first 50)", title_justify="left")
    for column in ("cell", "kind", "what", "ipykernel", "notebookos", "note, notices"):
        table.add_column(column, overflow="fold")
    for m in summary["mismatch_details"]:
        table.add_row(
            "final" if m["cell"] == FINAL else str(m["cell"]),
            m["kind"],
            m["what"],
            m["expected"][:120],
            m["got"][:120],
            " ".join([m["note"], *m["notices"]]).strip()[:160],
        )
    return table


def plot(path: Path, outcome: Outcome) -> None:
    """Time of every cell on both kernels (log scale), each fault as a line at its cell, mismatches as crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(14, 5), constrained_layout=True)
    ax.plot([r.seconds for r in outcome.reference], ".", color="0.6", markersize=3, label="ipykernel")
    ax.plot([r.seconds for r in outcome.runs], ".", color="tab:blue", markersize=3, label="notebookos under faults")
    colors = dict(zip(FAULT_KINDS, ("tab:orange", "tab:red", "tab:purple", "tab:green", "tab:brown")))
    for kind in sorted({f.planned.kind for f in outcome.faults}):
        for n, f in enumerate(r for r in outcome.faults if r.planned.kind == kind):
            ax.axvline(
                f.planned.cell,
                color=colors[kind],
                alpha=0.6,
                linestyle="--" if f.planned.during else "-",
                label=f"{kind} fault" if n == 0 else None,
            )
    wrong = sorted({m.cell for m in mismatches(outcome) if m.cell != FINAL})
    if wrong:
        ax.plot(wrong, [outcome.runs[c].seconds for c in wrong], "x", color="red", label="mismatch")
    stopped = f"; stopped at cell {len(outcome.runs)}, the product failed" if outcome.failure else ""
    ax.set(
        yscale="log",
        xlabel="cell (dashed: fault while the cell ran; solid: just before it)",
        ylabel="s from submission (or fault) to idle",
        title=f"Chaos run: {len(outcome.runs)} cells, {len(outcome.faults)} faults, {outcome.settings.gpus} GPU "
        f"per cell (seed {outcome.settings.seed}){stopped}",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_summary(summary: dict[str, Any], console: Console) -> None:
    tables = [summary_table(summary), faults_table(summary)]
    if summary["mismatch_details"]:
        tables.append(mismatch_table(summary))
    print_tables(console, *tables)
    if summary["failure"]:
        console.print(f"[red]the product failed under the run: {summary['failure']}[/red]", highlight=False)


def report(outcome: Outcome, console: Console, out: Path) -> dict[str, Any]:
    """Print the tables, write the JSON summary and the PNG; the summary."""
    summary = summarize(outcome)
    print_summary(summary, console)
    out.mkdir(parents=True, exist_ok=True)
    (out / "chaos.json").write_text(
        json.dumps(summary | {"machine": machine_context()}, indent=1) + "\n", encoding="utf-8"
    )
    plot(out / "chaos.png", outcome)
    console.print(f"wrote {out / 'chaos.json'} and {out / 'chaos.png'}", highlight=False)
    return summary


# ----------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=300, help="cells of the notebook (default 300)")
    parser.add_argument("--faults", type=int, default=20, help="faults to inject (default 20)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the notebook and the faults (default 1)")
    parser.add_argument(
        "--kinds",
        type=_kinds,
        default=FAULT_KINDS,
        help=f"fault kinds, comma-separated (default {','.join(FAULT_KINDS)})",
    )
    parser.add_argument(
        "--gpus",
        type=int,
        choices=(0, 1),
        default=1,
        help="GPUs each notebookos cell asks for (default 1: through the scheduler; 0: none, and "
        "faults aimed at the executor hit a replica by index, since the cluster does not know it)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and PNG go")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder with every log")
    return parser.parse_args(argv)


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"kinds are among {', '.join(FAULT_KINDS)}; not {', '.join(unknown)}")
    return kinds


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    skipped = available()
    if skipped:
        console.print(f"[yellow]the chaos run needs network namespaces: {skipped}[/yellow]", highlight=False)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-ups: processes, namespaces
    workdir = Path(tempfile.mkdtemp(prefix="notebookos-chaos-"))
    isolate_jupyter(workdir / "jupyter")
    load_start = load_snapshot()
    try:
        settings = Settings(args.cells, args.faults, args.kinds, args.seed, gpus=args.gpus)
        outcome = run_chaos(settings, workdir, console)
    except BaseException:
        console.print(f"[red]the run broke; logs are in {workdir}[/red]", highlight=False)
        raise
    summary = report(outcome, console, args.out)
    console.print(
        f"load average at start {load_start['loadavg']}, at end {load_snapshot()['loadavg']}", highlight=False
    )
    failed = bool(summary["mismatches"] or outcome.failure)
    if args.keep or failed:
        console.print(f"logs are in {workdir}", highlight=False)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
