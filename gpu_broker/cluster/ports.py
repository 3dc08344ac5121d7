"""Ports for replicas, from a range no other program on this machine picks its ports from.

A replica binds its five Jupyter ports and its Raft port only once its process has started, seconds after the
cluster chose them. Choosing with ``bind(("", 0))`` (the operating system's pick from its ephemeral range) is what
jupyter_client, ZeroMQ and most programs do too, so in between another process (a kernel front starting at the
same moment) could be handed the same port, and the replica would die with "Address already in use". The pool takes
ports below the ephemeral range instead (Linux: ``/proc/sys/net/ipv4/ip_local_port_range``), checks each is free
now, and never hands out a port twice while it is in use.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_LOW = 20000  # the pool's first port, unless the ephemeral range starts lower


class PortsExhausted(RuntimeError):
    """Every port of the pool is in use; the message says which range and what to do."""


def default_range() -> range:
    """Ports between DEFAULT_LOW and the start of the ephemeral range; above it where that leaves too few."""
    try:
        low, high = (int(v) for v in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    if low - DEFAULT_LOW >= 1000:
        return range(DEFAULT_LOW, low)
    return range(high + 1, 65536)


class PortPool:
    """Ports of one network address: loopback for the embedded cluster, the machine's address for an agent."""

    def __init__(self, ports: range | None = None, address: str = "127.0.0.1") -> None:
        self.ports = ports or default_range()
        self.address = address
        self._in_use: set[int] = set()
        self._next = self.ports.start
        self._lock = threading.Lock()

    def take(self) -> int:
        """A port that is free now and not handed out before (until released)."""
        with self._lock:
            for _ in range(len(self.ports)):
                port = self._next
                self._next = port + 1 if port + 1 < self.ports.stop else self.ports.start
                if port not in self._in_use and is_free(port, self.address):
                    self._in_use.add(port)
                    return port
        raise PortsExhausted(
            f"every port from {self.ports.start} to {self.ports.stop - 1} is in use; stop kernels "
            "or give the cluster a larger range"
        )

    def claim(self, ports: set[int]) -> None:
        """Mark ports as in use that were handed out before this pool existed (replicas an agent re-adopts)."""
        with self._lock:
            self._in_use |= ports

    def release(self, ports: set[int]) -> None:
        with self._lock:
            self._in_use -= ports


def is_free(port: int, address: str = "127.0.0.1") -> bool:
    """Nothing listens on (or holds) the port on ``address`` now."""
    with socket.socket() as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True
