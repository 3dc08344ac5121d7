"""The provider interface the live cluster scales with."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from ..host_agent import HostAgent


class ProviderError(RuntimeError):
    """The provider could not deliver or take away a host; the message says why and what to do."""


@dataclass(frozen=True)
class PendingHost:
    """A machine a provider is starting, whose ``notebookos agent`` will join the cluster over the network.

    ``name``: the host name its agent will join under, or None where the platform names it (a Kubernetes node):
    then the next agent that joins takes its place.
    """

    name: str | None
    gpus: int
    since: float


class HostProvider(ABC):
    """Creates and destroys hosts.

    A host is either ready at once, with a host agent in the cluster's process (logical hosts), or a machine whose
    agent joins later (a container, a pod): the cluster shows it ``starting`` until it does. ``add_host`` may take
    a while; the cluster calls it off its event loop. A provider that cannot deliver raises ProviderError, and the
    cluster tells the scheduling core, which stops counting the host as on its way.
    """

    max_hosts: int | None  # the most hosts this provider will run at once (None: no limit of its own)

    @abstractmethod
    def add_host(self, gpus: int) -> HostAgent | PendingHost:
        """A new, empty host with ``gpus`` GPUs: ready to start replicas, or on its way."""

    @abstractmethod
    def remove_host(self, host: Any) -> None:
        """Give back a host that holds no replica (a HostAgent, or the cluster's proxy of a joined agent)."""

    @abstractmethod
    def resize_host(self, host: Any, gpus: int) -> None:
        """Change a host's GPU count, where the provider can (logical hosts can; a VM cannot grow a GPU)."""
