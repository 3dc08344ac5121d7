"""ZeroMQ sockets read by a callback on the running asyncio loop: the kernel front's message path.

Every message of a cell passes through the front (the request in, a replica's busy, input, result, idle and reply
out), so what the front spends per message is spent ten times per cell. Under ``zmq.asyncio`` each
``recv_multipart`` makes a future, registers interest in the socket, wakes a coroutine and unregisters, and each
``send_multipart`` makes a future too: py-spy put 45 % of the front's CPU for trivial cells in that machinery.
Here a readable socket is drained by one loop callback, each message handed to a plain function, and a send is a
non-blocking call that returns nothing to wait for.

ZeroMQ's file descriptor signals edges, not levels, and any operation on the socket may consume an edge, a send
included: a socket is drained until ``EVENTS`` shows nothing waiting, and checked again after each send on it, as
pyzmq's own asyncio socket does. A socket holding many messages yields to the loop every :data:`BATCH` of them, so
that one chatty replica cannot starve the others or the heartbeats.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import cast

import zmq

log = logging.getLogger(__name__)

BATCH = 64  # messages handled per loop callback before other callbacks get their turn


class LoopSocket:
    """A plain ZeroMQ socket whose messages go to ``handler`` from the running loop (:meth:`on_recv`), and whose
    sends never block: a message a full queue cannot take (a DEALER whose peer has been gone for a thousand
    messages) is dropped with a warning, as ROUTER and PUB sockets drop theirs, rather than stalling the front."""

    def __init__(self, sock: zmq.Socket, name: str) -> None:
        self.socket = sock
        self.name = name  # for log lines: which channel of which peer
        self._handler: Callable[[list[bytes]], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False  # a drain is scheduled or running: a send need not schedule another

    def __repr__(self) -> str:
        return f"<LoopSocket {self.name}>"

    def on_recv(self, handler: Callable[[list[bytes]], None]) -> None:
        """From now on, ``handler(frames)`` for each message, on the running loop. An exception it raises is logged
        and the next message handled: one bad message must not stop a channel."""
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.socket.FD, self._drain)
        self._schedule_drain()  # messages that came before the reader was added signalled no edge it will see

    def send_multipart(self, frames: Sequence[bytes | zmq.Frame | memoryview], copy: bool = True) -> None:
        """Queue a message for sending (the signature :meth:`jupyter_client.session.Session.send` calls)."""
        try:
            self.socket.send_multipart(frames, zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            log.warning("%s: the peer has not taken messages for a while; one was dropped", self.name)
        if self._handler is not None and not self._draining and _readable(self.socket):
            self._schedule_drain()

    def close(self, linger: int | None = None) -> None:
        """Stop reading and close the socket (``linger`` ms for what is still queued; the socket's own if None)."""
        if self._loop is not None and not self.socket.closed:
            self._loop.remove_reader(self.socket.FD)
        self._handler = None
        self.socket.close(linger)

    def _schedule_drain(self) -> None:
        if self._loop is not None:
            self._draining = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._draining = False
        sock = self.socket
        for _ in range(BATCH):
            handler = self._handler
            if handler is None or sock.closed or not _readable(sock):
                return
            frames = sock.recv_multipart(zmq.NOBLOCK)
            try:
                handler(frames)
            except Exception:
                log.exception("%s: failed to handle a message", self.name)
        self._schedule_drain()  # more may wait: after the loop's other callbacks


def _readable(sock: zmq.Socket) -> bool:
    """Whether a message waits (reading ``EVENTS`` also takes in what ZeroMQ's I/O thread delivered meanwhile)."""
    return bool(cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)
