"""Autoscaling decisions, driven by ticks on a virtual clock."""

from __future__ import annotations

import math

from notebookos.gpu_broker.scheduler.autoscaler import ScalingContext
from notebookos.gpu_broker.scheduler.events import DecisionKind, HostRemoved, ReplicaMoved, ScaleOutRequested
from notebookos.gpu_broker.scheduler.policies import NotebookOSPlus

from broker_helpers import make_core, of_type


def _run_cells(core, gpus_per_kernel: list[int], now: float) -> None:
    for i, gpus in enumerate(gpus_per_kernel):
        core.place_kernel(f"k{i}", gpus, now=now)
        assert core.request_execution(f"k{i}", gpus, now=now).granted


def test_notebookos_scales_out_when_committed_demand_nears_capacity():
    core = make_core("notebookos", hosts=4)
    _run_cells(core, [8, 8, 4], now=0)  # 20 GPUs committed of 32
    [scale] = of_type(core.tick(60.0), ScaleOutRequested)
    # 20 x 1.05 + a buffer of three 8-GPU hosts = 45 GPUs -> 6 hosts; 4 exist
    assert scale.hosts == 2
    assert "scale out" in scale.reason and "45.0 GPUs" in scale.reason
    assert core.provisioned_gpus == 48
    assert not of_type(core.tick(120.0), ScaleOutRequested)  # the two on their way count


def test_scale_in_waits_for_the_surplus_to_last_then_vacates_hosts_within_limits():
    core = make_core("notebookos", hosts=8, min_hosts=3)
    core.place_kernel("k", 1, now=0)  # idle kernel: demand 0, target = 3 buffer hosts
    assert core.tick(0.0) == []  # surplus starts now
    assert not of_type(core.tick(599.0), HostRemoved)
    removed = of_type(core.tick(600.0), HostRemoved)
    assert len(removed) == 2  # at most two per step
    for _ in range(10):
        core.tick(660.0)
    assert len(core.cluster.hosts) == 3  # the target (three hosts), never below min_hosts
    assert len(set(core.cluster.kernels["k"].replicas.values())) == 3
    for host in core.cluster.hosts.values():
        assert host.active


def test_scale_in_moves_replicas_off_the_removed_host_and_never_removes_a_busy_one():
    core = make_core("notebookos", hosts=4, min_hosts=1)
    core.place_kernel("k", 8, now=0)
    decision = core.request_execution("k", 8, now=0)
    core.tick(0.0)
    events = core.tick(600.0)
    removed = {e.host_id for e in of_type(events, HostRemoved)}
    assert decision.host_id not in removed
    for move in of_type(events, ReplicaMoved):
        assert move.from_host in removed
    replicas = core.cluster.kernels["k"].replicas.values()
    assert all(h in core.cluster.hosts for h in replicas) and len(set(replicas)) == 3


def test_no_scale_in_while_work_waits():
    core = make_core("batch", hosts=3, min_hosts=1)
    core.place_kernel("big", 8, now=0)
    core.place_kernel("other", 8, now=0)
    for host in ("h0", "h1", "h2"):
        core.place_kernel(f"fill-{host}", 7, now=0)
        core.request_execution(f"fill-{host}", 7, now=0)
    assert core.request_execution("big", 8, now=1).kind is DecisionKind.QUEUED
    for t in (0.0, 600.0, 1200.0):
        assert not of_type(core.tick(t), HostRemoved)


def test_reservation_only_removes_hosts_it_can_empty():
    core = make_core("reservation", hosts=4, min_hosts=1)
    core.place_kernel("a", 8, now=0)  # h0 full, h1..h3 empty
    core.tick(0.0)
    removed = of_type(core.tick(600.0), HostRemoved)
    assert {e.host_id for e in removed} <= {"h1", "h2", "h3"} and len(removed) == 2
    core.tick(660.0)
    assert list(core.cluster.hosts) == ["h0"]  # the session's host stays: nowhere to move 8 held GPUs


def test_max_hosts_caps_scale_out():
    core = make_core("lcp", hosts=2, min_hosts=1, max_hosts=3)
    [scale] = of_type(core.tick(0.0), ScaleOutRequested)  # LCP wants a large idle pool
    assert scale.hosts == 1
    assert not of_type(core.tick(60.0), ScaleOutRequested)


def _ctx(now: float, empty: int, capacity: int, idle_kernels=()) -> ScalingContext:
    return ScalingContext(
        now=now,
        host_gpus=8,
        capacity_gpus=capacity,
        used_gpus=capacity - 8 * empty,
        queued_gpus=0,
        waiting=False,
        subscribed_gpus=0,
        subscription_limit=7.0,
        empty_hosts=empty,
        idle_kernels=tuple(idle_kernels),
    )


def test_notebookos_plus_keeps_one_empty_host_plus_one_per_returning_full_host_kernel():
    policy = NotebookOSPlus()
    # 10 hosts, 4 of them empty, nobody returning: one empty host is enough -> 3 hosts too many
    assert math.ceil(policy.target_gpus(_ctx(1000.0, empty=4, capacity=80)) / 8) == 7
    # two 8-GPU kernels released 100 s and 500 s ago, one 8-GPU kernel 20 min ago, a 1-GPU kernel just now
    returning = [(900.0, 8), (500.0, 8), (-200.0, 8), (999.0, 1)]
    assert math.ceil(policy.target_gpus(_ctx(1000.0, empty=1, capacity=80, idle_kernels=returning)) / 8) == 12


def test_notebookos_plus_scales_in_faster_and_one_host_at_a_time():
    core = make_core("notebookos-plus", hosts=8, min_hosts=3)
    core.tick(0.0)
    assert len(of_type(core.tick(300.0), HostRemoved)) == 1


def test_a_failed_scale_out_is_forgotten_and_the_waiting_request_asks_again():
    core = make_core("batch", hosts=1, min_hosts=1)
    core.place_kernel("a", 8, now=0)
    core.place_kernel("b", 8, now=0)
    core.request_execution("a", 8, now=0)
    queued = core.request_execution("b", 8, now=1)
    assert of_type(list(queued.events), ScaleOutRequested) and core.pending_hosts == 1
    [again] = of_type(core.scale_out_failed(1, now=400.0), ScaleOutRequested)
    assert again.hosts == 1 and core.pending_hosts == 1
