"""Several "machines" on one Linux box, made of network namespaces, for multi-host cluster tests.

A multi-host notebookos cluster (an agent daemon per host, kernel replicas talking Raft over TCP between hosts) has
failure modes a single-process test cannot show: a host that vanishes with its disk, a partition that heals, a
daemon that binds the wrong address. :class:`NetworkHosts` gives each simulated host what a real one has and the
others lack:

* its own network stack (a network namespace) with its own IPv4 address, wired to the others through a Linux
  bridge in the root namespace; the bridge's own address (:attr:`NetworkHosts.cluster_address`) is where a service
  running in the root namespace (the test process, a scheduler) listens so that every host can reach it;
* its own disk: a tmpfs mounted on :attr:`Host.state_dir` inside a private mount namespace, visible to every
  process of that host and to nothing else (not the other hosts, not the root namespace);
* a power switch (:meth:`NetworkHosts.kill_host`) and a network cable (:meth:`NetworkHosts.link_down` and
  :meth:`NetworkHosts.link_up`).

Everything this module creates is named with :data:`PREFIX` plus a random per-instance id, so two test sessions can
run side by side, and is recorded by a marker file under :data:`MARKER_DIR` naming the creating process, so that a
session killed before its teardown is cleaned up by the next one (:func:`remove_stale`).

Needs root, ``ip`` (iproute2), ``unshare`` and ``nsenter`` (util-linux): :func:`available` says whether the harness
can work here, as a reason for ``pytest.skip`` when it cannot.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import json
import os
import random
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

PREFIX = "nbmh"
"""Start of the name of every namespace, interface and temp dir of this harness (Linux caps interface names at
15 characters: the prefix, a 6-hex-digit instance id and a short suffix fit)."""

MARKER_DIR = Path("/run/notebookos-multihost")
"""One ``<instance id>.json`` per live instance (creator pid and start time, temp dir) plus the lock file. Under
/run because /run, like the namespaces, does not survive a reboot."""

MAX_HOSTS = 250
"""Hosts take addresses .2 to .251 of the instance's /24 (.1 is the bridge)."""

_TIMEOUT = 10.0
"""Bound on every wait of the harness (a holder getting ready, killed processes disappearing)."""

_HOLDER_SCRIPT = 'mount -t tmpfs -o mode=0755 tmpfs "$1" && cd "$1" && echo ready && exec sleep infinity'
"""Run by the per-host holder: mount the host's disk, start in it (so that ``nsenter --wd`` puts every later
process of the host there), say so, then only keep the mount namespace alive."""


@dataclass(frozen=True)
class Host:
    """One simulated machine.

    ``name`` is for people ("host-1"); ``netns`` is the network namespace (``ip netns exec``, ``ip -n``); ``address``
    is the host's only non-loopback IPv4 address, on its ``eth0``; ``veth`` is the root-namespace end of its cable to
    the bridge (down means unplugged); ``state_dir`` is its private disk, empty in the root namespace.
    """

    name: str
    netns: str
    address: str
    veth: str
    state_dir: Path


def available() -> str | None:
    """None when the harness can work here, else a human reason (for ``pytest.skip``). Probes once per process."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "creating network namespaces and mounts needs root"
    missing = [tool for tool in ("ip", "unshare", "nsenter", "mount", "sleep", "sh") if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    return _probe()


@functools.cache
def _probe() -> str | None:
    """Try, in a throwaway namespace, everything the harness does: a netns, a bridge, a veth pair, a private tmpfs.

    The probe's name deliberately lacks :data:`PREFIX`, so a concurrent :func:`remove_stale` never takes it for a leak.
    """
    netns = f"nbprobe{os.getpid()}"
    script = 'ip link add b0 type bridge && ip link add v0 type veth peer name v1 && mount -t tmpfs tmpfs "$1"'
    with tempfile.TemporaryDirectory() as mountpoint:
        try:
            _ip("netns", "add", netns)
            probe = ["ip", "netns", "exec", netns, "unshare", "--mount", "--propagation", "slave"]
            subprocess.run([*probe, "sh", "-c", script, "sh", mountpoint], check=True, capture_output=True, text=True)
        except (RuntimeError, subprocess.CalledProcessError) as error:
            detail = error.stderr.strip() if isinstance(error, subprocess.CalledProcessError) else str(error)
            return f"network namespaces are not usable here: {detail}"
        finally:
            _ip("netns", "del", netns, check=False)
    return None


def remove_stale() -> None:
    """Delete what instances of this harness left behind when their process died before teardown.

    An instance writes its marker before creating anything and removes it after deleting everything, so a
    namespace or interface with :data:`PREFIX` whose instance has no marker of a live process is a leak.
    """
    with _lock():
        _remove_stale_locked()


class NetworkHosts:
    """``count`` hosts on one bridge; a context manager whose exit kills their processes and deletes everything.

    Setup that fails halfway undoes itself before raising. Names: the bridge is ``<prefix>br`` and host *i* (from 1)
    uses ``<prefix>h<i>`` for both its namespace and its root-side veth, where ``<prefix>`` is :attr:`prefix`.
    """

    def __init__(self, count: int) -> None:
        if not 1 <= count <= MAX_HOSTS:
            raise ValueError(f"count must be between 1 and {MAX_HOSTS}, not {count}")
        self.hosts: tuple[Host, ...] = ()
        self.cluster_address = ""
        self._id: str | None = None
        self._tmpdir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
        self._holders: dict[str, subprocess.Popen[bytes]] = {}
        self._spawned: dict[str, list[subprocess.Popen[bytes]]] = {}
        self._closed = False
        try:
            subnet = self._claim()
            self.hosts = tuple(self._add_host(index, subnet) for index in range(1, count + 1))
        except BaseException:
            self.close()
            raise

    @property
    def prefix(self) -> str:
        """Start of the name of every namespace and interface of this instance (and only of this instance)."""
        return f"{PREFIX}{self._id}"

    def __enter__(self) -> NetworkHosts:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def spawn(
        self,
        host: Host,
        argv: Sequence[str | os.PathLike[str]],
        env: dict[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` on ``host``: in its network namespace and its mount namespace, in ``host.state_dir``.

        The process is the returned Popen's pid itself (``nsenter`` execs, it does not fork), in a session of its own
        so a test can signal it and its children. stdin is /dev/null; stdout and stderr are appended to ``log_path``
        (opened here, in the root namespace) when given, else inherited. ``env`` replaces the environment, as in Popen.
        """
        holder = self._holder(host)
        # --wd without a value: the holder's working directory, i.e. the host's tmpfs. A path given to --wd is
        # opened before nsenter enters the mount namespace, so it would be the directory *under* the tmpfs.
        command = ["nsenter", f"--target={holder.pid}", "--net", "--mount", "--wd", "--", *map(os.fspath, argv)]
        log = open(log_path, "ab") if log_path is not None else None
        try:
            proc = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        finally:
            if log is not None:
                log.close()
        self._spawned.setdefault(host.name, []).append(proc)
        return proc

    def pids(self, host: Host) -> list[int]:
        """Live processes on ``host`` (anything in its network namespace), without the harness's own holder."""
        holder = self._holders.get(host.name)
        return [pid for pid in _netns_pids(host.netns) if holder is None or pid != holder.pid]

    def host_of_pid(self, pid: int) -> Host | None:
        """The host whose network namespace ``pid`` lives in; None for the root namespace or a process that is gone."""
        result = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True)
        return next((host for host in self.hosts if host.netns == result.stdout.strip()), None)

    def disk(self, host: Host) -> Path | None:
        """``host``'s private disk as the root namespace can read it (through its holder's mount namespace, e.g. to
        keep its processes' logs), or None while the host is powered off."""
        holder = self._holders.get(host.name)
        if holder is None or holder.poll() is not None:
            return None
        return Path(f"/proc/{holder.pid}/root{host.state_dir}")

    def link_down(self, host: Host) -> None:
        """Unplug ``host``'s cable: a partition. Its processes keep running; packets to and from it are lost."""
        _ip("link", "set", host.veth, "down")

    def link_up(self, host: Host) -> None:
        """Plug ``host``'s cable back in: the partition heals (the bridge forwards at once: STP is off)."""
        _ip("link", "set", host.veth, "up")

    def limit_disk(self, host: Host, free_mb: int | None) -> None:
        """Resize ``host``'s disk (its tmpfs) to what it holds now plus ``free_mb``, as a disk filling up leaves;
        None: back to the default size (half the memory)."""
        size = f"$(( $(df -k --output=used . | tail -1) + {free_mb * 1024} ))k" if free_mb is not None else "50%"
        proc = self.spawn(host, ["sh", "-c", f"mount -o remount,size={size} ."])
        if proc.wait(30) != 0:
            raise RuntimeError(f"could not resize the disk of {host.name} (exit status {proc.returncode})")

    def kill_host(self, host: Host) -> None:
        """Lose ``host`` as to a power cut: its link goes down, then every process on it (holder included) is
        SIGKILLed and waited for, and its disk (the tmpfs) is gone.

        The link goes down first so that peers hear nothing from the dying sockets (no FIN, no RST), as with a real
        power loss. A later :meth:`spawn` on the host starts a replacement machine with an empty disk; its link
        stays down until :meth:`link_up`.
        """
        self.link_down(host)
        _kill_netns(host.netns)
        self._reap(host)

    def close(self) -> None:
        """Kill every process on every host and delete the namespaces, interfaces, temp dir and marker. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._id is None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            return
        _remove_instance(self._id, self._tmpdir)
        for host in self.hosts:
            self._reap(host)

    @property
    def _bridge(self) -> str:
        return f"{self.prefix}br"

    def _claim(self) -> ipaddress.IPv4Network:
        """Under the lock, so concurrent sessions pick distinct subnets: clean up leaks, write this instance's
        marker, then create the bridge on a free /24 and return it."""
        with _lock():
            _remove_stale_locked()
            self._id = _write_marker(self._tmpdir)
            subnet = _free_subnet()
            bridge_address = subnet.network_address + 1
            _ip("link", "add", self._bridge, "type", "bridge", "forward_delay", "0")
            _ip("addr", "add", f"{bridge_address}/{subnet.prefixlen}", "dev", self._bridge)
            _ip("link", "set", self._bridge, "up")
        self.cluster_address = str(bridge_address)
        return subnet

    def _add_host(self, index: int, subnet: ipaddress.IPv4Network) -> Host:
        """Namespace, veth pair (``eth0`` inside, enslaved end outside), address, and an empty state dir."""
        name = f"{self.prefix}h{index}"
        address = str(subnet.network_address + 1 + index)
        _ip("netns", "add", name)
        _ip("link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", name)
        _ip("link", "set", name, "master", self._bridge, "up")
        _ip("-n", name, "addr", "add", f"{address}/{subnet.prefixlen}", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        _ip("-n", name, "link", "set", "lo", "up")
        state_dir = self._tmpdir / f"host-{index}"
        state_dir.mkdir()
        return Host(name=f"host-{index}", netns=name, address=address, veth=name, state_dir=state_dir)

    def _holder(self, host: Host) -> subprocess.Popen[bytes]:
        """The live holder of ``host``'s mount namespace, started on first use (or after :meth:`kill_host`).

        Every ``unshare --mount`` would mount a fresh, empty tmpfs; the processes of one host must share one disk,
        so a long-lived ``sleep`` owns the mount namespace and every process of the host enters it.
        """
        holder = self._holders.get(host.name)
        if holder is None or holder.poll() is not None:
            holder = _start_holder(host)
            self._holders[host.name] = holder
        return holder

    def _reap(self, host: Host) -> None:
        """Collect the exit status of this instance's children on ``host``, all already killed."""
        for proc in [self._holders.pop(host.name, None), *self._spawned.pop(host.name, [])]:
            if proc is not None:
                proc.wait(_TIMEOUT)


def _start_holder(host: Host) -> subprocess.Popen[bytes]:
    """Start the process owning ``host``'s mount namespace and wait until its tmpfs is mounted.

    ``ip netns exec`` already unshares a mount namespace (to remount /sys for the netns) and execs; ``unshare``
    makes ours, ``sh`` mounts and execs ``sleep``: one pid throughout. Slave propagation: nothing mounted here leaks
    out, while unmounts in the root namespace (``ip netns del`` of another host) still reach this copy, so it never
    pins another host's namespace.
    """
    unshare = ["unshare", "--mount", "--propagation", "slave", "sh", "-c", _HOLDER_SCRIPT, "sh", str(host.state_dir)]
    holder = subprocess.Popen(
        ["ip", "netns", "exec", host.netns, *unshare],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert holder.stdout is not None and holder.stderr is not None
    with holder.stdout, holder.stderr:
        if _read_line(holder.stdout, _TIMEOUT) == b"ready\n":
            return holder
        holder.kill()
        holder.wait(_TIMEOUT)
        raise RuntimeError(f"could not give {host.name} its disk: {holder.stderr.read().decode().strip()}")


def _read_line(stream: IO[bytes], timeout: float) -> bytes:
    """One line from a pipe, or b"" if none comes within ``timeout`` seconds."""
    readable, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if readable else b""


def _ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS``; its stdout. Failures raise RuntimeError with ip's message unless ``check`` is false."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _netns_pids(netns: str) -> list[int]:
    """Processes in ``netns``; zombies are not listed (an exited process has left its namespaces)."""
    return [int(pid) for pid in _ip("netns", "pids", netns).split()]


def _kill_netns(netns: str) -> None:
    """SIGKILL everything in ``netns`` until nothing is left (repeatedly: a process may fork while we kill)."""
    deadline = time.monotonic() + _TIMEOUT
    while pids := _netns_pids(netns):
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes {pids} in {netns} survive SIGKILL")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _remove_instance(instance_id: str, tmpdir: Path | None) -> None:
    """Kill the processes of an instance's namespaces and delete its namespaces, interfaces, temp dir and marker.

    The marker goes last: until then a concurrent :func:`remove_stale` leaves the rest alone. Interfaces go before
    namespaces: ``ip link del`` of a root-side veth removes the pair at once, whereas a deleted namespace is torn
    down asynchronously and its veths would linger in ``ip link`` for a moment after we return.
    """
    prefix = f"{PREFIX}{instance_id}"
    namespaces = _names(_ip("-j", "netns", "list"), "name", prefix)
    for netns in namespaces:
        _kill_netns(netns)
    for link in _names(_ip("-j", "link", "show"), "ifname", prefix):
        _ip("link", "del", link, check=False)
    for netns in namespaces:
        _ip("netns", "del", netns, check=False)
    if tmpdir is not None:
        shutil.rmtree(tmpdir, ignore_errors=True)
    _marker(instance_id).unlink(missing_ok=True)


def _remove_stale_locked() -> None:
    """:func:`remove_stale`, for a caller holding the lock."""
    live = set()
    stale: dict[str, Path | None] = {}
    for marker in MARKER_DIR.glob("*.json"):
        info = _read_marker(marker)
        if info is not None and _start_time(info["pid"]) == info["start"]:
            live.add(marker.stem)
        else:
            stale[marker.stem] = Path(info["tmpdir"]) if info is not None else None
    names = _names(_ip("-j", "netns", "list"), "name", PREFIX) + _names(_ip("-j", "link", "show"), "ifname", PREFIX)
    orphans = {name[len(PREFIX) : len(PREFIX) + 6] for name in names} - live - stale.keys()
    for instance_id, tmpdir in [*stale.items(), *((orphan, None) for orphan in orphans)]:
        _remove_instance(instance_id, tmpdir)


def _names(ip_json: str, key: str, prefix: str) -> list[str]:
    """Names starting with ``prefix`` in ``ip -j`` output (which is empty, not ``[]``, when there is nothing)."""
    return [entry[key] for entry in json.loads(ip_json or "[]") if entry.get(key, "").startswith(prefix)]


def _free_subnet() -> ipaddress.IPv4Network:
    """A random 10.A.B.0/24 (A in 200..250) overlapping no route and no address of the root namespace."""
    taken = _used_networks()
    for _ in range(1000):
        candidate = ipaddress.IPv4Network(f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24")
        if not any(candidate.overlaps(network) for network in taken):
            return candidate
    raise RuntimeError("no free 10.200-250.x.0/24 subnet")


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Destinations of all IPv4 routes (every table; the default route excluded) and the networks of all addresses."""
    routes = json.loads(_ip("-j", "-4", "route", "show", "table", "all") or "[]")
    addresses = json.loads(_ip("-j", "-4", "addr", "show") or "[]")
    networks = [route["dst"] for route in routes if route.get("dst", "default") != "default"]
    networks += [f"{info['local']}/{info['prefixlen']}" for link in addresses for info in link.get("addr_info", [])]
    return [ipaddress.IPv4Network(network, strict=False) for network in networks]


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """Exclusive across processes: stale-cleanup, subnet choice and bridge creation of concurrent sessions."""
    MARKER_DIR.mkdir(parents=True, exist_ok=True)
    with open(MARKER_DIR / "lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


def _marker(instance_id: str) -> Path:
    return MARKER_DIR / f"{instance_id}.json"


def _write_marker(tmpdir: Path) -> str:
    """Claim a fresh instance id by creating its marker (exclusively); the id."""
    while True:
        instance_id = secrets.token_hex(3)
        with contextlib.suppress(FileExistsError), open(_marker(instance_id), "x") as marker:
            json.dump({"pid": os.getpid(), "start": _start_time(os.getpid()), "tmpdir": str(tmpdir)}, marker)
            return instance_id


def _read_marker(marker: Path) -> dict | None:
    """A marker's content, or None when it is unreadable or incomplete (then its instance counts as dead)."""
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and {"pid", "start", "tmpdir"} <= info.keys() else None


def _start_time(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot), which tells a live creator from a recycled pid; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which may itself contain spaces and parentheses; starttime is field 22.
    return stat.rsplit(")", 1)[1].split()[19]
