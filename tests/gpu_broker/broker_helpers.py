"""Helpers shared by the gpu_broker tests: a scheduling core with hosts, on a virtual clock (plain numbers)."""

from __future__ import annotations

from pathlib import Path

from notebookos.gpu_broker.scheduler.events import Event
from notebookos.gpu_broker.scheduler.policies import Policy, make_policy
from notebookos.gpu_broker.scheduler.core import CoreConfig, SchedulerCore

DATA = Path(__file__).parent / "data"


def make_core(policy: str | Policy = "notebookos", hosts: int = 4, gpus: int = 8, **config: object) -> SchedulerCore:
    """A core with ``hosts`` hosts named h0.. of ``gpus`` GPUs each, added at time 0."""
    chosen = make_policy(policy) if isinstance(policy, str) else policy
    core = SchedulerCore(chosen, CoreConfig(host_gpus=gpus, **config))
    for i in range(hosts):
        core.add_host(f"h{i}", gpus, 0.0)
    return core


def of_type(events: list[Event], kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]
