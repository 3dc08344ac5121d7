"""One kernel's Raft log: a pysyncobj group across the kernel's replicas.

The state machine is deliberately empty: every committed entry is handed, in log order, to a callback owned by the
replica kernel, which keeps the namespace and the election book. pysyncobj only orders, replicates and journals.

Tuning (measured: ~100 ms commits with pysyncobj defaults, ~1 ms without batching): batching is off, so an entry
is sent at once instead of waiting for the next 100 ms append-entries tick (~1 ms commits on loopback instead of
~100 ms). Peers must authenticate with the
kernel's password. The journal lives on disk, so a replica restarted in place replays its log and keeps its state.

Log compaction: once the journal holds ``compact_after`` entries, pysyncobj writes a dump (snapshots.py: the latest
namespace snapshot entry and the entries after it) beside the journal and drops the entries it covers. Not more
often: a follower a single entry behind a leader that has just compacted is sent the whole dump and restores its
namespace from it (compacting at every snapshot did that to a follower every few cells). A replica
restarted in place loads its dump and replays the rest of its journal; a follower too far behind, or a new member,
is sent the leader's dump and restores from it. Without a journal (no disk), there is no dump and no compaction.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import types
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import pysyncobj.dns_resolver
import pysyncobj.syncobj
import pysyncobj.tcp_connection
import pysyncobj.transport
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

from .entries import ExecutionRecord, LogEntry, MembershipChanged, Snapshot
from .snapshots import DumpWritten, Restore, SnapshotAccepted, SnapshotState, dump_path


# pysyncobj draws its election timeouts (and a few delays) from the process-wide `random` generator, which is also
# the notebook's: after `random.seed(1)` a user would see Raft's draws interleaved with their own, and different
# numbers than on a plain kernel. Its modules get a generator of their own.
for _module in (pysyncobj.syncobj, pysyncobj.transport, pysyncobj.dns_resolver):
    _module.random = random.Random()
_draws = random.Random()  # this module's own draws, for the same reason

# pysyncobj deflates every message it sends at zlib level 3, which costs 12 to 15 us even for the few hundred bytes of
# an append or its answer (the fixed cost of a deflate block, not the bytes), about eight messages a trivial cell among
# the kernel's replicas, and 20 ms per MB of a large one. Its connections store them instead (level 0: 1.7 us, 2 ms
# per MB): still zlib streams, which any pysyncobj reads, about 40 % larger for a trivial cell's append.
pysyncobj.tcp_connection.zlib = types.SimpleNamespace(
    compress=lambda data, _level: zlib.compress(data, 0), decompress=zlib.decompress
)

log = logging.getLogger(__name__)

_NEVER = 10**9
# An append not acknowledged within this time is sent again (a leader may have died with it).
RETRY_AFTER_S = 2.0
RETRY_BACKOFF_S = 0.05


DEFAULT_TICK_S = 0.05  # pysyncobj's own default
ONE_NODE_TICK_S = 0.005


@dataclass(frozen=True)
class Pace:
    """How often a replica's Raft wakes: its tick, the leader's heartbeat (append entries) period and the range of
    the followers' election time-outs (at least three heartbeats, as pysyncobj requires)."""

    tick_s: float
    heartbeat_s: float
    election_s: tuple[float, float]


# While cells run: elections within about a second of a leader's loss (pysyncobj's default heartbeat period).
BUSY = Pace(DEFAULT_TICK_S, 0.1, (0.5, 1.2))
# A notebook nobody runs cells in: forty times fewer wake-ups (most notebooks, most of the time; an idle kernel's
# three replicas then cost 0.11 % of a core together). A leader lost meanwhile is replaced after 8 to 16 s, or about
# 3 s after a cell comes (see KernelLog.quicken).
IDLE = Pace(2.0, 2.0, (8.0, 16.0))
IDLE_AFTER_S = 5.0  # without a cell or a committed entry for this long, a replica slows down
# A new kernel's first election: every member starts at once with an empty log, so there is no leader whose
# heartbeats a short time-out could miss, and the notebook's first cell waits for this election.
FIRST_ELECTION_S = (0.15, 0.35)
# A leader slows its heartbeats this much later than its followers lengthen their time-outs, so that no follower
# still on the busy time-out misses a heartbeat.
LEADER_LAG_S = 2.0
# Journal entries that trigger a compaction: an ordinary cell appends 1 (its record; after a failover 2 to 4), so a
# few hundred cells' worth, whose objects stay on disk until the compaction (what a restart replays needs them).
COMPACT_AFTER_ENTRIES = 400


# What a replica's ``on_commit`` receives from :class:`KernelLog`, in log order.
Committed = LogEntry | Restore | SnapshotAccepted | DumpWritten


class AppendFailed(RuntimeError):
    """An entry could not be committed (no Raft majority, or the entry was discarded by a leader change)."""


def raft_conf(
    password: str,
    journal_path: str | None,
    alone: bool = False,
    snapshots: SnapshotState | None = None,
    compact_after: int = COMPACT_AFTER_ENTRIES,
    bind_address: str | None = None,
) -> SyncObjConf:
    """The pysyncobj settings for interactive latency; one place so every replica agrees.

    ``bind_address``: the node's own ``address:port``. pysyncobj otherwise listens on every interface of the
    machine (0.0.0.0), which exposes the kernel's Raft where its host's address was meant, and makes two hosts that
    share a machine's network stack (containers on the host network, loopback aliases) collide on a port.

    ``snapshots`` with a ``journal_path``: compact the log once it holds ``compact_after`` entries, with
    ``snapshots`` writing and reading the dump (never forked: a fork of a process with threads and CUDA is unsafe).

    ``alone``: a one-node group (the reservation policy's single replica). pysyncobj commits such a group's entries
    only on its tick, so the default 50 ms tick made every cell wait 50 ms; a 5 ms tick commits in ~5 ms for ~1 % of
    a core while idle (measured here). Groups with peers commit when the peers answer, so they keep the default.
    """
    compaction: dict = {"logCompactionMinEntries": _NEVER}
    if snapshots is not None and journal_path:
        compaction = {
            "logCompactionMinEntries": compact_after,
            "fullDumpFile": dump_path(journal_path),
            "serializer": snapshots.serialize,
            "deserializer": snapshots.deserialize,
        }
    return SyncObjConf(
        autoTickPeriod=ONE_NODE_TICK_S if alone else BUSY.tick_s,
        appendEntriesPeriod=BUSY.heartbeat_s,
        password=password,
        appendEntriesUseBatch=False,
        journalFile=journal_path,
        useFork=False,  # forking a process with threads (and CUDA) is unsafe
        logCompactionMinTime=_NEVER,
        **compaction,
        dynamicMembershipChange=True,
        connectionRetryTime=0.25,  # a peer restarted in place is reconnected within a quarter second
        connectionTimeout=3.5,  # above the idle heartbeat period: a connection read nothing for this long is dead
        raftMinTimeout=BUSY.election_s[0],
        raftMaxTimeout=BUSY.election_s[1],
        commandsWaitLeader=True,
        bindAddress=bind_address,
        onStateChanged=_log_state_change,
    )


class KernelLog(SyncObj):
    """The replicated, ordered log of one kernel. ``on_commit`` is called from pysyncobj's thread."""

    # pysyncobj's own (SyncObj.__raftElectionDeadline and friends), set here to change its pace between ticks
    _SyncObj__raftElectionDeadline: float
    _SyncObj__newAppendEntriesTime: float
    _SyncObj__pipeNotifier: Any
    _SyncObj__transport: Any

    def __init__(
        self,
        self_address: str,
        peer_addresses: list[str],
        password: str,
        journal_path: str | None,
        on_commit: Callable[[Committed], None],
        compact_after: int = COMPACT_AFTER_ENTRIES,
        new_group: bool = False,
    ) -> None:
        """``on_commit`` receives, in log order, every committed entry to apply, a :class:`SnapshotAccepted` for
        each snapshot entry that became the latest, a :class:`DumpWritten` after this replica compacted its log and,
        when a dump replaces this replica's state (its own at start, or the leader's), one :class:`Restore` in place
        of the entries it covers.

        ``new_group``: the members of a new kernel, all starting now: the first election comes after
        ``FIRST_ELECTION_S`` rather than a busy time-out (a replica that restarts or joins a running group keeps the
        busy time-out: a short one would unseat the leader before its first heartbeat arrives)."""
        self._on_commit = on_commit
        # Held while an entry is admitted and handed on, and while a rebuild is queued: a rebuild's state is exactly
        # the entries queued before it.
        self._order = threading.RLock()
        self._peers = list(peer_addresses)  # in replica order: an entry's replica index names its node
        self.snapshots = SnapshotState(self._restored, self._dumped)
        if journal_path:
            Path(journal_path).parent.mkdir(parents=True, exist_ok=True)
            if Path(dump_path(journal_path)).is_file():
                self.snapshots.load(dump_path(journal_path))
        others = [p for p in peer_addresses if p != self_address]
        super().__init__(
            self_address,
            others,
            raft_conf(
                password,
                journal_path,
                alone=not others,
                snapshots=self.snapshots,
                compact_after=compact_after,
                bind_address=self_address,
            ),
        )
        self._busy = Pace(self.conf.autoTickPeriod, BUSY.heartbeat_s, BUSY.election_s)
        if new_group and others:
            self._SyncObj__raftElectionDeadline = time.monotonic() + _draws.uniform(*FIRST_ELECTION_S)
        self._idle = False
        self._last_activity = time.monotonic()
        self._leader_seen: object | None = None
        self.addOnTickCallback(self._slow_down_when_quiet)

    def _restored(self, restore: Restore) -> None:
        with self._order:
            for change in (*restore.members, *restore.tail):
                if isinstance(change, MembershipChanged):
                    self._map_member(change)
            self._on_commit(restore)

    def rebuild(self) -> None:
        """Hand ``on_commit`` a :class:`Restore` of the committed state (the latest snapshot and the entries after
        it), in order with the entries: it reaches exactly as far as the entries handed on before it."""
        with self._order:
            self._on_commit(self.snapshots.committed())

    def _dumped(self) -> None:
        with self._order:
            self._on_commit(DumpWritten())

    def _map_member(self, change: MembershipChanged) -> None:
        if 0 <= change.replica < len(self._peers):
            self._peers[change.replica] = change.raft_address

    @replicated
    def _commit(self, entry: LogEntry) -> None:
        # pysyncobj counts an entry as applied once this returns: this entry's index is one past the applied one.
        index = self.raftLastApplied + 1
        self._last_activity = time.monotonic()
        with self._order:
            if not self.snapshots.admit(index, entry):
                if isinstance(entry, Snapshot) and self.snapshots.snapshot is entry:
                    self._on_commit(SnapshotAccepted(index, entry))
                return
            if isinstance(entry, MembershipChanged):
                self._map_member(entry)
            self._on_commit(entry)
        if isinstance(entry, ExecutionRecord):
            self._follow_executor(entry.executor)

    @property
    def members(self) -> set[str]:
        """The addresses of the Raft group as this node knows it, its own included."""
        return {node.id for node in self.otherNodes} | {self.selfNode.id}

    def replace_member(self, replica: int, address: str, done: Callable[[BaseException | None], None]) -> None:
        """Make ``address`` the Raft node of ``replica`` in place of the lost one: remove the old node, then add the
        new one (one change at a time, as Raft requires; removing first keeps the majority at two of the two
        live members). pysyncobj forwards both to the leader. Done already (a retried request): ``done(None)``."""
        old = self._peers[replica]

        def added(_result: object, reason: int) -> None:
            done(
                None
                if reason == FAIL_REASON.SUCCESS or address in self.members
                else AppendFailed(f"adding {address} to the kernel's Raft group failed: {_describe(reason)}")
            )

        def removed(_result: object, reason: int) -> None:
            if reason != FAIL_REASON.SUCCESS and old in self.members:
                done(AppendFailed(f"removing the lost replica {old} from the Raft group failed: {_describe(reason)}"))
            else:
                log.info("adding %s to the Raft group as replica %d", address, replica)
                self.addNodeToCluster(address, callback=added)

        if address in self.members:
            done(None)
        elif old in self.members and old != address:
            log.info(
                "removing %s, replica %d, from the Raft group %s (leader %s)",
                old,
                replica,
                sorted(self.members),
                self._getLeader(),
            )
            self.removeNodeFromCluster(old, callback=removed)
        else:
            removed(None, FAIL_REASON.SUCCESS)

    # ---------------------------------------------------------------------------------------------- pace

    def quicken(self) -> None:
        """A cell is coming (every replica is sent it): back to the busy pace at once. A follower that then hears
        nothing from its leader for an idle heartbeat plus a busy time-out calls an election, rather than after the
        idle time-out: a leader lost while the notebook was idle costs the cell about three seconds, not sixteen."""
        self._last_activity = time.monotonic()
        if not self._idle:
            return
        self._idle = False
        self._set_pace(self._busy)
        if not self._isLeader():
            # After the idle heartbeat the leader may still be due to send (its own quicken comes with the same
            # cell, but its tick may be asleep until then): no election before that, one soon after.
            deadline = time.monotonic() + IDLE.heartbeat_s + _draws.uniform(*self._busy.election_s)
            self._SyncObj__raftElectionDeadline = min(self._SyncObj__raftElectionDeadline, deadline)
        else:
            # Its tick may sleep for up to an idle tick: wake it to send heartbeats now, well within the followers'
            # shortened time-outs even when a loaded machine delays the thread.
            self._SyncObj__newAppendEntriesTime = 0.0
            self._SyncObj__pipeNotifier.notify()

    def _slow_down_when_quiet(self) -> None:
        """pysyncobj's thread, every tick: after IDLE_AFTER_S without a cell or a committed entry, and with a
        leader, the idle pace. Followers first, then the leader (LEADER_LAG_S later), so that heartbeats never come
        slower than a follower's time-out expects."""
        leader = self._getLeader()
        if leader != self._leader_seen:
            # A new leader (or none) is activity. Each node waits the whole quiet period again from here, the leader
            # LEADER_LAG_S longer: a leader elected after the quiet period would otherwise slow its heartbeats at
            # once, while its followers' time-outs, drawn at the busy pace, expire before the first slow one.
            self._leader_seen = leader
            self._last_activity = time.monotonic()
            if self._idle:
                self._idle = False
                self._set_pace(self._busy)
            return
        if self._idle or leader is None:  # a group without a leader elects one at the busy pace
            return
        quiet = time.monotonic() - self._last_activity
        if quiet >= IDLE_AFTER_S + (LEADER_LAG_S if self._isLeader() else 0.0):
            self._idle = True
            self._set_pace(IDLE)

    def _set_pace(self, pace: Pace) -> None:
        conf = self.conf  # pysyncobj reads these on every use
        conf.autoTickPeriod, conf.appendEntriesPeriod = pace.tick_s, pace.heartbeat_s
        conf.raftMinTimeout, conf.raftMaxTimeout = pace.election_s

    def _follow_executor(self, executor: int) -> None:
        """Hand Raft leadership to the replica that executes cells.

        The executor appends most entries (its proposal and its record); as leader it commits them in one round
        trip instead of forwarding each to another node first. Runs in pysyncobj's thread, on the leader only; a
        transfer to a replica that is not fully caught up is refused and tried again after the next record.
        """
        if self._isLeader() and 0 <= executor < len(self._peers) and self._peers[executor] != self.selfNode.id:
            self.transferLeadership(self._peers[executor])

    def standing(self) -> str:
        """Where this node stands in its group, for a replica that does not catch up: whether it listens at all
        (pysyncobj retries a port it cannot bind every second, forever and without a word, and until then it cannot
        connect to anyone either), the members it is connected to, its Raft state and the leader it follows, and how
        far it has applied. pysyncobj's thread owns these fields: a read from another thread may be a tick old."""
        status = self.getStatus()
        prefix = "partner_node_status_server_"
        members = [key.removeprefix(prefix) for key in status if key.startswith(prefix)]
        connected = [member for member in members if status[prefix + member] == 2]
        listening = "listens" if self._SyncObj__transport.ready else "cannot listen (its port is taken?)"
        committed = status["leader_commit_idx"]
        return (
            f"Raft on {self.selfNode.address} {listening}; connected to {len(connected)} of {len(members)} other "
            f"member(s) ({', '.join(connected) or 'none'}); {_STATES.get(status['state'], status['state'])} in term "
            f"{status['raft_term']}, leader {status['leader'] or 'unknown'}; applied up to entry "
            f"{status['last_applied']}, the leader's commit index {'not heard yet' if committed is None else committed}"
        )

    def append(self, entry: LogEntry, done: Callable[[BaseException | None], None] | None = None) -> None:
        """Append without blocking; ``done`` is called from pysyncobj's thread once the entry is applied here."""

        def callback(_result: object, reason: int) -> None:
            if done is not None:
                done(None if reason == FAIL_REASON.SUCCESS else AppendFailed(_describe(reason)))

        self._commit(entry, callback=callback)

    async def append_async(self, entry: LogEntry, timeout: float) -> None:
        """Append and wait, on the running asyncio loop, until the entry is committed and applied here.

        An append forwarded to a leader that then dies is dropped by pysyncobj (LEADER_CHANGED, DISCARDED): it is
        sent again until ``timeout``. Entries are idempotent for their consumers (a duplicate proposal, vote or
        record changes nothing), so a retry after a lost acknowledgement is safe.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            future: asyncio.Future[None] = loop.create_future()
            self.append(entry, _settler(loop, future))
            remaining = deadline - loop.time()
            try:
                await asyncio.wait_for(future, min(RETRY_AFTER_S, max(remaining, 0.001)))
                return
            except (AppendFailed, TimeoutError) as err:
                if loop.time() >= deadline:
                    raise AppendFailed(
                        f"no Raft majority committed the entry within {timeout:.0f} s ({err or 'no answer'}): "
                        "fewer than two of this kernel's three replicas are reachable"
                    ) from None
                await asyncio.sleep(min(RETRY_BACKOFF_S, max(deadline - loop.time(), 0)))


_STATES = {0: "follower", 1: "candidate", 2: "leader"}  # pysyncobj's _RAFT_STATE


def _log_state_change(old: int, new: int) -> None:
    """pysyncobj's thread: elections and leadership transfers, for the replica's log."""
    log.info("Raft: %s -> %s", _STATES.get(old, old), _STATES.get(new, new))


def _settler(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> Callable[[BaseException | None], None]:
    """An append's ``done``, called on pysyncobj's thread: settles ``future`` on ``loop``."""

    def done(error: BaseException | None) -> None:
        loop.call_soon_threadsafe(_settle, future, error)

    return done


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _describe(reason: int) -> str:
    names = {v: k for k, v in vars(FAIL_REASON).items() if not k.startswith("_")}
    return f"pysyncobj refused the entry ({names.get(reason, reason)})"
