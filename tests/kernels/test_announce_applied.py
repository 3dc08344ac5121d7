"""Standbys announce each applied state on their own IOPub only while a benchmark or monitor asks them to
(protocol.ANNOUNCE_APPLIED): an announcement per record cost a standby about half of what applying a trivial cell
costs it. Driven with the benchmark's own tap (benchmarks/latency_probe.py), which asks when it opens."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from .driver import Notebook, replicas_of

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from latency_probe import ReplicaTap  # noqa: E402

Event = tuple[int, str, str]  # replica, event (busy, idle, execute_input, applied), parent msg_id


def read_until(tap: ReplicaTap, done: Callable[[set[Event]], bool], deadline_s: float) -> set[Event]:
    """What the replicas publish, until ``done`` holds or ``deadline_s`` passes."""
    poller = zmq.Poller()
    for sock in tap.sockets:
        poller.register(sock, zmq.POLLIN)
    events: set[Event] = set()
    end = time.monotonic() + deadline_s
    while not done(events) and time.monotonic() < end:
        for sock, _ in poller.poll(100):
            found = tap.read(sock)
            if found is not None:
                events.add(found[:3])
    return events


def run(notebook: Notebook, code: str, replica: int) -> str:
    """Run a cell on ``replica``; its msg_id."""
    res = notebook.run(code, replica=replica)
    assert res.status == "ok", res.error
    return res.reply["parent_header"]["msg_id"]


def test_standbys_announce_applied_state_only_while_asked(notebook: Notebook) -> None:
    run(notebook, "a = 0", replica=0)
    tap = ReplicaTap(zmq.Context.instance(), replicas_of(notebook), notebook.kc.session)
    try:
        # A subscription takes a moment to reach a replica: cells until one is announced by both standbys.
        for n in range(20):
            cell = run(notebook, f"a = {n + 1}", replica=0)
            events = read_until(tap, lambda es, cell=cell: {(1, "applied", cell), (2, "applied", cell)} <= es, 2.0)
            if {(1, "applied", cell), (2, "applied", cell)} <= events:
                break
        else:
            raise AssertionError("no cell's state was announced by both standbys after they were asked")

        tap.announce(False)
        run(notebook, "a = -1", replica=0)
        quiet = run(notebook, "a = -2", replica=0)
        # Each standby applies that record before it runs a cell pinned to it, and its IOPub keeps order: the idle of
        # its own cell marks how far there is to read.
        marks = {(replica, "idle", run(notebook, "pass", replica=replica)) for replica in (1, 2)}
        events = read_until(tap, lambda es: marks <= es, 20.0)
        assert marks <= events
        assert not {e for e in events if e[1] == "applied" and e[2] == quiet}
    finally:
        tap.close()
