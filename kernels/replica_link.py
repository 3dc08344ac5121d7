"""The kernel front's connection to one replica: its sockets, and whether it is alive.

Liveness comes from the replica's Jupyter heartbeat channel, which ipykernel answers from a thread outside the
GIL: a replica busy in a long cell still answers, a killed one or one on a lost host does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import zmq
import zmq.asyncio

from .loop_socket import LoopSocket

log = logging.getLogger(__name__)

HEARTBEAT_PERIOD_S = 0.2
# A replica that has not answered a heartbeat for this long is treated as lost.
HEARTBEAT_DEAD_AFTER_S = 1.0
# While the notebook runs no cell (the front says so, see ReplicaLink.idle): a ping per replica every 2.5 s, not
# five a second (an idle kernel's front then costs 0.08 % of a core), and a replica lost meanwhile is noticed within
# 7.5 s, or within a second of the next cell.
IDLE_HEARTBEAT_PERIOD_S = 2.5
IDLE_DEAD_AFTER_S = 7.5
# How long a replica that is (re)starting may take to answer its first heartbeat before it counts as lost
# (starting Python, ipykernel and pysyncobj takes 1-3 s here), and how long a migrated one is waited for.
STARTUP_GRACE_S = 10.0
START_TIMEOUT_S = 60.0


def endpoint_of(connection: dict) -> str:
    """``ip:shell_port`` of a replica's connection info: what tells one replica process from its replacement."""
    return f"{connection['ip']}:{connection['shell_port']}"


class ReplicaLink:
    """DEALER sockets for shell, control and stdin (one identity, as ipykernel routes stdin by the shell
    identity), a SUB socket for IOPub, all read by callbacks (:class:`.LoopSocket`), and a REQ socket for
    heartbeats, awaited by :meth:`watch_heartbeat`."""

    def __init__(self, ctx: zmq.asyncio.Context, index: int, host: str, connection: dict, identity: bytes) -> None:
        self.index = index
        self.host = host
        self.connection = connection
        self.alive = True
        self.restarting = False
        # A replacement on another machine, joining the kernel's Raft group: it answers heartbeats long before it
        # has caught up, and takes part in cells only once the cluster reports it ready.
        self.joining = False
        self._ctx = ctx
        self._identity = identity
        # The replica's CurveZMQ server key, when its channels are encrypted; this link's own key pair.
        server_key = connection.get("curve_publickey")
        self._curve = (server_key.encode(), *zmq.curve_keypair()) if server_key else None
        self.shell = self._dealer("shell_port")
        self.control = self._dealer("control_port")
        self.stdin = self._dealer("stdin_port")
        iopub = zmq.Socket(ctx, zmq.SUB)
        self._secure(iopub)
        iopub.setsockopt(zmq.SUBSCRIBE, b"")
        iopub.connect(self._url("iopub_port"))
        self.iopub = LoopSocket(iopub, f"{self} iopub")
        self._last_beat = time.monotonic()
        self._answered = False
        self._busy = asyncio.Event()  # cleared while the notebook is idle; setting it ends the pinger's idle wait
        self._busy.set()

    def __repr__(self) -> str:
        return f"replica {self.index} on {self.host}"

    @property
    def usable(self) -> bool:
        """Whether it takes part in cells: it answers heartbeats and is not a replacement still catching up."""
        return self.alive and not self.joining

    @property
    def idle(self) -> bool:
        """Whether the notebook is idle, so heartbeats can be slow: the front sets it."""
        return not self._busy.is_set()

    @idle.setter
    def idle(self, idle: bool) -> None:
        if idle:
            self._busy.clear()
        else:
            self._busy.set()

    @property
    def endpoint(self) -> str:
        """``ip:shell_port``: which process this link talks to (a replacement elsewhere has another)."""
        return endpoint_of(self.connection)

    def _url(self, port_name: str) -> str:
        return f"tcp://{self.connection['ip']}:{self.connection[port_name]}"

    def _secure(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CurveZMQ client of the replica when its channels are encrypted."""
        if self._curve is not None:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = self._curve

    def _dealer(self, port_name: str) -> LoopSocket:
        sock = zmq.Socket(self._ctx, zmq.DEALER)
        self._secure(sock)
        sock.setsockopt(zmq.IDENTITY, self._identity)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self._url(port_name))
        return LoopSocket(sock, f"{self} {port_name.removesuffix('_port')}")

    async def watch_heartbeat(self, on_change: Callable[[ReplicaLink, bool], Awaitable[None]]) -> None:
        """Ping forever; call ``on_change(self, alive)`` when the replica is lost or answers again."""
        sock = None
        while True:
            if sock is None:
                sock = self._ctx.socket(zmq.REQ)
                self._secure(sock)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(self._url("hb_port"))
            started = time.monotonic()
            idle = self.idle
            period, dead_after = (
                (IDLE_HEARTBEAT_PERIOD_S, IDLE_DEAD_AFTER_S) if idle else (HEARTBEAT_PERIOD_S, HEARTBEAT_DEAD_AFTER_S)
            )
            await sock.send(b"ping")
            if await sock.poll(int(dead_after * 1000)):
                await sock.recv()
                self._last_beat = time.monotonic()
                self._answered = True
                if not self.alive:
                    self.alive = True
                    await on_change(self, True)
            else:
                # A REQ socket that missed its reply cannot send again: start over with a fresh one.
                sock.close()
                sock = None
                # A replica still starting (no answer yet) gets more time before it counts as lost.
                patience = dead_after if self._answered else STARTUP_GRACE_S
                if self.alive and time.monotonic() - self._last_beat >= patience:
                    self.alive = False
                    await on_change(self, False)
            delay = max(0.0, period - (time.monotonic() - started))
            if self.idle:
                with contextlib.suppress(TimeoutError):  # a cell coming ends the idle wait at once
                    await asyncio.wait_for(self._busy.wait(), delay)
            else:
                await asyncio.sleep(delay)

    async def wait_alive(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until the replica answers heartbeats (it was started or moved); bounded, the watcher does the pinging."""
        deadline = time.monotonic() + timeout
        while not self.alive and time.monotonic() < deadline:
            await asyncio.sleep(HEARTBEAT_PERIOD_S / 2)

    def close(self) -> None:
        for sock in (self.shell, self.control, self.stdin, self.iopub):
            sock.close(linger=0)
