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

import importlib
import operator
import random
import sys
from collections.abc import Callable
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
    that draws nothing adds nothing to its delta (the states weigh about 10 KB).

    The last states are kept and compared with the current ones value by value: pickling them and hashing the
    pickle, as this did before, cost more than reading them (0.1 ms of every cell with ``random`` alone)."""

    def __init__(self) -> None:
        self._last: dict[str, Any] = {}

    def changed(self) -> dict[str, Any] | None:
        """The current states if they differ from the last ones seen, else None."""
        states = current()
        if _same(states, self._last):
            return None
        self._last = states
        return states

    def seen(self) -> None:
        """The generators were just set here from the log: their states are the last ones seen."""
        self._last = current()


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two results of :func:`current` hold the same states."""
    return a.keys() == b.keys() and all(_SAME[name](state, b[name]) for name, state in a.items())


def _same_numpy(a: tuple, b: tuple) -> bool:
    """numpy's legacy state: ``('MT19937', key array, position, has_gauss, cached_gaussian)``. The last two change
    alone when a draw takes the Gaussian cached by the previous one."""
    return a[0] == b[0] and a[2:] == b[2:] and bool(sys.modules["numpy"].array_equal(a[1], b[1]))


def _same_tensor(a: Any, b: Any) -> bool:
    return bool(sys.modules["torch"].equal(a, b))


def _same_tensors(a: list, b: list) -> bool:
    return len(a) == len(b) and all(map(_same_tensor, a, b))


# How to compare each generator's state in what current() returns (``==`` on arrays and tensors is elementwise).
_SAME: dict[str, Callable[[Any, Any], bool]] = {
    "random": operator.eq,
    "numpy": _same_numpy,
    "torch": _same_tensor,
    "torch.cuda": _same_tensors,
}
