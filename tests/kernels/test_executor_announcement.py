"""An elected executor announces itself on its IOPub (protocol.EXECUTOR_ANNOUNCEMENT) so that the front knows whose
output to forward; a cell run without an election on the replica that ran the previous one is sent to it alone, and
the front takes it for the executor as it sends it, so that replica announces nothing (one message fewer for every
cell of a notebook that runs on one replica). Read on the replicas' own IOPub, bypassing the front."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import zmq

from notebookos.kernels.protocol import EXECUTOR_ANNOUNCEMENT

from .driver import Notebook, replicas_of

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from latency_probe import connect_to_replica  # noqa: E402

DEADLINE_S = 20.0


class IOPubTap:
    """Every replica's IOPub: the message types each publishes for a given parent."""

    def __init__(self, notebook: Notebook) -> None:
        self.session = notebook.kc.session
        self.sockets: dict[zmq.Socket, int] = {}
        for replica in replicas_of(notebook):
            sock = connect_to_replica(zmq.Context.instance(), zmq.SUB, replica["connection"], "iopub_port")
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            self.sockets[sock] = int(replica["replica"])

    def types_until_idle(self, msg_id: str, replica: int) -> list[str]:
        """What ``replica`` published for the cell ``msg_id``, up to its idle status for it ([] if none came)."""
        poller = zmq.Poller()
        for sock in self.sockets:
            poller.register(sock, zmq.POLLIN)
        seen: list[str] = []
        end = time.monotonic() + DEADLINE_S
        while time.monotonic() < end:
            for sock, _ in poller.poll(100):
                _, body = self.session.feed_identities(sock.recv_multipart())
                header, parent, content = (json.loads(frame) for frame in (body[1], body[2], body[4]))
                if self.sockets[sock] != replica or parent.get("msg_id") != msg_id:
                    continue
                seen.append(header["msg_type"])
                if header["msg_type"] == "status" and content.get("execution_state") == "idle":
                    return seen
        return []

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)


def cell_on(notebook: Notebook, code: str, replica: int) -> str:
    res = notebook.run(code, replica=replica)
    assert res.status == "ok", res.error
    return res.reply["parent_header"]["msg_id"]


def test_an_elected_executor_announces_itself_and_one_running_alone_does_not(notebook: Notebook) -> None:
    tap = IOPubTap(notebook)
    try:
        # A subscription takes a moment to reach a replica: cells until the tap sees one whole.
        for n in range(20):
            if tap.types_until_idle(cell_on(notebook, f"a = {n}", replica=0), 0):
                break
        else:
            raise AssertionError("the tap saw no cell of replica 0 to its end")

        elected = cell_on(notebook, "b = 1", replica=1)  # replica 0 ran the previous cell: an election
        elected_types = tap.types_until_idle(elected, 1)
        alone = cell_on(notebook, "print('on its own')", replica=1)  # replica 1 ran the previous cell: no election
        alone_types = tap.types_until_idle(alone, 1)
    finally:
        tap.close()
    assert EXECUTOR_ANNOUNCEMENT in elected_types, elected_types
    assert "execute_input" in alone_types and "stream" in alone_types, alone_types
    assert EXECUTOR_ANNOUNCEMENT not in alone_types, alone_types
    assert notebook.value("b") == 1
