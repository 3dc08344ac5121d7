"""The last hour of the cluster, sampled, for the dashboard's charts.

Every ``interval_s`` the service closes a sample: GPUs total and committed at that moment, cells waiting, the
p50/p99 interactivity delay of cells that got their GPUs during the interval, and how many migrations and scale
events happened in it. An hour of 5-second samples is 720 small records.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

INTERVAL_S = 5.0
KEEP_S = 3600.0


@dataclass
class Sample:
    time: float
    gpus_total: int
    gpus_committed: int
    pending_cells: int
    delay_p50: float | None
    delay_p99: float | None
    migrations: int
    scale_events: int


@dataclass
class History:
    interval_s: float = INTERVAL_S
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=int(KEEP_S / INTERVAL_S)))
    _delays: list[float] = field(default_factory=list)
    _migrations: int = 0
    _scale_events: int = 0
    _opened: float | None = None

    def cell_started(self, delay_s: float) -> None:
        self._delays.append(delay_s)

    def migrated(self) -> None:
        self._migrations += 1

    def scaled(self) -> None:
        self._scale_events += 1

    def maybe_sample(self, now: float, gpus_total: int, gpus_committed: int, pending_cells: int) -> bool:
        """Close the current interval if it is over; True when a sample was taken."""
        if self._opened is None:
            self._opened = now
        if now - self._opened < self.interval_s:
            return False
        delays = sorted(self._delays)
        self.samples.append(
            Sample(
                now,
                gpus_total,
                gpus_committed,
                pending_cells,
                _quantile(delays, 0.5),
                _quantile(delays, 0.99),
                self._migrations,
                self._scale_events,
            )
        )
        self._delays, self._migrations, self._scale_events, self._opened = [], 0, 0, now
        return True

    def since(self, now: float, seconds: float) -> list[dict[str, Any]]:
        return [asdict(s) for s in self.samples if s.time >= now - seconds]


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q * 100) - 1]
