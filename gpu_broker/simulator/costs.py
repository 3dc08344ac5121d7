"""The costs that decide the outcome: what each kind of decision puts on a cell's critical path.

Defaults (stated in docs/simulator.md, all configurable from the CLI):

* ``container_start_s`` = 15 s: start a kernel container with the CUDA stack and a Python kernel. Paid by a batch
  job per training event, by a migrated or replacement replica, and by every kernel when its notebook opens.
* ``state_restore_s`` = 10 s: load the notebook's state (model weights, data) from the object store into a fresh
  process, e.g. about 2 GB at 200 MB/s. Paid by batch and LCP per cell and by a migrated replica.
* ``scale_out_s`` = 180 s: a new GPU host boots, pulls the image and registers.

A cell granted on an existing replica (LEAD) starts at once: binding devices costs milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..scheduler.events import DecisionKind


@dataclass(frozen=True)
class CostModel:
    container_start_s: float = 15.0
    state_restore_s: float = 10.0
    scale_out_s: float = 180.0

    def __post_init__(self) -> None:
        if min(self.container_start_s, self.state_restore_s, self.scale_out_s) < 0:
            raise ValueError("costs must not be negative")

    def start_delay(self, kind: DecisionKind) -> float:
        """Seconds from a granted decision to the cell running on its GPUs."""
        if kind is DecisionKind.LEAD:
            return 0.0
        if kind is DecisionKind.WARM_CONTAINER:
            return self.state_restore_s
        if kind in (DecisionKind.MIGRATE, DecisionKind.COLD_CONTAINER):
            return self.container_start_s + self.state_restore_s
        raise ValueError(f"a {kind.value} decision does not start anything")
