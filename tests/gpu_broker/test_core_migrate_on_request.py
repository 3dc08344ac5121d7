"""An operator's migration request: done when it is safe, refused with the reason otherwise."""

from __future__ import annotations

import pytest

from notebookos.gpu_broker.scheduler.events import ReplicaMoved

from broker_helpers import make_core


def placed(core, kernel_id: str, gpus: int = 1) -> dict[int, str]:
    core.place_kernel(kernel_id, gpus, 0.0)
    return dict(core.cluster.kernel(kernel_id).replicas)


def test_an_idle_replica_moves_and_its_subscription_moves_with_it():
    core = make_core(hosts=4, gpus=2)
    replicas = placed(core, "k", gpus=2)
    free = next(h for h in core.cluster.hosts if h not in replicas.values())
    [moved] = core.migrate_replica("k", 0, free, 5.0)
    assert isinstance(moved, ReplicaMoved)
    assert (moved.from_host, moved.to_host) == (replicas[0], free)
    assert core.cluster.kernel("k").replicas[0] == free
    assert core.cluster.hosts[free].subscribed == 2
    assert core.cluster.hosts[replicas[0]].subscribed == 0


def test_refused_while_the_replica_runs_a_cell():
    core = make_core(hosts=4, gpus=2)
    replicas = placed(core, "k")
    decision = core.request_execution("k", 1, 1.0)
    free = next(h for h in core.cluster.hosts if h not in replicas.values())
    with pytest.raises(ValueError, match="running a cell; migrate it after the cell"):
        core.migrate_replica("k", decision.replica, free, 2.0)


def test_refused_onto_a_host_that_holds_a_replica_already():
    core = make_core(hosts=4, gpus=1)
    replicas = placed(core, "a")
    with pytest.raises(ValueError, match="already holds a replica"):
        core.migrate_replica("a", 0, replicas[1], 1.0)
    with pytest.raises(ValueError, match="not an active host"):
        core.migrate_replica("a", 0, "nowhere", 1.0)


def test_refused_when_the_target_would_pass_the_subscription_limit():
    core = make_core(hosts=5, gpus=1, subscription_limit=2.0)
    mine = placed(core, "a")
    placed(core, "d")
    placed(core, "e")
    full = [h for name, h in core.cluster.hosts.items() if name not in mine.values() and h.ratio(1) > 2.0]
    assert full, "two other kernels fill the hosts that do not hold a replica of a"
    with pytest.raises(ValueError, match="would pass the subscription limit"):
        core.migrate_replica("a", 0, full[0].host_id, 1.0)
    assert core.cluster.kernel("a").replicas == mine
