"""What a replica that does not catch up says about itself (``KernelLog.standing``): whether its Raft port could be
bound, which members it reaches, and how far it has applied. Real pysyncobj nodes over TCP on loopback."""

from __future__ import annotations

import socket

from notebookos.replication.raft_log import KernelLog

from .test_snapshots import _Collector, _free_port, _wait


def test_a_node_in_a_group_names_its_leader_and_the_members_it_reaches() -> None:
    addresses = [f"127.0.0.1:{_free_port()}" for _ in range(3)]
    logs = [KernelLog(a, addresses, "pw", None, _Collector()) for a in addresses]
    try:
        _wait(lambda: all(log.isReady() for log in logs), "the group to elect a leader")
        _wait(lambda: "connected to 2 of 2" in logs[0].standing(), "the first node to reach both others")
        standing = logs[0].standing()
        assert f"Raft on {addresses[0]} listens" in standing
        assert "leader 127.0.0.1:" in standing and "leader unknown" not in standing
    finally:
        for log in logs:
            log.destroy_synchronous()


def test_a_node_whose_port_is_taken_says_it_cannot_listen_and_reaches_no_one() -> None:
    """pysyncobj retries a port it cannot bind every second, silently; until it binds, it connects to no one."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    peers = [address, f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
    with socket.socket() as squatter:  # another program listens on the node's Raft port
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        log = KernelLog(address, peers, "pw", None, _Collector())
        try:
            standing = log.standing()
            assert f"Raft on {address} cannot listen" in standing, standing
            assert "connected to 0 of 2 other member(s) (none)" in standing, standing
            assert "leader unknown" in standing, standing
        finally:
            log.destroy_synchronous()
