"""A cell's life in the core: executor pre-selection, pre-commit with device ids, release, the all-YIELD path."""

from __future__ import annotations

import itertools

import pytest

from notebookos.gpu_broker.scheduler.events import Decision, DecisionKind, Released, ScaleOutRequested
from notebookos.gpu_broker.scheduler.model import AllocationState
from notebookos.gpu_broker.scheduler.core import SchedulerCore

from broker_helpers import make_core, of_type

_fillers = itertools.count()


def occupy(core: SchedulerCore, host_id: str, gpus: int) -> None:
    """Other work holds ``gpus`` GPUs of a host (set up through the bookkeeping layer)."""
    kernel = core.cluster.add_kernel(f"other{next(_fillers)}", gpus)
    core.cluster.allocate(
        kernel, core.cluster.hosts[host_id], gpus, None, held=False, state=AllocationState.COMMITTED, now=0.0
    )


def placed(core: SchedulerCore, kernel_id: str, gpus: int) -> dict[int, str]:
    core.place_kernel(kernel_id, gpus, now=0)
    return dict(core.cluster.kernels[kernel_id].replicas)


def test_executor_is_the_replica_whose_host_has_most_idle_gpus_and_devices_are_precommitted():
    core = make_core(hosts=3)
    replicas = placed(core, "k", 2)
    occupy(core, replicas[0], 6)
    occupy(core, replicas[1], 1)
    occupy(core, replicas[2], 3)
    decision = core.request_execution("k", 2, now=10.0)
    assert decision.kind is DecisionKind.LEAD
    assert decision.replica == 1 and decision.host_id == replicas[1]  # 7 idle beats 5 and 2
    assert decision.devices == (1, 2)  # the lowest idle device ids of that host
    allocation = core.cluster.kernels["k"].allocation
    assert allocation.state is AllocationState.PENDING
    assert core.cluster.hosts[replicas[1]].idle_gpus == 5
    core.start_execution("k", now=10.0)
    assert allocation.state is AllocationState.COMMITTED


def test_previous_executor_wins_when_its_host_can_commit_now():
    core = make_core(hosts=3)
    replicas = placed(core, "k", 2)
    first = core.request_execution("k", 2, now=0)
    core.release("k", now=5)
    occupy(core, replicas[(first.replica + 1) % 3], 0)  # nothing changes elsewhere
    occupy(core, first.host_id, 5)  # the previous host now has 3 idle, others have 8
    again = core.request_execution("k", 2, now=6)
    assert again.replica == first.replica
    assert "previous executor" in again.reason


def test_previous_executor_is_skipped_when_its_host_cannot_commit():
    core = make_core(hosts=3)
    placed(core, "k", 4)
    first = core.request_execution("k", 4, now=0)
    core.release("k", now=5)
    occupy(core, first.host_id, 6)
    again = core.request_execution("k", 4, now=6)
    assert again.kind is DecisionKind.LEAD
    assert again.replica != first.replica


def test_notebookos_plus_picks_the_tightest_fitting_replica():
    core = make_core("notebookos-plus", hosts=3)
    replicas = placed(core, "k", 2)
    occupy(core, replicas[0], 6)  # 2 idle: fits exactly
    occupy(core, replicas[2], 3)
    decision = core.request_execution("k", 2, now=0)
    assert decision.replica == 0


def test_release_returns_the_devices_and_records_the_executor():
    core = make_core(hosts=3)
    placed(core, "k", 3)
    decision = core.request_execution("k", 3, now=0)
    core.start_execution("k", now=0)
    [released] = of_type(core.release("k", now=42.0), Released)
    assert released.devices == decision.devices
    assert core.used_gpus == 0
    kernel = core.cluster.kernels["k"]
    assert kernel.previous_executor == decision.replica and kernel.last_release == 42.0
    with pytest.raises(ValueError):
        core.release("k", now=43.0)


def test_a_kernel_runs_one_cell_at_a_time():
    core = make_core(hosts=3)
    placed(core, "k", 1)
    core.request_execution("k", 1, now=0)
    with pytest.raises(ValueError):
        core.request_execution("k", 1, now=1)


def test_zero_gpu_cell_binds_nothing():
    core = make_core(hosts=3)
    replicas = placed(core, "k", 1)
    for host_id in replicas.values():
        occupy(core, host_id, 8)
    decision = core.request_execution("k", 0, now=0)
    assert decision.kind is DecisionKind.LEAD and decision.devices == ()


def _all_replica_hosts_full(core: SchedulerCore, kernel_id: str) -> None:
    for host_id in core.cluster.kernels[kernel_id].replicas.values():
        occupy(core, host_id, core.cluster.hosts[host_id].idle_gpus)


def test_all_yield_migrates_a_replica_to_a_host_with_free_gpus():
    core = make_core(hosts=3)
    before = placed(core, "k", 4)
    _all_replica_hosts_full(core, "k")
    core.add_host("h3", 8, now=1)
    decision = core.request_execution("k", 4, now=2)
    assert decision.kind is DecisionKind.MIGRATE
    assert decision.host_id == "h3" and decision.devices == (0, 1, 2, 3)
    assert decision.source_host == before[decision.replica]
    assert "YIELD" in decision.reason
    after = core.cluster.kernels["k"].replicas
    assert after[decision.replica] == "h3" and len(set(after.values())) == 3
    assert core.cluster.hosts["h3"].ratio() == pytest.approx(0.5)
    assert core.cluster.hosts[decision.source_host].subscribed == 0


def test_all_yield_with_no_target_queues_and_scales_out_then_the_new_host_serves_it():
    core = make_core(hosts=3)
    placed(core, "k", 8)
    _all_replica_hosts_full(core, "k")
    queued = core.request_execution("k", 8, now=100.0)
    assert queued.kind is DecisionKind.QUEUED and not queued.granted
    [scale] = of_type(list(queued.events), ScaleOutRequested)
    assert scale.hosts == 1
    assert [r.kernel_id for r in core.waiting_requests] == ["k"]
    # the queue is re-examined after every change; while that host is on its way, no other one is asked for
    core.place_kernel("unrelated", 1, now=150.0)
    assert not of_type(core.close_kernel("unrelated", now=160.0), ScaleOutRequested)
    arrival = core.add_host("h3", 8, now=280.0)
    [granted] = of_type(arrival, Decision)
    assert granted.kind is DecisionKind.MIGRATE and granted.host_id == "h3"
    assert "waited 180 s" in granted.reason
    assert core.waiting_requests == []


def test_migration_target_must_stay_within_the_subscription_limit():
    core = make_core(hosts=3, subscription_limit=4.0)
    placed(core, "k", 4)
    _all_replica_hosts_full(core, "k")
    core.add_host("h3", 8, now=0)
    standby = core.cluster.add_kernel("standby", 29)  # h3 at 29/8 = 3.6; k's 4 more would make 4.1
    core.cluster.place_replica(standby, 0, core.cluster.hosts["h3"])
    decision = core.request_execution("k", 4, now=1)
    assert decision.kind is DecisionKind.QUEUED
    assert "subscription limit" in decision.reason


def test_queued_request_runs_in_place_when_a_replica_host_frees_up():
    core = make_core(hosts=3)
    placed(core, "k", 8)
    placed(core, "other", 8)
    first = core.request_execution("other", 8, now=0)
    for host_id in core.cluster.kernels["k"].replicas.values():
        if host_id != first.host_id:
            occupy(core, host_id, 8)
    queued = core.request_execution("k", 8, now=1)
    assert queued.kind is DecisionKind.QUEUED
    events = core.release("other", now=30.0)
    [granted] = of_type(events, Decision)
    assert granted.kind is DecisionKind.LEAD and granted.host_id == first.host_id and granted.time == 30.0


@pytest.mark.parametrize(
    ("policy", "kind"), [("batch", DecisionKind.COLD_CONTAINER), ("lcp", DecisionKind.WARM_CONTAINER)]
)
def test_policies_without_replicas_run_each_cell_in_a_container_on_the_tightest_host(policy, kind):
    core = make_core(policy, hosts=3)
    occupy(core, "h1", 5)
    core.place_kernel("k", 2, now=0)
    decision = core.request_execution("k", 2, now=1)
    assert decision.kind is kind and decision.host_id == "h1" and decision.replica is None
    core.release("k", now=2)
    for host in core.cluster.hosts.values():
        occupy(core, host.host_id, host.idle_gpus - 1)  # one idle GPU left on every host
    assert core.request_execution("k", 2, now=3).kind is DecisionKind.QUEUED


def test_reservation_runs_cells_on_the_held_gpus_and_keeps_them_after_release():
    core = make_core("reservation", hosts=3)
    core.place_kernel("k", 4, now=0)
    held = core.cluster.kernels["k"].allocation.devices
    decision = core.request_execution("k", 4, now=10)
    assert decision.kind is DecisionKind.LEAD and decision.devices == held
    [released] = of_type(core.release("k", now=20), Released)
    assert released.devices == ()
    assert core.used_gpus == 4
    with pytest.raises(ValueError):
        core.request_execution("k", 8, now=30)  # more than the session holds


def test_closing_a_kernel_frees_everything_and_serves_the_queue():
    core = make_core("batch", hosts=1, min_hosts=1)
    core.place_kernel("a", 8, now=0)
    core.place_kernel("b", 8, now=0)
    core.request_execution("a", 8, now=0)
    assert core.request_execution("b", 8, now=1).kind is DecisionKind.QUEUED
    events = core.close_kernel("a", now=50)
    [granted] = of_type(events, Decision)
    assert granted.kernel_id == "b" and granted.kind is DecisionKind.COLD_CONTAINER
    assert "a" not in core.cluster.kernels
