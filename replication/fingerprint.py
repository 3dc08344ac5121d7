"""Cheap fingerprints of namespace values, to find what a cell changed without re-serializing what it did not.

The tracker fingerprints every name before a cell and again after it; a name whose fingerprint differs is
captured. A fingerprint must therefore be cheap for a 100 MB tensor or a model with millions of parameters, and
still change when the value is mutated in place. What each kind of value costs, and what it can miss:

- torch tensors: identity, `_version`, data pointer, shape, stride, dtype, device and `requires_grad`, all O(1).
  `_version` counts in-place changes, including those through views and `optimizer.step()`, but not writes
  through `.data` (`p.data.mul_(2)` leaves it as it was); so tensors of at most `SMALL_BYTES` also hash their bytes,
  which
  catches that case for small tensors. A large tensor changed through `.data` goes unnoticed.
- torch modules: the fingerprints of their parameters and buffers, plus every submodule's plain scalar attributes
  (`training`, `p` of a dropout, ...). Non-scalar attributes of a module are not looked at.
- torch optimizers: their param groups (hyperparameters and parameter fingerprints) and the O(1) fields of their
  per-parameter state tensors (those are written only by `step()`, which bumps `_version`; hashing the small
  ones would double the cost of fingerprinting an Adam model). Because the parameter fingerprints are part of
  it, a changed model also changes the fingerprint of every optimizer over it, which keeps the two together in
  one payload.
- numpy arrays: identity, shape, strides, dtype and data pointer; up to `SMALL_BYTES` a hash of all bytes, above
  it a hash of `SAMPLE_SIZE` evenly spaced elements. Whole-array in-place operations (`a += 1`, `a *= 2`) change
  every sample; a write to a few unsampled elements (`a[5] = 0` in a large array) goes unnoticed. Hashing all of
  a 100 MB array would cost ~60 ms before and after every cell, which is the trade-off made here.
- immutable scalars, strings, bytes, modules and builtins: identity alone (the tracker compares identity).
- everything else: a hash of its cloudpickle, where the tensors, modules, optimizers and arrays it holds are
  replaced by their own fingerprints (so a list of tensors is cheap). The pickling stops at `SMALL_BYTES`: a
  larger object is fingerprinted by type and length only, so a same-length in-place change to it is missed.

Identity of nested objects is part of tensor and array fingerprints, so one fingerprinting pass must not outlive
the objects it looked at: `Fingerprinter` is meant for one pass over a namespace that stays alive meanwhile.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import pickle
import sys
import types
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import cloudpickle

__all__ = ["SAMPLE_SIZE", "SMALL_BYTES", "Fingerprinter", "NotebookPickler", "raw_memory", "unpicklable_reason"]

SMALL_BYTES = 64 * 1024
SAMPLE_SIZE = 64

Fingerprint = Hashable

# Values that cannot change without being rebound: identity says everything about them.
_IMMUTABLE_TYPES = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    range,
    types.ModuleType,
    types.BuiltinFunctionType,
)
_SCALAR_TYPES = frozenset({type(None), bool, int, float, complex, str})
_OPEN_FILE_TYPES = (io.TextIOWrapper, io.BufferedReader, io.BufferedWriter, io.BufferedRandom, io.FileIO)


def unpicklable_reason(value: Any, error: Exception) -> str:
    """Why `value` cannot be replicated, in a few words naming its type, given the error pickling it raised."""
    if isinstance(value, _OPEN_FILE_TYPES):
        return _open_file_reason(value)
    kind = type(value)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return f"{name} cannot be pickled: {error or type(error).__name__}"


def _open_file_reason(file: Any) -> str:
    kind = type(file)
    state = "closed" if file.closed else "open"
    return f"{state} file {getattr(file, 'name', '?')!r} ({kind.__module__}.{kind.__qualname__}) cannot be pickled"


class NotebookPickler(cloudpickle.Pickler):
    """The pickling policy shared by fingerprints and payloads: cloudpickle, with two changes for notebooks.

    cloudpickle pickles functions and classes defined in the notebook by value and modules by name. Its
    functions carry the globals they use as a dict of values; a notebook function bound to `user_ns` is pickled
    without them instead: the receiving namespace provides them by name when it is called (so it sees later
    rebindings, as in the notebook), a global that cannot be pickled does not make the function unpicklable, and
    rebinding a global does not change the function's fingerprint.

    cloudpickle would pickle a file open for reading as a StringIO holding its whole contents: a standby would
    get a silent in-memory copy instead of a file, after reading a possibly huge file on every fingerprint. An
    open file is state of this process, so it is refused and reported as not replicable.
    """

    def __init__(self, file: Any, user_ns: Mapping[str, Any]) -> None:
        super().__init__(file, protocol=5)
        self.user_ns = user_ns

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, _OPEN_FILE_TYPES) and obj is not sys.stdout and obj is not sys.stderr:
            raise pickle.PicklingError(_open_file_reason(obj))
        return super().reducer_override(obj)

    def _dynamic_function_reduce(self, func: types.FunctionType) -> Any:
        reduced = super()._dynamic_function_reduce(func)
        if func.__globals__ is self.user_ns:
            _, slot_state = reduced[2]
            slot_state["__globals__"] = {}
        return reduced


class _TooLarge(Exception):
    """Raised by `_BoundedDigest` to stop pickling an object too large to hash on every cell."""


class _BoundedDigest:
    """A write-only file that hashes what it is given and gives up past `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self._remaining = limit
        self._hash = hashlib.sha256()

    def write(self, chunk: bytes | memoryview) -> int:
        size = memoryview(chunk).nbytes
        self._remaining -= size
        if self._remaining < 0:
            raise _TooLarge
        self._hash.update(chunk)
        return size

    def digest(self) -> bytes:
        return self._hash.digest()


class _StubbingPickler(NotebookPickler):
    """Pickles an object for hashing, writing a placeholder for each heavy object it holds.

    The placeholder is an index into a list of the heavy objects' own (cheap) fingerprints, which become part of
    the holder's fingerprint. reducer_override is used rather than persistent_id because the C pickler calls it
    only for non-builtin objects, which keeps hashing lists of numbers fast.
    """

    def __init__(
        self,
        file: _BoundedDigest,
        user_ns: Mapping[str, Any],
        is_heavy: Callable[[Any], bool],
        stub: Callable[[Any], int],
    ) -> None:
        super().__init__(file, user_ns)
        self._is_heavy = is_heavy
        self._stub = stub

    def reducer_override(self, obj: Any) -> Any:
        if self._is_heavy(obj):
            return int, (self._stub(obj),)
        return super().reducer_override(obj)


class Fingerprinter:
    """One fingerprinting pass: `fingerprinter(value)` for each value of `user_ns`, which stays alive meanwhile.

    Fingerprints of shared objects (a parameter seen through a model and through its optimizer) are computed once
    per pass. torch and numpy are looked up in sys.modules, not imported: if the user never imported them, the
    namespace holds none of their objects, and the replica does not pay for importing torch.
    """

    def __init__(self, user_ns: Mapping[str, Any]) -> None:
        self._user_ns = user_ns
        self._memo: dict[int, Fingerprint] = {}
        self._numpy = sys.modules.get("numpy")
        self._torch = sys.modules.get("torch")
        # What the tensor handlers compare with; they are registered only where torch is there.
        self._strided: object = None if self._torch is None else self._torch.strided
        self._tensor_type: type | tuple[()] = () if self._torch is None else self._torch.Tensor
        handlers: list[tuple[type, Callable[[Any], Fingerprint]]] = []
        if self._torch is not None:
            handlers += [
                (self._torch.Tensor, self._tensor),
                (self._torch.nn.Module, self._module),
                (self._torch.optim.Optimizer, self._optimizer),
            ]
        if self._numpy is not None:
            handlers.append((self._numpy.ndarray, self._array))
        self._handlers = handlers
        self._heavy_types = tuple(kind for kind, _ in handlers)

    def __call__(self, value: Any) -> Fingerprint:
        if isinstance(value, _IMMUTABLE_TYPES):
            return ()
        key = id(value)
        if key not in self._memo:
            self._memo[key] = self._compute(value)
        return self._memo[key]

    def is_heavy(self, value: Any) -> bool:
        """Whether `value` has a cheap fingerprint of its own instead of a hash of its pickle."""
        if not isinstance(value, self._heavy_types):
            return False
        return not (self._numpy is not None and isinstance(value, self._numpy.ndarray) and value.dtype.hasobject)

    def _compute(self, value: Any) -> Fingerprint:
        try:
            for kind, handler in self._handlers:
                if isinstance(value, kind):
                    return handler(value)
            return self._pickled(value)
        except Exception as error:  # noqa: BLE001 - a fingerprint must never break the user's cell
            return ("unfingerprintable", type(value), type(error))

    def _tensor(self, tensor: Any) -> Fingerprint:
        fingerprint = self._tensor_fields(tensor)
        if tensor.layout is self._strided and tensor.nbytes <= SMALL_BYTES:
            fingerprint += (_tensor_digest(tensor),)
        return fingerprint

    def _tensor_fields(self, tensor: Any) -> tuple[Any, ...]:
        """The O(1) part of a tensor's fingerprint."""
        fields = (id(tensor), type(tensor), _version_of(tensor), tensor.dtype, tensor.device,
                  tuple(tensor.shape), tensor.requires_grad)  # fmt: skip
        if tensor.layout is not self._strided or tensor.is_meta:
            return fields
        return fields + (tensor.data_ptr(), tensor.stride(), tensor.storage_offset())

    def _module(self, module: Any) -> Fingerprint:
        scalars = tuple((name, v) for name, v in vars(module).items() if type(v) in _SCALAR_TYPES)
        return (
            id(module),
            type(module),
            scalars,
            tuple((name, None if p is None else self(p)) for name, p in module._parameters.items()),
            tuple((name, None if b is None else self(b)) for name, b in module._buffers.items()),
            tuple((name, None if m is None else self(m)) for name, m in module._modules.items()),
        )

    def _optimizer(self, optimizer: Any) -> Fingerprint:
        """Param groups in full; state tensors without their bytes: only `step()` writes them, bumping `_version`."""
        groups = tuple(tuple((k, self._leaf(v)) for k, v in group.items()) for group in optimizer.param_groups)
        state = tuple(
            (id(param), tuple((k, self._state_leaf(v)) for k, v in param_state.items()))
            for param, param_state in optimizer.state.items()
        )
        return (id(optimizer), type(optimizer), groups, state)

    def _leaf(self, value: Any) -> Fingerprint:
        """Fingerprint of a value inside an optimizer: `params` lists are walked, not pickled, whatever their size."""
        if isinstance(value, (list, tuple)):
            return tuple(self._leaf(item) for item in value)
        if type(value) in _SCALAR_TYPES:
            return value
        return self(value)

    def _state_leaf(self, value: Any) -> Fingerprint:
        return self._tensor_fields(value) if isinstance(value, self._tensor_type) else self._leaf(value)

    def _array(self, array: Any) -> Fingerprint:
        if array.dtype.hasobject:  # its bytes are pointers: hash what they point to
            return self._pickled(array)
        numpy = self._numpy
        if numpy is None:  # registered only where numpy is imported
            raise RuntimeError("the numpy handler ran without numpy in sys.modules")
        fingerprint = (id(array), type(array), array.dtype.str, array.shape, array.strides,
                       array.__array_interface__["data"][0])  # fmt: skip
        if array.nbytes <= SMALL_BYTES:
            return fingerprint + (hashlib.sha256(array.tobytes()).digest(),)
        sample = array.flat[numpy.linspace(0, array.size - 1, SAMPLE_SIZE, dtype=numpy.intp)]
        return fingerprint + (hashlib.sha256(sample.tobytes()).digest(),)

    def _pickled(self, value: Any) -> Fingerprint:
        stubs: list[Fingerprint] = []

        def stub(heavy: Any) -> int:
            stubs.append(self(heavy))
            return len(stubs) - 1

        digest = _BoundedDigest(SMALL_BYTES)
        try:
            _StubbingPickler(digest, self._user_ns, self.is_heavy, stub).dump(value)
        except _TooLarge:
            return ("large", type(value), _length(value))
        except Exception as error:  # noqa: BLE001 - capture finds and reports what cannot be pickled
            return ("unpicklable", type(value), type(error))
        return ("pickled", type(value), digest.digest(), tuple(stubs))


def _version_of(tensor: Any) -> int:
    """The tensor's in-place version counter; inference tensors have none."""
    try:
        return tensor._version
    except RuntimeError:
        return -1


def _tensor_digest(tensor: Any) -> bytes | None:
    """Hash of a small tensor's bytes (copied to the CPU first if need be); None for layouts that have no bytes."""
    try:
        flat = tensor.detach().cpu().resolve_conj().resolve_neg().contiguous()
    except RuntimeError:  # quantized and other exotic tensors: rely on the cheap fields
        return None
    return hashlib.sha256(raw_memory(flat.data_ptr(), flat.nbytes)).digest()


def raw_memory(address: int, size: int) -> memoryview:
    """The `size` bytes at `address` (a CPU tensor's or storage's data), viewed without copying or telling torch.

    `Tensor.numpy()` would be the obvious way, but it marks the tensor's storage as not resizable for good, so
    fingerprinting a user's tensor would make a later `resize_` or `out=` argument fail in their code. The view
    must not outlive the tensor or storage that owns the memory.
    """
    if size == 0:
        return memoryview(b"")
    return memoryview((ctypes.c_char * size).from_address(address)).cast("B")


def _length(value: Any) -> int | None:
    try:
        return len(value)
    except Exception:  # noqa: BLE001 - no usable length is a valid answer
        return None
