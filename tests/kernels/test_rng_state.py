"""The executor's view of the process-wide random generators: a cell that draws sends their states, one that
draws nothing sends none, and states set from the log are not sent back."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from notebookos.kernels import rng_state

DRAWS = {
    "random": lambda: random.random(),
    "numpy": lambda: np.random.rand(),
    "torch": lambda: torch.rand(1),
    # Legacy Gaussians come in pairs: the second draw takes the cached one and leaves the Mersenne Twister as it was.
    "numpy cached Gaussian": lambda: np.random.standard_normal(),
}


@pytest.fixture
def tracker() -> rng_state.ChangeTracker:
    np.random.seed(3)
    np.random.standard_normal()  # a Gaussian is now cached: the next one moves nothing but the cache
    tracker = rng_state.ChangeTracker()
    assert tracker.changed() is not None  # the first call knows no earlier states
    return tracker


def test_a_cell_that_draws_nothing_sends_nothing(tracker):
    assert tracker.changed() is None
    assert tracker.changed() is None


@pytest.mark.parametrize("draw", DRAWS.values(), ids=DRAWS.keys())
def test_every_draw_is_sent_once(tracker, draw):
    draw()
    states = tracker.changed()
    assert states is not None
    assert set(states) >= {"random", "numpy", "torch"}
    assert tracker.changed() is None


def test_states_set_from_the_log_are_not_sent_back(tracker):
    earlier = rng_state.current()
    random.random()
    np.random.rand()
    torch.rand(1)
    rng_state.restore(earlier)  # a standby applies the executor's states
    tracker.seen()
    assert tracker.changed() is None
    random.random()
    assert tracker.changed() is not None


def test_reseeding_to_the_same_state_sends_nothing(tracker):
    random.seed(5)
    tracker.changed()
    random.seed(5)
    assert tracker.changed() is None
