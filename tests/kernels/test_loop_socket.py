"""LoopSocket, the kernel front's channel: real ZeroMQ sockets over loopback TCP, read by callbacks on a real loop.

The cases are the ones a callback-driven ZeroMQ reader gets wrong: messages that came before reading started,
messages that arrive while the same socket sends (a send can swallow the wake-up of a message), a peer that is gone,
and a handler that fails.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import select
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import zmq

from notebookos.kernels.loop_socket import LoopSocket

TIMEOUT_S = 10.0
WINDOW = 100


def on_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run the test on a fresh asyncio loop of its own, as the front runs."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def _pair(ctx: zmq.Context) -> tuple[LoopSocket, LoopSocket]:
    """A ROUTER (the front's client side) and a DEALER connected to it over loopback TCP."""
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    return LoopSocket(router, "router"), LoopSocket(dealer, "dealer")


@on_loop
async def test_messages_that_came_before_reading_started_are_handled_in_order(ctx):
    router, dealer = _pair(ctx)
    got: list[bytes] = []
    done = asyncio.Event()
    for i in range(3):
        dealer.send_multipart([b"m%d" % i])
    # Queued in the router before it has a reader: no wake-up will come for them.
    while not router.socket.poll(0):
        await asyncio.sleep(0.01)

    def handle(frames: list[bytes]) -> None:
        got.append(frames[1])
        if len(got) == 3:
            done.set()

    router.on_recv(handle)
    await asyncio.wait_for(done.wait(), TIMEOUT_S)
    assert got == [b"m0", b"m1", b"m2"]
    router.close(0)
    dealer.close(0)


@on_loop
async def test_a_message_whose_wake_up_a_send_took_in_is_still_handled(ctx):
    """A message arrives (ZeroMQ signals its descriptor), then the front sends on that socket before the loop
    looks: the send takes in the signal, and the descriptor no longer shows anything to read."""
    router, dealer = _pair(ctx)
    got: list[list[bytes]] = []
    done = asyncio.Event()
    dealer.on_recv(lambda frames: (got.append(frames), done.set()))
    await asyncio.sleep(0)  # the reader's first drain: nothing there yet
    dealer.send_multipart([b"hello"])
    identity = await asyncio.wait_for(_received(router.socket), TIMEOUT_S)
    router.socket.send_multipart([identity, b"reply"])
    readable, _, _ = select.select([dealer.socket.FD], [], [], TIMEOUT_S)  # without running the loop
    assert readable, "the reply never reached the dealer"
    dealer.send_multipart([b"unprompted"])  # takes in the signal of the reply
    await asyncio.wait_for(done.wait(), TIMEOUT_S)
    assert got == [[b"reply"]]
    router.close(0)
    dealer.close(0)


async def _send_within_window(
    send: Callable[[], None], sent: list[int], pongs: list[int], rounds: int, progress: asyncio.Event
) -> None:
    """Send until ``rounds`` went out, at most ``WINDOW`` unanswered: a window of messages in flight, as a kernel's
    channels carry, not a flood past ZeroMQ's queue limit (where a LoopSocket drops, as it says)."""
    while len(sent) < rounds:
        if len(sent) - len(pongs) < WINDOW:
            send()
        else:
            progress.clear()
            await progress.wait()


async def _received(sock: zmq.Socket) -> bytes:
    """The identity of the first message ``sock`` (a ROUTER not read by a LoopSocket) receives."""
    while not sock.poll(0):
        await asyncio.sleep(0.01)
    return sock.recv_multipart()[0]


@on_loop
async def test_two_thousand_round_trips_with_unprompted_sends_between_them_are_all_handled(ctx):
    """Ping-pong where each side answers from its handler and the dealer also sends between the answers, as the
    front does: no message lost, none handled twice."""
    router, dealer = _pair(ctx)
    rounds = 2000
    sent: list[int] = []
    pongs: list[int] = []
    done = asyncio.Event()
    progress = asyncio.Event()

    def send() -> None:
        sent.append(len(sent))
        dealer.send_multipart([str(sent[-1]).encode()])

    def on_router(frames: list[bytes]) -> None:
        router.send_multipart([frames[0], frames[1]])

    def on_dealer(frames: list[bytes]) -> None:
        pongs.append(int(frames[0]))
        progress.set()
        if len(pongs) == rounds:
            done.set()
        elif len(pongs) % 2 and len(sent) < rounds:
            send()  # an extra one from the handler, as the front sends unprompted

    router.on_recv(on_router)
    dealer.on_recv(on_dealer)
    await asyncio.wait_for(_send_within_window(send, sent, pongs, rounds, progress), TIMEOUT_S)
    await asyncio.wait_for(done.wait(), TIMEOUT_S)
    assert sorted(pongs) == sent == list(range(rounds))
    router.close(0)
    dealer.close(0)


@on_loop
async def test_a_send_to_a_peer_that_is_gone_drops_with_a_warning_instead_of_blocking(ctx, caplog):
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, 10)
    sock.connect("tcp://127.0.0.1:9")  # the discard port: nothing listens on loopback
    dealer = LoopSocket(sock, "replica 1 on host-2 shell")
    with caplog.at_level(logging.WARNING, logger="notebookos.kernels.loop_socket"):
        for i in range(100):
            dealer.send_multipart([b"%d" % i])
    assert "replica 1 on host-2 shell: the peer has not taken messages for a while; one was dropped" in caplog.text
    dealer.close(0)


@on_loop
async def test_a_failing_handler_is_logged_and_the_next_message_still_handled(ctx, caplog):
    router, dealer = _pair(ctx)
    got: list[bytes] = []
    done = asyncio.Event()

    def handle(frames: list[bytes]) -> None:
        if frames[1] == b"bad":
            raise ValueError("not a message this handler understands")
        got.append(frames[1])
        done.set()

    router.on_recv(handle)
    with caplog.at_level(logging.ERROR, logger="notebookos.kernels.loop_socket"):
        dealer.send_multipart([b"bad"])
        dealer.send_multipart([b"good"])
        await asyncio.wait_for(done.wait(), TIMEOUT_S)
    assert got == [b"good"]
    assert "router: failed to handle a message" in caplog.text
    router.close(0)
    dealer.close(0)
