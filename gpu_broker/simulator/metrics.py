"""What a simulated run measures: GPU-hours, the delay of every training event, and scaling counts.

GPU-hours are time integrals of two step functions the core exposes: *provisioned* GPUs (every host the cluster
pays for, from the moment a scale-out is requested until the host is removed) and *committed* GPUs (devices bound
or pre-committed to an executor, including start-up and migration time; for reservation, the GPUs a session
holds). Both are integrated only over the accounting window, so a 17.5-hour window reports 17.5 hours of cost.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
        delays = np.asarray(rec.delays_s, dtype=float)
        provisioned_h = rec.provisioned_gpu_s / 3600.0

        def pct(q: float) -> float:
            return float(np.percentile(delays, q)) if delays.size else 0.0

        return {
            "training_events": int(delays.size),
            "gpu_hours_provisioned": provisioned_h,
            "gpu_hours_committed": rec.committed_gpu_s / 3600.0,
            "gpu_hours_saved_vs_reservation": (
                None if reservation_provisioned_h is None else reservation_provisioned_h - provisioned_h
            ),
            "started_without_wait": float(np.mean(delays <= 1e-6)) if delays.size else 1.0,
            "delay_mean_s": float(delays.mean()) if delays.size else 0.0,
            "delay_p50_s": pct(50),
            "delay_p90_s": pct(90),
            "delay_p99_s": pct(99),
            "delay_max_s": float(delays.max()) if delays.size else 0.0,
            "migrations": rec.migrations,
            "drain_moves": rec.drain_moves,
            "scale_outs": rec.scale_out_hosts,
            "scale_ins": rec.scale_in_hosts,
            "peak_hosts": rec.peak_hosts,
        }
