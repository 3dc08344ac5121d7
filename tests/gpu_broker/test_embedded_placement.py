"""The embedded cluster places replicas where the scheduling core says, with real replica processes."""

from __future__ import annotations

import pytest

from notebookos.gpu_broker.cluster.embedded import EmbeddedCluster, PlacementError


@pytest.fixture
def cluster(tmp_path):
    c = EmbeddedCluster(tmp_path, n_hosts=4, gpus_per_host=2, subscription_limit=1.0)
    yield c
    c.shutdown()


def test_replicas_go_to_three_distinct_hosts_and_subscribe_their_gpus(cluster):
    described = cluster.create_kernel("k1", "key", "hmac-sha256", gpus=2)
    hosts = [r["host"] for r in described["replicas"]]
    assert len(set(hosts)) == 3
    by_name = {h["name"]: h for h in cluster.describe()["hosts"]}
    for name, host in by_name.items():
        expected = 2 if name in hosts else 0
        assert host["subscribed_gpus"] == expected
        assert host["subscription_ratio"] == expected / 2
        assert host["idle_gpus"] == 2  # placement subscribes GPUs; only a running cell commits them


def test_placement_refuses_past_the_subscription_limit_with_the_reason_and_what_to_do(cluster):
    cluster.create_kernel("k1", "key", "hmac-sha256", gpus=2)
    # Only one host is left under the limit (1.0): three replicas cannot be placed.
    with pytest.raises(PlacementError, match="Add hosts, or raise the subscription limit"):
        cluster.create_kernel("k2", "key", "hmac-sha256", gpus=2)
    assert "k2" not in cluster.kernels
    cluster.delete_kernel("k1")
    # Closing a kernel frees its subscription: the same request now fits.
    assert len({r["host"] for r in cluster.create_kernel("k2", "key", "hmac-sha256", gpus=2)["replicas"]}) == 3


def test_a_replacement_is_given_each_members_current_address_not_the_lost_ones_stale_view():
    """Found by the chaos run: after replica 1 had moved, a replacement for replica 2 was started with the peer
    URLs replica 2 had started with, so it asked replica 1's old machine to let it join, and never joined."""
    from dataclasses import dataclass

    from notebookos.gpu_broker.cluster.embedded import KernelRecord
    from notebookos.kernels.replica_config import ReplicaConfig

    def config(replica: int, urls: tuple[str, ...], machine: int | None = None) -> ReplicaConfig:
        address = f"10.0.0.{replica if machine is None else machine}:1"
        return ReplicaConfig("k", replica, f"h{replica}", address, (), "pw", "", "", peer_urls=urls)

    @dataclass
    class View:
        config: ReplicaConfig

    at_start = ("http://10.0.0.0:2", "http://10.0.0.1:2", "http://10.0.0.2:2")
    moved = ("http://10.0.0.0:2", "http://10.0.0.9:2", "http://10.0.0.2:2")  # replica 1 replaced on 10.0.0.9
    record = KernelRecord(
        "k",
        [
            (None, View(config(0, at_start))),
            (None, View(config(1, moved, machine=9))),
            (None, View(config(2, at_start))),
        ],
    )
    assert record.member_addresses() == (["10.0.0.0:1", "10.0.0.9:1", "10.0.0.2:1"], list(moved))
    alone = KernelRecord("k", [(None, View(config(i, ()))) for i in range(3)])
    assert alone.member_addresses()[1] == []  # all on one machine: no peer API
