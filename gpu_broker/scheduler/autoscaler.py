"""Autoscaling: turn a policy's capacity target into scale-out and scale-in steps.

The policy says how many GPUs the cluster should have (``Policy.target_gpus``); this module says how many hosts
to add or take away, with hysteresis on the way down: a surplus must last ``scale_in_delay_s`` before any host is
removed, because a host removed and re-added minutes later costs a scale-out delay to whoever waits for it.
Scale-out happens at once: waiting users cost more than an idle host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ScalingContext:
    """What a policy may look at to size the cluster. All GPU counts are whole GPUs."""

    now: float
    host_gpus: int  # GPUs of a host added by scale-out
    capacity_gpus: int  # GPUs on active hosts plus hosts on their way
    used_gpus: int  # devices pre-committed or committed
    queued_gpus: int  # GPUs asked for by requests that wait for a host
    waiting: bool  # requests or kernels wait for room: no host may be removed now
    subscribed_gpus: int  # GPUs requested by every placed replica and every replica waiting to be placed
    subscription_limit: float
    empty_hosts: int  # active hosts with every GPU idle, plus hosts on their way (they arrive empty)
    idle_kernels: tuple[tuple[float, int], ...]  # (last release time, GPUs of that cell) of open, idle kernels

    @property
    def demand_gpus(self) -> int:
        return self.used_gpus + self.queued_gpus


@dataclass(frozen=True, slots=True)
class ScalingPlan:
    add_hosts: int
    remove_hosts: int
    reason: str


class Autoscaler:
    def __init__(self, min_hosts: int, max_hosts: int | None) -> None:
        if max_hosts is not None and max_hosts < min_hosts:
            raise ValueError(f"max_hosts ({max_hosts}) is below min_hosts ({min_hosts})")
        self.min_hosts = min_hosts
        self.max_hosts = max_hosts
        self.surplus_since: float | None = None

    def count_fixed_hosts(self, delta: int) -> None:
        """Hosts that came (+1) or went (-1) on their own, such as agents joining: they are not the provider's, so
        the autoscaler must neither take them away nor count them against the hosts it may add."""
        self.min_hosts += delta
        if self.max_hosts is not None:
            self.max_hosts += delta

    def plan(
        self,
        ctx: ScalingContext,
        target_gpus: float,
        hosts: int,
        scale_in_delay_s: float,
        scale_in_limit: int,
    ) -> ScalingPlan:
        """``hosts`` counts active hosts plus hosts on their way; the plan brings it toward the target."""
        wanted = max(self.min_hosts, math.ceil(target_gpus / ctx.host_gpus - 1e-9))
        if self.max_hosts is not None:
            wanted = min(wanted, self.max_hosts)
        why = (
            f"target {target_gpus:.1f} GPUs (demand {ctx.demand_gpus}, subscribed {ctx.subscribed_gpus}) "
            f"-> {wanted} host(s) of {ctx.host_gpus} GPUs; {hosts} now"
        )
        if wanted > hosts:
            self.surplus_since = None
            return ScalingPlan(wanted - hosts, 0, "scale out: " + why)
        if wanted == hosts or ctx.waiting:
            self.surplus_since = None
            return ScalingPlan(0, 0, why)
        if self.surplus_since is None:
            self.surplus_since = ctx.now
        if ctx.now - self.surplus_since < scale_in_delay_s:
            return ScalingPlan(0, 0, why)
        return ScalingPlan(
            0,
            min(hosts - wanted, scale_in_limit),
            f"scale in: surplus for {ctx.now - self.surplus_since:.0f} s; " + why,
        )
