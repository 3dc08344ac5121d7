"""A record of the calls a driver makes on the scheduling core, and their replay.

The live scheduler and the simulator drive the same core. Recording what the live cluster asked, with the times it
passed, lets the same sequence be replayed on a fresh core and the decisions compared one by one: whatever the
live driver decides outside the core shows up as a difference.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from .events import Event
from .core import SchedulerCore


@dataclass(frozen=True)
class CoreCall:
    method: str
    args: tuple[Any, ...]
    now: float


@dataclass
class CoreJournal:
    """The calls a driver made on a SchedulerCore, in order, each with its outcome."""

    calls: list[CoreCall] = field(default_factory=list)
    outcomes: list[Any] = field(default_factory=list)

    def record(self, method: str, args: tuple[Any, ...], now: float, outcome: Any) -> None:
        self.calls.append(CoreCall(method, args, now))
        self.outcomes.append(outcome)


def replay(calls: list[CoreCall], core: SchedulerCore) -> list[Any]:
    """Make the same calls, at the same times, on ``core``; its outcomes in order."""
    return [getattr(core, c.method)(*c.args, c.now) for c in calls]


def outcome_json(outcome: Any) -> Any:
    """An outcome (an event, a list of them, or None) as plain JSON, for comparison across processes."""
    if isinstance(outcome, list):
        return [outcome_json(e) for e in outcome]
    if isinstance(outcome, Event):
        return {"type": type(outcome).__name__, **{k: _plain(v) for k, v in dataclasses.asdict(outcome).items()}}
    return outcome


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
