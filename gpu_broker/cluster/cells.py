"""What the cluster remembers of each kernel's current or last cell: its GPU request, the scheduler's answer and
the times the dashboard shows (submitted, started, ended; bind and release as the executor measured them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..scheduler.events import Decision


@dataclass
class CellRecord:
    gpus: int
    submitted: float
    decision: str = "queued"
    reason: str = ""
    host: str | None = None
    devices: tuple[int, ...] = ()
    started: float | None = None  # the executor has its GPUs (a migrated replica has moved)
    ended: float | None = None  # the GPUs went back
    bind_s: float | None = None
    release_s: float | None = None

    @property
    def state(self) -> str:
        if self.ended is not None:
            return "done"
        return "running" if self.started is not None else "queued"

    def decided(self, decision: Decision) -> None:
        self.decision, self.reason = decision.kind.value, decision.reason
        self.host, self.devices = decision.host_id, tuple(decision.devices)

    def json(self) -> dict[str, Any]:
        return {**asdict(self), "devices": list(self.devices), "state": self.state}
