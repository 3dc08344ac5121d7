"""Placement of a kernel's replicas: distinct hosts, the subscription-ratio limit, deferral and scale-out."""

from __future__ import annotations

import random

import pytest

from notebookos.gpu_broker.scheduler.events import KernelPlaced, PlacementDeferred, ScaleOutRequested
from notebookos.gpu_broker.scheduler.model import Host, Kernel
from notebookos.gpu_broker.scheduler.policies import make_policy

from broker_helpers import make_core, of_type


def test_three_replicas_on_three_distinct_hosts_and_ratio_counts_requested_gpus():
    core = make_core(hosts=4, gpus=8)
    [placed] = core.place_kernel("k", 4, now=1.0)
    assert isinstance(placed, KernelPlaced)
    assert len(set(placed.hosts)) == 3
    for host_id in placed.hosts:
        assert core.cluster.hosts[host_id].ratio() == pytest.approx(4 / 8)
    untouched = ({"h0", "h1", "h2", "h3"} - set(placed.hosts)).pop()
    assert core.cluster.hosts[untouched].ratio() == 0
    assert placed.reason  # every decision says why


def test_placement_prefers_the_least_subscribed_hosts():
    core = make_core(hosts=4, gpus=8)
    core.place_kernel("a", 8, now=0)  # h0, h1, h2 now at ratio 1.0; h3 at 0
    [placed] = core.place_kernel("b", 2, now=0)
    assert "h3" in placed.hosts


def test_a_host_whose_ratio_would_pass_the_limit_is_refused():
    # limit 1.0: a host of 8 GPUs takes replicas asking for 8 GPUs in total, no more
    core = make_core(hosts=4, gpus=8, subscription_limit=1.0)
    core.place_kernel("a", 6, now=0)  # three hosts at 0.75
    events = core.place_kernel("b", 4, now=0)  # only h3 could take 4 more (0.5); 0.75 + 0.5 passes the limit
    assert of_type(events, PlacementDeferred)
    assert core.cluster.hosts["h3"].replicas == {}  # nothing placed partially
    assert core.cluster.kernels["b"].replicas == {}
    # exactly at the limit is allowed
    [placed] = core.place_kernel("c", 2, now=0)
    assert isinstance(placed, KernelPlaced)
    assert all(core.cluster.hosts[h].ratio() <= 1.0 for h in placed.hosts)


def test_deferred_kernel_asks_for_hosts_and_is_placed_when_they_arrive():
    core = make_core(hosts=2, gpus=8)  # three replicas need three hosts
    events = core.place_kernel("k", 1, now=5.0)
    assert of_type(events, PlacementDeferred)
    [scale] = of_type(events, ScaleOutRequested)
    assert scale.hosts == 1
    assert core.pending_hosts == 1
    arrival = core.add_host("h2", 8, now=65.0)
    [placed] = of_type(arrival, KernelPlaced)
    assert placed.time == 65.0
    assert sorted(placed.hosts) == ["h0", "h1", "h2"]
    assert core.pending_hosts == 0


def test_reservation_commits_the_session_gpus_at_placement_tightest_fit():
    core = make_core("reservation", hosts=3, gpus=8)
    core.place_kernel("big", 6, now=0)  # lands on h0 (all equal): 2 idle left there
    [placed] = core.place_kernel("small", 2, now=0)
    assert placed.hosts == ("h0",)  # the tightest fit, keeping h1 and h2 whole
    assert core.cluster.hosts["h0"].idle_gpus == 0
    assert core.used_gpus == 8
    allocation = core.cluster.kernels["small"].allocation
    assert allocation.held and allocation.devices == (6, 7)


def test_reservation_cannot_oversubscribe():
    core = make_core("reservation", hosts=1, gpus=8, min_hosts=1)
    core.place_kernel("a", 8, now=0)
    events = core.place_kernel("b", 1, now=0)
    assert of_type(events, PlacementDeferred)
    assert of_type(events, ScaleOutRequested)


def test_policies_without_replicas_place_nothing():
    core = make_core("batch", hosts=3)
    [placed] = core.place_kernel("k", 8, now=0)
    assert placed.hosts == ()
    assert core.cluster.subscribed_gpus == 0


def test_duplicate_kernel_and_unknown_ids_are_rejected():
    core = make_core()
    core.place_kernel("k", 1, now=0)
    with pytest.raises(ValueError):
        core.place_kernel("k", 1, now=0)
    with pytest.raises(KeyError):
        core.request_execution("nope", 1, now=0)
    with pytest.raises(ValueError):
        core.add_host("h0", 8, now=0)


@pytest.mark.parametrize("policy", ["notebookos", "reservation"])
def test_the_hosts_picked_are_the_first_of_the_policys_full_order_ties_in_listing_order(policy):
    """The core asks its policy for the few best hosts instead of a full ranking: they are the ones a sort by the
    policy's rule would put first, equals in the order the hosts are listed (which hosts a kernel gets, in the live
    cluster and in the simulator, stays what it was)."""
    rng = random.Random(7)
    hosts = [Host(f"h{i}", rng.choice([4, 8]), subscribed=rng.randrange(0, 12)) for i in range(60)]
    for host in hosts:
        del host.idle_devices[: rng.randrange(0, host.gpus + 1)]  # ties in idle GPUs too
    rule = {
        "notebookos": lambda h: (h.ratio(2), -h.idle_gpus),  # lowest subscription ratio, then most idle GPUs
        "reservation": lambda h: h.idle_gpus,  # tightest fit
    }[policy]
    kernel = Kernel("k", 2)
    for count in (1, 3, 60):
        assert make_policy(policy).rank_placement(kernel, hosts, count) == sorted(hosts, key=rule)[:count]
