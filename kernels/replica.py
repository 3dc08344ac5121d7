"""The replica kernel: an ipykernel that runs a cell only when the kernel's Raft log lets it.

Three of these run per notebook kernel, on three hosts, behind one kernel front. The front sends each
execute_request to the replicas it invites to LEAD (one, except after a failover), with ``metadata.notebookos``
saying which attempt this is. The replica that wrote the kernel's latest record runs the next cell at once; any
other appends its proposal to the Raft log and waits for the log to decide (see
:mod:`notebookos.replication.election`). The executor runs the cell like plain ipykernel, replies, then captures the
state delta and commits it with the execution record, before its ``idle`` status: the front holds the kernel's next
cell until it sees that idle, so the next cell, wherever it runs, starts from the committed state. The other
replicas apply committed deltas in log order.

Every ``snapshot_every`` cells the executor also commits a snapshot of the whole namespace, so that the log before
it can be compacted (replication/snapshots.py); a replica whose state is replaced by a dump restores the namespace
from its snapshot and applies the entries after it.

Run as ``python -m notebookos.kernels.replica -f CONNECTION_FILE --ReplicaKernel.config_path=CONFIG``.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import logging
import os
import random
import re
import sys
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import IPKernelApp
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output
from traitlets import Unicode, default

from ..replication.election import ALL_YIELD, ElectionBook, VoteNeeded
from ..replication.entries import (
    CellKey,
    ExecutionRecord,
    LogEntry,
    MembershipChanged,
    Proposal,
    Role,
    Snapshot,
    SnapshotRequest,
    Vote,
)
from ..replication.membership import members_route, request_join
from ..replication.namespace import NamespaceTracker, StateApplyError, StateDelta
from ..replication.object_store import LocalDirectoryStore, ObjectStore, ObjectStoreError, open_store
from ..replication.peer_store import ObjectServer, PeerStore
from ..replication.raft_log import AppendFailed, Committed, KernelLog
from ..replication.snapshots import DumpWritten, Restore, SnapshotAccepted
from . import rng_state
from .replica_config import ReplicaConfig
from .front_control import front_request
from .gpu_request import answer_gpus_request, parse_gpus_magic
from .protocol import (
    ANNOUNCE_APPLIED,
    ATTEMPT_ABANDONED,
    EXECUTOR_ANNOUNCEMENT,
    EXIT_STATE_FOLDER_FULL,
    GPU_RELEASED,
    GPUS_REQUEST,
    NOTEBOOKOS_META,
    QUICKEN,
    STATE_APPLIED,
    ReplicaRole,
)

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell
    from jupyter_client.session import Session

    from .gpu_binding import BindTimings, DeviceBinder

# How long a replica waits for the log to decide an attempt or commit its record before telling the user that the
# kernel has lost its majority. Generous: a Raft leader election after a crash takes about a second.
COMMIT_TIMEOUT_S = 30.0
READY_POLL_S = 0.05
# A replica not caught up after this long says why, once (a replacement with a 100 MB namespace takes 5 to 10 s).
NOT_CAUGHT_UP_WARNING_S = 30.0
# A peer on another machine silent this long (it died, or its link is down) is given up for the next one.
PEER_SILENCE_S = 5.0
# Abandoned attempts remembered, for an abandon that arrives before its execute_request (control and shell are
# separate channels); the front abandons at most one attempt per failover.
ABANDONED_KEPT = 64


class AttemptAbandoned(Exception):
    """The front gave up on this attempt of a cell before the election decided it (protocol.ATTEMPT_ABANDONED)."""


class ReplicaKernel(IPythonKernel):
    """An IPython kernel that is one of three replicas of a notebook kernel."""

    implementation = "notebookos"
    implementation_version = "0.1.0"

    config_path = Unicode("", help="Path of the replica's JSON configuration (ReplicaConfig).").tag(config=True)

    # ipykernel sets its shell and session traits (both allow None) before the kernel starts: what runs here has them.
    @property
    def _shell(self) -> InteractiveShell:
        if self.shell is None:
            raise RuntimeError("the replica kernel has no shell: IPKernelApp.init_kernel makes the kernel with one")
        return self.shell

    @property
    def _session(self) -> Session:
        if self.session is None:
            raise RuntimeError("the replica kernel has no session: IPKernelApp.init_kernel makes the kernel with one")
        return self.session

    def start(self) -> None:
        super().start()
        self.replica_config = ReplicaConfig.read(self.config_path)
        cfg = self.replica_config
        self._leave_if_state_folder_full()
        self._loop = asyncio.get_event_loop()
        self._entries: asyncio.Queue[Committed] = asyncio.Queue()
        self._waiters: dict[CellKey, list[asyncio.Future[int]]] = {}
        self._abandoned: collections.deque[CellKey] = collections.deque(maxlen=ABANDONED_KEPT)
        # This replica's own records in flight -> whether the log accepted them (its namespace already holds them).
        self._own_records: dict[CellKey, asyncio.Future[bool]] = {}
        self.records_applied = 0  # other replicas' records applied here (a restore from a snapshot skips most)
        self.restored_index: int | None = None  # the log index of the last dump that replaced this replica's state
        self._warned_unpicklable: dict[str, str] = {}
        self._told_lost: set[str] = set()
        self._unapplied: list[str] = []
        # Why this replica's namespace misses a committed change (None: it does not), until it rebuilds from the
        # snapshot it asked for; it does not lead cells meanwhile. A rebuild that fails too is not asked for again.
        self._diverged: str | None = None
        self._rebuild_failed = False
        self._snapshot_wanted = False  # a replica asked for a snapshot: the next executor takes one after its cell
        self._announce_applied = False  # publish STATE_APPLIED (a benchmark or monitor asked: ANNOUNCE_APPLIED)
        # Cleared while the namespace is rebuilt from the committed state (_roll_back): no cell runs on it meanwhile.
        self._rebuilt = asyncio.Event()
        self._rebuilt.set()
        self._rng = rng_state.ChangeTracker()  # the process's random generators travel with the deltas that move them
        self._installs: list[str] = []  # the install lines of every accepted cell so far, for the next snapshot
        self.book = ElectionBook(cfg.replica)
        self._peer_urls = list(cfg.peer_urls)  # the kernel's replicas' peer APIs, updated as members change
        self._caught_up = False  # applied what its group had committed when it started (_report_ready)
        self._peer_server: ObjectServer | None = None
        # The snapshot and dump count (SnapshotState.dumps) of the last garbage collection.
        self._collected_at: tuple[Snapshot | None, int] = (None, 0)
        self._store = self._open_store()
        self.tracker = NamespaceTracker(self._store, inline_limit=cfg.inline_limit)
        self.tracker.snapshot(self._shell.user_ns)
        # The last release parked tensors after the capture, so the tracker's view holds their device addresses:
        # the next cell snapshots afresh rather than take every parked tensor for a change.
        self._parked_since_capture = False
        self._binder: DeviceBinder | None = None  # made on first need: it imports torch
        self._gpus = 0  # GPUs each cell of the kernel asks for, as the front last said (or `%gpus N` changed)
        self._shell.magics_manager.register_function(self._gpus_magic, "line", "gpus")
        self._applier = self._loop.create_task(self._apply_committed())
        # A new kernel: its members start together with empty logs (a restart finds its journal, a replacement
        # joins), so its first election can come sooner.
        new_group = not cfg.joining and not (cfg.journal_path and os.path.exists(cfg.journal_path))
        if cfg.joining:
            self._join()
        self.raft = KernelLog(
            cfg.raft_address,
            list(cfg.raft_peers),
            cfg.raft_password,
            cfg.journal_path,
            self._on_commit,
            compact_after=cfg.compact_after,
            new_group=new_group,
        )
        self._loop.create_task(self._report_ready())

    def _open_store(self) -> ObjectStore:
        """The object store, and the peer API when the kernel's replicas are on machines of their own: objects
        travel between replicas unless the store is shared (Redis), and replacements ask to join through it."""
        cfg = self.replica_config
        store = open_store(cfg.store)
        if not cfg.peer_urls:
            return store
        where = urlsplit(cfg.peer_urls[cfg.replica])
        self._peer_server = ObjectServer(
            store,
            cfg.raft_password,
            where.hostname or "",
            where.port or 0,
            routes=[members_route(cfg.raft_password, self._on_join_request)],
        )
        self._peer_server.start()
        if isinstance(store, LocalDirectoryStore):
            return PeerStore(store, self._other_peer_urls, cfg.raft_password, timeout=PEER_SILENCE_S)
        return store

    def _other_peer_urls(self) -> list[str]:
        """Where the other replicas' peer APIs are: as the log last named them and, until this replica has caught
        up, as its config named them at its start too. A replacement catching up applies old membership entries,
        which name replicas long gone; its config, written by the cluster when it started it, names the members of
        now, where the objects of those old entries are."""
        me = self.replica_config.replica
        logged = [url for index, url in enumerate(self._peer_urls) if index != me]
        if self._caught_up:
            return logged
        return logged + [
            url for index, url in enumerate(self.replica_config.peer_urls) if index != me and url not in logged
        ]

    def _join(self) -> None:
        """A replacement on another machine: have a live replica swap this node in for the lost one before this
        node's Raft starts. A node that runs before it is a member keeps calling elections nobody hears, and its
        first one after being added unseats the leader (pysyncobj has no pre-vote); started after, it just follows.
        A replica no member lets in exits: the kernel front sees it lost and the cluster tries again."""
        cfg = self.replica_config
        try:
            peer = request_join(
                self._other_peer_urls(), cfg.replica, cfg.raft_address, cfg.peer_urls[cfg.replica], cfg.raft_password
            )
        except RuntimeError as err:
            self.log.error("%s", err)
            sys.exit(1)
        self.log.info("joined the kernel's Raft group as replica %d (through %s)", cfg.replica, peer)

    def _on_join_request(self, replica: int, address: str, url: str) -> Future[None]:
        """A replacement asks to become ``replica`` (the peer server's thread): change the Raft membership, then
        commit the new mapping. The future settles once it is committed here."""
        changed: Future[None] = Future()
        if replica == self.replica_config.replica or not 0 <= replica < len(self._peer_urls):
            changed.set_exception(
                ValueError(f"replica {self.replica_config.replica} cannot let a node replace replica {replica}")
            )
            return changed

        def settle(error: BaseException | None) -> None:
            if error is None:
                changed.set_result(None)
            else:
                changed.set_exception(error)

        def member_replaced(error: BaseException | None) -> None:
            if error is not None:
                settle(error)
            else:
                self.raft.append(MembershipChanged(replica, address, url), settle)

        self.raft.replace_member(replica, address, member_replaced)
        return changed

    async def _report_ready(self) -> None:
        """Tell the host agent (through a marker file) once this replica has applied what its group had committed
        when it joined: pysyncobj's ready flag, and nothing left in the apply queue. Checked every 50 ms; a
        restarted replica replaying a long journal takes seconds."""
        since, told = self._loop.time(), False
        while not (self.raft.isReady() and self._entries.empty()):
            if not told and self._loop.time() - since > NOT_CAUGHT_UP_WARNING_S:
                # Nothing else would say why: the front and the cluster only see a replica that is alive, not ready.
                self.log.warning(
                    "replica %d has not caught up after %.0f s: %s",
                    self.replica_config.replica,
                    NOT_CAUGHT_UP_WARNING_S,
                    self.raft.standing(),
                )
                told = True
            await asyncio.sleep(READY_POLL_S)
        self._caught_up = True
        # What it took to get here, for operators and tests: a replica restored from a snapshot applies few records.
        self.replica_config.ready_marker.write_text(
            json.dumps({"records_applied": self.records_applied, "restored_index": self.restored_index})
        )

    # ----------------------------------------------------------------------------------------------- the log

    def _on_commit(self, entry: Committed) -> None:
        """pysyncobj's thread: hand the entry (or a restore) to the kernel's own loop, preserving log order."""
        self._loop.call_soon_threadsafe(self._entries.put_nowait, entry)

    async def _apply_committed(self) -> None:
        """Apply every committed entry, in log order, on the kernel's main thread (the namespace's only writer)."""
        while True:
            item = await self._entries.get()
            if isinstance(item, Restore):
                await self._restore(item)
            elif isinstance(item, SnapshotAccepted):
                await self._on_snapshot(item)
            elif isinstance(item, DumpWritten):
                self._collect_garbage()  # the last cells may have been applied before the dump: no record follows
            else:
                await self._apply(item)

    async def _apply(self, entry: LogEntry) -> None:
        if isinstance(entry, Proposal) or (
            isinstance(entry, ExecutionRecord) and entry.executor != self.replica_config.replica
        ):
            # A cell is on: a replica that leaves now, before its state is needed, costs the kernel nothing.
            self._leave_if_state_folder_full()
        delta = None
        if isinstance(entry, ExecutionRecord) and entry.cell not in self._own_records:
            # A record to apply here (not this replica's own in flight, whose changes its namespace holds already):
            # parsed once, for the objects it points to and then for the apply.
            delta = StateDelta.from_bytes(entry.delta)
            await self._fetch_objects(NamespaceTracker.referenced_keys(delta))
        try:
            if isinstance(entry, Proposal):
                vote = self.book.on_proposal(entry)
                if vote is not None:
                    self._cast(vote)
            elif isinstance(entry, Vote):
                self.book.on_vote(entry)
            elif isinstance(entry, ExecutionRecord):
                self._on_record(entry, delta)
                self._collect_garbage()
            elif isinstance(entry, MembershipChanged):
                self._peer_urls[entry.replica] = entry.peer_url
            elif isinstance(entry, SnapshotRequest):
                self._snapshot_wanted = True
        except Exception:
            self.log.exception("failed to apply a committed log entry %r", type(entry).__name__)
        self._wake(getattr(entry, "cell", None))

    def _diverge(self, why: str) -> None:
        """This replica could not apply a committed change: ask the next executor for a snapshot to rebuild from
        (once; a replica whose rebuild failed too stays as it is, and tells the user at its first cell)."""
        if self._diverged is not None or self._rebuild_failed:
            return
        self._diverged = why
        self.log.warning(
            "this replica's namespace misses a committed change (%s): asking for a snapshot to rebuild from", why
        )
        self._append_in_background(SnapshotRequest(self.replica_config.replica, why[:500]))

    async def _on_snapshot(self, accepted: SnapshotAccepted) -> None:
        """A snapshot became the latest: the wish for one is met; a replica that diverged rebuilds from it."""
        self._snapshot_wanted = False
        if self._diverged is None:
            return
        why, self._diverged = self._diverged, None
        await self._restore(Restore(accepted.index, accepted.snapshot, (), ()))
        if self._unapplied:
            self._rebuild_failed = True
            self.log.error(
                "rebuilding from the snapshot of log index %d did not help: %s",
                accepted.index,
                "; ".join(self._unapplied),
            )
        else:
            self.log.info(
                "rebuilt the namespace from the snapshot of log index %d (it had missed: %s)", accepted.index, why
            )

    def _set_rng(self, extra: dict[str, Any]) -> None:
        """Set the process's random generators to the executor's, if the delta carries them."""
        if "rng" in extra:
            rng_state.restore(extra["rng"])
            self._rng.seen()

    def _leave_if_state_folder_full(self) -> None:
        """Exit (EXIT_STATE_FOLDER_FULL) when the state folder has less room than ``min_free_mb``: a replica that
        cannot write its journal and objects would fail a cell later, or die in the middle of one. Leaving now, the
        kernel front sees it lost and the cluster replaces it on another host, where it catches up from its peers;
        the user sees nothing. The operator sees the reason in the replica's exit reason and log."""
        folder = os.path.dirname(self.replica_config.journal_path) or "."
        stats = os.statvfs(folder)
        free_mb = stats.f_bavail * stats.f_frsize / (1 << 20)
        if free_mb >= self.replica_config.min_free_mb:
            return
        self.log.critical(
            "the state folder %s has %.0f MB free, less than the %d MB a replica keeps free "
            "(NOTEBOOKOS_MIN_FREE_MB): leaving, to be replaced on another host; free space on %s",
            folder,
            free_mb,
            self.replica_config.min_free_mb,
            self.replica_config.host,
        )
        logging.shutdown()
        os._exit(EXIT_STATE_FOLDER_FULL)

    async def _restore(self, restore: Restore) -> None:
        """A dump replaced this replica's state (its own at start, or the leader's because it was too far behind):
        rebuild the namespace from the dump's snapshot alone, then apply the entries after it."""
        snapshot = restore.snapshot
        self._unapplied.clear()  # the whole state is replaced: what failed to apply before no longer matters
        keys = set() if snapshot is None else NamespaceTracker.referenced_keys(snapshot.delta)
        await self._fetch_objects(keys)
        ns = self._shell.user_ns
        tracker = NamespaceTracker(self._store, inline_limit=self.replica_config.inline_limit)
        for name in tracker.tracked_names(ns):
            del ns[name]
        self.tracker = tracker
        for pending in self._own_records.values():
            pending.cancel()
        self._own_records.clear()
        replica = self.replica_config.replica
        self.book = ElectionBook(replica) if snapshot is None else ElectionBook.after_snapshot(replica, snapshot)
        self._installs = [] if snapshot is None else list(snapshot.installs)
        if snapshot is not None:
            self._run_installs(snapshot.installs)
            try:
                self._set_rng(tracker.apply(StateDelta.from_bytes(snapshot.delta), ns))
            except StateApplyError as err:
                self.log.error("%s", err)
                self._unapplied.append(str(err))
            self._shell.execution_count = snapshot.execution_count + 1
        for change in restore.members:
            self._peer_urls[change.replica] = change.peer_url
        self.restored_index = restore.index
        self.log.info(
            "restored the state of log index %d from a snapshot (cell [%s]) and %d later entries",
            restore.index,
            snapshot.execution_count if snapshot else "none",
            len(restore.tail),
        )
        for entry in restore.tail:
            await self._apply(entry)
        for cell in list(self._waiters):
            self._wake(cell)
        self._rebuilt.set()

    def _roll_back(self, why: str) -> None:
        """This replica ran a cell whose record the kernel's log does not hold: its namespace has changes the
        kernel's state has not (a partitioned executor finishes its cell while the others re-run it). Rebuild the
        namespace from the committed state this replica holds, its latest snapshot and the entries after it, before
        it runs another cell; a re-run on it would otherwise start from the abandoned attempt's changes."""
        self.log.warning("%s: rebuilding the namespace from the committed state", why)
        self._rebuilt.clear()
        self.raft.rebuild()

    def _collect_garbage(self) -> None:
        """Once per accepted snapshot or dump written, delete the objects of this replica's own store that neither
        its dump and the entries after it (what its restart replays) nor its latest snapshot and the entries after
        that need, past a grace period, off the main thread. Runs on the main thread after a record was applied, or
        a dump written, so every earlier record's objects have been used already."""
        state = self.raft.snapshots
        if not self.replica_config.owns_store or (state.snapshot, state.dumps) == self._collected_at:
            return
        self._collected_at = (state.snapshot, state.dumps)
        local = self._store.local if isinstance(self._store, PeerStore) else self._store
        if isinstance(local, LocalDirectoryStore):
            self._loop.run_in_executor(
                None, _delete_unreferenced, local, state.referenced_keys(), self.replica_config.gc_grace_s
            )

    async def _fetch_objects(self, keys: set[str]) -> None:
        """Bring the objects a record or snapshot points to into this replica's store off the main thread: a fetch
        from a peer on another machine takes a second per 100 MB (longer when that peer has just died), and
        meanwhile this replica must go on answering the front and proposing. Failures are left for the apply to
        report."""
        store = self._store
        if not isinstance(store, PeerStore):
            return  # one disk, or a shared store: nothing to bring here
        for key in keys:
            if not store.contains(key):
                try:
                    await self._loop.run_in_executor(None, store.get, key)
                except ObjectStoreError:
                    pass

    def _cast(self, vote: VoteNeeded) -> None:
        self._append_in_background(Vote(vote.cell, self.replica_config.replica, vote.candidate))

    def _append_in_background(self, entry: LogEntry) -> None:
        """Append without waiting here: the outcome is observed through the log (the decision), not the ack."""
        task = self._loop.create_task(self.raft.append_async(entry, COMMIT_TIMEOUT_S))
        task.add_done_callback(self._log_failed_append)

    def _log_failed_append(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.error("%s", task.exception())

    def _wake(self, cell: CellKey | None) -> None:
        if cell is None:
            return
        decided = self.book.decision(cell)
        if decided is None:
            return
        for fut in self._waiters.pop(cell, []):
            if not fut.done():
                fut.set_result(decided)

    def _abandon(self, cell: CellKey) -> None:
        """The front gave up on this attempt before it was decided: its execute_request stops waiting (and replies
        as a standby, which the front ignores for a past attempt) so that the shell takes the next attempt."""
        self._abandoned.append(cell)
        for fut in self._waiters.pop(cell, []):
            if not fut.done():
                fut.set_exception(AttemptAbandoned(cell))

    def _on_record(self, record: ExecutionRecord, delta: StateDelta | None) -> None:
        """``delta``: the record's, parsed; None for this replica's own record in flight, which it does not apply."""
        accepted = self.book.accepts(record)
        own = self._own_records.pop(record.cell, None)
        if own is not None and not own.done():
            own.set_result(accepted)
        if not accepted:
            self.log.info("fenced off a record of %s from replica %s", record.cell, record.executor)
            if own is not None:
                self._roll_back(f"the log fenced off this replica's own record of {record.cell}")
            return
        installs = _install_lines(record.source)
        self._installs = _latest_last(self._installs + installs)
        if own is not None or delta is None:
            return
        self.records_applied += 1
        self._run_installs(installs)
        try:
            extra = self.tracker.apply(delta, self._shell.user_ns)
            self._set_rng(extra)
        except StateApplyError as err:
            # The delta cannot be applied here, so this replica is behind on the names it carries. Logged, and told
            # to the user in the first cell this replica runs.
            self.log.error("%s", err)
            self._unapplied.append(str(err))
            self._diverge(str(err))
            return
        self._record_history(record, extra.get("out", _NO_OUTPUT))
        if not self._announce_applied:
            return
        self._session.send(
            self.iopub_socket,
            STATE_APPLIED,
            {"replica": self.replica_config.replica, "attempt": record.cell.attempt, "applied_at": time.time()},
            parent={"header": {"msg_id": record.cell.msg_id, "msg_type": "execute_request"}},
        )

    def _run_installs(self, lines: list[str] | tuple[str, ...]) -> None:
        """Run a cell's package installs (``%pip install``, ``%conda install``, ...) here too, before applying its
        state (or a snapshot's, before loading it): what they change is this machine's environment, which no state
        delta carries, and the delta may import what they installed. So ``{...}`` in such a line expands in the
        namespace as it was before the cell (before a snapshot: an empty one). Their output goes to this replica's
        log; a failure is told to the user in the first cell this replica runs."""
        for line in lines:
            magic, _, arguments = line[1:].partition(" ")
            with capture_output() as output:
                self._shell.run_line_magic(magic, arguments)
            self.log.info("%s on this replica:\n%s%s", line, output.stdout, output.stderr)
            if "error" in output.stderr.lower():
                self._unapplied.append(f"{line} failed here: {output.stderr.strip()[-500:]}")

    def _record_history(self, record: ExecutionRecord, out: Any) -> None:
        """Keep In/Out, ``_`` and the execution count identical to the executor's."""
        shell = self._shell
        if record.execution_count > 0:
            # IPython >= 9 counts the running cell as execution_count - 1 (the displayhook's prompt_count).
            shell.execution_count = record.execution_count + 1
            if shell.history_manager is None:
                raise RuntimeError("the shell has no history manager: it was shut down")
            shell.history_manager.store_inputs(record.execution_count, record.source, record.source)
            if out is not _NO_OUTPUT:
                shell.displayhook.update_user_ns(out)

    async def _decision(self, cell: CellKey) -> int:
        decided = self.book.decision(cell)
        if decided is not None:
            return decided
        if cell in self._abandoned:
            raise AttemptAbandoned(cell)
        fut: asyncio.Future[int] = self._loop.create_future()
        self._waiters.setdefault(cell, []).append(fut)
        try:
            return await asyncio.wait_for(fut, COMMIT_TIMEOUT_S)
        except TimeoutError:
            self._waiters.pop(cell, None)
            raise AppendFailed(
                f"the kernel's replicas could not elect an executor within {COMMIT_TIMEOUT_S:.0f} s: "
                "fewer than two of its three replicas are reachable"
            ) from None

    # ------------------------------------------------------------------------------------------ execution

    async def execute_request(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        self.raft.quicken()  # a cell is coming: the group is back to the busy pace before anything is appended
        meta = (parent.get("metadata") or {}).get(NOTEBOOKOS_META)
        if not meta:
            self._send_execute_reply(
                stream,
                ident,
                parent,
                _error_content(
                    "NotebookOSError",
                    "this replica only runs cells sent through its kernel front; connect to the kernel, not a replica",
                ),
                ReplicaRole.STANDBY,
            )
            return
        me = self.replica_config.replica
        cell = CellKey(parent["header"]["msg_id"], int(meta["attempt"]))
        leads = int(meta.get("leads", 1))
        if leads <= 1 and not meta.get("lead"):
            # Another replica alone was invited: only its proposal (or its record) decides, and this replica never
            # runs the attempt. The front sends such an attempt to its lead only; this answers anyone else at once.
            self._send_execute_reply(stream, ident, parent, self._standby_content(), ReplicaRole.STANDBY)
            return
        if meta.get("solo") and not self._diverged:
            self._leave_if_state_folder_full()  # as a standby does at the cell's entries (_apply)
            await self._rebuilt.wait()
            after = self.book.solo_base(me)
            if after is not None:
                # It ran the previous cell, has not been lost since (the front's word: this replica's log may lag
                # after a restart or a partition) and nothing was decided since: no election.
                await self._execute_as_leader(stream, ident, parent, cell, after)
                return
        proposal = Proposal(
            cell=cell,
            replica=me,
            # A replica missing part of the namespace does not lead a cell it is not pinned to by its GPUs.
            role=Role.LEAD if meta.get("lead") and not (self._diverged and not meta.get("devices")) else Role.YIELD,
            leads=leads,
            voters=tuple(meta["voters"]),
            devices=tuple(meta.get("devices", ())),
        )
        try:
            self._append_in_background(proposal)
            executor = await self._decision(cell)
        except AppendFailed as err:
            self._send_execute_reply(
                stream, ident, parent, _error_content("NotebookOSMajorityLost", str(err)), ReplicaRole.EXECUTOR
            )
            return
        except AttemptAbandoned:
            self._send_execute_reply(stream, ident, parent, self._standby_content(), ReplicaRole.STANDBY)
            return
        if executor == ALL_YIELD:
            self._send_execute_reply(stream, ident, parent, self._standby_content(), ReplicaRole.ALL_YIELD)
        elif executor != me:
            self._send_execute_reply(stream, ident, parent, self._standby_content(), ReplicaRole.STANDBY)
        else:
            await self._execute_as_leader(stream, ident, parent, cell)

    async def _execute_as_leader(
        self, stream: Any, ident: Any, parent: dict[str, Any], cell: CellKey, after: CellKey | None = None
    ) -> None:
        """Run the attempt this replica was elected for, or, with ``after``, runs without an election on top of
        that record (election.py, "Without an election")."""
        await self._rebuilt.wait()
        done = self.book.committed_record(cell.msg_id)
        # ``from_log``: the cell finished (attempt, executor) before its executor was lost; the front shows what
        # that attempt printed instead of a re-run's output.
        from_log = None if done is None else {"attempt": done.cell.attempt, "executor": done.executor}
        # An elected executor announces itself; a cell run solo (``after``) is not announced: the front sent it to this
        # replica alone and took it for its executor then.
        if after is None:
            self._session.send(
                self.iopub_socket,
                EXECUTOR_ANNOUNCEMENT,
                {"replica": self.replica_config.replica, "host": self.replica_config.host, "from_log": from_log},
                parent,
            )
        if done is not None:
            # A previous attempt finished and committed before its executor was lost: answer from the log.
            self._send_execute_reply(stream, ident, parent, done.reply, ReplicaRole.EXECUTOR, from_log)
            return
        self._tell_lost_names(parent)
        self._last_reply: dict[str, Any] = {}
        meta = parent["metadata"][NOTEBOOKOS_META]
        self._gpus = int(meta.get("gpus", 0))
        ns = self._shell.user_ns
        devices = tuple(meta.get("devices", ()))
        binder = self._binder_for(devices)
        delta = None
        try:
            # Order matters (gpu_binding.py): bind before the snapshot and capture before the release, so that
            # moving tensors between host and device is never mistaken for the cell changing them.
            if binder is not None:
                binder.bind(ns, devices)
            if devices or self._parked_since_capture:
                # Otherwise the tracker's view is already the namespace as it is: its last capture or apply, and
                # nothing else writes to the namespace but comms (widgets), whose changes the diff then carries.
                self.tracker.snapshot(ns)
                self._parked_since_capture = False
            await super().execute_request(stream, ident, parent)
            delta = self._capture(parent)
        finally:
            if binder is not None and binder.bound is not None:
                timings = binder.release(ns)
                self._parked_since_capture = timings.moved_objects > 0
                self._report_release(parent, timings, bool(devices))
        if delta is not None:
            await self._commit_state(parent, cell, delta, after)
        else:
            self._roll_back(f"the state of {cell} could not be stored")

    def _binder_for(self, devices: tuple[int, ...]) -> DeviceBinder | None:
        """The device binder, once there can be anything to bind: GPUs granted, or torch loaded by the user.
        Until then no tensor can exist, and replicas start without paying for importing torch."""
        if self._binder is None and (devices or "torch" in sys.modules):
            from .gpu_binding import DeviceBinder

            self._binder = DeviceBinder()
        return self._binder

    def _report_release(self, parent: dict[str, Any], timings: BindTimings, had_devices: bool) -> None:
        """The bind and release times for the front, which gives them to the cluster with the GPUs (a cell that had
        none gives nothing back, and its front is not told: a message less per cell); what held device memory after
        the cell, for the user."""
        if had_devices:
            self._session.send(
                self.iopub_socket, GPU_RELEASED, {"bind_s": timings.bind_s, "release_s": timings.release_s}, parent
            )
        if timings.unparked:
            listed = "; ".join(f"{n}: {why}" for n, why in sorted(timings.unparked.items()))
            self._notify(parent, f"notebookos: GPU memory still held after the cell by: {listed}\n")

    def _capture(self, parent: dict[str, Any]) -> StateDelta | None:
        """What the cell changed, or None (the user is told) when it cannot be stored."""
        shell = self._shell
        content = parent["content"]
        in_history = content.get("store_history", not content.get("silent", False))
        count = int(self._last_reply.get("execution_count", 0)) if in_history else 0
        out = shell.user_ns.get("Out", {}).get(count, _NO_OUTPUT) if count else _NO_OUTPUT
        try:
            extra: dict[str, Any] = {} if out is _NO_OUTPUT else {"out": out}
            rng = self._rng.changed()
            if rng is not None:
                extra["rng"] = rng
            delta = self.tracker.capture(shell.user_ns, count, extra=extra)
        except ObjectStoreError as err:
            self._notify(
                parent,
                f"notebookos: this cell's changes could not be stored, so they are undone (the "
                f"kernel keeps the state from before the cell; run it again): {err}\n",
            )
            return None
        self._warn_unpicklable(delta, parent)
        return delta

    async def _commit_state(
        self, parent: dict[str, Any], cell: CellKey, delta: StateDelta, after: CellKey | None
    ) -> None:
        """Commit the cell's state delta with its record; runs after the reply, before the idle status. Returns once
        this replica has applied the record too, so that its next cell, which may run without an election, builds
        on it (``after``: the record this solo cell built on)."""
        content = parent["content"]
        record = ExecutionRecord(
            cell,
            self.replica_config.replica,
            delta.execution_count,
            content.get("code", ""),
            self._last_reply,
            delta.to_bytes(),
            solo=after is not None,
            after=after,
        )
        accepted = self._own_records[cell] = self._loop.create_future()
        try:
            await self.raft.append_async(record, COMMIT_TIMEOUT_S)
        except AppendFailed as err:
            self._own_records.pop(cell, None)
            self._notify(
                parent,
                f"notebookos: this cell's changes could not be replicated, so they are undone (the "
                f"kernel keeps the state from before the cell; run it again): {err}\n",
            )
            self._roll_back(f"the record of {cell} did not commit")
            return
        try:
            if not await asyncio.wait_for(accepted, COMMIT_TIMEOUT_S):
                # Fenced off (_on_record rolls the namespace back): the kernel's state moved on without this cell.
                # The front has given up on this attempt if a failover caused it; if not, the user must know.
                self._notify(
                    parent,
                    "notebookos: this cell's changes were superseded in the kernel's log by another replica's, so "
                    "they are undone here (the kernel keeps the committed state; run the cell again)\n",
                )
                return
        except (TimeoutError, asyncio.CancelledError):
            return  # a restore replaced the state meanwhile
        if self.raft.snapshots.records_in_tail >= self.replica_config.snapshot_every or self._snapshot_wanted:
            await self._snapshot(parent, record)

    async def _snapshot(self, parent: dict[str, Any], record: ExecutionRecord) -> None:
        """Commit the whole namespace as a snapshot covering ``record`` (accepted by the log), before the idle
        status: the front holds the next cell until then, so nothing changes the namespace between the record and
        its snapshot. A failure only delays compaction."""
        started = time.perf_counter()
        try:
            full = self.tracker.capture_all(
                self._shell.user_ns, record.execution_count, extra={"rng": rng_state.current()}
            )
        except ObjectStoreError as err:
            self._notify(
                parent,
                f"notebookos: the namespace snapshot could not be stored, so the Raft log keeps "
                f"growing until a later one succeeds: {err}\n",
            )
            return
        captured = time.perf_counter()
        snapshot = Snapshot(
            record.cell, record.executor, record.execution_count, record.reply, full.to_bytes(), tuple(self._installs)
        )
        try:
            await self.raft.append_async(snapshot, COMMIT_TIMEOUT_S)
        except AppendFailed as err:
            self.log.warning(
                "the namespace snapshot after cell [%d] was not committed: %s", record.execution_count, err
            )
            return
        self.log.info(
            "snapshot after cell [%d]: captured in %.1f ms, committed in %.1f ms (%d bytes inline)",
            record.execution_count,
            1e3 * (captured - started),
            1e3 * (time.perf_counter() - captured),
            len(full.inline or b""),
        )

    async def do_execute(
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict | None = None,
        allow_stdin: bool = False,
        **kwargs: Any,
    ) -> dict:
        reply = await super().do_execute(code, silent, store_history, user_expressions, allow_stdin, **kwargs)
        self._last_reply = reply
        return reply

    def finish_metadata(self, parent: dict[str, Any], metadata: dict[str, Any], reply_content: dict[str, Any]) -> dict:
        """Only the elected executor runs ipykernel's own execute path: mark its reply as the executor's, with the
        GPU request for the next cells (``%gpus N`` may have changed it)."""
        metadata = super().finish_metadata(parent, metadata, reply_content)
        metadata[NOTEBOOKOS_META] = {
            "role": ReplicaRole.EXECUTOR.value,
            "replica": self.replica_config.replica,
            "gpus": self._gpus,
        }
        return metadata

    async def dispatch_control(self, msg: list) -> None:
        """The front's own control messages are handled here, ahead of ipykernel's control dispatch: its ``%gpus``
        question (what a cell asks for, before it asks the scheduler) is answered by the magic's owner, a cell after a
        pause quickens Raft, an abandoned attempt stops the shell's wait for its election, and a monitor may ask for
        announcements of applied state. Anything else goes on to ipykernel."""
        request = front_request(self._session, msg)
        if request is None:
            await super().dispatch_control(msg)
        elif request.msg_type == GPUS_REQUEST:
            answer_gpus_request(self._session, self.control_stream, request)
        elif request.msg_type == QUICKEN:
            self._loop.call_soon_threadsafe(self.raft.quicken)
        elif request.msg_type == ANNOUNCE_APPLIED:
            self._announce_applied = request.content.get("on") is True
        else:
            try:
                cell = CellKey(str(request.content["msg_id"]), int(request.content["attempt"]))
            except (KeyError, TypeError, ValueError):
                self.log.error("ignored a malformed %s from the front: %r", ATTEMPT_ABANDONED, request.content)
                return
            self._loop.call_soon_threadsafe(self._abandon, cell)  # the waiters belong to the shell's event loop

    def _gpus_magic(self, line: str) -> None:
        """``%gpus N``: the GPUs each following cell asks for (0: bind none). ``%gpus``: what this cell holds."""
        try:
            wanted = parse_gpus_magic(line)
        except ValueError as err:
            raise UsageError(str(err)) from None
        if wanted is None:
            held = (self._binder.bound if self._binder else None) or ()
            where = f"GPU(s) {list(held)} on {self.replica_config.host}" if held else "no GPU"
            print(f"this kernel asks for {self._gpus} GPU(s) per cell; this cell holds {where}")
        else:
            self._gpus = wanted
            print(f"notebookos: the following cells ask for {wanted} GPU(s)" + (" and bind none" if not wanted else ""))

    # --------------------------------------------------------------------------------------- user notices

    def _warn_unpicklable(self, delta: StateDelta, parent: dict[str, Any]) -> None:
        new = {n: r for n, r in delta.unpicklable.items() if self._warned_unpicklable.get(n) != r}
        self._warned_unpicklable.update(new)
        for name in delta.assigned + delta.deleted:
            self._warned_unpicklable.pop(name, None)
        if new:
            listed = "; ".join(f"{n}: {r}" for n, r in sorted(new.items()))
            self._notify(parent, f"notebookos: these names will not survive a failover (not replicated): {listed}\n")

    def _tell_lost_names(self, parent: dict[str, Any]) -> None:
        """On the first cell this replica runs, name what the previous executor had that could not be replicated."""
        lost = {
            n: r
            for n, r in self.tracker.not_replicated.items()
            if n not in self._told_lost and n not in self._shell.user_ns
        }
        for error in self._unapplied:
            self._notify(parent, f"notebookos: this replica could not restore part of the state: {error}\n")
        self._unapplied.clear()
        if lost:
            self._told_lost.update(lost)
            listed = "; ".join(f"{n} ({r})" for n, r in sorted(lost.items()))
            self._notify(
                parent,
                "notebookos: this cell runs on another replica; these names could not be "
                f"carried over and are undefined here: {listed}\n",
            )

    def _notify(self, parent: dict[str, Any], text: str) -> None:
        self._session.send(
            self.iopub_socket, "stream", {"name": "stderr", "text": text}, parent, ident=self._topic("stream")
        )

    # ------------------------------------------------------------------------------------------- replies

    def _standby_content(self) -> dict[str, Any]:
        return {"status": "ok", "execution_count": self._shell.execution_count, "user_expressions": {}, "payload": []}

    def _send_execute_reply(
        self,
        stream: Any,
        ident: Any,
        parent: dict[str, Any],
        content: dict[str, Any],
        role: ReplicaRole,
        from_log: dict[str, int] | None = None,
    ) -> None:
        meta: dict[str, Any] = {"role": role.value, "replica": self.replica_config.replica}
        if from_log is not None:
            meta["from_log"] = from_log
        self._session.send(stream, "execute_reply", content, parent, ident=ident, metadata={NOTEBOOKOS_META: meta})

    async def kernel_info_request(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        """IPython's banner, part of the kernel info, picks a tip with the process-wide ``random`` generator, and
        Jupyter asks for the kernel info at every (re)connection. Whichever replica answers would have the user's
        generator moved on it alone, and draw other numbers than its peers once it runs a cell: it is kept as it
        was."""
        state = random.getstate()
        try:
            await super().kernel_info_request(stream, ident, parent)
        finally:
            random.setstate(state)

    async def do_shutdown(self, restart: bool) -> dict[str, Any]:
        self.raft.destroy()
        if self._peer_server is not None:
            self._peer_server.stop()
        result = super().do_shutdown(restart)
        return await result if inspect.isawaitable(result) else result


# A line of a cell that installs packages into this machine's environment: run on every replica.
_INSTALL_LINE = re.compile(r"^[ \t]*%(pip|conda|mamba|micromamba|uv)[ \t]+((?:install|uninstall)\b.*)$", re.MULTILINE)


def _install_lines(source: str) -> list[str]:
    """The cell's package-install lines, normalized to ``%magic arguments``."""
    return [f"%{magic} {arguments.strip()}" for magic, arguments in _INSTALL_LINE.findall(source)]


def _latest_last(lines: list[str]) -> list[str]:
    """``lines`` with each repeated line kept only where it last occurs: running them in order reaches the same
    environment (installing, uninstalling and installing a package again ends installed), and a notebook that
    re-runs its install cell does not make every later replacement install it once per run."""
    last = {line: index for index, line in enumerate(lines)}
    return [line for index, line in enumerate(lines) if last[line] == index]


class _NoOutput:
    """Marks 'the cell produced no result' (None is a result a cell can produce)."""


_NO_OUTPUT = _NoOutput()


def _delete_unreferenced(store: LocalDirectoryStore, keep: set[str], grace_s: float) -> None:
    deleted = 0
    for key in store.keys_older_than(grace_s):
        if key not in keep:
            try:
                store.delete(key)
                deleted += 1
            except ObjectStoreError as err:
                logging.getLogger(__name__).warning("%s", err)
    logging.getLogger(__name__).info("deleted %d object(s) no snapshot or later entry refers to", deleted)


def _error_content(ename: str, evalue: str) -> dict[str, Any]:
    return {"status": "error", "ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}


class ReplicaKernelApp(IPKernelApp):
    """IPKernelApp with the replica kernel class and per-replica history kept in memory.

    Three replicas of a kernel may share a machine; a shared SQLite history file would see every cell three times.
    """

    name = "notebookos-replica"
    kernel_class = ReplicaKernel

    @default("log_level")
    def _default_log_level(self) -> int:
        """INFO: a replica's log (replica.log in its folder) is where joins, restores, snapshots and fenced-off
        records are told; they are rare, a few lines per hundred cells."""
        return logging.INFO

    def _configure_logging(self) -> None:
        """traitlets leaves the application's logger at DEBUG and filters at its handler, so each of the debug
        lines ipykernel writes per message (three per cell) was built, then thrown away: 4 % of the executor's CPU
        for a trivial cell. The logger itself filters here, at the level the handler would."""
        super()._configure_logging()
        self.log.setLevel(self.log_level)


# Loggers of the replica's machinery; the root logger stays the user's, as on a plain kernel.
OWN_LOGGERS = ("notebookos", "pysyncobj", "__main__")


def _own_log_stream() -> TextIO:
    """Where the replica's own log lines go: its log (what the process's stderr was at start), through a descriptor
    of their own. ipykernel forwards whatever reaches file descriptor 2 while a cell runs into that cell's output,
    as it should for the user's code; the replica's Raft, snapshot and object-store lines must not land there."""
    stream = os.fdopen(os.dup(2), "w", buffering=1)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for name in OWN_LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return stream


def main() -> None:
    stream = _own_log_stream()
    argv = sys.argv[1:]
    if not any(a.startswith("--HistoryManager.hist_file") for a in argv):
        argv.append("--HistoryManager.hist_file=:memory:")
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    app = ReplicaKernelApp.instance()
    app.initialize(argv)
    for handler in app.log.handlers:  # the kernel's own log (elections, restores, snapshots) goes there too
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)
    app.start()


if __name__ == "__main__":
    main()
