"""Timed execute requests over jupyter_client, and a direct view of each notebookos replica's IOPub.

Used by ``cell_latency.py``. Why a probe of our own instead of ``KernelClient.execute_interactive``: that helper
polls the shell and IOPub channels one after the other with its own timeouts, so an arrival is seen late by up
to one poll period. Here one ``zmq.Poller`` waits on the client's shell and IOPub sockets (and, for sync timing, on
SUB sockets connected straight to the replicas) and every message is stamped the moment ``recv`` returns, before
it is deserialized. The sockets are still jupyter_client's own, signed and verified by its ``Session``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import zmq
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.session import Session

# The IOPub message a notebookos standby publishes after applying a cell's state, and the control message that asks
# it to (kernels/protocol.py).
STATE_APPLIED = "notebookos_state_applied"
ANNOUNCE_APPLIED = "notebookos_announce_applied"
NOTEBOOKOS_META = "notebookos"
# How long after a cell's idle status its execute_reply may still come (the two travel on different sockets, so
# either can arrive first) before the reply is declared lost. A lost reply is counted, not waited on forever: a
# benchmark that hangs on a product bug measures nothing else.
REPLY_GRACE_S = 1.0


class ProbeTimeout(RuntimeError):
    """A cell's reply, idle status or standby announcements did not arrive in time; says which were missing."""


@dataclass
class CellTiming:
    """When each answer to one execute_request arrived, in seconds after the request was sent.

    ``sent_wall`` is ``time.time()`` taken next to the send, so that wall-clock stamps taken by other processes on
    this machine (a standby's ``applied_at``) can be compared with it. ``applied_at`` maps replica index to that
    replica's own ``applied_at`` (wall clock); ``applied_seen`` to when its announcement reached us (seconds after
    send), a sanity check on the clocks. ``replica_seen`` (with a ``ReplicaTap``) maps replica index to when its
    own busy, execute_input, idle and state-applied messages reached us, straight from the replica.
    """

    code: str
    msg_id: str
    sent_wall: float
    status: str = ""
    executor: int | None = None
    busy: float | None = None
    execute_input: float | None = None
    reply: float | None = None
    idle: float | None = None
    reply_lost: bool = False
    applied_at: dict[int, float] = field(default_factory=dict)
    applied_seen: dict[int, float] = field(default_factory=dict)
    replica_seen: dict[int, dict[str, float]] = field(default_factory=dict)

    def standby_applied(self) -> dict[int, float]:
        """Seconds from send until each standby (every announcing replica but the executor) applied the state."""
        return {r: at - self.sent_wall for r, at in self.applied_at.items() if r != self.executor}

    def synced(self) -> float:
        """Seconds from send until the cell's state was applied on the last standby."""
        return max(self.standby_applied().values())


class ReplicaTap:
    """SUB sockets on every notebookos replica's own IOPub, bypassing the front.

    Two uses. The front never forwards a standby's state-applied announcement, so the only way to see when a
    standby applied a cell's state is to listen to the standby itself. And the executor's own busy, execute_input
    and idle, seen here before the front relays them, split the round trip into the front's share and the
    replicas' (the front holds a replica's busy until the executor is elected, so at the client busy and
    execute_input arrive together). All replicas of a kernel share the kernel's message key, so one ``Session``
    verifies them all. Replicas announce applied state only when asked (``ANNOUNCE_APPLIED`` on a replica's control
    channel), since the announcements cost CPU: the tap asks when it opens and stops them when it closes.
    """

    def __init__(self, ctx: zmq.Context, replicas: Iterable[dict[str, Any]], session: Session) -> None:
        self.session = session
        self.sockets: dict[zmq.Socket, int] = {}
        self.controls: list[zmq.Socket] = []
        for replica in replicas:
            conn = replica["connection"]
            sock = connect_to_replica(ctx, zmq.SUB, conn, "iopub_port")
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            self.sockets[sock] = int(replica["replica"])
            self.controls.append(connect_to_replica(ctx, zmq.DEALER, conn, "control_port"))
        self.announce(True)

    def announce(self, on: bool) -> None:
        """Ask every replica to publish (or stop publishing) its state-applied announcements."""
        for control in self.controls:
            self.session.send(control, ANNOUNCE_APPLIED, {"on": on})

    @property
    def replicas(self) -> set[int]:
        return set(self.sockets.values())

    def read(self, sock: zmq.Socket) -> tuple[int, str, str, dict[str, Any]] | None:
        """One message from ``sock`` as (replica, event, parent msg_id, content), where event is ``busy``,
        ``idle``, ``execute_input`` or ``applied``; None for anything else.

        Only the state-applied announcement, whose content is reported, is verified and fully deserialized; the
        others are read from their header, parent and content frames, because fully verifying every status
        message of three replicas would add CPU load to the 2-core machine being measured.
        """
        frames = sock.recv_multipart()
        _, body = self.session.feed_identities(frames)
        kind = json.loads(body[1]).get("msg_type")
        if kind == STATE_APPLIED:
            msg = self.session.deserialize(body)
            return self.sockets[sock], "applied", msg["parent_header"].get("msg_id", ""), msg["content"]
        if kind == "status":
            kind = json.loads(body[4]).get("execution_state")
        if kind not in ("busy", "idle", "execute_input"):
            return None
        return self.sockets[sock], kind, json.loads(body[2]).get("msg_id", ""), {}

    def close(self) -> None:
        self.announce(False)
        for control in self.controls:
            control.close(linger=1000)  # the request to stop goes out before the socket does
        for sock in self.sockets:
            sock.close(linger=0)


def connect_to_replica(ctx: zmq.Context, kind: int, conn: dict[str, Any], port: str) -> zmq.Socket:
    """A socket connected to one of a replica's channels, CurveZMQ-encrypted where the replica's channels are."""
    sock = ctx.socket(kind)
    if conn.get("curve_publickey"):
        sock.curve_serverkey = conn["curve_publickey"].encode()
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://{conn['ip']}:{conn[port]}")
    return sock


class TimedClient:
    """Runs one cell at a time on a kernel and records when its reply, status and execute_input messages arrive."""

    def __init__(self, kc: BlockingKernelClient) -> None:
        self.kc = kc
        self.session = kc.session
        self.shell = kc.shell_channel.socket
        self.iopub = kc.iopub_channel.socket

    def drain(self) -> None:
        """Discard whatever is queued (late messages of earlier cells), so stale arrivals never time a new cell."""
        for sock in (self.shell, self.iopub):
            while sock.poll(0):
                sock.recv_multipart()

    def execute(self, code: str, timeout: float, tap: ReplicaTap | None = None) -> CellTiming:
        """Send ``code`` and wait for its reply and idle status (and, with ``tap``, for every standby's
        state-applied announcement); return the arrival times.

        A reply still missing ``REPLY_GRACE_S`` after the idle status is marked ``reply_lost`` rather than awaited.
        Raises ProbeTimeout if anything else is missing after ``timeout`` seconds.
        """
        msg = self.session.msg(
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
        )
        poller = zmq.Poller()
        poller.register(self.shell, zmq.POLLIN)
        poller.register(self.iopub, zmq.POLLIN)
        for sock in tap.sockets if tap else ():
            poller.register(sock, zmq.POLLIN)
        timing = CellTiming(code, msg["header"]["msg_id"], sent_wall=time.time())
        start = time.perf_counter()
        self.session.send(self.shell, msg)
        deadline = start + timeout
        while not self._complete(timing, tap, time.perf_counter() - start):
            now = time.perf_counter()
            if now >= deadline:
                raise ProbeTimeout(self._missing(timing, tap, timeout))
            wake = deadline if timing.idle is None else min(deadline, start + timing.idle + REPLY_GRACE_S)
            for sock, _ in poller.poll(max(1.0, (wake - now) * 1000)):
                self._receive(sock, timing, start, tap)
        return timing

    def _receive(self, sock: zmq.Socket, timing: CellTiming, start: float, tap: ReplicaTap | None) -> None:
        if tap is not None and sock in tap.sockets:
            seen = time.perf_counter() - start
            found = tap.read(sock)
            if found is None or found[2] != timing.msg_id:
                return
            replica, event, _, content = found
            events = timing.replica_seen.setdefault(replica, {})
            if event == "idle" or event not in events:  # the first busy and execute_input, the last idle
                events[event] = seen
            if event == "applied":
                timing.applied_at[replica] = float(content["applied_at"])
                timing.applied_seen[replica] = seen
            return
        frames = sock.recv_multipart()
        at = time.perf_counter() - start
        _, body = self.session.feed_identities(frames)
        msg = self.session.deserialize(body)
        if msg["parent_header"].get("msg_id") != timing.msg_id:
            return
        kind = msg["msg_type"]
        if sock is self.shell and kind == "execute_reply":
            timing.reply = at
            timing.status = msg["content"].get("status", "")
            timing.executor = (msg["metadata"].get(NOTEBOOKOS_META) or {}).get("replica")
        elif kind == "execute_input" and timing.execute_input is None:
            timing.execute_input = at
        elif kind == "status":
            state = msg["content"]["execution_state"]
            if state == "busy" and timing.busy is None:
                timing.busy = at
            elif state == "idle":
                timing.idle = at

    @staticmethod
    def _complete(timing: CellTiming, tap: ReplicaTap | None, elapsed: float) -> bool:
        """Whether everything awaited has arrived. Also settles what can only be concluded by waiting: a reply
        overdue past the grace period is marked lost, and then the executor is inferred from the standbys."""
        if timing.idle is None:
            return False
        if timing.reply is None:
            if elapsed < timing.idle + REPLY_GRACE_S:
                return False
            timing.reply_lost = True
        if tap is None:
            return True
        standbys = len(tap.replicas) - 1
        if timing.executor is None and len(timing.applied_at) == standbys:
            # No reply to name the executor: it is the one replica that announced nothing (it never announces
            # its own state).
            (timing.executor,) = tap.replicas - set(timing.applied_at)
        if "idle" not in timing.replica_seen.get(timing.executor, {}):
            return False  # the executor's own idle, for the breakdown; it may trail the relayed one on our side
        return len(set(timing.applied_at) - {timing.executor}) >= standbys

    @staticmethod
    def _missing(timing: CellTiming, tap: ReplicaTap | None, timeout: float) -> str:
        missing = [name for name in ("reply", "idle") if getattr(timing, name) is None]
        if tap is not None and timing.reply is not None:
            waiting = sorted(tap.replicas - {timing.executor} - set(timing.applied_at))
            missing += [f"state-applied from replica {r}" for r in waiting]
            if "idle" not in timing.replica_seen.get(timing.executor, {}):
                missing.append(f"idle status on executor {timing.executor}'s own IOPub")
        return f"cell {timing.code!r}: no {', '.join(missing)} within {timeout:.0f} s"
