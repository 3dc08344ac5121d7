"""Lost replicas and hosts are replaced elsewhere; drained hosts are emptied and can then be removed."""

from __future__ import annotations

import pytest

from notebookos.gpu_broker.scheduler.events import (
    DecisionKind,
    ExecutionInterrupted,
    HostDrained,
    HostRemoved,
    HostResized,
    PlacementDeferred,
    ReplicaLost,
    ReplicaMoved,
    ReplicaReplaced,
    ScaleOutRequested,
)

from broker_helpers import make_core, of_type


def test_a_dead_standby_is_replaced_on_another_host():
    core = make_core(hosts=4)
    core.place_kernel("k", 2, now=0)
    dead_host = core.cluster.kernels["k"].replicas[1]
    events = core.replica_lost("k", 1, now=50.0)
    [lost] = of_type(events, ReplicaLost)
    [replaced] = of_type(events, ReplicaReplaced)
    assert lost.host_id == dead_host
    assert replaced.replica == 1 and replaced.host_id == "h3"  # the only host without a replica of k
    replicas = core.cluster.kernels["k"].replicas
    assert replicas[1] != dead_host and len(set(replicas.values())) == 3


def test_replacement_waits_for_a_host_when_none_is_free():
    core = make_core(hosts=3)
    core.place_kernel("k", 2, now=0)
    events = core.replica_lost("k", 0, now=10.0)
    assert not of_type(events, ReplicaReplaced)  # the two other hosts hold replicas, the third just lost one
    assert of_type(events, ScaleOutRequested)
    arrival = core.add_host("h3", 8, now=200.0)
    [replaced] = of_type(arrival, ReplicaReplaced)
    assert replaced.host_id == "h3" and replaced.replica == 0


def test_losing_the_executor_mid_cell_frees_its_gpus_and_interrupts_the_cell():
    core = make_core(hosts=4)
    core.place_kernel("k", 4, now=0)
    decision = core.request_execution("k", 4, now=1)
    core.start_execution("k", now=1)
    events = core.replica_lost("k", decision.replica, now=30.0)
    [interrupted] = of_type(events, ExecutionInterrupted)
    assert interrupted.host_id == decision.host_id
    assert core.used_gpus == 0
    kernel = core.cluster.kernels["k"]
    assert not kernel.executing and kernel.previous_executor is None
    # the front re-runs the cell on a survivor
    retry = core.request_execution("k", 4, now=31.0)
    assert retry.kind is DecisionKind.LEAD and retry.host_id != decision.host_id


def test_host_lost_replaces_every_replica_it_held_and_removes_it():
    core = make_core(hosts=5)
    core.place_kernel("a", 1, now=0)
    core.place_kernel("b", 1, now=0)
    victim = core.cluster.kernels["a"].replicas[0]
    holders = [k for k in ("a", "b") if victim in core.cluster.kernels[k].replicas.values()]
    events = core.host_lost(victim, now=5.0)
    assert len(of_type(events, ReplicaLost)) == len(holders)
    assert len(of_type(events, ReplicaReplaced)) == len(holders)
    assert of_type(events, HostRemoved)[0].host_id == victim
    assert victim not in core.cluster.hosts
    for kernel_id in ("a", "b"):
        assert len(set(core.cluster.kernels[kernel_id].replicas.values())) == 3


def test_drain_moves_idle_replicas_and_then_the_host_can_be_removed():
    core = make_core(hosts=4)
    core.place_kernel("k", 2, now=0)
    host_id = core.cluster.kernels["k"].replicas[0]
    events = core.drain_host(host_id, now=10.0)
    [moved] = of_type(events, ReplicaMoved)
    assert moved.from_host == host_id and moved.to_host != host_id
    assert of_type(events, HostDrained)
    assert core.cluster.hosts[host_id].replicas == {}
    core.place_kernel("later", 1, now=11.0)  # a draining host takes nothing new
    assert host_id not in core.cluster.kernels["later"].replicas.values()
    assert of_type(core.remove_host(host_id, now=12.0), HostRemoved)


def test_drain_waits_for_the_executing_replica_and_removes_the_host_when_asked():
    core = make_core(hosts=4)
    core.place_kernel("k", 2, now=0)
    decision = core.request_execution("k", 2, now=1)
    events = core.drain_host(decision.host_id, now=2.0, remove=True)
    assert not of_type(events, ReplicaMoved) and not of_type(events, HostRemoved)
    with pytest.raises(ValueError):
        core.remove_host(decision.host_id, now=3.0)  # still busy
    events = core.release("k", now=60.0)
    [moved] = of_type(events, ReplicaMoved)
    assert moved.replica == decision.replica
    assert of_type(events, HostRemoved)[0].host_id == decision.host_id
    # the next cell cannot go back to the drained host
    assert core.request_execution("k", 2, now=61.0).host_id != decision.host_id


def test_reservation_session_moves_with_its_gpus_when_idle():
    core = make_core("reservation", hosts=2, min_hosts=1)
    core.place_kernel("k", 4, now=0)
    source = core.cluster.kernels["k"].replicas[0]
    [moved] = of_type(core.drain_host(source, now=5.0), ReplicaMoved)
    allocation = core.cluster.kernels["k"].allocation
    assert allocation.host_id == moved.to_host and allocation.held and allocation.gpus == 4
    assert core.cluster.hosts[source].idle_gpus == 8


def test_unplaceable_drain_keeps_the_replica_until_room_appears():
    core = make_core(hosts=3)
    core.place_kernel("k", 2, now=0)
    events = core.drain_host("h0", now=1.0)
    assert not of_type(events, ReplicaMoved) and not of_type(events, HostDrained)
    events = core.add_host("h3", 8, now=2.0)
    assert of_type(events, ReplicaMoved)[0].to_host == "h3"
    assert of_type(events, HostDrained)


def test_deferred_placement_is_reported_with_the_reason():
    core = make_core(hosts=2)
    [deferred] = of_type(core.place_kernel("k", 4, now=0), PlacementDeferred)
    assert "only 2 distinct host(s)" in deferred.reason


def test_an_idle_host_can_be_resized_and_waiting_work_uses_the_new_gpus():
    core = make_core(hosts=3, gpus=1)
    core.place_kernel("k", 2, now=0)
    assert core.request_execution("k", 2, now=1.0).kind is DecisionKind.QUEUED  # no host has 2 GPUs yet
    host = core.cluster.kernels["k"].replicas[0]
    events = core.resize_host(host, 2, now=2.0)
    [resized] = of_type(events, HostResized)
    assert resized.gpus == 2 and core.cluster.total_gpus == 4
    [granted] = [e for e in events if getattr(e, "kind", None) is DecisionKind.LEAD]
    assert granted.host_id == host and granted.devices == (0, 1)
    with pytest.raises(ValueError, match="GPUs in use"):  # not while a cell uses them
        core.resize_host(host, 1, now=3.0)
    with pytest.raises(ValueError, match="at least 1 GPU"):
        core.resize_host("h2" if host != "h2" else "h1", 0, now=3.0)


def test_hosts_where_replicas_died_are_forgiven_once_the_kernel_is_whole_again():
    """Four hosts, one replica lost after another: each replacement avoids the host its replica just died on, and a
    kernel that has lost replicas on every host still gets replacements."""
    core = make_core(hosts=4, gpus=1)
    core.place_kernel("k", 1, now=0)
    for loss in range(6):
        index = loss % 3
        died_on = core.cluster.kernels["k"].replicas[index]
        [replaced] = of_type(core.replica_lost("k", index, now=float(loss + 1)), ReplicaReplaced)
        assert replaced.host_id != died_on
        assert len(set(core.cluster.kernels["k"].replicas.values())) == 3


def test_a_silent_host_takes_no_new_replica_until_it_is_heard_from_again():
    """An agent that missed heartbeats may be on a dead machine: a kernel started meanwhile goes elsewhere, or waits
    for the host when there is nowhere else."""
    core = make_core(hosts=4)
    core.host_silent("h0", now=0)
    core.place_kernel("a", 1, now=1.0)
    assert "h0" not in core.cluster.kernels["a"].replicas.values()
    core.host_silent("h1", now=2.0)
    assert of_type(core.place_kernel("b", 1, now=3.0), PlacementDeferred)
    core.host_heard("h1", now=4.0)
    assert sorted(core.cluster.kernels["b"].replicas.values()) == ["h1", "h2", "h3"]
