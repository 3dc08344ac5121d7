"""The replicated snapshot state that makes Raft log compaction possible, and pysyncobj's dump file for it.

The kernel's state machine is the namespace, kept on each replica's main thread; pysyncobj cannot pickle it (and
must not wait for it). What pysyncobj needs in order to drop the log before an index is a state from which the
entries up to that index can be recovered. :class:`SnapshotState` is that state, kept synchronously on pysyncobj's
thread as entries commit: the latest accepted :class:`~.entries.Snapshot` entry (a full namespace delta, with large
values in the object store) and every entry committed after it (the tail). It is small (bounded by the snapshot
interval), so pickling it in pysyncobj's tick thread is fast.

pysyncobj calls :meth:`SnapshotState.serialize` to write its dump file and :meth:`SnapshotState.deserialize` when a
dump replaces this replica's log: at start (its own dump) or when the leader sends one to a follower too far behind
(or to a new member). The latter is the only notice that the state was replaced: the entries inside it are never
applied one by one, so a newer dump is handed to the replica as one :class:`Restore`, in order with the entries.

pysyncobj may install an older dump on an up-to-date follower and then send entries it has already applied again;
``applied`` (the index of the last entry this replica applied) makes both no-ops.

What a replica's own restart needs from the object store is the objects of its dump and of the entries after it
in its journal, besides those of its latest snapshot and the entries after that (``referenced_keys``): what the
garbage collector keeps.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .entries import CellKey, ExecutionRecord, LogEntry, MembershipChanged, Snapshot
from .namespace import NamespaceTracker

log = logging.getLogger(__name__)

_DUMP_FORMAT = 1


@dataclass(frozen=True)
class SnapshotAccepted:
    """A :class:`Snapshot` entry at log ``index`` became the latest one: a replica whose namespace missed something
    rebuilds from it (the others already hold what it captures)."""

    index: int
    snapshot: Snapshot


@dataclass(frozen=True)
class DumpWritten:
    """This replica wrote its dump (log compaction): objects only the previous dump pointed to may go now. Handed on
    after every entry the dump covers, so a replica that applies it has used their objects already."""


@dataclass(frozen=True)
class Restore:
    """Replace the replica's whole state by ``snapshot`` (None: the empty namespace), then apply ``tail``.

    ``members`` are the latest membership changes, per replica, from before the snapshot (the tail holds later ones).
    ``index`` is the log index this state reaches.
    """

    index: int
    snapshot: Snapshot | None
    tail: tuple[LogEntry, ...]
    members: tuple[MembershipChanged, ...]


class SnapshotState:
    """The latest snapshot and the entries after it, updated on pysyncobj's thread only.

    ``on_restore`` receives a :class:`Restore` when a dump newer than what this replica applied replaces its state;
    ``on_dumped`` is called once this replica has written its own dump.
    """

    def __init__(self, on_restore: Callable[[Restore], None], on_dumped: Callable[[], None] = lambda: None) -> None:
        self._on_restore = on_restore
        self._on_dumped = on_dumped
        self.applied = 0  # log index of the last entry applied here
        self.snapshot: Snapshot | None = None
        self.tail: list[LogEntry] = []
        self.records_in_tail = 0  # execution records since the snapshot: when the executor takes the next one
        self._members: dict[int, MembershipChanged] = {}  # from before the snapshot
        self._last_record: CellKey | None = None
        self.dumps = 0  # dumps written or adopted: the garbage collector runs once per dump
        self._dumped: tuple[LogEntry | None, ...] = ()  # the state on disk: its snapshot (None before one) and tail
        self._since_dump: list[LogEntry] = []  # entries admitted after it (the journal's), snapshots included

    def referenced_keys(self) -> set[str]:
        """The object-store keys that the state on disk (the dump and the journal after it) and the state in
        memory (the latest snapshot and the entries after it) point to: what this replica's restart, or a member
        joining from its dump, may still need. Read from other threads: an entry admitted meanwhile can make it miss
        that entry's own (just written) object, which the collector's grace period protects."""
        entries = [self.snapshot, *self.tail, *self._dumped, *self._since_dump]
        keys: set[str] = set()
        for entry in entries:
            if isinstance(entry, (ExecutionRecord, Snapshot)):
                keys |= NamespaceTracker.referenced_keys(entry.delta)
        return keys

    def admit(self, index: int, entry: LogEntry) -> bool:
        """Record the committed entry at ``index``; False if it must not be applied (again) by the replica.

        Entries at or below ``applied`` were applied already (pysyncobj re-sends them after installing an older
        dump). Snapshot entries are bookkeeping only: a replica's namespace already holds what they capture.
        """
        if index <= self.applied:
            return False
        self.applied = index
        self._since_dump.append(entry)
        if isinstance(entry, Snapshot):
            if entry.covers == self._last_record:
                # Entries after the covered record (a re-sent attempt's proposals and votes, when its executor died
                # with the snapshot in flight) are not in the snapshot: they stay in the tail.
                # (No record in the tail: a retried append committed the same snapshot twice.)
                covered = max((i for i, e in enumerate(self.tail) if isinstance(e, ExecutionRecord)), default=-1) + 1
                self._members.update((m.replica, m) for m in self.tail[:covered] if isinstance(m, MembershipChanged))
                self.snapshot, self.tail, self.records_in_tail = entry, self.tail[covered:], 0
            return False
        if isinstance(entry, ExecutionRecord):
            self._last_record = entry.cell
            self.records_in_tail += 1
        self.tail.append(entry)
        return True

    def committed(self) -> Restore:
        """The committed state as admitted so far: the latest snapshot and every entry after it, up to ``applied``.
        A replica whose namespace ran ahead of the log (its own cell's record never committed) rebuilds from it."""
        return Restore(self.applied, self.snapshot, tuple(self.tail), tuple(self._members.values()))

    def serialize(self, file_name: str, raft_data: tuple[Any, ...]) -> None:
        """pysyncobj's serializer: write this state with pysyncobj's own ``raft_data`` (the entries at and before
        the applied index and the cluster's nodes) to ``file_name``, durably, before returning. Runs in the tick
        thread right after it applied everything committed, so this state is at ``raft_data``'s index."""
        state = (
            self.applied,
            self.snapshot,
            tuple(self.tail),
            self.records_in_tail,
            tuple(self._members.values()),
            self._last_record,
        )
        with open(file_name, "wb") as f:
            pickle.dump((_DUMP_FORMAT, raft_data, state), f, protocol=5)
            f.flush()
            os.fsync(f.fileno())
        self._dumped_now()
        self._on_dumped()

    def deserialize(self, file_name: str) -> tuple[Any, ...]:
        """pysyncobj's deserializer: adopt the dump in ``file_name`` if it is newer than this replica's state, and
        return pysyncobj's part unchanged. An unreadable dump raises: pysyncobj logs it and keeps its log."""
        raft_data, state = _read(file_name)
        self.adopt(state)
        return raft_data

    def load(self, file_name: str | os.PathLike) -> None:
        """Adopt this replica's own dump before pysyncobj starts, so that no journal entry is applied on a state
        the dump has not yet restored (pysyncobj's own load waits for its network to be ready)."""
        self.adopt(_read(file_name)[1])

    def adopt(self, state: tuple[Any, ...]) -> None:
        applied, snapshot, tail, records_in_tail, members, last_record = state
        if applied <= self.applied:
            log.info("ignored a snapshot of log index %d: this replica has applied up to %d", applied, self.applied)
            # pysyncobj still keeps it as this replica's dump: a restart would load it and replay from there.
            self._dumped = (*self._dumped, *self._since_dump, snapshot, *tail)
            self._since_dump = []
            return
        self.applied, self.snapshot, self.tail, self.records_in_tail = applied, snapshot, list(tail), records_in_tail
        self._members = {m.replica: m for m in members}
        self._last_record = last_record
        self._dumped_now()  # pysyncobj keeps the dump it installs as this replica's own
        self._on_restore(Restore(applied, snapshot, tuple(tail), tuple(members)))

    def _dumped_now(self) -> None:
        """The state in memory is now also the state on disk."""
        self._dumped, self._since_dump = (self.snapshot, *self.tail), []
        self.dumps += 1


def dump_path(journal_path: str) -> str:
    """Where pysyncobj keeps a replica's dump: beside its journal, on the same disk."""
    return str(Path(journal_path).with_name(Path(journal_path).name + ".dump"))


def _read(file_name: str | os.PathLike) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    with open(file_name, "rb") as f:
        fmt, raft_data, state = pickle.load(f)
    if fmt != _DUMP_FORMAT:
        raise ValueError(
            f"{file_name} is a notebookos Raft dump of format {fmt}, not {_DUMP_FORMAT}: it was written "
            "by another version; remove it and the journal beside it to rebuild from the peers"
        )
    return raft_data, state
