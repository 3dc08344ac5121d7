"""What a simulated run measures: GPU-hours, the delay of every training event, and scaling counts.

GPU-hours are time integrals of two step functions the core exposes: *provisioned* GPUs (every host the cluster
pays for, from the moment a scale-out is requested until the host is removed) and *committed* GPUs (devices bound
or pre-committed to an executor, including start-up and migration time; for reservation, the GPUs a session
holds). Both are integrated only over the accounting window, so a 17.5-hour window reports 17.5 hours of cost.

Delay statistics (:func:`delay_stats`) are computed here for every caller: the simulator's policy metrics and
``notebookos replay`` (live delays and the simulator's beside them) report the same keys, computed the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# A simulated training event "started at once" when its delay is zero; the tolerance absorbs float rounding of the
# virtual clock.
AT_ONCE_S = 1e-6


def delay_stats(delays_s: Sequence[float], at_once_s: float = AT_ONCE_S) -> dict[str, float | None]:
    """Mean, p50/p90/p99 (numpy's linear interpolation) and max of ``delays_s``, and the share of events that
    started at once (delay at most ``at_once_s``). Every value is None when there is no delay to summarize."""
    d = np.asarray(delays_s, dtype=float)
    if not d.size:
        return {
            "started_without_wait": None,
            "delay_mean_s": None,
            "delay_p50_s": None,
            "delay_p90_s": None,
            "delay_p99_s": None,
            "delay_max_s": None,
        }
    return {
        "started_without_wait": float(np.mean(d <= at_once_s)),
        "delay_mean_s": float(d.mean()),
        "delay_p50_s": float(np.percentile(d, 50)),
        "delay_p90_s": float(np.percentile(d, 90)),
        "delay_p99_s": float(np.percentile(d, 99)),
        "delay_max_s": float(d.max()),
    }


@dataclass
class Recorder:
    window_start_s: float
    window_end_s: float | None
    provisioned_gpu_s: float = 0.0
    committed_gpu_s: float = 0.0
    delays_s: list[float] = field(default_factory=list)
    migrations: int = 0
    drain_moves: int = 0
    scale_out_hosts: int = 0
    scale_in_hosts: int = 0
    peak_hosts: int = 0
    # change points of the two step functions, for plots
    times: list[float] = field(default_factory=list)
    provisioned: list[int] = field(default_factory=list)
    committed: list[int] = field(default_factory=list)
    _last_t: float | None = None

    def advance(self, now: float) -> None:
        """Integrate the current values from the previous observation up to ``now``, within the window."""
        if self._last_t is not None:
            lo = max(self._last_t, self.window_start_s)
            hi = now if self.window_end_s is None else min(now, self.window_end_s)
            if hi > lo:
                self.provisioned_gpu_s += (hi - lo) * self.provisioned[-1]
                self.committed_gpu_s += (hi - lo) * self.committed[-1]
        self._last_t = now

    def observe(self, now: float, provisioned: int, committed: int, hosts: int) -> None:
        if not self.times or provisioned != self.provisioned[-1] or committed != self.committed[-1]:
            self.times.append(now)
            self.provisioned.append(provisioned)
            self.committed.append(committed)
        self.peak_hosts = max(self.peak_hosts, hosts)


@dataclass
class PolicyResult:
    policy: str
    recorder: Recorder
    end_s: float  # when the last notebook closed

    def metrics(self, reservation_provisioned_h: float | None) -> dict[str, float | int | None]:
        rec = self.recorder
        provisioned_h = rec.provisioned_gpu_s / 3600.0
        return {
            "training_events": len(rec.delays_s),
            "gpu_hours_provisioned": provisioned_h,
            "gpu_hours_committed": rec.committed_gpu_s / 3600.0,
            "gpu_hours_saved_vs_reservation": (
                None if reservation_provisioned_h is None else reservation_provisioned_h - provisioned_h
            ),
            **delay_stats(rec.delays_s),
            "migrations": rec.migrations,
            "drain_moves": rec.drain_moves,
            "scale_outs": rec.scale_out_hosts,
            "scale_ins": rec.scale_in_hosts,
            "peak_hosts": rec.peak_hosts,
        }
