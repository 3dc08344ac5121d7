"""DeviceBinder: park a namespace's device tensors between cells and bring them back, keeping identity.

Most tests run twice: with the CPU stand-in (``compute_device_type="cpu"``: parking copies to fresh host memory and
binding copies back, so moves show as changed data pointers and counters) and on a real GPU (marked ``gpu``,
skipped where there is none). Where the two differ, `moved()` and `on_compute()` say what "moved" means.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import gc
import types

import numpy as np
import pytest
import torch

from notebookos.kernels import gpu_binding
from notebookos.kernels.gpu_binding import UNREACHABLE, BindTimings, DeviceBinder
from notebookos.kernels.gpu_request import cell_gpus, parse_gpus_magic
from notebookos.replication.namespace import NamespaceTracker
from notebookos.replication.object_store import LocalDirectoryStore

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU: torch.cuda.is_available() is False here")
MODES = [
    pytest.param("cpu", id="cpu-stand-in"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, needs_cuda]),
]
PARK = torch.device("cpu")


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def device(mode: str) -> torch.device:
    """Where cells create their tensors: the bound device."""
    return torch.device("cuda", 0) if mode == "cuda" else torch.device("cpu")


@pytest.fixture
def binder(mode: str) -> DeviceBinder:
    return DeviceBinder(compute_device_type=mode)


def where(t: torch.Tensor) -> tuple[torch.device, int]:
    return t.device, t.untyped_storage().data_ptr()


def moved(before: tuple[torch.device, int], t: torch.Tensor, to: torch.device) -> bool:
    """`t` now lives in other memory, on `to` (with the stand-in both ends are the CPU: only the pointer tells)."""
    return t.device.type == to.type and where(t) != before


def make_training_namespace(device: torch.device, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 2)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = torch.randn(32, 8, device=device)
    target = torch.randn(32, 2, device=device)
    return {"model": model, "opt": opt, "data": data, "target": target}


def train_step(ns: dict) -> None:
    ns["opt"].zero_grad()
    loss = torch.nn.functional.mse_loss(ns["model"](ns["data"]), ns["target"])
    loss.backward()
    ns["opt"].step()


def all_tensors(ns: dict) -> list[torch.Tensor]:
    model, opt = ns["model"], ns["opt"]
    tensors = [ns["data"], ns["target"], *model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [v for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return tensors


# -- identity, values, movement -------------------------------------------------------------------------------------


def test_cycle_keeps_identity_and_values_and_moves_the_data(binder: DeviceBinder, device: torch.device) -> None:
    ns = make_training_namespace(device)
    binder.bind(ns, (0,))
    train_step(ns)
    tensors = all_tensors(ns)
    ids = [id(t) for t in tensors]
    values = [t.detach().cpu().clone() for t in tensors]
    before = [where(t) for t in tensors]
    compute_tensors = [t for t in tensors if t.device.type == device.type]

    timings = binder.release(ns)

    assert [id(t) for t in all_tensors(ns)] == ids
    for t, b, v in zip(tensors, before, values, strict=True):
        assert torch.equal(t.detach().cpu(), v)
        if b[0].type == device.type:
            assert moved(b, t, PARK)
    assert timings.moved_objects == len(compute_tensors)
    parked = [where(t) for t in tensors]

    binder.bind(ns, (0,))

    assert [id(t) for t in all_tensors(ns)] == ids
    for t, b, p, v in zip(tensors, before, parked, values, strict=True):
        assert torch.equal(t.detach().cpu(), v)
        if b[0].type == device.type:
            assert moved(p, t, device) and t.device == b[0]
    assert binder.timings.restored_objects == len(compute_tensors)
    assert binder.timings.restored_bytes == timings.moved_bytes


def test_optimizer_keeps_the_models_parameters_and_trains_identically(binder: DeviceBinder, device: torch.device):
    """A run parked and unparked between every step ends bit-identical to one never parked."""
    cycled, plain = make_training_namespace(device, seed=1), make_training_namespace(device, seed=1)
    for _ in range(5):
        binder.bind(cycled, (0,))
        train_step(cycled)
        binder.release(cycled)
        train_step(plain)
    binder.bind(cycled, (0,))
    train_step(cycled)
    train_step(plain)

    model, opt = cycled["model"], cycled["opt"]
    params = list(model.parameters())
    assert all(a is b for a, b in zip(opt.param_groups[0]["params"], params, strict=True))
    assert set(map(id, opt.state)) == set(map(id, params))
    for a, b in zip(model.state_dict().values(), plain["model"].state_dict().values(), strict=True):
        if device.type == "cpu":
            assert torch.equal(a, b)
        else:  # the same kernels on the same data; allow for a cuBLAS algorithm choice that depends on alignment
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for p in params:
        assert p.device == device and p.grad.device == device and opt.state[p]["exp_avg"].device == device


def test_gradients_move_with_their_parameters(binder: DeviceBinder, device: torch.device) -> None:
    ns = make_training_namespace(device)
    binder.bind(ns, (0,))
    train_step(ns)
    grads = {id(p): (p.grad, where(p.grad)) for p in ns["model"].parameters()}
    binder.release(ns)
    for p in ns["model"].parameters():
        grad, before = grads[id(p)]
        assert p.grad is grad and moved(before, grad, PARK)
        assert p.requires_grad and p.is_leaf and isinstance(p, torch.nn.Parameter)


def test_shared_references_and_views_stay_shared(binder: DeviceBinder, device: torch.device) -> None:
    a = torch.arange(1000, dtype=torch.float32, device=device)
    hidden_base = torch.ones(250, device=device)
    ns = {"a": a, "b": a, "v": a[10:20], "pair": (a, a), "slice_only": hidden_base[5:7]}
    del hidden_base
    binder.bind(ns, (0,))

    timings = binder.release(ns)

    # a (also b and pair), v, slice_only and its base: one storage of 4000 bytes, one of 1000
    assert (timings.moved_objects, timings.moved_bytes) == (4, 5000)
    assert ns["a"] is ns["b"] is ns["pair"][0] is ns["pair"][1]
    assert ns["slice_only"]._base.device == PARK  # the whole storage left the device, not just the slice

    binder.bind(ns, (0,))

    assert (binder.timings.restored_objects, binder.timings.restored_bytes) == (4, 5000)
    assert ns["v"]._base is ns["a"] and ns["v"].device == device
    assert ns["v"].untyped_storage().data_ptr() == ns["a"].untyped_storage().data_ptr()
    ns["v"].fill_(-1)  # a write through the view still shows in its base
    assert torch.equal(ns["a"][10:20].cpu(), torch.full((10,), -1.0))
    assert ns["slice_only"].untyped_storage().data_ptr() == ns["slice_only"]._base.untyped_storage().data_ptr()


def test_tied_weights_stay_one_parameter(binder: DeviceBinder, device: torch.device) -> None:
    emb = torch.nn.Embedding(10, 4).to(device)
    head = torch.nn.Linear(4, 10, bias=False).to(device)
    head.weight = emb.weight
    ns = {"model": torch.nn.ModuleDict({"emb": emb, "head": head})}
    binder.bind(ns, (0,))
    assert binder.release(ns).moved_objects == 1
    binder.bind(ns, (0,))
    assert ns["model"]["head"].weight is ns["model"]["emb"].weight and emb.weight.device == device


def test_counts_are_exact(binder: DeviceBinder, device: torch.device) -> None:
    t = torch.zeros(1000, device=device)
    lin = torch.nn.Linear(4, 3).to(device)  # weight 48 bytes, bias 12
    ns = {"t": t, "again": t, "view": t[:10], "lin": lin, "n": 3, "s": "text"}
    binder.bind(ns, (0,))
    timings = binder.release(ns)
    assert (timings.moved_objects, timings.moved_bytes) == (4, 4000 + 48 + 12)
    binder.bind(ns, (0,))
    assert (binder.timings.restored_objects, binder.timings.restored_bytes) == (4, 4060)
    assert binder.release(ns).moved_objects == 4  # each cycle parks everything again


def test_timings_are_recorded_per_execution(binder: DeviceBinder, device: torch.device) -> None:
    ns = {"t": torch.ones(1 << 16, device=device)}
    assert binder.timings is None and binder.bound is None
    binder.bind(ns, (0,))
    assert binder.bound == (0,)
    current = binder.timings
    assert current.release_s is None and current.bind_s >= 0
    timings = binder.release(ns)
    assert binder.bound is None and binder.timings is timings
    assert timings.bind_s == current.bind_s and timings.release_s > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        timings.release_s = 0.0  # type: ignore[misc]


def test_version_counters_are_untouched(binder: DeviceBinder, device: torch.device) -> None:
    """Moves go through `.data`, so `_version` stays: the tracker sees the move only in pointer and device."""
    t = torch.ones(4, device=device)
    t.add_(1)
    ns = {"t": t}
    binder.bind(ns, (0,))
    binder.release(ns)
    binder.bind(ns, (0,))
    assert t._version == 1


# -- %gpus 0 --------------------------------------------------------------------------------------------------------


def test_binding_no_devices_touches_nothing(binder: DeviceBinder, device: torch.device) -> None:
    ns = make_training_namespace(device)
    binder.bind(ns, (0,))
    train_step(ns)
    first = binder.release(ns)
    parked = {id(t): where(t) for t in all_tensors(ns)}

    binder.bind(ns, ())  # a `%gpus 0` cell
    assert binder.bound == ()
    assert {id(t): where(t) for t in all_tensors(ns)} == parked
    assert (binder.timings.restored_objects, binder.timings.restored_bytes) == (0, 0)
    timings = binder.release(ns)
    assert (timings.moved_objects, timings.moved_bytes) == (0, 0)
    assert {id(t): where(t) for t in all_tensors(ns)} == parked

    binder.bind(ns, (0,))  # the next cell with a GPU gets everything back
    assert binder.timings.restored_objects == first.moved_objects
    assert all(p.device == device for p in ns["model"].parameters())


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU-only host path; this machine has CUDA")
def test_cuda_binder_on_a_host_without_cuda_is_accounting_only() -> None:
    """What the kernel does on a host with virtual GPUs: nothing is on CUDA, so nothing moves or is copied."""
    ns = make_training_namespace(torch.device("cpu"))
    binder = DeviceBinder()
    binder.bind(ns, (3,))
    train_step(ns)
    before = {id(t): where(t) for t in all_tensors(ns)}
    timings = binder.release(ns)
    assert (timings.moved_objects, timings.moved_bytes, timings.leftover_bytes) == (0, 0, None)
    assert dict(timings.unparked) == {}
    binder.bind(ns, (1, 2))
    assert {id(t): where(t) for t in all_tensors(ns)} == before


@pytest.mark.skipif(torch.cuda.is_initialized(), reason="this process has initialized CUDA: device tensors may exist")
def test_a_cell_without_gpus_walks_no_namespace_before_cuda_exists_in_the_process(monkeypatch) -> None:
    """Every cell of a replica that has loaded torch is bound and released, most with no device: until the process
    initializes CUDA no tensor can be on one, so the release looks at nothing (the walk of a large namespace was
    paid by every trivial cell). A cell given devices still walks, to park what it made there."""
    walks: list[int] = []
    real_walk = DeviceBinder._walk
    monkeypatch.setattr(DeviceBinder, "_walk", lambda self, ns: walks.append(len(ns)) or real_walk(self, ns))
    ns = make_training_namespace(torch.device("cpu"))
    binder = DeviceBinder()
    binder.bind(ns, ())
    train_step(ns)
    timings = binder.release(ns)
    assert walks == [] and (timings.moved_objects, timings.leftover_bytes, dict(timings.unparked)) == (0, None, {})
    binder.bind(ns, (0,))
    binder.release(ns)
    assert walks == [len(ns)]


# -- reachability ---------------------------------------------------------------------------------------------------


class Holder:
    def __init__(self, value: object) -> None:
        self.value = value


class Slotted:
    __slots__ = ("value", "__private", "unset")

    def __init__(self, value: object) -> None:
        self.value = value
        self.__private = value * 2


@dataclasses.dataclass
class Config:
    weights: torch.Tensor
    note: str = "x"


class WithMask(torch.nn.Module):
    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2).to(device)
        self.mask = torch.ones(2, device=device)  # a plain attribute, not a registered buffer
        self.register_buffer("scale", torch.full((2,), 3.0, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.mask * self.scale


def test_everything_reachable_is_parked(binder: DeviceBinder, device: torch.device) -> None:
    def t(n: int) -> torch.Tensor:
        return torch.full((3,), float(n), device=device)

    key = t(7)
    point = collections.namedtuple("Point", "x y")
    ns = {
        "nested": [{"k": (t(1), [t(2)])}],
        "a_set": {t(3)},
        "frozen": frozenset({t(4)}),
        "dq": collections.deque([t(5)]),
        "obj": Holder(Holder(t(6))),
        "keyed": {key: "a tensor as a dict key"},
        "slotted": Slotted(t(8)),
        "config": Config(t(9)),
        "named": point(t(10), 0),
        "ordered": collections.OrderedDict(x=t(11)),
        "default": collections.defaultdict(list, x=[t(12)]),
        "partial": functools.partial(torch.add, t(13)),
        "module": WithMask(device),
        "scaler_like": types.SimpleNamespace(scale=t(14)),
    }
    tensors = [
        ns["nested"][0]["k"][0], ns["nested"][0]["k"][1][0], next(iter(ns["a_set"])), next(iter(ns["frozen"])),
        ns["dq"][0], ns["obj"].value.value, key, ns["slotted"].value, ns["slotted"]._Slotted__private,
        ns["config"].weights, ns["named"].x, ns["ordered"]["x"], ns["default"]["x"][0], ns["partial"].args[0],
        ns["module"].lin.weight, ns["module"].lin.bias, ns["module"].mask, ns["module"].scale, ns["scaler_like"].scale,
    ]  # fmt: skip
    before = [where(x) for x in tensors]
    binder.bind(ns, (0,))
    timings = binder.release(ns)
    assert [moved(b, x, PARK) for b, x in zip(before, tensors, strict=True)] == [True] * len(tensors)
    assert timings.moved_objects == len(tensors)
    binder.bind(ns, (0,))
    assert all(x.device == device for x in tensors)
    assert ns["module"](torch.ones(1, 2, device=device)).shape == (1, 2)


def test_cycles_terminate(binder: DeviceBinder, device: torch.device) -> None:
    loop: list = [torch.ones(2, device=device)]
    loop.append(loop)
    a, b = Holder(None), Holder(torch.ones(2, device=device))
    a.value, b.other = b, a  # type: ignore[attr-defined]
    d: dict = {}
    d["self"] = d
    ns = {"loop": loop, "a": a, "d": d}
    binder.bind(ns, (0,))
    assert binder.release(ns).moved_objects == 2


def test_walk_bounds_stop_the_walk_without_failing(mode: str, device: torch.device) -> None:
    deep: object = torch.ones(1, device=device)
    for _ in range(10):
        deep = [deep]
    ns = {"shallow": [[torch.ones(1, device=device)]], "deep": deep}
    binder = DeviceBinder(compute_device_type=mode, max_depth=4)
    binder.bind(ns, (0,))
    timings = binder.release(ns)
    assert timings.moved_objects == 1  # the shallow one; the deep one stays where it is
    if mode == "cuda":  # it is still allocated, and the report says which name may hold it
        assert timings.leftover_bytes > 0 and "deep" in timings.unparked
    else:  # nothing to measure with the stand-in, so nothing is blamed
        assert timings.leftover_bytes is None and dict(timings.unparked) == {}

    many = DeviceBinder(compute_device_type=mode, max_visits=5)
    ns = {f"t{i}": torch.ones(1, device=device) for i in range(10)}
    many.bind(ns, (0,))
    assert many.release(ns).moved_objects == 5


def closure_over(t: torch.Tensor):
    return lambda: t


def test_code_classes_modules_and_the_kernels_own_objects_are_not_walked(binder: DeviceBinder, device: torch.device):
    class WithClassAttribute:
        table = torch.ones(2, device=device)

    pymodule = types.ModuleType("fake")
    pymodule.t = torch.ones(2, device=device)  # type: ignore[attr-defined]
    infra = type("Shell", (), {"__module__": "IPython.core.fake"})()
    infra.t = torch.ones(2, device=device)
    ns = {"f": closure_over(torch.ones(2, device=device)), "C": WithClassAttribute, "m": pymodule, "exit": infra}
    binder.bind(ns, (0,))
    assert binder.release(ns).moved_objects == 0


def test_special_tensors_keep_what_they_are(binder: DeviceBinder, device: torch.device) -> None:
    z = torch.randn(4, dtype=torch.complex64, device=device)
    with torch.inference_mode():
        frozen = torch.arange(3, device=device)
    leaf = torch.ones(3, device=device, requires_grad=True)
    ns = {
        "conj": z.conj(),
        "neg": torch._neg_view(z.conj().imag) if z.conj().imag.is_neg() else -z.real,
        "sparse": torch.eye(3, device=device).to_sparse(),
        "ints": torch.arange(5, dtype=torch.int64, device=device),
        "empty": torch.empty(0, device=device),
        "frozen": frozen,
        "leaf": leaf,
        "nonleaf": leaf * 2,
        "strided": torch.arange(12.0, device=device).reshape(3, 4).t(),
    }
    values = {k: (v.to_dense() if v.is_sparse else v).detach().cpu().resolve_conj().resolve_neg().clone()
              for k, v in ns.items()}  # fmt: skip
    flags = {k: (v.is_conj(), v.is_neg(), v.layout, v.dtype, v.requires_grad, v.stride()) for k, v in ns.items()
             if not v.is_sparse}  # fmt: skip
    grad_fn = ns["nonleaf"].grad_fn
    binder.bind(ns, (0,))
    timings = binder.release(ns)
    binder.bind(ns, (0,))
    assert dict(timings.unparked) == {}
    assert timings.moved_objects == len(ns) + 2  # and the bases of three views: z, and the arange under "strided"
    for k, v in ns.items():
        assert v.device == device or (k == "empty" and v.device.type == device.type)
        assert torch.equal((v.to_dense() if v.is_sparse else v).detach().cpu().resolve_conj().resolve_neg(), values[k])
        if not v.is_sparse:
            assert (v.is_conj(), v.is_neg(), v.layout, v.dtype, v.requires_grad, v.stride()) == flags[k]
    assert ns["nonleaf"].grad_fn is grad_fn


# -- bookkeeping and misuse -----------------------------------------------------------------------------------------


def test_a_parked_tensor_the_user_deleted_is_forgotten(binder: DeviceBinder, device: torch.device) -> None:
    ns = {"keep": torch.ones(10, device=device), "drop": torch.ones(20, device=device)}
    binder.bind(ns, (0,))
    binder.release(ns)
    del ns["drop"]
    gc.collect()
    binder.bind(ns, (0,))
    assert (binder.timings.restored_objects, binder.timings.restored_bytes) == (1, 40)


def test_a_parked_tensor_bind_comes_back_even_if_renamed_or_nested(binder: DeviceBinder, device: torch.device):
    t = torch.ones(10, device=device)
    ns = {"t": t}
    binder.bind(ns, (0,))
    binder.release(ns)
    ns.clear()
    ns["box"] = [Holder(t)]  # a %gpus 0 cell reshuffled things
    binder.bind(ns, ())
    binder.release(ns)
    binder.bind(ns, (0,))
    assert t.device == device and binder.timings.restored_objects == 1


class Stubborn(torch.Tensor):
    """A tensor subclass that refuses to move."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.to:
            raise RuntimeError("this tensor cannot move")
        return super().__torch_function__(func, types, args, kwargs or {})


def test_release_reports_what_it_could_not_park_and_parks_the_rest(binder: DeviceBinder, device: torch.device):
    stuck = torch.Tensor._make_subclass(Stubborn, torch.ones(4, device=device))
    ns = {"ok": torch.ones(4, device=device), "stuck": stuck}
    binder.bind(ns, (0,))
    timings = binder.release(ns)
    assert timings.moved_objects == 1 and ns["ok"].device == PARK
    assert list(timings.unparked) == ["stuck"] and "this tensor cannot move" in timings.unparked["stuck"]


def test_a_failed_bind_stays_bound_so_release_parks_back(binder: DeviceBinder, device: torch.device, monkeypatch):
    ns = {"a": torch.ones(4, device=device), "b": torch.ones(8, device=device)}
    binder.bind(ns, (0,))
    binder.release(ns)
    real = gpu_binding._relocate

    def flaky(tensors, target):
        if tensors[0] is ns["b"]:
            return 0, {id(t): torch.OutOfMemoryError("no room") for t in tensors}
        return real(tensors, target)

    monkeypatch.setattr(gpu_binding, "_relocate", flaky)
    with pytest.raises(RuntimeError, match="1 parked tensor.*OutOfMemoryError: no room"):
        binder.bind(ns, (0,))
    assert binder.bound == (0,) and ns["a"].device == device and ns["b"].device == PARK
    monkeypatch.setattr(gpu_binding, "_relocate", real)
    assert binder.release(ns).moved_objects == 1  # a goes back; b was never unparked
    binder.bind(ns, (0,))
    assert binder.timings.restored_objects == 2 and ns["b"].device == device


def test_misuse_is_refused(binder: DeviceBinder) -> None:
    with pytest.raises(RuntimeError, match="without a bind"):
        binder.release({})
    binder.bind({}, (0,))
    with pytest.raises(RuntimeError, match="already bound"):
        binder.bind({}, (0,))
    binder.release({})
    for bad in [(-1,), (0, 0), (True,), ("0",), (1.5,)]:
        with pytest.raises(ValueError):
            binder.bind({}, bad)
        assert binder.bound is None
    binder.bind({}, (np.int64(0),))
    assert binder.bound == (0,)


def test_only_cuda_or_the_cpu_stand_in_can_compute() -> None:
    with pytest.raises(ValueError, match="compute_device_type"):
        DeviceBinder(compute_device_type="meta")
    for park in ("cuda:1", "meta"):
        with pytest.raises(ValueError, match="park_device"):
            DeviceBinder(park_device=park)


# -- the tracker's view ---------------------------------------------------------------------------------------------


def test_tracker_sees_no_change_when_bind_and_release_wrap_snapshot_and_capture(binder, device, tmp_path) -> None:
    """The order the kernel must use: bind, snapshot, cell, capture, release. The wrong order re-captures every
    moved tensor, because its fingerprint holds its data pointer and device."""
    tracker = NamespaceTracker(LocalDirectoryStore(tmp_path / "objects"))
    ns: dict = {"__name__": "__main__", "device": device}
    code = "import torch\nmodel = torch.nn.Linear(3, 3).to(device)\nbig = torch.zeros(100_000, device=device)\n"

    def cell(source: str, count: int):
        binder.bind(ns, (0,))
        tracker.snapshot(ns)
        exec(source, ns)
        delta = tracker.capture(ns, count)
        binder.release(ns)
        return delta

    assert set(cell(code, 1).assigned) >= {"model", "big"}
    assert cell("x = 1", 2).assigned == ("x",)
    assert cell("big.add_(1)", 3).assigned == ("big",)  # a real change is still seen

    tracker.snapshot(ns)  # wrong: snapshot while parked, capture while bound
    binder.bind(ns, (0,))
    exec("y = 2", ns)
    wrong = tracker.capture(ns, 4)
    binder.release(ns)
    assert set(wrong.assigned) == {"y", "model", "big"}


# -- %gpus ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [("%gpus 2", 2), ("%gpus", None), ("  %gpus   0  ", 0), ("1", 1), ("", None), ("   ", None), ("%gpus 08", 8)],
)
def test_parse_gpus_magic(line: str, expected: int | None) -> None:
    assert parse_gpus_magic(line) == expected


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("%gpus -1", "cannot be negative"),
        ("-2", "cannot be negative"),
        ("%gpus 1.5", "whole number"),
        ("%gpus two", "whole number"),
        ("%gpus 0x2", "whole number"),
        ("%gpus +1", "whole number"),
        ("%gpus 1 2", "one number"),
        ("%gpus2", "not a %gpus line"),
        ("%gpus ³", "whole number"),
    ],
)
def test_parse_gpus_magic_rejects_bad_input(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_gpus_magic(line)


@pytest.mark.parametrize(
    ("code", "before", "expected"),
    [
        ("x = 1", 2, (2, 2)),  # no %gpus line: the kernel's request
        ("%gpus 3\nx = 1", 1, (3, 3)),  # %gpus N on top asks N for this cell and the next
        ("\n  %gpus 0\n\n", 2, (0, 0)),  # only %gpus lines: no GPU for the cell itself
        ("%gpus\nx + 1", 1, (1, 1)),  # bare %gpus shows the request, changes nothing
        ("%gpus -1\nx", 1, (0, 1)),  # malformed: no GPU, request unchanged (the magic says why)
        ("x = 1\n%gpus 4", 1, (1, 1)),  # not on top: the executor reports it after the cell
    ],
)
def test_cell_gpus_is_what_the_replica_tells_the_front(code: str, before: int, expected: tuple[int, int]) -> None:
    assert cell_gpus(code, before) == expected


# -- real GPU only --------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_release_returns_all_device_memory_even_after_cublas() -> None:
    gc.collect()
    torch.cuda.empty_cache()
    assert torch.cuda.memory_allocated(0) == 0, "another test left CUDA tensors alive"
    ns = make_training_namespace(torch.device("cuda", 0))
    binder = DeviceBinder()
    binder.bind(ns, (0,))
    train_step(ns)
    ns["product"] = ns["data"] @ ns["data"].T  # cuBLAS keeps a workspace in the caching allocator
    timings = binder.release(ns)
    assert timings.leftover_bytes == 0 and dict(timings.unparked) == {}
    assert torch.cuda.memory_allocated(0) == 0 and torch.cuda.memory_reserved(0) == 0


@pytest.mark.gpu
@needs_cuda
def test_bind_sets_the_current_device_and_lands_tensors_there() -> None:
    last = torch.cuda.device_count() - 1
    ns = {"t": torch.ones(4, device="cuda:0")}
    binder = DeviceBinder()
    binder.bind(ns, (0,))
    binder.release(ns)
    binder.bind(ns, (last,))
    assert torch.cuda.current_device() == last and ns["t"].device == torch.device("cuda", last)
    assert torch.ones(1, device="cuda").device.index == last  # code that says "cuda" lands on the bound device
    binder.release(ns)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@needs_cuda
def test_a_model_split_over_two_gpus_comes_back_split_the_same_way() -> None:
    ns = {"first": torch.ones(4, device="cuda:0"), "second": torch.ones(4, device="cuda:1")}
    binder = DeviceBinder()
    binder.bind(ns, (0, 1))
    binder.release(ns)
    binder.bind(ns, (1, 0))
    assert (ns["first"].device.index, ns["second"].device.index) == (1, 0)
    binder.release(ns)


@pytest.mark.gpu
@needs_cuda
def test_a_parked_tensor_the_user_moved_back_during_a_gpus_0_cell_is_parked_again() -> None:
    t = torch.ones(4, device="cuda:0")
    ns = {"t": t}
    binder = DeviceBinder()
    binder.bind(ns, (0,))
    binder.release(ns)
    binder.bind(ns, ())
    t.data = t.data.cuda()  # the process can see the GPUs even when none is lent
    assert binder.release(ns).moved_objects == 1 and t.device == PARK


@pytest.mark.gpu
@needs_cuda
def test_leftovers_are_measured_and_blamed() -> None:
    gc.collect()
    torch.cuda.empty_cache()
    binder = DeviceBinder()
    ns = {"f": closure_over(torch.ones(1 << 20, device="cuda:0"))}  # 4 MiB no name reaches
    binder.bind(ns, (0,))
    timings = binder.release(ns)
    assert timings.leftover_bytes >= 4 << 20 and UNREACHABLE in timings.unparked
    del ns
    x = torch.ones(1 << 20, device="cuda:0", requires_grad=True)
    ns = {"x": x, "y": torch.exp(x)}  # exp saves its result in the graph: a second reference to y's old storage
    binder.bind(ns, (0,))
    timings = binder.release(ns)
    assert timings.leftover_bytes > 0 and "y" in timings.unparked
    assert isinstance(timings, BindTimings)
