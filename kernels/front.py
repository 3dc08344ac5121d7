"""The kernel front: what Jupyter believes is the kernel.

One process per notebook kernel. It binds the five Jupyter channels from the connection file the provisioner
wrote, so Jupyter Server, nbclient or any client talks to it as to a plain kernel, and it fans each request out to
the kernel's three replicas (docs/architecture.md, "One cell" and "Failures"):

* execute requests run one at a time. Each goes to the replica invited to LEAD (after a failover, to every
  survivor) with ``metadata.notebookos`` naming the attempt; IOPub is forwarded only from the replica that
  announces it is the executor, and its reply with its ``idle`` status, which comes once its state delta is
  committed; then the next cell is sent.
* other shell requests go to one replica: comms to the executor (widgets live there); completion, inspection and
  the like to an idle standby while a cell runs, so they answer at once.
* a replica that stops answering heartbeats is restarted in place; if it was running the cell, the cell is sent
  again, as a new attempt, to the survivors, with a one-line notice. With fewer than two replicas left the Raft
  group cannot commit: the front says so in the cell's output and exits, so the kernel is reported dead.

All replicas share the front's message key, so replies and IOPub messages are forwarded as signed frames without
re-serialization; only execute requests are re-signed, because the front adds its metadata to them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from collections.abc import Awaitable, Callable

import zmq
import zmq.asyncio
from jupyter_client.session import Session

from ..gpu_broker.cluster.client import ClusterClient, ClusterError, discovery_file
from .watched_process import WatchedProcess
from .protocol import (
    ATTEMPT_ABANDONED,
    QUICKEN,
    EXECUTOR_ANNOUNCEMENT,
    GPU_RELEASED,
    GPUS_MAGIC,
    GPUS_REPLY,
    GPUS_REQUEST,
    NOTEBOOKOS_META,
    STATE_APPLIED,
    ReplicaRole,
)
from .loop_socket import LoopSocket
from .replica_link import HEARTBEAT_DEAD_AFTER_S, HEARTBEAT_PERIOD_S, START_TIMEOUT_S, ReplicaLink, endpoint_of

log = logging.getLogger("notebookos.front")
# IOPub messages that are a cell's output, as the user sees it.
_OUTPUT_TYPES = frozenset({"stream", "display_data", "update_display_data", "execute_result", "error", "clear_output"})
T = TypeVar("T")

DELIM = b"<IDS|MSG>"
# Requests that a standby can answer as well as the executor (the namespaces are the same).
_READ_ONLY = {
    "complete_request",
    "inspect_request",
    "is_complete_request",
    "history_request",
    "kernel_info_request",
    "comm_info_request",
}
# Header field, copied by replicas into parent_header, that names the attempt a message belongs to.
ATTEMPT_HEADER = "notebookos_attempt"
# execute_request metadata key that pins the first attempt of a cell to one replica.
PIN_REPLICA_META = "notebookos_replica"
EXIT_MAJORITY_LOST = 3
PARENT_CHECK_S = 1.0
IDLE_AFTER_S = 5.0  # without a cell for this long, the replicas' heartbeats go to their idle pace
# A cell after a pause this long quickens every replica's Raft: they slow down after 5 s without a cell or a commit
# (replication/raft_log.py, IDLE_AFTER_S), and only the cell's executor hears of the cell itself.
QUICKEN_AFTER_S = 1.0
# A Jupyter server restarted on the same state folder restores this kernel and claims it with this request on the
# control channel (signed with the kernel's message key, as every request is); the front then answers to that server.
CLAIM_REQUEST, CLAIM_REPLY = "notebookos_claim_request", "notebookos_claim_reply"
# Seconds the front waits, once the Jupyter server managing it is gone, for a restarted one to claim it; the
# provisioner sets it (NotebookOSProvisioner.restart_grace_s). Unset or 0: the kernel is removed at once.
RESTART_GRACE_ENV = "NOTEBOOKOS_RESTART_GRACE_S"
REPLACEMENT_POLL_S = 0.5  # how often the front asks the cluster about a replica being replaced
# While the cluster service does not answer (it is being restarted, and takes its state back), calls to it are
# retried, backing off from the first to the last of these.
OUTAGE_RETRY_S = (0.2, 2.0)
# How long the front waits for a replica to say what a cell asks for (_cell_gpus).
GPUS_ANSWER_TIMEOUT_S = 2.0


class MalformedMessage(ValueError):
    """Frames that are not a Jupyter wire-protocol message."""


@dataclass
class Frames:
    """A Jupyter message as received: routing identities, then the signed frames (delimiter first)."""

    idents: list[bytes]
    body: list[bytes]

    @classmethod
    def split(cls, frames: list[bytes]) -> Frames:
        try:
            i = frames.index(DELIM)
        except ValueError:
            raise MalformedMessage(f"a message of {len(frames)} frame(s) without the {DELIM!r} delimiter") from None
        return cls(frames[:i], frames[i:])

    def header(self) -> dict:
        return json.loads(self.body[2])

    def parent(self) -> dict:
        return json.loads(self.body[3])

    def metadata(self) -> dict:
        return json.loads(self.body[4])

    def content(self) -> dict:
        return json.loads(self.body[5])


@dataclass
class Cell:
    """One execute_request from the client, across its attempts."""

    frames: Frames
    msg: dict
    attempt: int = 0
    leads: tuple[int, ...] = ()  # the replicas invited to lead this attempt, the only ones it is sent to
    executor: int | None = None
    busy: bool = False  # a busy status for this cell went to the client
    reply: Frames | None = None  # this attempt's executor's execute_reply, held until its idle (_finish_if_complete)
    replied: bool = False  # an execute_reply went to the client
    all_yield: set[int] = field(default_factory=set)
    buffered: dict[int, list[list[bytes]]] = field(default_factory=dict)
    idle: list[bytes] | None = None  # the executor's idle status, held until the reply has been forwarded
    # The notice shown over the output of an attempt whose executor was lost: that output is cleared once another
    # replica really runs the cell again, and stands if the cell had finished (the new executor answers from the log).
    stale: str | None = None
    # Output that abandoned attempts sent after they were abandoned, by (attempt, replica): if one of them turns out
    # to have finished and committed (a partition heals), the new executor answers from the log and this is shown.
    late: dict[tuple[int, int], list[list[bytes]]] = field(default_factory=dict)
    outcome: asyncio.Future | None = None
    gpu_times: dict = field(default_factory=dict)  # bind_s / release_s, as the executor measured them
    gpus: int = 0  # what the cell asks the scheduler for, as a replica read it (_cell_gpus)

    @property
    def msg_id(self) -> str:
        return self.msg["header"]["msg_id"]


class KernelFront:
    def __init__(
        self, connection: dict, kernel_id: str, replicas: list[dict], cluster: ClusterClient | None, gpus: int = 0
    ) -> None:
        self.kernel_id = kernel_id
        self.cluster = cluster
        self.session = Session(key=connection["key"].encode(), signature_scheme=connection["signature_scheme"])
        self.ctx = zmq.asyncio.Context()
        self.connection = connection
        self._identity = f"front-{uuid.uuid4()}".encode()
        self.replicas = [
            ReplicaLink(self.ctx, r["replica"], r["host"], r["connection"], self._identity) for r in replicas
        ]
        self._link_tasks: dict[int, list[asyncio.Future]] = {}
        self._followers: set[asyncio.Future] = set()  # tasks following lost replicas until they are back
        # Raft commits with a majority: 2 of 3 replicas (1 of 1 under the reservation policy, which keeps one).
        self.majority = len(self.replicas) // 2 + 1
        # The kernel's GPU request, as the replicas last said (they own `%gpus`): the kernelspec's at first, then what
        # a replica read in a cell (_cell_gpus) or an executor reported after one. Carried to each attempt's replicas.
        self.gpus = gpus
        self._gpus_asked: dict[str, asyncio.Future[dict]] = {}  # GPUS_REQUEST msg_id -> its reply
        self.cells: asyncio.Queue[Cell] = asyncio.Queue()
        self.pending: Cell | None = None
        self.previous_executor = 0
        # The replica that ran the last cell to completion, while nothing else has happened to it since (it was not
        # lost, moved or restarted): its state is the kernel's latest, so it may run the next cell without an
        # election (election.py). None: the next cell's executor is elected.
        self._solo_replica: int | None = None
        self.routes: OrderedDict[str, tuple[Any, list[bytes], int]] = OrderedDict()
        self.finished = asyncio.Event()
        self.exit_code = 0
        self._claimant: WatchedProcess | None = None  # the restarted Jupyter server that last claimed this kernel
        self._unclaimed = False  # the grace period ended without a claim: the kernel is being removed

    # ------------------------------------------------------------------------------------------ sockets

    def bind(self) -> None:
        c = self.connection
        url = f"{c['transport']}://{c['ip']}:"
        self.shell = self._bound(zmq.ROUTER, url, c["shell_port"], "client shell")
        self.control = self._bound(zmq.ROUTER, url, c["control_port"], "client control")
        self.stdin = self._bound(zmq.ROUTER, url, c["stdin_port"], "client stdin")
        self.iopub = self._bound(zmq.XPUB, url, c["iopub_port"], "client iopub")
        self.hb = self.ctx.socket(zmq.REP)  # awaited by _heartbeat: a beat is one message, not a cell's ten
        self.hb.setsockopt(zmq.LINGER, 1000)
        self.hb.bind(url + str(c["hb_port"]))

    def _bound(self, kind: int, url: str, port: int, name: str) -> LoopSocket:
        sock = zmq.Socket(self.ctx, kind)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.bind(url + str(port))
        return LoopSocket(sock, name)

    async def run(self) -> int:
        self.bind()
        self.shell.on_recv(_guarded(lambda f: self._on_client_request(self.shell, f)))
        self.control.on_recv(_guarded(lambda f: self._on_client_request(self.control, f)))
        self.stdin.on_recv(_guarded(self._on_client_stdin))
        self.iopub.on_recv(_guarded(self._on_subscription))
        tasks = [
            self._heartbeat(),
            self._run_cells(),
            self._watch_parent(),
        ]
        running = [asyncio.ensure_future(t) for t in tasks]
        for r in self.replicas:
            self._start_link(r)
        await self.finished.wait()
        await asyncio.sleep(0.2)  # let the last replies and IOPub messages leave before closing the sockets
        for t in running + [t for link in self._link_tasks.values() for t in link] + list(self._followers):
            t.cancel()
        for r in self.replicas:
            r.close()
        for sock in (self.shell, self.control, self.stdin, self.iopub):
            sock.close()
        self.ctx.destroy(linger=500)
        return self.exit_code

    def _start_link(self, r: ReplicaLink) -> None:
        """Listen to a replica's sockets and watch its heartbeat, until the front exits or the link is replaced."""
        r.shell.on_recv(_guarded(lambda f: self._on_replica_reply(r, f)))
        r.control.on_recv(_guarded(lambda f: self._on_replica_reply(r, f)))
        r.stdin.on_recv(_guarded(lambda f: self._on_replica_stdin(r, f)))
        r.iopub.on_recv(_guarded(lambda f: self._on_replica_iopub(r, f)))
        self._link_tasks[r.index] = [asyncio.ensure_future(r.watch_heartbeat(self._on_liveness))]

    async def _heartbeat(self) -> None:
        while True:
            await self.hb.send(await self.hb.recv())

    def _on_subscription(self, frames: list[bytes]) -> None:
        event = frames[0]
        if event[:1] == b"\x01":
            self._send(self.iopub, "iopub_welcome", {"subscription": event[1:].decode(errors="replace")})

    # --------------------------------------------------------------------------------- client requests

    def _on_client_request(self, client_sock: LoopSocket, raw: list[bytes]) -> None:
        """A request on the client's shell or control channel: cells are queued (shell only), shutdown is the
        front's own, anything else goes to one replica."""
        frames = Frames.split(raw)
        header = frames.header()
        if header["msg_type"] == "execute_request" and client_sock is self.shell:
            msg = self.session.deserialize(_strip_delim(frames.body), content=True)
            self.cells.put_nowait(Cell(frames, msg))
        elif header["msg_type"] == "shutdown_request":
            self._shutdown(client_sock, frames)
        elif header["msg_type"] == CLAIM_REQUEST and client_sock is self.control:
            self._on_claim(frames)
        else:
            self._route(client_sock, frames, header)

    def _on_client_stdin(self, raw: list[bytes]) -> None:
        """input_reply from the client: to the replica that asked, the current executor."""
        frames = Frames.split(raw)
        target = self._replica(
            self.pending.executor if self.pending and self.pending.executor is not None else self.previous_executor
        )
        target.stdin.send_multipart(frames.body)

    def _route(self, client_sock: LoopSocket, frames: Frames, header: dict) -> None:
        """Send a non-execute request to one replica, remembering where its reply goes."""
        replica = self._target_for(header["msg_type"])
        self.routes[header["msg_id"]] = (client_sock, frames.idents, replica.index)
        while len(self.routes) > 1024:
            self.routes.popitem(last=False)
        sock = replica.control if client_sock is self.control else replica.shell
        sock.send_multipart(frames.body)

    def _target_for(self, msg_type: str) -> ReplicaLink:
        """Comms and anything that may change state go to the executor (widgets live there); read-only requests
        go to an idle standby while a cell runs, so completion answers without waiting for the cell."""
        executor = self.pending.executor if self.pending and self.pending.executor is not None else None
        if msg_type in _READ_ONLY and self.pending is not None:
            idle = [r for r in self._alive() if r.index != executor]
            if idle:
                return idle[0]
        preferred = executor if executor is not None else self.previous_executor
        candidate = self._replica(preferred)
        if candidate.alive:
            return candidate
        alive = self._alive()
        return alive[0] if alive else candidate

    # --------------------------------------------------------------------------------- replica traffic

    def _on_replica_reply(self, replica: ReplicaLink, raw: list[bytes]) -> None:
        """A reply on a replica's shell or control channel: the cell's, or a routed request's, or nobody's."""
        frames = Frames.split(raw)
        header, parent = frames.header(), frames.parent()
        if header["msg_type"] == GPUS_REPLY:
            _settle(self._gpus_asked.get(parent.get("msg_id", "")), frames.content())
            return
        cell = self.pending
        if header["msg_type"] == "execute_reply" and cell is not None and parent.get("msg_id") == cell.msg_id:
            if parent.get(ATTEMPT_HEADER) == cell.attempt:
                self._on_execute_reply(cell, replica, frames)
            return
        route = self.routes.get(parent.get("msg_id", ""))
        if route is not None and route[2] == replica.index:
            route[0].send_multipart(route[1] + frames.body)

    def _on_execute_reply(self, cell: Cell, replica: ReplicaLink, frames: Frames) -> None:
        role = frames.metadata().get(NOTEBOOKOS_META, {}).get("role")
        if role == ReplicaRole.ALL_YIELD.value:
            cell.all_yield.add(replica.index)
            if cell.all_yield.issuperset(r.index for r in self._alive() if r.index in cell.leads):
                _settle(cell.outcome, "all_yield")
            return
        if role != ReplicaRole.EXECUTOR.value:
            return
        if cell.executor is None:
            self._elected(cell, replica.index, frames.metadata().get(NOTEBOOKOS_META, {}).get("from_log"))
        if replica.index != cell.executor:
            return
        cell.reply = frames
        requested = frames.metadata().get(NOTEBOOKOS_META, {}).get("gpus")
        if isinstance(requested, int) and requested >= 0:
            self.gpus = requested
        self._finish_if_complete(cell)

    def _on_replica_iopub(self, replica: ReplicaLink, raw: list[bytes]) -> None:
        frames = Frames.split(raw)
        header, parent = frames.header(), frames.parent()
        if header["msg_type"] in (STATE_APPLIED, "iopub_welcome"):
            return  # our own bookkeeping, and replicas greeting the front's subscription (the front greets clients)
        cell = self.pending
        if cell is not None and parent.get("msg_id") == cell.msg_id:
            attempt = parent.get(ATTEMPT_HEADER)
            if attempt != cell.attempt:  # from an attempt already abandoned: kept in case it had finished
                if header["msg_type"] in _OUTPUT_TYPES and isinstance(attempt, int):
                    cell.late.setdefault((attempt, replica.index), []).append(raw)
                return
            if header["msg_type"] == EXECUTOR_ANNOUNCEMENT:
                self._elected(cell, replica.index, frames.content().get("from_log"))
                return
            if header["msg_type"] == GPU_RELEASED:
                cell.gpu_times = frames.content()
                return
            if cell.executor is None:
                cell.buffered.setdefault(replica.index, []).append(raw)
            elif replica.index == cell.executor:
                self._forward_cell_iopub(cell, raw, frames, header)
            return
        route = self.routes.get(parent.get("msg_id", ""))
        owner = route[2] if route is not None else self.previous_executor
        if replica.index == owner and header["msg_type"] != EXECUTOR_ANNOUNCEMENT:
            self.iopub.send_multipart(raw)

    def _forward_cell_iopub(self, cell: Cell, raw: list[bytes], frames: Frames, header: dict) -> None:
        if header["msg_type"] == "status":
            if frames.content().get("execution_state") == "idle":
                # The reply (shell socket) and the idle (IOPub) race; the cell is over only when both have gone out.
                cell.idle = raw
                self._finish_if_complete(cell)
                return
            cell.busy = True
        self.iopub.send_multipart(raw)

    def _finish_if_complete(self, cell: Cell) -> None:
        """Reply and idle received: the cell is done, its state committed (the executor commits before its idle).
        Only now does the reply go to the client, so that an ``ok`` means the cell's state survives a failover:
        a cell whose commit cannot happen (the majority is lost, its executor dies first) ends with an error or a
        re-run's reply instead. Its idle goes out once its GPUs are back."""
        if cell.reply is None or cell.idle is None:
            return
        cell.replied = True
        self.shell.send_multipart(cell.frames.idents + cell.reply.body)
        if (
            cell.reply.content().get("status") == "error"
            and cell.msg["content"].get("stop_on_error", True)
            and not cell.msg["content"].get("silent", False)
        ):
            self._abort_queued()
        _settle(cell.outcome, "done")

    def _elected(self, cell: Cell, executor: int, from_log: dict[str, int] | None) -> None:
        """``executor`` runs this attempt; ``from_log`` (attempt, executor) if it answers from the log because an
        abandoned attempt had finished: that attempt's output stands (shown already, or kept since in ``late``)."""
        if from_log is not None:
            for raw in cell.late.get((from_log["attempt"], from_log["executor"]), []):
                self.iopub.send_multipart(raw)
        elif cell.stale is not None:
            self._notice(cell.msg, cell.stale, clear=True)
        cell.stale = None
        cell.late.clear()
        cell.executor = executor
        self.previous_executor = executor
        for raw in cell.buffered.pop(executor, []):
            frames = Frames.split(raw)
            self._forward_cell_iopub(cell, raw, frames, frames.header())
        cell.buffered.clear()

    def _on_replica_stdin(self, replica: ReplicaLink, raw: list[bytes]) -> None:
        """input_request from the executor: to the client that sent the running cell."""
        cell = self.pending
        if cell is not None and replica.index == cell.executor:
            self.stdin.send_multipart(cell.frames.idents + Frames.split(raw).body)

    # ------------------------------------------------------------------------------------------- cells

    async def _run_cells(self) -> None:
        while True:
            cell = await self._next_cell()
            self.pending = cell
            try:
                await self._run_cell(cell)
            finally:
                self.pending = None

    async def _next_cell(self) -> Cell:
        """The next cell. When none comes for IDLE_AFTER_S, the replica links ping at their idle pace until one
        does: most notebooks are idle most of the time, and their kernels should cost next to nothing then. After
        a pause, every replica is told that a cell comes (protocol.QUICKEN)."""
        waited_since = time.monotonic()
        try:
            cell = await asyncio.wait_for(self.cells.get(), IDLE_AFTER_S)
        except TimeoutError:
            for replica in self.replicas:
                replica.idle = True
            cell = await self.cells.get()
        for replica in self.replicas:
            replica.idle = False
        if time.monotonic() - waited_since > QUICKEN_AFTER_S:
            self._quicken_replicas()
        return cell

    def _quicken_replicas(self) -> None:
        """Back to Raft's busy pace on every live replica, not only the one a cell goes to: after a pause, so that
        should that one be lost during the cell the others elect a new Raft leader about as fast as the front
        notices the loss; and when the front loses a replica, which may have been the Raft leader."""
        self._tell_replicas(self.session.msg(QUICKEN, {}))

    def _tell_replicas(self, msg: dict) -> None:
        """One of the front's own control messages (protocol.py), to every live replica."""
        frames = self.session.serialize(msg)
        for replica in self._alive():
            replica.control.send_multipart(frames)

    async def _run_cell(self, cell: Cell) -> None:
        tried_lead: set[int] = set()
        cell.gpus = await self._cell_gpus(cell)
        while True:
            alive = self._alive()
            if len(alive) < self.majority:
                self._majority_lost(cell)
                return
            devices: tuple[int, ...] = ()
            granted = cell.gpus > 0
            if granted:
                grant = await self._request_gpus(cell)
                if grant is None:
                    return
                leads, devices = [grant["replica"]], tuple(grant["devices"])
                alive = self._alive()
                if not any(r.index == grant["replica"] for r in alive):
                    await self._release_gpus(cell)  # its executor did not come back in time: ask again
                    continue
            elif cell.attempt == 0:
                leads = [self._first_lead(cell, alive)]
            elif tried_lead:
                untried = [r.index for r in alive if r.index not in tried_lead]
                if not untried:
                    self._fail_cell(
                        cell,
                        "NotebookOSNoExecutor",
                        "no replica of this kernel can run the cell now (every replica yielded)",
                    )
                    return
                leads = untried[:1]
            else:
                leads = [r.index for r in alive]  # after a failover, every survivor may lead; the log decides
            cell.leads = tuple(leads)
            cell.executor = None
            solo = cell.attempt == 0 and cell.leads == (self._solo_replica,)
            cell.all_yield = set()
            cell.buffered = {}
            cell.reply = cell.idle = None
            cell.outcome = asyncio.get_running_loop().create_future()
            self._send_attempt(cell, alive, devices, solo)
            if solo:
                # The replica that ran the previous cell runs this one, alone invited: it says nothing more about it
                # (protocol.EXECUTOR_ANNOUNCEMENT), so that its output streams from its first message.
                self._elected(cell, leads[0], None)
            try:
                outcome = await cell.outcome
            finally:
                if granted:
                    await self._release_gpus(cell)
            self._solo_replica = cell.executor if outcome == "done" else None
            if outcome == "done":
                if cell.idle is None:  # _finish_if_complete settles "done" only with the idle in hand
                    raise RuntimeError(f"cell {cell.msg_id} done without its idle status")
                self.iopub.send_multipart(cell.idle)  # idle means idle: the cell's GPUs are already released
                return
            if outcome == "all_yield":
                tried_lead.update(leads)
            elif cell.executor is None:
                self._abandon_attempt(cell)
            cell.attempt += 1

    async def _cell_gpus(self, cell: Cell) -> int:
        """GPUs this cell asks for, before it runs: the replicas own ``%gpus`` (the magic, and how a cell's first
        line asks, :func:`.gpu_request.cell_gpus`), so the front asks them on their control channels, every live
        one at once, and takes the first answer (a replica that has just died does not hold the cell up). A cell
        that starts with ``%gpus N`` asks for N (and so do later cells); a cell of nothing but ``%gpus`` lines asks
        for none. A front that hears from no replica keeps the kernel's request. A cell whose source does not
        contain the magic cannot ask for anything else than the kernel's request, so most cells skip the question
        (it costs about 3 ms of CPU across the replicas)."""
        code = cell.msg["content"].get("code", "")
        alive = self._alive()
        if not alive or GPUS_MAGIC not in code:  # a cell that does not name the magic asks for the kernel's request
            return self.gpus
        msg = self.session.msg(GPUS_REQUEST, {"code": code, "gpus": self.gpus})
        msg_id = msg["header"]["msg_id"]
        asked = self._gpus_asked[msg_id] = asyncio.get_running_loop().create_future()
        self._tell_replicas(msg)
        try:
            answer = await asyncio.wait_for(asked, GPUS_ANSWER_TIMEOUT_S)
        except TimeoutError:
            log.warning(
                "no replica said within %s s what the cell asks for; it asks for the kernel's %s GPU(s)",
                GPUS_ANSWER_TIMEOUT_S,
                self.gpus,
            )
            return self.gpus
        finally:
            self._gpus_asked.pop(msg_id, None)
        if not (isinstance(answer.get("cell"), int) and isinstance(answer.get("kernel"), int)):
            return self.gpus
        self.gpus = answer["kernel"]
        return answer["cell"]

    async def _request_gpus(self, cell: Cell) -> dict | None:
        """The scheduler's grant of this cell's executor and devices (None: the cell failed, and says why).

        A replica the scheduler migrated is restarting on its new host: the cell goes out once it answers. A replica
        this front has seen die (chosen before the cluster heard of it, or being replaced) is reported lost and the
        GPUs asked for again, so that the scheduler chooses among the live replicas or the replacement it placed,
        which is then waited for."""
        grant = await self._grant(cell)
        if grant is not None and grant["kind"] != "migrate" and not self._replica(grant["replica"]).alive:
            await self._restart(self._replica(grant["replica"]))
            await self._release_gpus(cell)
            grant = await self._grant(cell)
        if grant is None:
            return None
        if grant["kind"] == "migrate":
            executor = self._replica(grant["replica"])
            self._notice(cell.msg, f"notebookos: moving {executor} to {grant['host']} for its GPUs.\n")
            await self._follow_move(executor)
        await self._until_usable(grant["replica"])
        return grant

    async def _until_usable(self, index: int) -> None:
        """Until replica ``index`` takes part in cells (:attr:`.ReplicaLink.usable`: it answers heartbeats and, a
        replacement, has caught up), through whichever link it has by then (a replacement on another machine gets a
        new one); bounded, as a start is. A grant for a replacement still catching up used to be given back and asked
        for again at once, and the scheduler granted the same replica: 180 requests a second until it caught up."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._replica(index).usable and time.monotonic() < deadline:
            await asyncio.sleep(HEARTBEAT_PERIOD_S / 2)

    def _cluster(self) -> ClusterClient:
        """The cluster service's client, for what only it does: grant GPUs, move and replace replicas."""
        if self.cluster is None:
            raise RuntimeError(
                "this kernel's front found no cluster service when it started (no discovery file): restart the kernel "
                "once the cluster service runs"
            )
        return self.cluster

    async def _grant(self, cell: Cell) -> dict | None:
        """Ask for the cell's GPUs; wait, saying so in the cell, while they are busy or the cluster service is
        away. None (the cell failed with the reason) when the cluster refuses."""
        cluster = self._cluster()
        try:
            grant = await self._through_outage(lambda: cluster.request_execution(self.kernel_id, cell.gpus), cell)
            while not grant["granted"]:
                self._notice(cell.msg, f"notebookos: waiting for {grant['gpus']} GPU(s): {grant['reason']}\n")
                try:
                    grant = await cluster.wait_execution(self.kernel_id)
                except ClusterError as err:
                    if err.status not in (None, 409):
                        raise
                    # The service went away while the cell waited; the one that took its place knows nothing of
                    # the queued request: ask again.
                    grant = await self._through_outage(
                        lambda: cluster.request_execution(self.kernel_id, cell.gpus), cell
                    )
        except ClusterError as err:
            self._fail_cell(cell, "NotebookOSGPUUnavailable", err.detail or str(err))
            return None
        return grant

    async def _follow_move(self, replica: ReplicaLink) -> None:
        """The scheduler moved a replica (it has caught up there when the grant comes): on another machine it is
        a new member at a new address, so the front relinks; on this machine it restarted with the same ports."""
        described = next(
            r for r in (await self._cluster().kernel(self.kernel_id))["replicas"] if r["replica"] == replica.index
        )
        if endpoint_of(described["connection"]) != replica.endpoint:
            await self._follow_replacement(replica, described)
        else:
            replica.alive = False  # its old process is gone; the next heartbeat answered is the new one's

    async def _release_gpus(self, cell: Cell) -> None:
        times = cell.gpu_times
        cell.gpu_times = {}
        cluster = self._cluster()
        try:
            await self._through_outage(
                lambda: cluster.release_execution(self.kernel_id, times.get("bind_s"), times.get("release_s"))
            )
        except ClusterError as err:
            log.error("could not give this cell's GPUs back: %s", err)

    def _first_lead(self, cell: Cell, alive: list[ReplicaLink]) -> int:
        """The replica invited to lead a cell's first attempt: the one the request pins, if it is alive (tests and
        operators use ``metadata.notebookos_replica``), else the previous executor, else the first live replica."""
        pinned = (cell.msg.get("metadata") or {}).get(PIN_REPLICA_META)
        for wanted in (pinned, self.previous_executor):
            if isinstance(wanted, int) and any(r.index == wanted for r in alive):
                return wanted
        return alive[0].index

    def _abandon_attempt(self, cell: Cell) -> None:
        """The attempt's invited lead was lost before the election decided: the survivors, which wait for that
        decision, are told to stop, so that they take the next attempt at once (protocol.ATTEMPT_ABANDONED)."""
        self._tell_replicas(self.session.msg(ATTEMPT_ABANDONED, {"msg_id": cell.msg_id, "attempt": cell.attempt}))

    def _send_attempt(self, cell: Cell, alive: list[ReplicaLink], devices: tuple[int, ...], solo: bool) -> None:
        """Send the attempt to its invited leads only: a single lead decides alone (election.py), and the other
        replicas learn the cell's outcome from the log, so neither they nor the front handle the request. ``solo``:
        the lead ran the previous cell to its end and has not been lost since, so it may run this one without an
        election."""
        for replica in alive:
            if replica.index not in cell.leads:
                continue
            msg = dict(cell.msg)
            # Replicas copy the request header into every reply and output's parent_header, so this tag tells the
            # front which attempt a late message belongs to. Clients ignore the extra header field.
            msg["header"] = dict(cell.msg["header"], **{ATTEMPT_HEADER: cell.attempt})
            msg["metadata"] = dict(cell.msg.get("metadata") or {})
            msg["metadata"][NOTEBOOKOS_META] = {
                "attempt": cell.attempt,
                "lead": True,
                "leads": len(cell.leads),
                "solo": solo,
                "voters": cell.leads,
                "devices": devices,
                "gpus": self.gpus,
            }
            replica.shell.send_multipart(self.session.serialize(msg))

    def _abort_queued(self) -> None:
        """Like ipykernel after an error with stop_on_error: cells queued behind it are aborted, not run."""
        while not self.cells.empty():
            queued = self.cells.get_nowait()
            self._status(queued.msg, "busy")
            self._reply(queued, {"status": "aborted", "execution_count": None})
            self._status(queued.msg, "idle")

    # ---------------------------------------------------------------------------------------- failures

    async def _on_liveness(self, replica: ReplicaLink, alive: bool) -> None:
        if alive:
            log.info("%s answers again", replica)
            replica.restarting = False
            return
        log.warning("%s lost", replica)
        if replica.index == self._solo_replica:
            self._solo_replica = None  # whatever comes back may have missed records: its next cell is elected
        # It may have been the Raft leader: the others elect a new one at the busy pace, whoever the next attempt
        # goes to (only its lead hears of it).
        self._quicken_replicas()
        cell = self.pending
        if (
            cell is not None
            and cell.outcome is not None
            and not cell.outcome.done()
            and (cell.executor == replica.index or (cell.executor is None and replica.index in cell.leads))
        ):
            cell.stale = (
                f"notebookos: {replica} was lost while running this cell; re-running it from the last "
                "committed state.\n"
            )
            self._notice(cell.msg, cell.stale)
            _settle(cell.outcome, "failover")
        elif cell is not None and len(self._alive()) < self.majority:
            _settle(cell.outcome, "majority lost")  # nothing can commit: say so now rather than at a timeout
        # Losses close together are one event (a host with two replicas, a rack): wait one detection window before
        # deciding. Without a majority nothing is restarted, since the journal of a lost host may be gone; the user
        # is told at the running or the next cell that the kernel cannot continue.
        await asyncio.sleep(HEARTBEAT_DEAD_AFTER_S)
        if len(self._alive()) >= self.majority and not replica.alive:
            await self._restart(replica)

    async def _restart(self, replica: ReplicaLink) -> None:
        """Ask the cluster to replace a lost replica, then follow it (on a task of its own: this runs inside the
        replica's heartbeat watcher, which must go on pinging): restarted in place, it answers heartbeats on the
        same link; replaced on another machine (now, or once the scheduler finds room), it gets a new link."""
        if self.cluster is None or replica.restarting:
            return
        replica.restarting = True
        cluster = self.cluster
        try:
            described = await self._through_outage(
                lambda: cluster.restart_replica(self.kernel_id, replica.index, replica.endpoint)
            )
        except ClusterError as err:
            replica.restarting = False
            log.error("could not restart %s: %s", replica, err)
            return
        follower = asyncio.ensure_future(self._watch_replacement(replica, described))
        self._followers.add(follower)
        follower.add_done_callback(self._followers.discard)

    async def _watch_replacement(self, replica: ReplicaLink, described: dict) -> None:
        try:
            while self._replica(replica.index) is replica and not replica.alive:
                current = next(r for r in described["replicas"] if r["replica"] == replica.index)
                if endpoint_of(current["connection"]) != replica.endpoint:
                    await self._follow_replacement(replica, current)
                    return
                await asyncio.sleep(REPLACEMENT_POLL_S)
                described = await self._cluster().kernel(self.kernel_id)
        except ClusterError as err:
            replica.restarting = False
            log.error("lost track of the replacement of %s: %s", replica, err)

    async def _follow_replacement(self, lost: ReplicaLink, described: dict) -> None:
        """Talk to the replacement instead of the lost replica; it takes part in cells once the cluster reports
        it caught up (it joined the Raft group as a new member and replayed the log)."""
        if self._replica(lost.index) is not lost:
            return  # followed already (a move the front was told of, and the loss it then saw)
        new = ReplicaLink(self.ctx, lost.index, described["host"], described["connection"], self._identity)
        new.alive, new.joining, new.idle = False, True, lost.idle
        self.replicas[self.replicas.index(lost)] = new
        for task in self._link_tasks.pop(lost.index, []):
            task.cancel()
        lost.close()
        self._start_link(new)
        log.info("%s replaced by a new member on %s", lost, new.host)
        while new.joining and self._replica(new.index) is new:
            state = next(
                r for r in (await self._cluster().kernel(self.kernel_id))["replicas"] if r["replica"] == new.index
            )["state"]
            if state == "ready":
                new.joining = False
                log.info("%s has caught up", new)
            else:
                await asyncio.sleep(REPLACEMENT_POLL_S)

    async def _through_outage(self, call: Callable[[], Awaitable[T]], cell: Cell | None = None) -> T:
        """``call()``'s answer, retried while the cluster service does not answer at all (restarted, it takes its
        state back and answers again); the cell, if any, says once that it waits. Refusals are raised at once."""
        delay, told = OUTAGE_RETRY_S[0], False
        while True:
            try:
                return await call()
            except ClusterError as err:
                if err.status is not None:
                    raise
                if cell is not None and not told:
                    self._notice(
                        cell.msg, "notebookos: the cluster service does not answer; this cell waits for it to be back\n"
                    )
                    told = True
                log.warning("%s; retrying in %.1f s", err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, OUTAGE_RETRY_S[1])

    def _majority_lost(self, cell: Cell) -> None:
        lost = ", ".join(str(r) for r in self.replicas if not r.alive)
        text = (
            f"notebookos: this kernel lost {lost}; with fewer than {self.majority} of its {len(self.replicas)} "
            "replicas it cannot commit state, so it cannot continue. Restart the kernel to get a fresh one "
            "(its variables are gone).\n"
        )
        self._notice(cell.msg, text)
        self._fail_cell(cell, "NotebookOSMajorityLost", text.strip())
        self._abort_queued()
        self._exit(EXIT_MAJORITY_LOST)

    def _fail_cell(self, cell: Cell, ename: str, evalue: str) -> None:
        """End a cell that no replica will answer: the error shows in the cell, like any error."""
        if not cell.busy:
            self._status(cell.msg, "busy")  # no executor's busy was forwarded for this cell
        error = {"ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}
        self._send(self.iopub, "error", error, parent=cell.msg)
        if not cell.replied:
            self._reply(cell, {"status": "error", **error, "execution_count": None})
        self._status(cell.msg, "idle")

    def _exit(self, code: int) -> None:
        self.exit_code = code
        self.finished.set()

    async def _watch_parent(self) -> None:
        """Remove this kernel and exit once the Jupyter server managing it has been gone for the restart grace
        period (``NOTEBOOKOS_RESTART_GRACE_S``; 0: at once, as ipykernel exits with its parent) without another
        server claiming it: nobody else would ever clean up after an orphaned kernel. The managing server is the
        process that started us (``JPY_PARENT_PID``) until a restarted server claims us (``_on_claim``)."""
        parent = int(os.environ.get("JPY_PARENT_PID") or 0)
        if parent <= 1:
            return
        grace = _restart_grace_s()
        gone_since: float | None = None
        while True:
            manager, alive = self._manager(parent)
            if alive:
                gone_since = None
            elif gone_since is None:
                gone_since = time.monotonic()
                log.warning(
                    "the Jupyter server %d managing this kernel is gone; the kernel is removed unless a "
                    "restarted server claims it within %g s",
                    manager,
                    grace,
                )
            if gone_since is not None and time.monotonic() - gone_since >= grace:
                break
            await asyncio.sleep(PARENT_CHECK_S)
        self._unclaimed = True
        log.warning("no Jupyter server claimed this kernel; removing it")
        if self.cluster is not None:
            try:
                await self.cluster.delete_kernel(self.kernel_id)
            except ClusterError as err:
                log.error("could not remove this kernel's replicas: %s", err)
        self._exit(0)

    def _manager(self, parent: int) -> tuple[int, bool]:
        """The Jupyter server managing this kernel, and whether it still runs: the last one to claim it, else the
        one that started it (our parent for as long as it lives; then init or a subreaper adopts us)."""
        if self._claimant is not None:
            return self._claimant.pid, self._claimant.alive()
        return parent, os.getppid() == parent

    def _on_claim(self, frames: Frames) -> None:
        """A Jupyter server restarted on its predecessor's state folder restored this kernel and manages it from now
        on: watch that process instead. The request is signed with the kernel's message key (deserialize checks
        it), so only a holder of the key can claim. The reply says whether a cell is running, for the server's
        model of the kernel."""
        msg = self.session.deserialize(_strip_delim(frames.body), content=True)
        pid = msg["content"].get("pid")
        if self._unclaimed:
            content = {"status": "error", "evalue": "this kernel is being removed: no server claimed it in time"}
        elif not isinstance(pid, int) or pid <= 1:
            content = {"status": "error", "evalue": f"a claim names the process {pid!r}, not a process id"}
        else:
            if self._claimant is not None:
                self._claimant.close()
            self._claimant = WatchedProcess(pid)
            log.info("claimed by the Jupyter server %d", pid)
            busy = self.pending is not None or not self.cells.empty()
            content = {"status": "ok", "execution_state": "busy" if busy else "idle"}
        self._send(self.control, CLAIM_REPLY, content, parent=msg, ident=frames.idents)

    # ----------------------------------------------------------------------------------- own messages

    def _send(
        self, sock: LoopSocket, msg_type: str, content: dict, parent: dict | None = None, ident: list | None = None
    ) -> None:
        """One of the front's own messages: what ``Session.send`` does for a message without buffers."""
        sock.send_multipart(self.session.serialize(self.session.msg(msg_type, content, parent=parent), ident))

    def _reply(self, cell: Cell, content: dict) -> None:
        cell.replied = True
        self._send(self.shell, "execute_reply", content, parent=cell.msg, ident=cell.frames.idents)

    def _status(self, parent: dict, state: str) -> None:
        self._send(self.iopub, "status", {"execution_state": state}, parent=parent)

    def _notice(self, parent: dict, text: str, clear: bool = False) -> None:
        if clear:
            self._send(self.iopub, "clear_output", {"wait": False}, parent=parent)
        self._send(self.iopub, "stream", {"name": "stderr", "text": text}, parent=parent)

    def _shutdown(self, client_sock: LoopSocket, frames: Frames) -> None:
        msg = self.session.deserialize(_strip_delim(frames.body), content=True)
        for replica in self._alive():
            replica.control.send_multipart(frames.body)
        content = {"status": "ok", "restart": bool(msg["content"].get("restart", False))}
        self._send(client_sock, "shutdown_reply", content, parent=msg, ident=frames.idents)
        self._send(self.iopub, "shutdown_reply", content, parent=msg)
        self._exit(0)

    # ------------------------------------------------------------------------------------------ helpers

    def _alive(self) -> list[ReplicaLink]:
        return [r for r in self.replicas if r.usable]

    def _replica(self, index: int) -> ReplicaLink:
        return self.replicas[index]


def _restart_grace_s() -> float:
    raw = os.environ.get(RESTART_GRACE_ENV) or "0"
    try:
        return max(float(raw), 0.0)
    except ValueError:
        log.error(
            "%s=%r is not a number of seconds; this kernel is removed as soon as its Jupyter server is gone",
            RESTART_GRACE_ENV,
            raw,
        )
        return 0.0


def _guarded(handler: Callable[[list[bytes]], None]) -> Callable[[list[bytes]], None]:
    """``handler`` for a channel's messages, saying in one line that a message was not a Jupyter peer's (a port
    scanner, a stray reconnect) instead of logging a traceback for it."""

    def handle(frames: list[bytes]) -> None:
        try:
            handler(frames)
        except MalformedMessage as err:
            log.warning("ignored %s", err)

    return handle


def _strip_delim(body: list[bytes]) -> list[bytes]:
    return body[1:]


def _settle(future: asyncio.Future | None, outcome: Any) -> None:
    if future is not None and not future.done():
        future.set_result(outcome)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m notebookos.kernels.front")
    parser.add_argument("-f", "--connection-file", required=True)
    parser.add_argument("--kernel-id", required=True)
    parser.add_argument("--replicas", required=True, help="JSON file: the cluster's description of the kernel")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("NOTEBOOKOS_LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    connection = json.loads(Path(args.connection_file).read_text())
    described = json.loads(Path(args.replicas).read_text())
    cluster_file = discovery_file()
    cluster = ClusterClient.from_file(cluster_file) if cluster_file.exists() else None
    front = KernelFront(connection, args.kernel_id, described["replicas"], cluster, int(described.get("gpus", 0)))
    return asyncio.run(front.run())


if __name__ == "__main__":
    sys.exit(main())
