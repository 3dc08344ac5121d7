"""The provider interface the live cluster scales with."""
from __future__ import annotations

from abc import ABC, abstractmethod

from ..host_agent import HostAgent


class ProviderError(RuntimeError):
    """The provider could not deliver or take away a host; the message says why and what to do."""


class HostProvider(ABC):
    """Creates and destroys hosts, each with a host agent that starts replicas on it.

    ``add_host`` may take minutes on a cloud (a VM boots, an agent registers); the cluster calls it off its event
    loop. A provider that cannot deliver raises ProviderError, and the cluster tells the scheduling core, which
    stops counting the host as on its way.
    """

    max_hosts: int | None  # the most hosts this provider will run at once (None: no limit of its own)

    @abstractmethod
    def add_host(self, gpus: int) -> HostAgent:
        """A new, empty host with ``gpus`` GPUs, ready to start replicas."""

    @abstractmethod
    def remove_host(self, agent: HostAgent) -> None:
        """Give back a host that holds no replica."""

    @abstractmethod
    def resize_host(self, agent: HostAgent, gpus: int) -> None:
        """Change a host's GPU count, where the provider can (logical hosts can; a VM cannot grow a GPU)."""
