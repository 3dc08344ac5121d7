"""The session model: when notebooks are open around the trace's training events (the trace does not say).

A reconstructed session is a run of training events. How long the notebook stays open before, between and after
them decides what reservation pays and how many replicas NotebookOS keeps placed, so it is a stated model:

* A notebook opens ``open_before_s`` before its first training event (the user loads data, writes code).
* It stays open while the user keeps training. An idle culler closes it ``idle_timeout_s`` after a training event
  ends if no other one has started by then (``inf``: never culled).
* A later training event of the same session reopens it ``open_before_s`` ahead: a new kernel.
* After the session's last event it stays open ``close_after_s`` (default: the idle timeout).

So a gap between two events longer than ``open_before_s + idle_timeout_s`` splits the session into two notebooks.
Each notebook is one kernel; its GPU request (what reservation holds, what replicas subscribe) is the largest
``num_gpu`` among its events, the size a user would pick for the notebook; each cell asks for its own event's GPUs.

Delays do not accumulate into later submissions: a user submits the next event ``think_s`` after the previous one
ended (the trace's gap), so a late start shifts the rest of the session rather than overlapping it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .trace import Session, TraceEvent


@dataclass(frozen=True)
class SessionModel:
    open_before_s: float = 30 * 60.0
    idle_timeout_s: float = 60 * 60.0  # JupyterHub's usual culler setting (z2jh cull.timeout)
    close_after_s: float | None = None  # None: the idle timeout

    def __post_init__(self) -> None:
        if min(self.open_before_s, self.idle_timeout_s, self.close_after_s or 0.0) < 0:
            raise ValueError("session model times must not be negative")
        if not math.isfinite(self.open_before_s) or not math.isfinite(self.closes_after_s):
            raise ValueError("open_before_s and close_after_s must be finite (a notebook must close)")

    @property
    def closes_after_s(self) -> float:
        return self.idle_timeout_s if self.close_after_s is None else self.close_after_s


@dataclass(frozen=True, slots=True)
class Cell:
    event: TraceEvent
    think_s: float  # from the end of the session's previous event to this submission (0 for the session's first)


@dataclass(frozen=True, slots=True)
class NotebookPlan:
    kernel_id: str
    gpus: int
    cells: tuple[Cell, ...]


@dataclass(frozen=True, slots=True)
class SessionPlan:
    session_id: int
    first_submit_s: float
    notebooks: tuple[NotebookPlan, ...]

    @property
    def event_count(self) -> int:
        return sum(len(n.cells) for n in self.notebooks)


def plan_session(session: Session, model: SessionModel) -> SessionPlan:
    split_gap = model.open_before_s + model.idle_timeout_s
    groups: list[list[Cell]] = []
    previous: TraceEvent | None = None
    for event in session.events:
        think = 0.0 if previous is None else event.submit_s - previous.end_s
        if previous is None or think > split_gap:
            groups.append([])
        groups[-1].append(Cell(event, think))
        previous = event
    notebooks = tuple(
        NotebookPlan(f"s{session.session_id}-n{i}", max(c.event.gpus for c in cells), tuple(cells))
        for i, cells in enumerate(groups)
    )
    return SessionPlan(session.session_id, session.events[0].submit_s, notebooks)
