"""Binding GPUs to a replica kernel for one cell at a time.

A replica may see every GPU of its host, but the broker lends it devices only for the duration of one execution;
between cells those devices may run another notebook's cell. So the kernel calls, around every cell it executes::

    binder.bind(user_ns, devices)        # devices lent by the broker; () for a `%gpus 0` cell
    tracker.snapshot(user_ns)            # AFTER bind
    ... run the cell ...
    tracker.capture(user_ns, count)      # BEFORE release
    timings = binder.release(user_ns)    # then tell the broker the devices are free

`release` parks every device tensor the namespace can reach in host memory and returns the device memory to the
driver; `bind` puts exactly what `release` parked back on the bound device. Both keep identity: every tensor,
parameter, gradient and optimizer state tensor stays the same Python object (only its `.data` is swapped), so
`opt.param_groups` still holds the model's parameters, two names for one tensor stay one tensor, and tensors that
shared memory (views, tied weights, flattened RNN weights) still share it after the trip.

Why the order above matters: the namespace tracker fingerprints a tensor by identity, `_version`, data pointer and
device (:mod:`notebookos.replication.fingerprint`). Swapping `.data` does not bump `_version` (torch counts no
write through `.data`) but does change the data pointer and device, so a park/unpark cycle between snapshot and
capture would read as a mutation of every moved tensor and re-replicate all of them. Snapshot after bind and
capture before release, and the cell's own changes are the only ones the tracker sees.

What is reachable from the namespace, and so parked: top-level values; the items (and keys) of lists, tuples,
dicts, sets, frozensets and deques, nested; the attributes (`__dict__` and `__slots__`) of other objects, which
covers nn.Module (parameters, buffers, submodules and plain tensor attributes), optimizers (`state` and
`param_groups`), LR schedulers, GradScalers, dataclasses and the user's own classes; a tensor's `.grad` and, for a
view, its `_base` (so a name holding only a slice still frees the whole storage). Not reachable: closures and other
functions, classes, modules, bound methods, generators, autograd graphs' saved tensors, memory held by C
extensions, and objects of the kernel's own machinery (:data:`SKIPPED_PACKAGES`). The walk is breadth-first,
cycle-safe, and bounded by depth and by number of objects visited. Whatever stays allocated on the device after a
release is measured and reported with the names that may hold it (:attr:`BindTimings.unparked`).

On a host without GPUs the kernel still uses ``compute_device_type="cuda"``: there are no CUDA tensors, so binding
is accounting only and no tensor moves. ``compute_device_type="cpu"`` is a *stand-in* for tests on such hosts: every
CPU tensor counts as "on the device", parking copies it to fresh CPU memory and binding copies it back, so the very
same walk, grouping, bookkeeping and identity-preserving moves run and can be observed (data pointers change,
counters move) without a GPU. It copies every tensor twice per cell and breaks memory sharing with numpy arrays
(``torch.from_numpy``), so it is not meant for production.

Limits the kernel has to live with: the binder only knows what its own releases parked, so on a replica that takes
over as executor (its namespace came from applied deltas, every tensor on the CPU) nothing moves to the device until
the user moves it; and the process keeps its CUDA context (a few hundred MB per device it has used) after release.
"""

from __future__ import annotations

import collections
import operator
import time
import types
import weakref
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "MAX_DEPTH", "MAX_VISITS", "SKIPPED_PACKAGES", "UNREACHABLE", "BindTimings", "DeviceBinder",
]  # fmt: skip

# Bounds of the namespace walk. Depth counts containment steps from a top-level name; visits count the distinct
# non-scalar objects looked at in one release. Both keep a release fast on pathological namespaces (a linked list
# of a million nodes, a huge list of small objects); what lies beyond them is not parked, and reported if it leaves
# device memory allocated.
MAX_DEPTH = 32
MAX_VISITS = 1_000_000

# Top-level packages whose objects' attributes are never walked: the kernel's own machinery (IPython's `exit`
# holds the shell, which holds everything) and big object graphs that cannot hold torch tensors.
SKIPPED_PACKAGES = frozenset({
    "IPython", "ipykernel", "traitlets", "jupyter_client", "jupyter_core", "zmq", "tornado", "asyncio", "logging",
    "threading", "concurrent", "notebookos", "matplotlib",
})  # fmt: skip

# Values with nothing inside that could hold a tensor: skipped before they count as a visit.
_SCALARS = frozenset({type(None), bool, int, float, complex, str, bytes, bytearray, range, slice, type(Ellipsis)})

# Objects whose attributes are not walked: code, namespaces of their own, or references we must not follow.
_OPAQUE = (
    types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
    types.MethodWrapperType, types.WrapperDescriptorType, types.MethodDescriptorType, types.CodeType,
    types.FrameType, types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType, weakref.ReferenceType,
    property, staticmethod, classmethod, memoryview, torch.device, torch.dtype,
)  # fmt: skip

_CONTAINERS = (list, tuple, set, frozenset, collections.deque)

# Tensor types whose `.data` is a plain strided tensor we may rebuild on a new storage with `set_`.
_PLAIN_TENSORS = frozenset(
    t for t in (torch.Tensor, torch.nn.Parameter, getattr(torch.nn.parameter, "Buffer", None)) if t is not None
)

# Where leftover device memory is reported when no reachable name explains it.
UNREACHABLE = "<unreachable>"


@dataclass(frozen=True)
class BindTimings:
    """What binding cost one execution; the kernel records it per cell.

    `moved_bytes`/`moved_objects` are what `release` parked: bytes of distinct storages copied to the host (a
    view moves its whole storage, shared storage moves once) and distinct tensors whose data moved (parameters,
    gradients and optimizer state tensors count one each). `restored_*` are the same for what `bind` moved back.
    `release_s` is None until the execution's release. `leftover_bytes` is device memory still allocated after
    release and `torch.cuda.empty_cache()` (None where it cannot be measured: no CUDA, or the CPU stand-in).
    `unparked` maps names to why their tensors may still be on the device: moves that failed, always; and, when
    `leftover_bytes` > 0, names that hold autograd graphs or reach past the walk's bounds, or `"<unreachable>"`.
    """

    bind_s: float
    release_s: float | None
    moved_bytes: int
    moved_objects: int
    restored_bytes: int = 0
    restored_objects: int = 0
    leftover_bytes: int | None = None
    unparked: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass
class _Parked:
    """A tensor `release` moved to the host, and which of the bound devices it came from (its index in `devices`),
    so a model split over two lent GPUs comes back split the same way over the next two."""

    ref: weakref.ref[torch.Tensor]
    position: int


@dataclass
class _Found:
    tensors: list[tuple[torch.Tensor, str]] = field(default_factory=list)  # device tensors, with the name reaching them
    suspects: dict[str, str] = field(default_factory=dict)  # names that may hold device memory the walk cannot move


class DeviceBinder:
    """Moves a namespace's device tensors to the host between cells, and back when the next cell is bound.

    One binder per replica kernel, used from the kernel's execution thread only. It keeps weak references to what it
    parked, so a parked tensor the user deletes is simply forgotten.
    """

    def __init__(
        self,
        park_device: str = "cpu",
        compute_device_type: str = "cuda",
        *,
        max_depth: int = MAX_DEPTH,
        max_visits: int = MAX_VISITS,
    ) -> None:
        """`compute_device_type` is "cuda" in the kernel, "cpu" for the stand-in used by tests without a GPU (see
        the module docstring); `park_device` is where tensors wait between cells, host memory."""
        if compute_device_type not in ("cuda", "cpu"):
            raise ValueError(f"compute_device_type must be 'cuda' or 'cpu' (the stand-in), not {compute_device_type!r}")
        park = torch.device(park_device)
        if park.type != "cpu":  # anything else either is the device being freed or loses the data (meta)
            raise ValueError(f"park_device must be host memory ('cpu'), not {park_device!r}")
        self._park = park
        self._type = compute_device_type
        self._max_depth = max_depth
        self._max_visits = max_visits
        self._parked: dict[int, _Parked] = {}
        self._bound: tuple[int, ...] | None = None
        self._timings: BindTimings | None = None

    @property
    def bound(self) -> tuple[int, ...] | None:
        """The devices of the current execution; None between release and the next bind."""
        return self._bound

    @property
    def timings(self) -> BindTimings | None:
        """The current (release_s None) or last execution's timings."""
        return self._timings

    def bind(self, user_ns: MutableMapping[str, Any], devices: Sequence[int]) -> None:
        """Bind `devices` for one execution: make devices[0] torch's current CUDA device, so code saying "cuda"
        lands on it, and move every tensor the last release parked back, each to the bound device at its old
        position (devices[0] if there are fewer now).

        `devices == ()` binds nothing and moves nothing (a `%gpus 0` cell); parked tensors stay parked until a
        later bind with devices. What moves back is what release recorded, by weak reference, not what `user_ns`
        holds now: a parked tensor the user has since renamed, nested or held elsewhere comes back too, and one
        the user has since moved off the host is left alone. `user_ns` is taken for symmetry with release.

        If bind raises (e.g. the device is out of memory), the binder is bound all the same: the kernel's
        release(), which it must call in any case, parks back what did move.
        """
        devices = self._check_devices(devices)
        if self._bound is not None:
            raise RuntimeError(f"already bound to {self._bound}: release() before binding again")
        self._bound = devices
        start = time.perf_counter()
        restored_bytes = restored_objects = 0
        try:
            if not devices:
                return
            if self._type == "cuda" and torch.cuda.is_available():
                torch.cuda.set_device(devices[0])
            groups: dict[Any, list[tuple[torch.Tensor, int]]] = {}
            for key, parked in list(self._parked.items()):
                tensor = parked.ref()
                if tensor is None or tensor.device != self._park:  # collected, or moved by the user meanwhile
                    del self._parked[key]
                    continue
                groups.setdefault(_storage_key(tensor), []).append((tensor, parked.position))
            errors: list[tuple[torch.device, BaseException]] = []
            for members in groups.values():
                target = self._compute_device(devices, members[0][1])
                nbytes, failures = _relocate([t for t, _ in members], target)
                for tensor, _ in members:
                    if id(tensor) in failures:  # stays recorded: release keeps it, a later bind tries again
                        errors.append((target, failures[id(tensor)]))
                    else:
                        del self._parked[id(tensor)]
                        restored_objects += 1
                restored_bytes += nbytes
            if errors:
                target, error = errors[0]
                raise RuntimeError(
                    f"{len(errors)} parked tensor(s) could not be moved back to {target}: "
                    f"{type(error).__name__}: {error}"
                ) from error
        finally:
            self._timings = BindTimings(
                bind_s=time.perf_counter() - start,
                release_s=None,
                moved_bytes=0,
                moved_objects=0,
                restored_bytes=restored_bytes,
                restored_objects=restored_objects,
            )

    def release(self, user_ns: MutableMapping[str, Any]) -> BindTimings:
        """End the execution: park every device tensor reachable from `user_ns` in host memory, keeping identity
        and shared storage, remember what was parked for the next bind, return the device memory to the driver,
        and measure what is left allocated there.

        Never raises for the user's data: a tensor that cannot be moved stays where it is and its name is reported
        in `unparked`. Tensors on the device that were created during a `%gpus 0` cell are parked too.
        """
        bound = self._bound
        if bound is None:
            raise RuntimeError("release() without a bind()")
        try:
            start = time.perf_counter()
            found = self._walk(user_ns) if bound or self._device_tensors_may_exist() else _Found()
            groups: dict[Any, list[tuple[torch.Tensor, str]]] = {}
            for tensor, name in found.tensors:
                groups.setdefault(_storage_key(tensor), []).append((tensor, name))
            moved_bytes = moved_objects = 0
            failed: dict[str, str] = {}
            touched: set[int] = set(bound)
            for members in groups.values():
                device = members[0][0].device
                if device.index is not None:
                    touched.add(device.index)
                position = bound.index(device.index) if device.index in bound else 0
                tensors = [t for t, _ in members]
                nbytes, failures = _relocate(tensors, self._park)
                for tensor, name in members:
                    error = failures.get(id(tensor))
                    if error is None:
                        self._parked[id(tensor)] = _Parked(weakref.ref(tensor), position)
                    else:
                        failed.setdefault(name, f"could not be moved to {self._park}: {type(error).__name__}: {error}")
                moved_bytes += nbytes
                moved_objects += len(members) - len(failures)
            leftover = self._free_device_memory(touched)
            unparked = dict(failed)
            if leftover:
                for name, why in found.suspects.items():
                    unparked.setdefault(name, why)
                if not unparked:
                    unparked[UNREACHABLE] = (
                        f"{leftover} bytes stay allocated on the device, held by objects no name reaches "
                        "(closures, autograd graphs, C extensions)"
                    )
            restored = self._timings if self._timings is not None else BindTimings(0.0, None, 0, 0)
            self._timings = BindTimings(
                bind_s=restored.bind_s,
                release_s=time.perf_counter() - start,
                moved_bytes=moved_bytes,
                moved_objects=moved_objects,
                restored_bytes=restored.restored_bytes,
                restored_objects=restored.restored_objects,
                leftover_bytes=leftover,
                unparked=unparked,
            )
        finally:  # a bug here must not leave the kernel unable to bind its next cell
            self._bound = None
        return self._timings

    # -- helpers -------------------------------------------------------------------------------------------------

    def _device_tensors_may_exist(self) -> bool:
        """Whether a cell bound to no device can have left tensors on one: not before this process initialized
        CUDA (no CUDA tensor exists without it), so a ``%gpus 0`` cell then costs no walk of the namespace."""
        return self._type != "cuda" or torch.cuda.is_initialized()

    def _check_devices(self, devices: Sequence[int]) -> tuple[int, ...]:
        given = tuple(devices)
        try:
            if any(isinstance(index, bool) for index in given):
                raise TypeError
            result = tuple(operator.index(index) for index in given)
        except TypeError:
            raise ValueError(f"devices must be device indices (integers), got {given!r}") from None
        if any(index < 0 for index in result):
            raise ValueError(f"devices must be non-negative, got {result!r}")
        if len(set(result)) != len(result):
            raise ValueError(f"devices must not repeat, got {result!r}")
        if self._type == "cuda" and result and torch.cuda.is_available():
            count = torch.cuda.device_count()
            if max(result) >= count:
                raise ValueError(f"devices {result!r}: this process sees {count} CUDA device(s)")
        return result

    def _compute_device(self, devices: tuple[int, ...], position: int) -> torch.device:
        if self._type == "cpu":
            return torch.device("cpu")
        return torch.device(self._type, devices[position] if position < len(devices) else devices[0])

    def _on_compute(self, tensor: torch.Tensor) -> bool:
        """A tensor release should park: on the compute device type, and (for the CPU stand-in, where park and
        compute devices look alike) not one it parked already."""
        if tensor.device.type != self._type or torch.nn.parameter.is_lazy(tensor):
            return False
        if self._type != self._park.type:  # a parked tensor the user moved back to the device is parked again
            return True
        parked = self._parked.get(id(tensor))
        return parked is None or parked.ref() is not tensor

    def _walk(self, user_ns: Mapping[str, Any]) -> _Found:
        """Breadth-first over everything reachable from the namespace (see the module docstring), cycle-safe."""
        found = _Found()
        seen: dict[int, Any] = {}  # id -> object: holding the object keeps ids unique during the walk
        slots_of: dict[type, tuple[Any, ...]] = {}
        queue: collections.deque[tuple[Any, int, str]] = collections.deque(
            (value, 0, name) for name, value in list(user_ns.items())
        )
        while queue:
            obj, depth, name = queue.popleft()
            if type(obj) in _SCALARS or id(obj) in seen:
                continue
            if len(seen) >= self._max_visits:
                found.suspects.setdefault(name, f"reaches past {self._max_visits} objects; the rest was not walked")
                continue
            seen[id(obj)] = obj
            if isinstance(obj, torch.Tensor):
                self._visit_tensor(obj, depth, name, found, queue)
                continue
            try:
                children = _children(obj, slots_of)
            except Exception:  # noqa: BLE001 - a strange object must not stop the release
                continue
            if not children:
                continue
            if depth >= self._max_depth:
                found.suspects.setdefault(name, f"nests deeper than {self._max_depth} levels; the rest was not walked")
                continue
            queue.extend((child, depth + 1, name) for child in children if type(child) not in _SCALARS)
        return found

    def _visit_tensor(
        self, tensor: torch.Tensor, depth: int, name: str, found: _Found, queue: collections.deque[Any]
    ) -> None:
        if self._on_compute(tensor):
            found.tensors.append((tensor, name))
        if tensor.grad_fn is not None:
            found.suspects.setdefault(name, "holds an autograd graph, whose saved tensors stay on the device")
        elif tensor.is_leaf and tensor.grad is not None:  # .grad of a non-leaf warns, and is None anyway
            queue.append((tensor.grad, depth + 1, name))
        if tensor._base is not None:
            queue.append((tensor._base, depth + 1, name))

    def _free_device_memory(self, devices: Iterable[int]) -> int | None:
        """Return cached device memory to the driver; the bytes still allocated on `devices` (None: unmeasurable)."""
        if self._type != "cuda" or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return None
        clear_cublas = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear_cublas is not None:  # cuBLAS keeps its workspaces in the caching allocator, per handle
            clear_cublas()
        torch.cuda.empty_cache()
        return sum(torch.cuda.memory_allocated(index) for index in sorted(set(devices)))


def _children(obj: Any, slots_of: dict[type, tuple[Any, ...]]) -> list[Any]:
    """The objects `obj` directly holds that could lead to tensors."""
    children: list[Any] = []
    if isinstance(obj, dict):
        for key, value in list(obj.items()):
            children.append(key)
            children.append(value)
    elif isinstance(obj, _CONTAINERS):
        children.extend(list(obj))
    if isinstance(obj, _OPAQUE) or type(obj) in (dict, list, tuple, set, frozenset, collections.deque):
        return children
    cls = type(obj)
    if (getattr(cls, "__module__", None) or "").partition(".")[0] in SKIPPED_PACKAGES:
        return children
    try:
        attributes = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        attributes = None
    if isinstance(attributes, dict):
        children.extend(list(attributes.values()))
    slots = slots_of.get(cls)
    if slots is None:
        slots = slots_of[cls] = tuple(
            (klass, member)
            for klass in cls.__mro__
            for member in vars(klass).values()
            if isinstance(member, types.MemberDescriptorType)
        )
    for klass, member in slots:
        try:
            children.append(member.__get__(obj, klass))
        except AttributeError:  # an unset slot
            pass
    if isinstance(obj, torch.nn.Module):  # also reaches TorchScript modules, whose `_parameters` is no dict
        children.extend(obj.parameters(recurse=False))
        children.extend(obj.buffers(recurse=False))
        children.extend(obj.children())
    return children


def _storage_key(tensor: torch.Tensor) -> Any:
    """Tensors with one key share one storage and move together, as one copy that keeps them aliased."""
    if not _rebuildable(tensor):
        return ("alone", id(tensor))
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return ("alone", id(tensor))
    if storage.nbytes() == 0:  # empty storages may all have data pointer 0
        return ("alone", id(tensor))
    return (tensor.device, storage.data_ptr())


def _rebuildable(tensor: torch.Tensor) -> bool:
    return (
        type(tensor) in _PLAIN_TENSORS
        and tensor.layout == torch.strided
        and not tensor.is_quantized
        and not tensor.is_nested
    )


def _relocate(tensors: list[torch.Tensor], device: torch.device) -> tuple[int, dict[int, BaseException]]:
    """Move `tensors` (one storage key, see _storage_key) to `device` in place via `.data`, keeping identity,
    `requires_grad`, `.grad` and `_version`. Returns the bytes copied and id(tensor) -> error for those that did
    not move.

    Tensors that share a storage get one new storage, and each is rebuilt on it at its own offset, size and stride,
    so views stay views of their base. Other tensors (sparse, quantized, subclasses) move one by one with
    `.to(device, copy=True)`; `copy=True` gives the CPU stand-in a real copy too.
    """
    failures: dict[int, BaseException] = {}
    first = tensors[0]
    if len(tensors) == 1 and _storage_key(first)[0] == "alone":
        try:
            moved = first.data.to(device, copy=True)
            nbytes = _nbytes(first)
            first.data = moved
        except Exception as error:  # noqa: BLE001 - reported to the caller
            return 0, {id(first): error}
        return nbytes, failures
    try:
        source = first.untyped_storage()
        target = torch.UntypedStorage(source.nbytes(), device=device)
        target.copy_(source)
    except Exception as error:  # noqa: BLE001 - e.g. out of memory: nothing moved
        return 0, {id(t): error for t in tensors}
    for tensor in tensors:
        try:
            tensor.data = _on_storage(tensor, target)
        except Exception as error:  # noqa: BLE001
            failures[id(tensor)] = error
    return (source.nbytes() if len(failures) < len(tensors) else 0), failures


def _on_storage(tensor: torch.Tensor, storage: torch.UntypedStorage) -> torch.Tensor:
    """A tensor on `storage` with `tensor`'s geometry and dtype, and its lazy conjugate/negative bits."""
    rebuilt = torch.empty(0, dtype=tensor.dtype, device=storage.device)
    rebuilt.set_(storage, tensor.storage_offset(), tensor.size(), tensor.stride())
    if tensor.is_conj():
        rebuilt = rebuilt.conj()
    if tensor.is_neg():
        rebuilt = torch._neg_view(rebuilt)
    return rebuilt


def _nbytes(tensor: torch.Tensor) -> int:
    try:
        return tensor.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):
        pass
    try:
        if tensor.layout == torch.sparse_coo:
            return _nbytes(tensor._indices()) + _nbytes(tensor._values())
        return int(tensor.nelement() * tensor.element_size())
    except (RuntimeError, NotImplementedError):
        return 0
