"""The session model: notebooks open before, between and after a session's training events."""

from __future__ import annotations

import math

import pytest

from notebookos.gpu_broker.simulator.trace import load_trace, reconstruct_sessions
from notebookos.gpu_broker.simulator.workload import SessionModel, plan_session

from broker_helpers import DATA


def _session():
    [session] = reconstruct_sessions(load_trace(DATA / "tiny_session.csv"))
    return session


def test_a_gap_longer_than_open_before_plus_idle_timeout_splits_the_session_into_notebooks():
    # events 10-40, 50-70 (gap 10 min), 200-210 (gap 130 min); the split gap is 5 + 15 = 20 minutes
    plan = plan_session(_session(), SessionModel(open_before_s=300, idle_timeout_s=900))
    assert [n.kernel_id for n in plan.notebooks] == ["s0-n0", "s0-n1"]
    first, second = plan.notebooks
    assert [c.event.job_id for c in first.cells] == ["0", "1"]
    assert [c.think_s for c in first.cells] == [0.0, 600.0]
    assert [c.think_s for c in second.cells] == [130 * 60.0]
    assert (first.gpus, second.gpus) == (2, 1)  # the largest request among the notebook's events
    assert plan.first_submit_s == 600.0 and plan.event_count == 3


def test_never_culled_sessions_stay_one_notebook():
    plan = plan_session(_session(), SessionModel(idle_timeout_s=math.inf, close_after_s=1800))
    assert len(plan.notebooks) == 1 and plan.notebooks[0].gpus == 2


def test_session_model_rejects_a_notebook_that_never_closes_and_negative_times():
    with pytest.raises(ValueError, match="must be finite"):
        SessionModel(idle_timeout_s=math.inf)
    with pytest.raises(ValueError, match="must not be negative"):
        SessionModel(open_before_s=-1)
    assert SessionModel(idle_timeout_s=600).closes_after_s == 600
    assert SessionModel(idle_timeout_s=600, close_after_s=60).closes_after_s == 60
