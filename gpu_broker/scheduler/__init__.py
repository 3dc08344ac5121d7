"""The scheduling core: pure, event-driven decisions over hosts, GPUs, kernels and replicas.

``SchedulerCore`` (core.py) is the entry point; ``policies`` holds the policies it can run; every decision
comes back as an event (events.py) with a human-readable reason. Nothing here does I/O or reads a clock.
"""

from .events import Decision, DecisionKind, Event
from .policies import POLICIES, Policy, make_policy
from .core import CoreConfig, SchedulerCore

__all__ = ["POLICIES", "CoreConfig", "Decision", "DecisionKind", "Event", "Policy", "SchedulerCore", "make_policy"]
