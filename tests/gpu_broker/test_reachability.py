"""The scheduling core is told which agents' hosts are heard from before each placement: a host whose agent's
heartbeats stopped gets no new replica, and one heard from again takes work at once (docs/architecture.md, "Hosts on
several machines", "Silent hosts"). The cluster looks at its agents only when one may have changed; these tests
check that it still sees every change when it matters, on a clock of their own."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from notebookos.gpu_broker.cluster.agent.remote import AgentUnreachable, RemoteHost
from notebookos.gpu_broker.cluster.embedded import EmbeddedCluster, KernelLaunch, KernelRequest

AGENTS = ["h0", "h1", "h2", "h3"]  # listed in this order: among equally subscribed hosts, h0 is taken first


class Clock:
    """``time.monotonic`` for the cluster and its agents' proxies, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "monotonic", fake)
    return fake


@pytest.fixture
def cluster(tmp_path, clock: Clock) -> Iterator[EmbeddedCluster]:
    """Four agents of 8 GPUs joined at the clock's start, heartbeating every second (so silent 2.5 s after their
    last heartbeat); their API is an address nothing listens on, so a call to one fails at once."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    c = EmbeddedCluster(tmp_path, n_hosts=0, gpus_per_host=8)
    for name in AGENTS:
        c.join_agent(name, "127.0.0.1", 8, url, "token", [])
    yield c
    c.shutdown()


def place(cluster: EmbeddedCluster, kernel_id: str) -> KernelLaunch:
    return cluster.place_kernel(KernelRequest(kernel_id, "key", "hmac-sha256", gpus=1))


def hosts_of(launch: KernelLaunch) -> list[str]:
    return [host.name for host in launch.hosts]


def heartbeat(cluster: EmbeddedCluster, *names: str) -> None:
    for name in names:
        cluster.agent_heartbeat(name, [])


def test_a_host_turns_silent_as_time_passes_without_its_heartbeats_and_is_heard_at_its_next_one(cluster, clock):
    clock.now += 0.5
    assert hosts_of(place(cluster, "k0")) == ["h0", "h1", "h2"]  # every agent heard from: the first three hosts
    clock.now += 1.5
    heartbeat(cluster, "h1", "h2", "h3")  # not h0: silent from 2.5 s after it joined
    clock.now += 1.0
    assert "h0" not in hosts_of(place(cluster, "k1"))  # nothing else happened but time passing
    assert not cluster.core.cluster.hosts["h0"].reachable
    clock.now += 0.5
    heartbeat(cluster, "h0")
    assert hosts_of(place(cluster, "k2"))[0] == "h0"  # the least subscribed host takes work at once, no tick between
    assert cluster.core.cluster.hosts["h0"].reachable


def test_a_host_that_rejoins_after_its_silence_takes_work_at_once(cluster, clock):
    clock.now += 3.0
    heartbeat(cluster, "h1", "h2", "h3")
    assert "h0" not in hosts_of(place(cluster, "k0"))
    agent = cluster.hosts["h0"]
    assert isinstance(agent, RemoteHost)
    cluster.join_agent("h0", "127.0.0.1", 8, agent.url, "new-token", [])
    assert "h0" in hosts_of(place(cluster, "k1"))


def test_a_host_marked_silent_by_a_failed_start_is_told_heard_again_while_its_heartbeats_still_come(cluster, clock):
    """A start whose agent call failed marks that host silent at once; while its agent still heartbeats, the next
    placement finds it heard from again, as every placement did before it looked at agents only on news."""
    clock.now += 0.5
    place(cluster, "k0")  # the cluster has looked at every agent: nothing is due for the next 2 s
    launch = place(cluster, "k1")
    failed = launch.hosts[0].name
    launch.silent_hosts.add(failed)
    cluster.abandon_launch(launch, AgentUnreachable(f"{failed} did not answer"))
    assert not cluster.core.cluster.hosts[failed].reachable
    place(cluster, "k2")
    assert cluster.core.cluster.hosts[failed].reachable
