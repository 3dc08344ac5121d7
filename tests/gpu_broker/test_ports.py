"""Replica ports come from outside the operating system's ephemeral range, are free, and are never given twice."""

from __future__ import annotations

import socket

import pytest

from notebookos.gpu_broker.cluster.ports import EPHEMERAL_RANGE_FILE, PortPool, PortsExhausted, default_range, is_free


def test_the_default_range_stays_clear_of_the_ports_the_system_hands_out():
    low, high = (int(v) for v in EPHEMERAL_RANGE_FILE.read_text().split())
    pool = default_range()
    assert pool.stop <= low or pool.start > high
    with socket.socket() as sock:  # what jupyter_client and ZeroMQ get when they ask for "any free port"
        sock.bind(("127.0.0.1", 0))
        assert sock.getsockname()[1] not in pool


def test_ports_are_free_never_given_twice_and_come_back_when_released():
    candidates = default_range()
    start = next(p for p in range(candidates.start, candidates.stop - 4) if all(is_free(p + i) for i in range(4)))
    pool = PortPool(range(start, start + 4))
    with socket.socket() as busy:  # another program listens on the range's first port
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        busy.bind(("127.0.0.1", start))
        busy.listen()
        given = [pool.take() for _ in range(3)]
        assert sorted(given) == [start + 1, start + 2, start + 3]
        with pytest.raises(PortsExhausted, match="in use"):
            pool.take()
        pool.release({given[0]})
        assert pool.take() == given[0]
