"""Agents' heartbeat pace: every second in a small cluster; past 50 agents, spread over a longer period so that the
service takes at most 50 heartbeats a second, each agent at a slot of its own."""

from __future__ import annotations

from collections import Counter

from notebookos.gpu_broker.cluster.agent.daemon import _period
from notebookos.gpu_broker.cluster.agent.remote import (
    HEARTBEAT_S,
    MAX_HEARTBEATS_PER_S,
    heartbeat_period_s,
    next_heartbeat_s,
)


def test_a_small_cluster_hears_from_each_agent_every_second() -> None:
    assert heartbeat_period_s(3) == HEARTBEAT_S
    assert heartbeat_period_s(50) == HEARTBEAT_S
    assert all(next_heartbeat_s(f"gpu-{i}", HEARTBEAT_S, now=1000.3 + i) == HEARTBEAT_S for i in range(10))


def test_two_hundred_agents_that_joined_in_one_second_spread_over_their_period() -> None:
    agents = [f"gpu-{i:03d}" for i in range(200)]
    period = heartbeat_period_s(len(agents))
    assert period == len(agents) / MAX_HEARTBEATS_PER_S == 4.0
    joined = 5000.0
    when = {name: joined + i / len(agents) for i, name in enumerate(agents)}  # all heartbeat within one second
    waits = {name: next_heartbeat_s(name, period, when[name]) for name in agents}
    # Never sooner than a second, never two periods between heartbeats.
    assert all(HEARTBEAT_S <= wait < period + HEARTBEAT_S for wait in waits.values())
    # Then each keeps its slot: the next heartbeats fall in every second of the period, none far above 50 a second.
    per_second = Counter(int((when[name] + waits[name]) % period) for name in agents)
    assert set(per_second) == {0, 1, 2, 3}
    assert max(per_second.values()) <= 1.5 * MAX_HEARTBEATS_PER_S
    again = {name: next_heartbeat_s(name, period, when[name] + waits[name]) for name in agents}
    assert all(abs(wait - period) < 1e-6 for wait in again.values())


def test_an_agent_keeps_to_sane_bounds_whatever_the_answer_says() -> None:
    assert _period(4.0) == 4.0
    assert _period(None) == HEARTBEAT_S  # an older service that says nothing
    assert _period("soon") == HEARTBEAT_S
    assert _period(0) == HEARTBEAT_S / 10
    assert _period(1e9) == 60.0
