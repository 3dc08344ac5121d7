"""Each agent lends the cluster service a range of its machine's ports when it joins, and the service chooses its
replicas' ports from it without a call; the agent checks them when the replica starts, and refuses a start whose
port another program of its machine holds, starting nothing (docs/architecture.md, "Hosts on several machines")."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from notebookos.gpu_broker.cluster.agent.handlers import routes
from notebookos.gpu_broker.cluster.agent.remote import AgentPortsTaken, RemoteHost
from notebookos.gpu_broker.cluster.embedded import _PORTS_PER_REPLICA, _connection
from notebookos.gpu_broker.cluster.host_agent import HostAgent
from notebookos.gpu_broker.cluster.ports import PortPool, default_range, is_free
from notebookos.kernels.replica_config import ReplicaConfig

PER_REPLICA = _PORTS_PER_REPLICA  # Raft, the five Jupyter channels, the peer API
AGENT_TOKEN = "agent-token"


def free_run(count: int) -> range:
    """``count`` consecutive ports of the replica range, free on loopback now."""
    candidates = default_range()
    first = next(
        p for p in range(candidates.start, candidates.stop - count) if all(is_free(p + i) for i in range(count))
    )
    return range(first, first + count)


@contextlib.contextmanager
def listening(port: int) -> Iterator[socket.socket]:
    """Another program's server on ``port`` of loopback, bound as servers bind (SO_REUSEADDR)."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        yield server


def unused_port() -> int:
    """A loopback port nothing listens on: a call there is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def replica_config(kernel_id: str, ports: list[int], address: str = "127.0.0.1") -> tuple[ReplicaConfig, dict]:
    """A replica's configuration and channels on ``ports`` (in the cluster's order: Raft first, peer API last)."""
    raft = f"{address}:{ports[0]}"
    config = ReplicaConfig(
        kernel_id, 0, "h", raft, (raft,), "secret", "", "", cwd=None, peer_urls=(f"http://{address}:{ports[-1]}",)
    )
    return config, _connection(ports, "k", "hmac-sha256")


def test_a_host_whose_agent_lent_ports_chooses_them_without_calling_it() -> None:
    lent = range(30000, 30000 + 3 * PER_REPLICA)
    # Nothing answers at the agent's URL: any call would fail, so ports that come back came without one.
    host = RemoteHost("h", "10.0.0.9", f"http://127.0.0.1:{unused_port()}", "t", lent_ports=lent)
    running = list(lent[:PER_REPLICA])
    host.restore_replica(*replica_config("running", running, "10.0.0.9"))  # a replica placed before a restart

    first = set(host.take_ports("k1", PER_REPLICA))
    second = set(host.take_ports("k2", PER_REPLICA))
    assert len(first | second) == 2 * PER_REPLICA and (first | second) == set(lent) - set(running)

    host.mark_lost()  # stop the kernel here without a call
    host.stop_kernel("k1")
    assert set(host.take_ports("k3", PER_REPLICA)) == first  # the range is used up but for k1's, given back

    host.forget_replica("running", 0)  # placed elsewhere: its agent stops it, its ports are free again
    assert set(host.take_ports("k4", PER_REPLICA)) == set(running)


def test_a_pool_of_another_machines_ports_cannot_probe_them_its_agent_checks_them() -> None:
    ports = free_run(3)
    with listening(ports[0]):  # another program of the agent's machine holds the first port
        lent = PortPool(ports, "127.0.0.1", probe=False)  # the service's view: it hands the port out
        assert sorted(lent.take() for _ in ports) == list(ports)

        agent = PortPool(ports, "127.0.0.1")
        with pytest.raises(RuntimeError, match=rf"port\(s\) {ports[0]} on 127.0.0.1 are in use"):
            agent.claim_free({ports[0], ports[1]})
        assert agent.take() == ports[1]  # the refused start claimed nothing, not even its free port
        agent.claim_free({ports[2]})
        with pytest.raises(RuntimeError, match="in use"):
            agent.claim_free({ports[2]})  # handed out already


def test_a_port_whose_last_connection_lingers_after_its_close_is_free_for_a_replica() -> None:
    """A kernel that stopped leaves its ports' last connections in TIME_WAIT for a minute; a replica's listeners
    (ZeroMQ, tornado, pysyncobj) bind such a port without trouble, so the agent must not refuse it."""
    port = free_run(1)[0]
    with listening(port) as server:
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server's end closes first: it lingers
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):  # what a probe without SO_REUSEADDR would conclude
        plain.bind(("127.0.0.1", port))
    assert is_free(port)
    PortPool(range(port, port + 1)).claim_free({port})


class OneHostAgent:
    """What the agent's API reads of the agent daemon: its token, its host agent, a way to run on it."""

    def __init__(self, host: HostAgent) -> None:
        self.api_token = AGENT_TOKEN
        self.host = host

    async def run(self, fn: Any, *args: Any) -> Any:
        return fn(*args)

    def report(self) -> list[dict]:
        return [proc.describe() for proc in self.host.replicas.values()]


@pytest.fixture
def agent_api(tmp_path: Path) -> Iterator[tuple[str, HostAgent]]:
    """The agent's HTTP API on loopback, over a host agent of this machine; its URL and the host agent."""
    host = HostAgent("h", tmp_path / "replicas")
    ready = threading.Event()
    served: dict[str, Any] = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server = tornado.httpserver.HTTPServer(tornado.web.Application(routes(OneHostAgent(host))))
        server.add_sockets(sockets)
        served.update(loop=loop, url=f"http://127.0.0.1:{sockets[0].getsockname()[1]}")
        ready.set()
        loop.run_forever()
        server.stop()
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait()
    yield served["url"], host
    served["loop"].call_soon_threadsafe(served["loop"].stop)
    thread.join()
    host.stop_all()  # a start that should have been refused must not leave a replica behind


def test_the_agent_refuses_a_start_on_a_port_in_use_on_its_machine_and_starts_nothing(
    agent_api: tuple[str, HostAgent],
) -> None:
    url, agent = agent_api
    lent = free_run(PER_REPLICA)
    service_side = RemoteHost("h", "127.0.0.1", url, AGENT_TOKEN, lent_ports=lent)
    ports = service_side.take_ports("k", PER_REPLICA)
    config, connection = replica_config("k", ports)
    with listening(ports[1]):  # a program of the agent's machine took the shell port meanwhile
        with pytest.raises(AgentPortsTaken, match=rf"refused POST /replicas \(409\): port\(s\) {ports[1]} "):
            service_side.start_replica(config, connection)
    assert agent.replicas == {} and service_side.replicas == {}
    assert not (agent.workdir / "k").exists()  # not even its folder
