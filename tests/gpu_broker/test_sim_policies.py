"""Every policy on tiny traces whose GPU-hours and delays are worked out by hand below.

Costs everywhere: container start 60 s, state restore 30 s, scale-out 120 s. Times in the comments are minutes.
GPU-hours are integrated from the first notebook opening to the last one closing.
"""

from __future__ import annotations

import pytest

from notebookos.gpu_broker.simulator.costs import CostModel
from notebookos.gpu_broker.simulator.engine import ClusterSpec
from notebookos.gpu_broker.simulator.experiment import Experiment, run_experiment
from notebookos.gpu_broker.simulator.workload import SessionModel

from broker_helpers import DATA

COSTS = CostModel(container_start_s=60, state_restore_s=30, scale_out_s=120)
ALL = ("reservation", "batch", "notebookos", "lcp", "notebookos-plus")


def _metrics(trace: str, cluster: ClusterSpec, model: SessionModel) -> dict[str, dict]:
    experiment = Experiment(trace=DATA / trace, policies=ALL, cluster=cluster, model=model, costs=COSTS)
    return run_experiment(experiment, progress=False).metrics()


@pytest.fixture(scope="module")
def one_session() -> dict[str, dict]:
    """tiny_session.csv: one session, events 10-40 (2 GPUs), 50-70 (2 GPUs), 200-210 (1 GPU).

    Notebooks open 5 min before and are culled after 15 idle minutes, so the 130-minute gap splits the session
    into notebook n0 (events 1-2, asks 2 GPUs) and n1 (event 3, asks 1 GPU). A fixed cluster of 3 x 8 GPUs
    (min = max = 3 hosts) costs 24 GPUs for as long as the run lasts. The first notebook opens at minute 5.
    """
    return _metrics(
        "tiny_session.csv",
        ClusterSpec(hosts=3, host_gpus=8, min_hosts=3, max_hosts=3),
        SessionModel(open_before_s=300, idle_timeout_s=900),
    )


def test_reservation_holds_the_gpus_while_each_notebook_is_open(one_session):
    m = one_session["reservation"]
    # n0 open 5-85 (last event ends 70, +15) holding 2 GPUs; n1 opens 200-5=195, closes 210+15=225 holding 1
    assert m["gpu_hours_committed"] == pytest.approx((2 * 80 + 1 * 30) / 60)
    assert m["gpu_hours_provisioned"] == pytest.approx(24 * (225 - 5) / 60)
    assert (m["delay_p50_s"], m["delay_max_s"], m["started_without_wait"]) == (0, 0, 1.0)
    assert m["gpu_hours_saved_vs_reservation"] == 0


@pytest.mark.parametrize("policy", ["notebookos", "notebookos-plus"])
def test_notebookos_binds_gpus_only_while_cells_run(one_session, policy):
    m = one_session[policy]
    assert m["gpu_hours_committed"] == pytest.approx((2 * 30 + 2 * 20 + 1 * 10) / 60)
    assert m["gpu_hours_provisioned"] == pytest.approx(24 * (225 - 5) / 60)  # same run length as reservation
    assert (m["started_without_wait"], m["delay_max_s"], m["migrations"]) == (1.0, 0, 0)


def test_batch_pays_start_up_and_restore_on_every_event(one_session):
    m = one_session["batch"]
    # each event waits 60 + 30 s and holds its GPUs meanwhile; the user's next submission shifts by the delay:
    # 10 -> start 11.5, end 41.5; next at 51.5 -> 53, end 73; n1 opens 73+130-5, event at 203 -> 204.5 -> 214.5
    assert m["delay_p50_s"] == m["delay_max_s"] == 90
    assert m["started_without_wait"] == 0
    assert m["gpu_hours_committed"] == pytest.approx((2 * 31.5 + 2 * 21.5 + 1 * 11.5) / 60)
    assert m["gpu_hours_provisioned"] == pytest.approx(24 * (214.5 + 15 - 5) / 60)
    assert m["gpu_hours_saved_vs_reservation"] == pytest.approx(24 * (225 - 229.5) / 60)


def test_lcp_pays_only_the_state_restore(one_session):
    m = one_session["lcp"]
    # 10 -> 10.5 -> 40.5; 50.5 -> 51 -> 71; n1: 201 -> 201.5 -> 211.5, closes 226.5
    assert m["delay_p50_s"] == m["delay_max_s"] == 30
    assert m["gpu_hours_committed"] == pytest.approx((2 * 30.5 + 2 * 20.5 + 1 * 10.5) / 60)
    assert m["gpu_hours_provisioned"] == pytest.approx(24 * (226.5 - 5) / 60)


@pytest.fixture(scope="module")
def contention() -> dict[str, dict]:
    """contention.csv: four sessions, each one event of 2 GPUs at minute 10 lasting 30 minutes.

    3 hosts of 2 GPUs at the start, at most 4; notebooks open at minute 5 and close 1 minute after their event.
    Only three events fit at once: the fourth needs a fourth host, which takes 2 minutes to arrive.
    """
    return _metrics(
        "contention.csv",
        ClusterSpec(hosts=3, host_gpus=2, min_hosts=3, max_hosts=4),
        SessionModel(open_before_s=300, idle_timeout_s=60),
    )


@pytest.mark.parametrize("policy", ["notebookos", "notebookos-plus"])
def test_notebookos_migrates_the_fourth_kernel_to_the_new_host(contention, policy):
    m = contention[policy]
    # All four kernels have replicas on the three hosts. At 10 three cells take one host each; the fourth finds
    # every replica YIELDing and no other host: it queues and asks for a host (billed from 10), which arrives at
    # 12; a replica migrates there (60 + 30 s) and the cell starts at 13.5: a 210 s delay.
    assert sorted(m[k] for k in ("delay_p50_s", "delay_max_s")) == [0, 210]
    assert m["started_without_wait"] == 0.75
    assert m["delay_p90_s"] == pytest.approx(0.7 * 210)  # linear interpolation over [0, 0, 0, 210]
    assert (m["migrations"], m["scale_outs"], m["peak_hosts"]) == (1, 1, 4)
    # committed: three cells x 2 GPUs x 30 min, the fourth's 2 GPUs from 12 (pre-commit) to 43.5
    assert m["gpu_hours_committed"] == pytest.approx((3 * 2 * 30 + 2 * 31.5) / 60)
    # provisioned: 6 GPUs from 5 to 10, 8 GPUs from 10 until the last notebook closes at 44.5
    assert m["gpu_hours_provisioned"] == pytest.approx((6 * 5 + 8 * 34.5) / 60)


def test_reservation_waits_for_the_fourth_host_before_the_events_so_nobody_waits(contention):
    m = contention["reservation"]
    # placement at 5 fills the three hosts and asks for a fourth (billed from 5), which arrives at 7
    assert m["started_without_wait"] == 1.0 and m["scale_outs"] == 1
    assert m["gpu_hours_committed"] == pytest.approx((3 * 2 * (41 - 5) + 2 * (41 - 7)) / 60)
    assert m["gpu_hours_provisioned"] == pytest.approx(8 * (41 - 5) / 60)


def test_batch_queues_the_fourth_event_for_a_new_host(contention):
    m = contention["batch"]
    # three containers start at 11.5 (90 s); the fourth waits for the host (12) then 90 s: 210 s
    assert sorted([m["delay_p50_s"], m["delay_max_s"]]) == [90, 210]
    assert m["gpu_hours_committed"] == pytest.approx((3 * 2 * 31.5 + 2 * 31.5) / 60)
    # 8 GPUs busy need all 4 hosts of 2 GPUs; the surplus starts at 42 and would have to last 10 minutes, longer
    # than the run (last close 43.5 + 1), so no host is removed
    assert m["gpu_hours_provisioned"] == pytest.approx((6 * 5 + 8 * 34.5) / 60)
    assert m["scale_outs"] == 1


def test_lcp_keeps_a_warm_host_ahead_of_demand(contention):
    m = contention["lcp"]
    # the pool target (four idle hosts) asks for the fourth host at 5; every event then waits only the restore
    assert m["delay_p50_s"] == m["delay_max_s"] == 30
    assert m["gpu_hours_committed"] == pytest.approx(4 * 2 * 30.5 / 60)
    assert m["gpu_hours_provisioned"] == pytest.approx(8 * (41.5 - 5) / 60)


def test_the_same_experiment_gives_the_same_numbers():
    cluster = ClusterSpec(hosts=3, host_gpus=2, min_hosts=3, max_hosts=4)
    model = SessionModel(open_before_s=300, idle_timeout_s=60)
    assert _metrics("contention.csv", cluster, model) == _metrics("contention.csv", cluster, model)
