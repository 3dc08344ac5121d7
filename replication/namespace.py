"""State capture and apply: what one cell changed in the user namespace, as one state delta for the Raft log.

The executor calls `NamespaceTracker.snapshot` before a cell and `capture` after it; standbys `apply` the deltas
in log order. How it works, and why:

- Changes are found by diffing the namespace against the snapshot, so every way of binding a name (assignment,
  tuple unpacking, `for`/`with` targets, augmented assignment, `import`, `def`, `class`, `del`) is covered without
  parsing the cell. Each name is remembered by identity (a weak reference where the type allows, so that `del x`
  still frees a tensor) plus a cheap fingerprint that changes when the object is mutated in place; see
  fingerprint.py for what each fingerprint costs and can miss.
- All changed values, and the kernel's `extra` values, go into ONE cloudpickle, so references shared between
  them survive (a model and its optimizer still share parameters on the standby). An object the standby already
  holds under an unchanged name, or as a parameter, buffer or submodule of an unchanged torch module or a
  parameter of an unchanged torch optimizer, is pickled as a reference by name (`persistent_id`) and resolved
  from the standby's namespace on apply (so a model changed by `model.eval()` keeps sharing its parameters with
  its unchanged optimizer). Notebook functions and classes keep the standby's namespace as their globals, so
  they see later rebindings there.
- A standby rebinds each changed name to the unpickled value. Unchanged standby objects that reference a changed
  object therefore keep referencing the old one; the fingerprints make this rare (a container's fingerprint
  covers what it holds, a model's covers its parameters, an optimizer's covers its parameters), but an unchanged
  container too large to hash (see fingerprint.py) that holds a changed object goes stale on the standby.
  Within one payload, tensors sharing a storage still share it (views stay views), but numpy views become
  copies, and tensors lose their `.grad` (torch does not pickle it).
- Values that cannot be pickled (open files, sockets, generators, threads, locks) do not fail the cell: they are
  left out of the payload and reported with a reason, and a standby drops such a name rather than keep a stale
  value, so that after a failover the name is visibly missing and `not_replicated` says why.
- Small payloads travel inline in the log entry; large ones, and any holding torch objects, go to the object
  store and the delta carries a pointer. A payload is a short header, the pickle, then the raw bytes of every
  tensor storage it holds, which the pickle names by number: the executor hashes and writes a tensor's bytes
  straight from its memory, and a standby reads them straight into the storage it rebuilds. Apply is
  all-or-nothing: if the object is missing or corrupt, or the payload cannot be unpickled, the namespace is left
  as it was and `StateApplyError` names the variables lost.
- For log compaction, `capture_all` captures the whole namespace as one delta (a full snapshot) that `apply`
  restores into an empty namespace: every value is pickled by value (no references by name), in one pickle, so
  shared references survive. `referenced_keys` names the object-store keys a delta needs, for garbage collection.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import struct
import sys
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from .fingerprint import Fingerprinter, NotebookPickler, raw_memory, unpicklable_reason
from .object_store import BytesReader, ObjectReader, ObjectStore, ObjectStoreError

__all__ = ["NamespaceTracker", "ObjectPointer", "StateApplyError", "StateDelta"]

_log = logging.getLogger(__name__)

_DELTA_FORMAT = 1

# Names IPython (and Python's warnings machinery) keep in the user namespace for themselves; each replica's
# shell maintains its own.
_IPYTHON_NAMES = frozenset(
    {
        "In", "Out", "_", "__", "___", "_i", "_ii", "_iii", "_oh", "_ih", "_dh", "exit", "quit", "get_ipython",
        "__builtins__", "__builtin__", "__name__", "__doc__", "__package__", "__loader__", "__spec__",
        "__warningregistry__",
    }
)  # fmt: skip
_IPYTHON_HISTORY_NAME = re.compile(r"_i?\d+")  # _i<N> (input N) and _<N> (output N)
# Names IPython binds in every namespace to objects of its own (its wrapper of open()): the same on every replica, so
# not replicated while they hold IPython's object; a value of the user's own under such a name is.
_IPYTHON_BINDINGS = frozenset({"open"})

# Immutable values, whose identity carries no meaning: copied rather than sent as a reference to a standby's
# object (a name bound to `()` would otherwise stand in for every empty tuple in every payload).
_NO_IDENTITY_TYPES = (type(None), bool, int, float, complex, str, bytes, tuple, frozenset, range)

_NAMESPACE_REFERENCE = ("namespace",)

# A payload starts with this, then its counts (`_PAYLOAD_COUNTS`: storages, pickle bytes) and each storage's size
# (`_STORAGE_SIZE` each), then the pickle and the storages' bytes, numbered in that order. A payload without it is a
# bare pickle with the storages' bytes inside, as payloads were written before (a pickle starts with b"\x80").
_PAYLOAD_MAGIC = b"NBOSPL01"
_PAYLOAD_COUNTS = struct.Struct("<IQ")
_STORAGE_SIZE = struct.Struct("<Q")
_STORAGE = "storage"  # persistent id kind: ("storage", number)


@dataclass(frozen=True)
class ObjectPointer:
    """Where a delta's payload lies in the object store."""

    key: str  # object store key
    size: int  # bytes


@dataclass(frozen=True)
class StateDelta:
    """What one cell changed. Small enough to go in a Raft log entry: large payloads are pointers.

    `inline` and `pointer` are both None when the delta carries no values (only deletions, or nothing).
    """

    execution_count: int
    assigned: tuple[str, ...]  # names (re)bound or mutated, whose values are in the payload
    deleted: tuple[str, ...]
    unpicklable: dict[str, str]  # name -> short reason the new value could not be replicated
    inline: bytes | None  # the pickled payload when small
    pointer: ObjectPointer | None  # else the payload's pointer into the object store

    def to_bytes(self) -> bytes:
        """Compact serialization for the log: a pickled tuple of builtins."""
        pointer = None if self.pointer is None else (self.pointer.key, self.pointer.size)
        fields = (_DELTA_FORMAT, self.execution_count, self.assigned, self.deleted,
                  tuple(self.unpicklable.items()), self.inline, pointer)  # fmt: skip
        return pickle.dumps(fields, protocol=5)

    @classmethod
    def from_bytes(cls, data: bytes) -> StateDelta:
        """Inverse of `to_bytes`. Decoding never runs code: only builtin types are accepted."""
        fields = _BuiltinsOnlyUnpickler(io.BytesIO(data)).load()
        if not isinstance(fields, tuple) or len(fields) != 7 or fields[0] != _DELTA_FORMAT:
            raise ValueError("not a notebookos state delta (or one written by an incompatible version)")
        _, execution_count, assigned, deleted, unpicklable, inline, pointer = fields
        return cls(
            execution_count=execution_count,
            assigned=tuple(assigned),
            deleted=tuple(deleted),
            unpicklable=dict(unpicklable),
            inline=inline,
            pointer=None if pointer is None else ObjectPointer(*pointer),
        )


class StateApplyError(Exception):
    """A delta could not be applied; the namespace is unchanged. The message names the variables affected."""


class NamespaceTracker:
    """Lives in each replica. The executor calls capture() after a cell, standbys apply(); both leave the tracker's
    view at the namespace as it then is, so the next capture diffs against it. snapshot() takes that view afresh,
    for when something else moved the namespace's values (tensors moved between devices, below).

    `store` receives payloads larger than `inline_limit` bytes or holding torch objects. `ignore` marks further
    names (besides IPython's own) that are never replicated.

    A tensor's fingerprint includes its device and data pointer, so moving tensors between devices reads as a
    change: snapshot after the cell's GPUs are bound and capture before they are released, or every moved
    tensor is captured again. Standbys receive every tensor on the CPU.
    """

    def __init__(
        self,
        store: ObjectStore,
        inline_limit: int = 1 << 20,
        ignore: Callable[[str], bool] | None = None,
    ) -> None:
        self._store = store
        self._inline_limit = inline_limit
        self._ignore = ignore
        self._seen: dict[str, _Seen] = {}
        self._not_replicated: dict[str, str] = {}
        self._untracked: set[Any] = set()  # names `_tracks` refused: never tracked, whatever their value

    @property
    def not_replicated(self) -> dict[str, str]:
        """Names whose latest value could not be replicated -> reason (on a standby those names are absent)."""
        return dict(self._not_replicated)

    def snapshot(self, user_ns: Mapping[str, Any]) -> None:
        """Remember every tracked name's identity and fingerprint, to diff against after the cell."""
        self._seen = self._observe(user_ns)

    def capture(
        self,
        user_ns: Mapping[str, Any],
        execution_count: int,
        extra: Mapping[str, Any] | None = None,
    ) -> StateDelta:
        """The delta from the last snapshot (or apply) to `user_ns`, with `extra` values riding in its payload.

        Never raises for values that cannot be pickled. Raises the store's error (e.g. StoreFullError) if the
        payload cannot be stored; the tracker is then unchanged, so capture can be retried.
        """
        now = self._observe(user_ns)
        changed = [name for name, seen in now.items() if not seen.same_as(self._seen.get(name))]
        deleted = tuple(name for name in self._seen if name not in now)
        changed_names = set(changed)
        unchanged = [name for name in now if name not in changed_names and name not in self._not_replicated]
        references = _References(user_ns, unchanged)
        values = {name: user_ns[name] for name in changed}
        payload = _Payload.build(values, dict(extra or {}), references, user_ns)
        inline, pointer = self._place(payload)
        self._seen = now
        self._record(changed, deleted, payload.unpicklable)
        return StateDelta(
            execution_count=execution_count,
            assigned=tuple(name for name in changed if name not in payload.unpicklable),
            deleted=deleted,
            unpicklable=payload.unpicklable,
            inline=inline,
            pointer=pointer,
        )

    def capture_all(
        self,
        user_ns: Mapping[str, Any],
        execution_count: int,
        extra: Mapping[str, Any] | None = None,
    ) -> StateDelta:
        """A full snapshot: the delta that, applied to an empty namespace, reproduces every tracked name of `user_ns`.

        Restore it with `apply` on a fresh tracker and a fresh namespace (a fresh IPython shell's). Everything is
        pickled by value in one pickle, so no name needs to exist on the restoring side and references shared
        between values survive; notebook functions and classes are bound to the restoring namespace, as in
        `capture`. Values that cannot be pickled are left out and listed in `unpicklable`, together with the names
        this tracker already lists in `not_replicated` that `user_ns` lacks (a standby's lost names), so that the
        restored tracker reports them too. `deleted` is empty: a restore onto a namespace that still holds other
        names must remove those first.

        The tracker's own bookkeeping (what `capture` diffs against, and `not_replicated`) is left untouched: the
        next snapshot()/capture() cycle reports exactly what the next cell changes. The payload goes to the store
        under the same rules as `capture` (large or holding torch objects); the store's errors propagate.
        """
        values = {name: value for name, value in user_ns.items() if self._replicates(name, value)}
        references = _References(user_ns, ())  # none: every object is pickled by value
        # Names whose value could not be pickled last time are tried alone first, so that an open file kept in the
        # namespace does not make every snapshot pickle everything twice (see _Payload.build).
        suspects = {name: values[name] for name in self._not_replicated if name in values}
        unpicklable = _culprits(suspects, references, user_ns)
        values = {name: value for name, value in values.items() if name not in unpicklable}
        payload = _Payload.build(values, dict(extra or {}), references, user_ns)
        inline, pointer = self._place(payload)
        unpicklable.update(payload.unpicklable)
        lost = {name: reason for name, reason in self._not_replicated.items() if name not in user_ns}
        return StateDelta(
            execution_count=execution_count,
            assigned=tuple(name for name in values if name not in unpicklable),
            deleted=(),
            unpicklable={**lost, **unpicklable},
            inline=inline,
            pointer=pointer,
        )

    def tracked_names(self, user_ns: Mapping[str, Any]) -> list[str]:
        """The names of `user_ns` this tracker replicates: what a restore from a full snapshot replaces."""
        return [name for name, value in user_ns.items() if self._replicates(name, value)]

    @staticmethod
    def referenced_keys(delta: StateDelta | bytes) -> set[str]:
        """The object-store keys `delta` (or its `to_bytes()` form) needs in order to be applied.

        A delta's payload is either inline or one stored object, and payloads never point at further objects, so
        this is empty or one key. A collector keeps the union over the latest full snapshot and the log entries
        after it, and may delete every other object.
        """
        if isinstance(delta, (bytes, bytearray, memoryview)):
            delta = StateDelta.from_bytes(bytes(delta))
        return set() if delta.pointer is None else {delta.pointer.key}

    def apply(self, delta: StateDelta, user_ns: MutableMapping[str, Any]) -> dict[str, Any]:
        """Bring `user_ns` to the executor's state after the delta's cell; return the delta's `extra` values.

        All-or-nothing: on StateApplyError the namespace is unchanged.
        """
        values, extra = self._load(delta, user_ns)
        lost = tuple(delta.unpicklable)
        for name in (*delta.deleted, *lost):
            user_ns.pop(name, None)
            self._seen.pop(name, None)
        user_ns.update(values)
        fingerprint = Fingerprinter(user_ns)
        self._seen.update((name, _Seen.of(value, fingerprint)) for name, value in values.items())
        self._record((*values, *lost), delta.deleted, delta.unpicklable)
        return extra

    def _observe(self, user_ns: Mapping[str, Any]) -> dict[str, _Seen]:
        """Every tracked name's identity and fingerprint. Untracked names are remembered as such: IPython adds
        `_i<N>` for every cell and never removes it, so a session's namespace holds a name per cell run, and testing
        each against the history pattern twice a cell made every cell slower than the one before (1.5 ms a cell
        after 3,000 cells; now 0.2 ms)."""
        fingerprint = Fingerprinter(user_ns)
        untracked = self._untracked
        seen: dict[str, _Seen] = {}
        for name in [name for name in user_ns if name not in untracked]:
            if not self._tracks(name):
                untracked.add(name)
            elif not _ipython_binding(name, user_ns[name]):
                seen[name] = _Seen.of(user_ns[name], fingerprint)
        return seen

    def _replicates(self, name: Any, value: Any) -> bool:
        return self._tracks(name) and not _ipython_binding(name, value)

    def _tracks(self, name: Any) -> bool:
        if not isinstance(name, str) or name in _IPYTHON_NAMES or _IPYTHON_HISTORY_NAME.fullmatch(name):
            return False
        return self._ignore is None or not self._ignore(name)

    def _place(self, payload: _Payload) -> tuple[bytes | None, ObjectPointer | None]:
        """Inline when small and torch-free (torch payloads grow with training, and belong in the store)."""
        if not payload.parts:
            return None, None
        size = payload.nbytes
        if size <= self._inline_limit and not payload.holds_torch:
            return b"".join(payload.parts), None
        return None, ObjectPointer(self._store.put_parts(payload.parts), size)

    def _record(self, assigned: Iterable[str], deleted: Iterable[str], unpicklable: Mapping[str, str]) -> None:
        """Keep `not_replicated` current: a name is listed while its latest value could not be replicated."""
        for name in (*assigned, *deleted):
            self._not_replicated.pop(name, None)
        self._not_replicated.update(unpicklable)

    def _load(self, delta: StateDelta, user_ns: MutableMapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The delta's values and extras, unpickled against `user_ns`, which is left as it was."""
        try:
            if delta.pointer is not None:
                reader = self._store.open(delta.pointer.key)
            elif delta.inline is not None:
                reader = BytesReader(delta.inline)
            else:
                return {}, {}
            stream, storages = _read_verified(reader)
        except ObjectStoreError as error:
            raise _apply_error(delta, str(error)) from error
        except ValueError as error:
            raise _apply_error(delta, f"its payload is malformed ({error}).") from error
        before = dict(user_ns)
        try:
            values, extra = _PayloadUnpickler(io.BytesIO(stream), user_ns, storages).load()
        except Exception as error:  # noqa: BLE001 - whatever unpickling raises, the apply must fail cleanly
            problem = f"its payload cannot be unpickled here ({type(error).__name__}: {error})."
            raise _apply_error(delta, problem) from error
        finally:
            _undo_writes(user_ns, before)
        if set(values) != set(delta.assigned):
            raise _apply_error(delta, f"its payload holds {sorted(values)}, so it belongs to another delta.")
        return values, extra


@dataclass(frozen=True, slots=True)
class _Seen:
    """How a name's value looked: its identity (pinned) and its fingerprint."""

    pin: Callable[[], Any]
    fingerprint: Hashable

    @classmethod
    def of(cls, value: Any, fingerprint: Fingerprinter) -> _Seen:
        return cls(_pin(value), fingerprint(value))

    def same_as(self, earlier: _Seen | None) -> bool:
        return earlier is not None and earlier.pin() is self.pin() and earlier.fingerprint == self.fingerprint

    def __repr__(self) -> str:  # a pinned value may be huge: do not print it
        return f"_Seen({type(self.pin()).__name__})"


def _ipython_binding(name: str, value: Any) -> bool:
    """``name`` holds what IPython binds it to in every namespace (_IPYTHON_BINDINGS): ``open`` is IPython's wrapper
    of the builtin (functools.wraps leaves no other mark on it than its code's file), or the builtin itself."""
    if name not in _IPYTHON_BINDINGS:
        return False
    code = getattr(value, "__code__", None)
    return value is io.open or (
        getattr(value, "__wrapped__", None) is io.open and code is not None and "IPython" in code.co_filename
    )


def _pin(value: Any) -> Callable[[], Any]:
    """A callable returning `value`, keeping identity comparable across a cell without address reuse.

    A weak reference where the type allows it, so a `del` in the cell still frees a tensor or model; otherwise
    (lists, dicts, scalars) a strong one, which keeps a deleted object's address from being reused by a new
    object that would then look unchanged.
    """
    try:
        return weakref.ref(value)
    except TypeError:
        return lambda: value


class _References:
    """Objects a standby already holds, found by identity, so that a payload names them instead of copying them.

    These are the values of unchanged names, the parameters, buffers and submodules of unchanged torch modules (a
    new optimizer over an existing model must share the standby's parameters), and the parameters of unchanged
    torch optimizers (a model changed without touching its parameters, by `model.eval()` say, must keep sharing
    them with its unchanged optimizer; an optimizer's fingerprint covers its parameters', so they are unchanged
    too). Parts are collected only when the payload turns out to hold a torch object, so that `x = 1` stays cheap.
    """

    def __init__(self, user_ns: Mapping[str, Any], names: Iterable[str]) -> None:
        torch = sys.modules.get("torch")
        self._torch_types = () if torch is None else (torch.Tensor, torch.nn.Module)
        self._by_id: dict[int, tuple[Any, ...]] = {}
        self._holders: list[tuple[str, Any]] = []  # unchanged torch modules and optimizers, by name
        for name in names:
            value = user_ns[name]
            if not isinstance(value, _NO_IDENTITY_TYPES):
                self._by_id.setdefault(id(value), ("name", name))
            if torch is not None and isinstance(value, (torch.nn.Module, torch.optim.Optimizer)):
                self._holders.append((name, value))

    def find(self, obj: Any) -> tuple[Any, ...] | None:
        found = self._by_id.get(id(obj))
        if found is None and self._holders and isinstance(obj, self._torch_types):
            self._add_torch_parts()
            found = self._by_id.get(id(obj))
        return found

    def _add_torch_parts(self) -> None:
        import torch  # in sys.modules: holders exist only if it was

        holders, self._holders = self._holders, []
        for name, module in holders:
            if isinstance(module, torch.nn.Module):
                parts = (*module.named_modules(), *module.named_parameters(), *module.named_buffers())
                for path, part in parts:
                    self._by_id.setdefault(id(part), ("attr", name, path))
        for name, optimizer in holders:
            if isinstance(optimizer, torch.optim.Optimizer):
                for group_index, group in enumerate(optimizer.param_groups):
                    for index, parameter in enumerate(group["params"]):
                        self._by_id.setdefault(id(parameter), ("param", name, group_index, index))


class _PayloadPickler(NotebookPickler):
    """Pickles a delta's values, referring to objects the standby already has instead of copying them.

    Notebook functions are bound to the standby's namespace: cloudpickle gives each pickled function a dict
    standing for its globals (`globals_ref`), and the one standing for `user_ns` is pickled as a reference that
    resolves to the standby's namespace.

    Tensor storages are pickled as their number among `storages`, whose raw bytes follow the pickle in the payload
    straight from the storages' memory (no copy here, but a GPU storage's to the host), and which a standby reads
    straight into CPU storages of its own (one copy). torch's own reduction copies a storage three times on each
    side (through torch.save into a BytesIO), gives every view its own copy, and would put a GPU tensor back on a
    GPU of the standby, which holds none while idle; this way views stay views and standbys stay on the CPU.
    """

    def __init__(self, file: io.BytesIO, user_ns: Mapping[str, Any], references: _References) -> None:
        super().__init__(file, user_ns)
        self._references = references
        self._namespace_stand_in: dict[str, Any] = {}
        self.globals_ref[id(user_ns)] = self._namespace_stand_in
        self._torch = sys.modules.get("torch")
        self._torch_types = () if self._torch is None else (self._torch.Tensor, self._torch.nn.Module,
                                                              self._torch.optim.Optimizer)  # fmt: skip
        self._storage_type = None if self._torch is None else self._torch.UntypedStorage
        self._storage_numbers: dict[int, int] = {}  # id of each storage pickled -> its number
        self._pickled_storages: list[Any] = []  # held, so that no id in `_storage_numbers` is reused meanwhile
        self.storages: list[Any] = []  # CPU storages (host copies of GPU ones) whose bytes follow the pickle
        self.holds_torch = False

    def persistent_id(self, obj: Any) -> tuple[Any, ...] | None:
        if obj is self._namespace_stand_in:
            return _NAMESPACE_REFERENCE
        if self._storage_type is not None and isinstance(obj, self._storage_type) and obj.device.type != "meta":
            return (_STORAGE, self._storage_number(obj))
        return self._references.find(obj)

    def _storage_number(self, storage: Any) -> int:
        """Its number among `storages`, added there the first time (views of one storage share it)."""
        number = self._storage_numbers.get(id(storage))
        if number is None:
            number = self._storage_numbers[id(storage)] = len(self.storages)
            self._pickled_storages.append(storage)
            # The host's copy: standbys keep tensors parked on the CPU, as idle replicas do.
            self.storages.append(storage if storage.device.type == "cpu" else storage.cpu())
        return number

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, self._torch_types):
            self.holds_torch = True
        elif self._torch is not None:
            if isinstance(obj, self._torch.storage.TypedStorage):
                return _typed_storage, (obj._untyped_storage, obj.dtype)
        return super().reducer_override(obj)


def _untyped_storage(data: bytearray) -> Any:
    """A CPU storage holding a copy of `data`: what payloads written before the header (`_PAYLOAD_MAGIC`) name
    for each storage, its bytes inside the pickle."""
    import torch

    return torch.frombuffer(data, dtype=torch.uint8).clone().untyped_storage() if data else torch.UntypedStorage(0)


def _new_storage(size: int) -> Any:
    """A CPU storage of `size` bytes to read a tensor's bytes into: torch-allocated, so that the tensors on it can
    be resized."""
    import torch

    return torch.UntypedStorage(size)


def _typed_storage(untyped: Any, dtype: Any) -> Any:
    import torch

    return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


class _PayloadUnpickler(pickle.Unpickler):
    """Resolves the payload's references against the standby's namespace, and its storages' numbers."""

    def __init__(self, file: io.BytesIO, user_ns: Mapping[str, Any], storages: Sequence[Any]) -> None:
        super().__init__(file)
        self._user_ns = user_ns
        self._storages = storages

    def persistent_load(self, pid: tuple[Any, ...]) -> Any:
        if pid == _NAMESPACE_REFERENCE:
            return self._user_ns
        kind, name, *path = pid
        if kind == _STORAGE:
            return self._storages[name]
        if name not in self._user_ns:
            raise LookupError(f"it refers to variable {name!r}, which this replica does not have")
        obj = self._user_ns[name]
        if kind == "attr":
            for attribute in path[0].split("."):
                obj = getattr(obj, attribute)
        elif kind == "param":
            group_index, index = path
            obj = obj.param_groups[group_index]["params"][index]
        return obj


@dataclass(frozen=True)
class _Payload:
    """A delta's pickled values and what pickling them found out.

    `parts` concatenated are the payload (header, pickle, storages' bytes); empty when there is nothing to send.
    The last parts view the memory of `storages`, which the payload keeps alive.
    """

    parts: tuple[memoryview, ...]
    holds_torch: bool
    storages: tuple[Any, ...]
    unpicklable: dict[str, str]

    @property
    def nbytes(self) -> int:
        return sum(part.nbytes for part in self.parts)

    @classmethod
    def build(
        cls,
        values: dict[str, Any],
        extra: dict[str, Any],
        references: _References,
        user_ns: Mapping[str, Any],
    ) -> _Payload:
        """Pickle everything at once; only when that fails, find the culprits one by one and leave them out."""
        if not values and not extra:
            return cls((), False, (), {})
        try:
            return cls(*_dump((values, extra), references, user_ns), {})
        except Exception as error:  # noqa: BLE001 - some value cannot be pickled: find which below
            combined_error = error
        unpicklable = _culprits(values, references, user_ns)
        dropped_extra = _culprits(extra, references, user_ns)
        if not unpicklable and not dropped_extra:  # each pickles alone but not together: treat all values as lost
            unpicklable = {name: unpicklable_reason(value, combined_error) for name, value in values.items()}
        if dropped_extra:
            _log.warning("not replicating extra values that cannot be pickled: %s", dropped_extra)
        values = {name: value for name, value in values.items() if name not in unpicklable}
        extra = {key: value for key, value in extra.items() if key not in dropped_extra}
        return cls(*_dump((values, extra), references, user_ns), unpicklable)


def _dump(
    obj: Any, references: _References, user_ns: Mapping[str, Any]
) -> tuple[tuple[memoryview, ...], bool, tuple[Any, ...]]:
    """The payload's parts, whether it holds torch objects, and the storages whose memory its parts view."""
    stream = io.BytesIO()
    pickler = _PayloadPickler(stream, user_ns, references)
    pickler.dump(obj)
    storages = tuple(pickler.storages)
    return _payload_parts(stream.getbuffer(), storages), pickler.holds_torch, storages


def _payload_parts(stream: memoryview, storages: Sequence[Any]) -> tuple[memoryview, ...]:
    """The header that says how long each part is, the pickle `stream`, then each storage's bytes."""
    sizes = [storage.nbytes() for storage in storages]
    header = b"".join(
        (_PAYLOAD_MAGIC, _PAYLOAD_COUNTS.pack(len(sizes), stream.nbytes), *map(_STORAGE_SIZE.pack, sizes))
    )
    storage_bytes = (raw_memory(storage.data_ptr(), size) for storage, size in zip(storages, sizes, strict=True))
    return (memoryview(header), stream, *storage_bytes)


def _read_verified(reader: ObjectReader) -> tuple[bytearray, list[Any]]:
    """The payload's pickle and storages (`_read_payload`), once the store has verified every byte of it: a damaged
    object is reported as damaged, even when the damage shows first as a header that does not fit."""
    with reader:
        try:
            payload = _read_payload(reader)
        except ValueError:
            reader.verify()
            raise
        reader.verify()
    return payload


def _read_payload(reader: ObjectReader) -> tuple[bytearray, list[Any]]:
    """The payload's pickle, and its storages, each read straight into a new CPU storage. ValueError if the header
    does not match the payload's size; a payload without a header is a bare pickle."""
    head = _read(reader, min(len(_PAYLOAD_MAGIC), reader.size))
    if head != _PAYLOAD_MAGIC:
        return head + _read(reader, reader.size - reader.position), []
    count, stream_size = _PAYLOAD_COUNTS.unpack(_read(reader, _PAYLOAD_COUNTS.size))
    sizes = [size for (size,) in _STORAGE_SIZE.iter_unpack(_read(reader, count * _STORAGE_SIZE.size))]
    if reader.position + stream_size + sum(sizes) != reader.size:
        raise ValueError(f"its header does not describe its {reader.size} bytes")
    stream = _read(reader, stream_size)
    storages = [_new_storage(size) for size in sizes]
    for storage, size in zip(storages, sizes, strict=True):
        reader.readinto(raw_memory(storage.data_ptr(), size))
    return stream, storages


def _read(reader: ObjectReader, size: int) -> bytearray:
    """The next `size` bytes (ValueError if the payload has fewer left: a header must not allocate past it)."""
    if size > reader.size - reader.position:
        raise ValueError(f"it ends {size - (reader.size - reader.position)} bytes early")
    data = bytearray(size)
    reader.readinto(memoryview(data))
    return data


def _culprits(values: Mapping[str, Any], references: _References, user_ns: Mapping[str, Any]) -> dict[str, str]:
    """The values among `values` that cannot be pickled -> why."""
    culprits = {}
    for name, value in values.items():
        try:
            _dump(value, references, user_ns)
        except Exception as error:  # noqa: BLE001 - any pickling failure makes the value unreplicable
            culprits[name] = unpicklable_reason(value, error)
    return culprits


def _undo_writes(user_ns: MutableMapping[str, Any], before: Mapping[str, Any]) -> None:
    """Put `user_ns` back as it was in `before`.

    Unpickling a notebook function runs cloudpickle code that writes into the namespace the function is bound
    to (`__builtins__`, and the function's globals when they travel with it). Apply must change only the names
    the delta lists, and nothing at all when it fails, so whatever unpickling wrote is undone.
    """
    for name in user_ns.keys() - before.keys():
        del user_ns[name]
    for name, value in before.items():
        if user_ns.get(name, _undo_writes) is not value:
            user_ns[name] = value


def _apply_error(delta: StateDelta, problem: str) -> StateApplyError:
    names = ", ".join(delta.assigned) or "the cell's extra values"
    source = f"object {delta.pointer.key}" if delta.pointer is not None else "its inline payload"
    return StateApplyError(
        f"could not restore {names} from cell [{delta.execution_count}] ({source}): {problem} This replica's "
        "namespace was left unchanged; re-run that cell to recompute these variables."
    )


class _BuiltinsOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a state delta holds only builtin values, not {module}.{name}")
