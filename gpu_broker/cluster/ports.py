"""Ports for replicas, from a range no other program on this machine picks its ports from.

A replica binds its five Jupyter ports and its Raft port only once its process has started, seconds after the
cluster chose them. Choosing with ``bind(("", 0))`` (the operating system's pick from its ephemeral range) is what
jupyter_client, ZeroMQ and most programs do too, so in between another process (a kernel front starting at the
same moment) could be handed the same port, and the replica would die with "Address already in use". The pool takes
ports below the ephemeral range instead (Linux: ``/proc/sys/net/ipv4/ip_local_port_range``), checks each is free
now, and never hands out a port twice while it is in use.

Across machines, each agent lends the cluster service its range when it joins, and the service hands out that
machine's ports itself (a pool that cannot probe them): a kernel's start then costs one round of agent calls, not
two. The agent checks the ports it is given when the replica starts (:meth:`PortPool.claim_free`), so a program of
its machine that took one meanwhile costs that start a second choice, never a replica that cannot bind.
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Iterable
from pathlib import Path

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_LOW = 20000  # the replicas' first port, unless the ephemeral range starts lower
FRONT_PORTS = 1000  # just below the replicas' ports, for the kernel fronts of this machine: 200 fronts' 5 ports


class PortsExhausted(RuntimeError):
    """Every port of the pool is in use; the message says which range and what to do."""


class PortsTaken(RuntimeError):
    """Ports chosen for a replica elsewhere (by the cluster service, from the range the agent lent it) are in use on
    the replica's machine; the message names them."""


def _unclaimed_ports() -> range:
    """Ports the operating system never hands out by itself: from FRONT_PORTS below DEFAULT_LOW up to the start of
    the ephemeral range; above that range where this leaves too few."""
    try:
        low, high = (int(v) for v in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    if low - DEFAULT_LOW >= 1000:
        return range(DEFAULT_LOW - FRONT_PORTS, low)
    return range(high + 1, 65536)


def default_range() -> range:
    """The replicas' ports: DEFAULT_LOW up to the ephemeral range (above it where that leaves too few)."""
    unclaimed = _unclaimed_ports()
    return range(unclaimed.start + FRONT_PORTS, unclaimed.stop)


def front_range() -> range:
    """The kernel fronts' ports (``kernels/provisioner.py``): the FRONT_PORTS ports below the replicas'. Outside the
    ephemeral range for the same reason, and apart from the replicas' so that a front and a replica started at the
    same moment (each pool checks a port is free when it hands it out, not when it is bound) never get the same."""
    unclaimed = _unclaimed_ports()
    return range(unclaimed.start, unclaimed.start + FRONT_PORTS)


class PortPool:
    """Ports of one network address: loopback for the embedded cluster, the machine's address for an agent.

    ``probe``: check with a bind that a port is free before handing it out. False for the ports of another machine
    (the range an agent lent the cluster service), which only that machine can check.
    ``spread``: start at a random port of the range, not its first: for a pool of another machine's ports (default),
    so that a restarted service does not first hand out the ports it handed out last (their replicas may still be
    stopping), and for one that other processes of this machine draw from too (kernel fronts of several Jupyter
    servers), so that they do not all try the same ports first."""

    def __init__(
        self, ports: range | None = None, address: str = "127.0.0.1", probe: bool = True, spread: bool | None = None
    ) -> None:
        self.ports = ports or default_range()
        self.address = address
        self.probe = probe
        self._in_use: set[int] = set()
        if spread is None:
            spread = not probe
        self._next = random.choice(self.ports) if spread else self.ports.start
        self._lock = threading.Lock()

    def take(self) -> int:
        """A port that is free now and not handed out before (until released)."""
        with self._lock:
            for _ in range(len(self.ports)):
                port = self._next
                self._next = port + 1 if port + 1 < self.ports.stop else self.ports.start
                if port not in self._in_use and (not self.probe or is_free(port, self.address)):
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

    def claim_free(self, ports: set[int]) -> None:
        """Mark ports chosen elsewhere as in use, once each is checked free here; PortsTaken names those that are
        not (handed out already, or held by another program), and then none is claimed."""
        with self._lock:
            busy = sorted(p for p in ports if p in self._in_use or not is_free(p, self.address))
            if busy:
                raise PortsTaken(
                    f"port(s) {', '.join(map(str, busy))} on {self.address} are in use: the cluster service chose "
                    "them from the range this agent lent it, so another program of this machine binds ports in that "
                    "range (the service chooses again; should it recur, keep other programs out of the range)"
                )
            self._in_use |= ports

    def release(self, ports: Iterable[int]) -> None:
        with self._lock:
            self._in_use.difference_update(ports)


class KernelPorts:
    """The ports each kernel's replicas hold on one host, from that host's pool: a kernel stopping there, or one of
    its replicas leaving, frees exactly its own."""

    def __init__(self, pool: PortPool) -> None:
        self.pool = pool
        self._held: dict[str, set[int]] = {}

    def take(self, kernel_id: str, count: int) -> list[int]:
        """``count`` free ports for a replica of the kernel about to start here."""
        ports = [self.pool.take() for _ in range(count)]
        self._held.setdefault(kernel_id, set()).update(ports)
        return ports

    def hold(self, kernel_id: str, ports: set[int], check: bool = False) -> None:
        """Ports of the kernel's replica that were not taken here: chosen by the cluster service (``check``: see
        that they are free first, :meth:`PortPool.claim_free`), or those of a replica already running (adopted,
        restored, moved here)."""
        new = ports - self._held.get(kernel_id, set())
        if check:
            self.pool.claim_free(new)
        else:
            self.pool.claim(new)
        self._held.setdefault(kernel_id, set()).update(new)

    def free(self, kernel_id: str, ports: set[int] | None = None) -> None:
        """Give back the kernel's ports here: those of one replica, or (None) all of them."""
        held = self._held.get(kernel_id, set())
        freed = held if ports is None else held & ports
        self.pool.release(freed)
        held -= freed
        if not held:
            self._held.pop(kernel_id, None)

    def kernels(self) -> set[str]:
        """Kernels holding ports here."""
        return set(self._held)


def is_free(port: int, address: str = "127.0.0.1") -> bool:
    """Nothing listens on (or holds) the port on ``address`` now. Checked as a replica's listeners bind (ZeroMQ,
    tornado and pysyncobj all set SO_REUSEADDR), so a port whose last connections linger in TIME_WAIT, which they
    bind without trouble, counts as free."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True
