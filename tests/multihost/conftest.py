"""Fixtures for multi-host tests: simulated machines made of network namespaces (see hosts.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .hosts import NetworkHosts, available


@pytest.fixture
def network_namespaces() -> None:
    """Skips the test, with the reason, where the harness cannot make namespaces (not root, tools missing...)."""
    reason = available()
    if reason is not None:
        pytest.skip(f"multi-host harness unavailable: {reason}")


@pytest.fixture
def make_hosts(network_namespaces: None) -> Iterator[Callable[[int], NetworkHosts]]:
    """Factory: ``make_hosts(count)`` builds a :class:`NetworkHosts`; all of them are torn down after the test.

    A factory rather than a ready instance because tests differ in how many hosts they need, and some tear an
    instance down themselves (closing is idempotent).
    """
    created: list[NetworkHosts] = []

    def make(count: int) -> NetworkHosts:
        created.append(NetworkHosts(count))
        return created[-1]

    yield make
    for hosts in created:
        hosts.close()
