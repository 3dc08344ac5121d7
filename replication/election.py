"""Executor election, derived from the committed Raft log alone.

Each replica feeds every committed entry, in log order, into its own :class:`ElectionBook`. Because the log is the
same everywhere, so are the decisions; no replica needs to ask another who won.

Rules (docs/architecture.md, "One cell", step 2, and its fencing paragraph):

* One replica invited to LEAD (``leads == 1``): only that replica proposes, and its proposal decides: LEAD makes
  it the executor, YIELD (it cannot get its GPUs) decides :data:`ALL_YIELD`. The other replicas append nothing,
  which halves the log traffic of an ordinary cell.
* Several invited: once every voter's proposal is in, each replica votes for the previous executor if it proposed
  LEAD, else for the first committed LEAD; the first committed vote decides.
* Every voter YIELDs: the attempt is decided as :data:`ALL_YIELD`; the front retries with a higher attempt number
  elsewhere.

Without an election: the replica that ran the previous cell, invited alone to run the next one, runs it at once
and appends no proposal (:meth:`ElectionBook.solo_base`), since nobody else was asked and its own record is the
latest state. Its record is *solo* and names the record it builds on; it counts only if that is still the latest
accepted record, no attempt was decided since, and no later attempt of the cell exists. So a cell costs one Raft
round (its record) instead of two, and a solo record that lost a race with a failover is fenced off like any other.

Fencing: an :class:`ExecutionRecord` counts only if its author is the decided executor of its attempt and no later
attempt has been decided since. A presumed-dead executor that wakes up late cannot overwrite its successor's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .entries import CellKey, ExecutionRecord, Proposal, Role, Snapshot, Vote

ALL_YIELD = -1
_ROUND_WINDOW = 256


@dataclass
class _Round:
    proposals: list[Proposal] = field(default_factory=list)
    decided: int | None = None
    voted: bool = False


@dataclass(frozen=True)
class VoteNeeded:
    """Returned by :meth:`ElectionBook.on_proposal` when this replica must now append its vote."""

    cell: CellKey
    candidate: int


class ElectionBook:
    """The election state of one kernel as seen by one replica, updated entry by entry in log order."""

    def __init__(self, replica: int) -> None:
        self.replica = replica
        self.previous_executor: int | None = None
        self._rounds: dict[CellKey, _Round] = {}
        # The attempts of each cell that have a round in `_rounds`: `_superseded` asks it for every entry, and
        # scanning the whole window of rounds each time cost a standby 5 % of its CPU per trivial cell.
        self._attempts: dict[str, set[int]] = {}
        self._latest: CellKey | None = None
        self._head: CellKey | None = None  # the attempt of the latest accepted record: the state every replica holds
        self._records: dict[str, ExecutionRecord] = {}

    @classmethod
    def after_snapshot(cls, replica: int, snapshot: Snapshot) -> ElectionBook:
        """The book of a replica restored from ``snapshot`` instead of replaying the log before it: what the
        entries after it need. The covered attempt is the latest decided one (so that its late entries and a stale
        record are fenced off as before), its executor the previous one, and its reply answers a re-sent attempt
        (the record kept has no delta: its changes are in the snapshot). Older attempts are forgotten; the front
        only ever re-sends the cell it is running."""
        book = cls(replica)
        cell = snapshot.covers
        book._open(cell).decided = snapshot.executor
        book._latest = book._head = cell
        book.previous_executor = snapshot.executor
        book._records[cell.msg_id] = ExecutionRecord(
            cell, snapshot.executor, snapshot.execution_count, "", snapshot.reply, b""
        )
        return book

    def decision(self, cell: CellKey) -> int | None:
        """The executor of ``cell`` (``ALL_YIELD`` if nobody leads), or None while undecided."""
        rnd = self._rounds.get(cell)
        return rnd.decided if rnd else None

    def committed_record(self, msg_id: str) -> ExecutionRecord | None:
        """The accepted execution record of any attempt of this cell, if one is in the log."""
        return self._records.get(msg_id)

    def on_proposal(self, p: Proposal) -> VoteNeeded | None:
        if self._superseded(p.cell):
            return None
        rnd = self._open(p.cell)
        if rnd.decided is not None:
            return None
        rnd.proposals.append(p)
        if p.leads <= 1:
            self._decide(p.cell, p.replica if p.role is Role.LEAD else ALL_YIELD)
            return None
        leads = [x.replica for x in rnd.proposals if x.role is Role.LEAD]
        proposers = {x.replica for x in rnd.proposals}
        if not proposers.issuperset(p.voters):
            return None
        if not leads:
            self._decide(p.cell, ALL_YIELD)
            return None
        if rnd.voted or self.replica not in p.voters:
            return None
        rnd.voted = True
        preferred = self.previous_executor if self.previous_executor in leads else leads[0]
        return VoteNeeded(p.cell, preferred)

    def on_vote(self, v: Vote) -> None:
        rnd = self._rounds.get(v.cell)
        if rnd is not None and rnd.decided is None and not self._superseded(v.cell):
            self._decide(v.cell, v.candidate)

    def solo_base(self, replica: int) -> CellKey | None:
        """The record ``replica`` may build a cell on without an election, or None if it must be elected: it wrote
        the latest accepted record, and nothing was decided after it (so no failover attempt is under way)."""
        head = self._head
        if head is None or head != self._latest or self.decision(head) != replica:
            return None
        return head

    def accepts(self, record: ExecutionRecord) -> bool:
        """Fencing: apply a record only from the decided executor of the latest decided attempt; a solo record only
        on top of the record it was built on, with nothing decided since."""
        if record.cell.msg_id in self._records:
            return False
        if record.solo:
            if record.after != self._head or self._latest != self._head or self._superseded(record.cell):
                return False
            if self._open(record.cell).decided is not None:
                return False
            self._decide(record.cell, record.executor)
        elif record.cell != self._latest or self.decision(record.cell) != record.executor:
            return False
        self._records[record.cell.msg_id] = record
        self._head = record.cell
        return True

    def _open(self, cell: CellKey) -> _Round:
        """The attempt's round, opened if it has none."""
        rnd = self._rounds.get(cell)
        if rnd is None:
            rnd = self._rounds[cell] = _Round()
            self._attempts.setdefault(cell.msg_id, set()).add(cell.attempt)
        return rnd

    def _superseded(self, cell: CellKey) -> bool:
        """A later attempt of the same cell exists: this attempt's entries arrive too late to matter."""
        return any(attempt > cell.attempt for attempt in self._attempts.get(cell.msg_id, ()))

    def _decide(self, cell: CellKey, executor: int) -> None:
        self._rounds[cell].decided = executor
        self._latest = cell
        if executor != ALL_YIELD:
            self.previous_executor = executor
        # Old rounds only matter to recognize late entries; a bounded window is plenty since the front runs one
        # cell at a time and sends each attempt's proposals right away.
        while len(self._rounds) > _ROUND_WINDOW:
            oldest = next(iter(self._rounds))
            del self._rounds[oldest]
            attempts = self._attempts[oldest.msg_id]
            attempts.discard(oldest.attempt)
            if not attempts:
                del self._attempts[oldest.msg_id]
        while len(self._records) > _ROUND_WINDOW:
            del self._records[next(iter(self._records))]
