"""The process-wide random number generators a notebook draws from without holding them in a variable.

``random.randint``, ``numpy.random.rand`` and ``torch.randn`` draw from generators that live in the process, not in
the namespace, so replicating the namespace alone leaves them behind: after ``torch.manual_seed(0)`` a cell re-run
on another replica, or the next cell after a failover, would draw other numbers than on a plain kernel. The
executor therefore sends their states with a cell's state delta when they changed, and the other replicas set them.

Only the generators of modules the notebook has imported are read (no replica imports torch for this); a standby
that has not imported one yet imports it to set its state (it is installed: the executor has it). CUDA generators
are included where torch has initialized CUDA.
"""

from __future__ import annotations

import hashlib
import importlib
import pickle
import random
import sys
from typing import Any


def current() -> dict[str, Any]:
    """The states of the generators of the imported modules."""
    states: dict[str, Any] = {"random": random.getstate()}
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        states["numpy"] = numpy.random.get_state()
    torch = sys.modules.get("torch")
    if torch is not None:
        states["torch"] = torch.get_rng_state()
        if torch.cuda.is_initialized():
            states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore(states: dict[str, Any]) -> None:
    """Set the generators to ``states`` (from :func:`current` on the executor)."""
    if "random" in states:
        random.setstate(states["random"])
    if "numpy" in states:
        importlib.import_module("numpy").random.set_state(states["numpy"])
    if "torch" in states:
        torch = importlib.import_module("torch")
        torch.set_rng_state(states["torch"])
        if "torch.cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["torch.cuda"])


class ChangeTracker:
    """Tells the executor whether the generators moved since their states were last sent or set, so that a cell
    that draws nothing adds nothing to its delta (the states weigh about 10 KB)."""

    def __init__(self) -> None:
        self._digest = b""

    def changed(self) -> dict[str, Any] | None:
        """The current states if they differ from the last ones seen, else None."""
        states = current()
        digest = _digest(states)
        if digest == self._digest:
            return None
        self._digest = digest
        return states

    def seen(self) -> None:
        """The generators were just set here from the log: their states are the last ones seen."""
        self._digest = _digest(current())


def _digest(states: dict[str, Any]) -> bytes:
    return hashlib.sha256(pickle.dumps(states, protocol=5)).digest()
