"""The Docker provider with a real, private dockerd: hosts the autoscaler or an operator adds are agent containers
that start, show as `starting`, join and become `active`; removing a host removes its container.

The service runs with ``--provider docker --provider-network host``: agent containers share this machine's
network (bridge addresses are not reachable here), each with a loopback address of its own. With no fixed hosts
and ``--max-hosts 2``, the autoscaler asks for two hosts (its buffer) as soon as it starts.
"""

from __future__ import annotations

import sys
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path

import docker.errors
import pytest

from notebookos.gpu_broker.cluster.launcher import start_cluster, stop_cluster
from notebookos.gpu_broker.cluster.providers.docker import AGENT_LABEL

from ..kernels.driver import cluster_request, wait_until
from .dockerd import IMAGE, Dockerd, host_python_mounts

ADDRESSES = ("127.0.0.6", "127.0.0.7")
DEADLINE_S = 60.0


@pytest.fixture
def start_service(dockerd: Dockerd, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """``start_service(python)``: a cluster service whose Docker provider runs agents with that Python."""
    started = []

    def start(python: str) -> str:
        state = tmp_path / f"service-{len(started)}"
        state.mkdir()
        mounts = [f"--provider-mount={mount}" for mount in host_python_mounts()]
        with pytest.MonkeyPatch.context() as env:
            env.setenv("DOCKER_HOST", dockerd.url)
            proc, discovery = start_cluster(
                state,
                0,
                extra_args=(
                    "--listen",
                    "127.0.0.1:0",
                    "--join-token-file",
                    str(state / "join-token"),
                    "--provider",
                    "docker",
                    "--provider-image",
                    IMAGE,
                    "--provider-network",
                    "host",
                    *(f"--provider-address={a}" for a in ADDRESSES),
                    "--provider-python",
                    python,
                    *mounts,
                    "--max-hosts",
                    str(len(ADDRESSES)),
                ),
                log_path=state / "cluster.log",
            )
        started.append(proc)
        return str(discovery)

    yield start
    for proc in started:
        stop_cluster(proc)
    for container in dockerd.client.containers.list(all=True, filters={"label": AGENT_LABEL}):
        container.remove(force=True)


def _hosts(cluster: str) -> dict[str, dict]:
    return {h["name"]: h for h in cluster_request(cluster, "GET", "/cluster")["hosts"]}


def _gone(dockerd: Dockerd, name: str) -> bool:
    try:
        dockerd.client.containers.get(name)
    except docker.errors.NotFound:
        return True
    return False


def test_hosts_the_autoscaler_asks_for_join_as_agent_containers_and_a_removed_one_goes(
    dockerd: Dockerd, start_service: Callable[[str], str]
) -> None:
    cluster = start_service(sys.executable)
    active = wait_until(
        lambda: len([h for h in _hosts(cluster).values() if h["state"] == "active"]) == 2 and _hosts(cluster),
        "the autoscaler's two agent containers to join",
        DEADLINE_S,
    )
    assert sorted(h["address"] for h in active.values()) == list(ADDRESSES)
    for name in active:
        assert dockerd.client.containers.get(name).labels[AGENT_LABEL] == name
    started = cluster_request(cluster, "GET", "/events?kind=host_starting")["events"]
    assert {e["host"] for e in started} == set(active)
    # The operator cannot add a third: the provider has two addresses.
    with pytest.raises(urllib.error.HTTPError) as refused:
        cluster_request(cluster, "POST", "/hosts", {"gpus": 1})
    assert refused.value.code == 409 and "runs at most 2 agent" in refused.value.reason
    removed = sorted(active)[0]
    cluster_request(cluster, "DELETE", f"/hosts/{removed}")
    assert removed not in _hosts(cluster)
    assert wait_until(lambda: _gone(dockerd, removed), "the removed host's container to go", DEADLINE_S)


def test_a_host_whose_agent_has_not_joined_is_listed_starting(
    dockerd: Dockerd, start_service: Callable[[str], str]
) -> None:
    """Agents that exit at once (their Python is /bin/false) never join: their hosts stay `starting`."""
    cluster = start_service("/bin/false")
    hosts = wait_until(lambda: len(_hosts(cluster)) == 2 and _hosts(cluster), "two hosts on their way", DEADLINE_S)
    assert {h["state"] for h in hosts.values()} == {"starting"}
    assert all(h["gpus"] == 1 and h["replicas"] == 0 for h in hosts.values())
    assert cluster_request(cluster, "GET", "/cluster")["pending_hosts"] == 2
