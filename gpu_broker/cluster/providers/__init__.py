"""Host providers: where the autoscaler's new hosts come from and where removed ones go.

The scheduling core only says how many hosts it wants (``ScaleOutRequested``) and which ones to take away
(``HostRemoved``); a provider turns that into machines. :mod:`.base` is the interface, :mod:`.local` the logical
hosts of the embedded cluster. Docker and Kubernetes providers implement the same interface.
"""
from .base import HostProvider, ProviderError
from .local import LocalProvider

__all__ = ["HostProvider", "LocalProvider", "ProviderError"]
