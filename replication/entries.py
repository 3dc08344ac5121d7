"""The entry types of a kernel's Raft log.

Every replica appends to and applies the same totally ordered log, so every decision derived from it (who runs a
cell, whose state delta counts) is the same on every replica without further messages. Entries are small frozen
dataclasses; large values never travel in them (a state delta carries a pointer into the object store instead).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class CellKey:
    """One attempt at running one cell: the client's execute_request msg_id plus the front's attempt number.

    A re-run after failover is a new attempt of the same cell, so its election is separate from the first one and
    a delta from the earlier attempt can be recognized and fenced off.
    """

    msg_id: str
    attempt: int


class Role(str, enum.Enum):
    LEAD = "LEAD"
    YIELD = "YIELD"


@dataclass(frozen=True)
class Proposal:
    """A replica's bid for one attempt: LEAD (with the devices the scheduler pre-committed for it) or YIELD.

    ``leads`` is how many replicas the front invited to LEAD in this attempt. With one invitation the first
    committed LEAD decides at once; with several the replicas hold a vote round. ``voters`` lists the replicas the
    front sent the attempt to, so that every replica knows when all proposals are in.
    """

    cell: CellKey
    replica: int
    role: Role
    leads: int
    voters: tuple[int, ...]
    devices: tuple[int, ...] = ()


@dataclass(frozen=True)
class Vote:
    """A replica's vote for the executor of an attempt in which several replicas proposed LEAD."""

    cell: CellKey
    voter: int
    candidate: int


@dataclass(frozen=True)
class ExecutionRecord:
    """What the executor of an attempt produced: its reply and the state delta, in one entry.

    ``delta`` is a serialized :class:`~notebookos.replication.namespace.StateDelta` (large values inside it are
    pointers into the object store). ``reply`` is the execute_reply content, kept so that a re-sent attempt of a
    cell whose record is already committed is answered from the log instead of running the cell twice.
    """

    cell: CellKey
    executor: int
    execution_count: int
    source: str
    reply: dict
    delta: bytes
    # A record of a cell its executor ran without an election (election.py, "Without an election"): the record it
    # builds on, which must still be the latest accepted one when this record commits. Defaults read the records of
    # journals written before solo cells existed.
    solo: bool = False
    after: CellKey | None = None


@dataclass(frozen=True)
class MembershipChanged:
    """Replica ``replica`` is now the Raft node at ``raft_address`` (its peer API at ``peer_url``): a replacement
    on another machine joined in place of a lost replica. Committed after pysyncobj's own membership change, so
    every replica maps replica indexes to the same nodes."""

    replica: int
    raft_address: str
    peer_url: str


@dataclass(frozen=True)
class Snapshot:
    """The whole namespace after the accepted record of ``covers``, appended by that record's executor every few
    cells so that the log before it can be compacted away (snapshots.py).

    ``delta`` is a ``capture_all`` :class:`~notebookos.replication.namespace.StateDelta` (large values in the object
    store). ``executor``, ``execution_count`` and ``reply`` are the covered record's, so that a replica restored from
    the snapshot still fences, counts and answers a re-sent attempt of that cell like one that replayed the log.
    ``installs`` are the package-install lines (``%pip install ...``) of every accepted cell up to ``covers``, in
    order: they changed the executor's machine, which no namespace carries, so a replica restored from the snapshot
    on another machine runs them before it loads the namespace. The
    state machine ignores a snapshot whose ``covers`` is not the last record committed before it: another record
    slipped in between, and the snapshot would miss its changes.
    """

    covers: CellKey
    executor: int
    execution_count: int
    reply: dict
    delta: bytes
    installs: tuple[str, ...] = ()  # the default also reads snapshots written before installs were kept


@dataclass(frozen=True)
class SnapshotRequest:
    """A replica could not apply a committed state delta (a value that fails to load there, an object it cannot
    get): the next executor takes a :class:`Snapshot` after its cell instead of waiting for the interval, and the
    replica rebuilds its namespace from it rather than staying behind on the names it missed."""

    replica: int
    reason: str


LogEntry = Proposal | Vote | ExecutionRecord | MembershipChanged | Snapshot | SnapshotRequest
