"""Host providers: where the autoscaler's new hosts come from and where removed ones go.

The scheduling core only says how many hosts it wants (``ScaleOutRequested``) and which ones to take away
(``HostRemoved``); a provider turns that into machines. :mod:`.base` is the interface, :mod:`.local` the logical
hosts of the embedded cluster, :mod:`.docker` agent containers on a Docker host and :mod:`.kubernetes` agent pods
(imported on demand: they need the docker and kubernetes packages), :mod:`.factory` the choice from the service's
options.
"""

from .base import HostProvider, PendingHost, ProviderError
from .local import LocalProvider

__all__ = ["HostProvider", "LocalProvider", "PendingHost", "ProviderError"]
