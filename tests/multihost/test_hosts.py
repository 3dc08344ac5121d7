"""Tests of the multi-host harness itself: addresses, private disks, partitions, host loss, teardown.

Helper processes are small ``python -c`` scripts run with this interpreter; they report on stdout, which the
harness appends to a log file in the test's tmp_path. Traffic goes only to addresses of namespaces the test made.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from . import hosts as hosts_module
from .hosts import MARKER_DIR, PREFIX, Host, NetworkHosts, remove_stale

PORT = 7000
WAIT = 10.0

SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        conn.sendall(sys.argv[3].encode())
"""

CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as conn:
        print("reply", conn.recv(64).decode())
except OSError as error:
    print("failed", type(error).__name__)
"""

BIND = """
import errno, socket, sys
with socket.socket() as sock:
    try:
        sock.bind((sys.argv[1], 0))
        print("bound")
    except OSError as error:
        print(errno.errorcode[error.errno])
"""

WRITE = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text(sys.argv[2])"
READ = "import pathlib, sys; p = pathlib.Path(sys.argv[1]); print(p.read_text() if p.exists() else 'absent')"
SLEEP = "import time; time.sleep(600)"


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until true; fail after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def new_log(tmp_path: Path) -> Path:
    fd, path = tempfile.mkstemp(dir=tmp_path, suffix=".log")
    os.close(fd)
    return Path(path)


def start(net: NetworkHosts, host: Host, tmp_path: Path, script: str, *args: str) -> tuple[subprocess.Popen, Path]:
    log = new_log(tmp_path)
    return net.spawn(host, [sys.executable, "-c", script, *args], log_path=log), log


def run_on(net: NetworkHosts, host: Host, tmp_path: Path, script: str, *args: str) -> str:
    """Run a script on ``host`` to completion; its output, stripped."""
    proc, log = start(net, host, tmp_path, script, *args)
    assert proc.wait(WAIT) == 0, log.read_text()
    return log.read_text().strip()


def start_server(net: NetworkHosts, host: Host, tmp_path: Path) -> subprocess.Popen:
    """A TCP server on ``host``'s address that answers every connection with the host's name."""
    proc, log = start(net, host, tmp_path, SERVER, host.address, str(PORT), host.name)
    wait_until(lambda: "listening" in log.read_text() or proc.poll() is not None, f"server on {host.name}")
    assert proc.poll() is None, log.read_text()
    return proc


def connect_from_root(address: str, timeout: float) -> str:
    """What a client in the root namespace gets: the server's reply, or "failed"."""
    try:
        with socket.create_connection((address, PORT), timeout=timeout) as conn:
            return conn.recv(64).decode()
    except OSError:
        return "failed"


def names_in_use(prefix: str) -> list[str]:
    """Namespaces and interfaces of the root namespace whose name starts with ``prefix``."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    names = [line.split()[0] for line in netns.splitlines() if line.strip()]
    names += [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()]
    return [name for name in names if name.startswith(prefix)]


def test_each_host_has_its_own_address_reachable_from_hosts_and_root(make_hosts, tmp_path):
    net = make_hosts(2)
    host1, host2 = net.hosts
    start_server(net, host1, tmp_path)

    assert run_on(net, host2, tmp_path, CONNECT, host1.address, str(PORT), "5") == "reply host-1"
    assert connect_from_root(host1.address, 5) == "host-1"
    assert run_on(net, host2, tmp_path, BIND, host1.address) == "EADDRNOTAVAIL"
    assert run_on(net, host2, tmp_path, BIND, host2.address) == "bound"


def test_hosts_reach_a_service_on_the_cluster_address(make_hosts, tmp_path):
    net = make_hosts(1)
    (host,) = net.hosts
    with socket.create_server((net.cluster_address, 0)) as server:
        server.settimeout(WAIT)
        client, log = start(net, host, tmp_path, CONNECT, net.cluster_address, str(server.getsockname()[1]), "5")
        conn, (peer, _) = server.accept()
        with conn:
            conn.sendall(b"root")
    assert client.wait(WAIT) == 0
    assert log.read_text().strip() == "reply root"
    assert peer == host.address


def test_state_dir_is_shared_by_a_host_and_private_to_it(make_hosts, tmp_path):
    net = make_hosts(2)
    host1, host2 = net.hosts
    note = host1.state_dir / "note"

    run_on(net, host1, tmp_path, WRITE, str(note), "from host-1")  # this process exits before the reader starts

    assert run_on(net, host1, tmp_path, READ, str(note)) == "from host-1"
    assert run_on(net, host2, tmp_path, READ, str(note)) == "absent"
    assert not note.exists()  # the root namespace sees the empty directory under the tmpfs


def test_link_down_partitions_a_host_and_link_up_heals_it(make_hosts, tmp_path):
    net = make_hosts(2)
    host1, host2 = net.hosts
    server = start_server(net, host1, tmp_path)

    net.link_down(host1)
    assert run_on(net, host2, tmp_path, CONNECT, host1.address, str(PORT), "0.5").startswith("failed")
    assert connect_from_root(host1.address, 0.5) == "failed"
    assert server.poll() is None

    net.link_up(host1)
    assert run_on(net, host2, tmp_path, CONNECT, host1.address, str(PORT), "5") == "reply host-1"
    assert connect_from_root(host1.address, 5) == "host-1"


def test_kill_host_kills_everything_on_it_and_nothing_else(make_hosts, tmp_path):
    net = make_hosts(2)
    host1, host2 = net.hosts
    server1 = start_server(net, host1, tmp_path)
    sleeper1, _ = start(net, host1, tmp_path, SLEEP)
    server2 = start_server(net, host2, tmp_path)
    assert net.host_of_pid(server1.pid) == host1
    assert net.host_of_pid(os.getpid()) is None
    assert sorted(net.pids(host1)) == sorted([server1.pid, sleeper1.pid])

    net.kill_host(host1)

    assert subprocess.run(["ip", "netns", "pids", host1.netns], capture_output=True, text=True).stdout == ""
    assert net.pids(host1) == []
    assert server1.returncode == sleeper1.returncode == -signal.SIGKILL
    assert connect_from_root(host1.address, 0.5) == "failed"
    assert server2.poll() is None
    assert connect_from_root(host2.address, 5) == "host-2"


def test_a_killed_host_comes_back_as_a_new_machine_with_an_empty_disk(make_hosts, tmp_path):
    net = make_hosts(1)
    (host,) = net.hosts
    note = host.state_dir / "note"
    run_on(net, host, tmp_path, WRITE, str(note), "before the crash")

    net.kill_host(host)
    net.link_up(host)

    assert run_on(net, host, tmp_path, READ, str(note)) == "absent"
    start_server(net, host, tmp_path)
    assert connect_from_root(host.address, 5) == "host-1"


def test_close_removes_namespaces_interfaces_and_files_of_its_instance_only(make_hosts, tmp_path):
    net, other = make_hosts(2), make_hosts(1)
    assert net.prefix != other.prefix and net.cluster_address != other.cluster_address
    sleepers = [start(net, host, tmp_path, SLEEP)[0] for host in net.hosts]
    instance_id = net.prefix.removeprefix(PREFIX)
    tmpdir = net.hosts[0].state_dir.parent
    assert len(names_in_use(net.prefix)) == 5  # 2 namespaces, 2 veths, 1 bridge

    net.close()
    net.close()

    assert names_in_use(net.prefix) == []
    assert all(sleeper.returncode == -signal.SIGKILL for sleeper in sleepers)
    assert not tmpdir.exists()
    assert not (MARKER_DIR / f"{instance_id}.json").exists()
    assert len(names_in_use(other.prefix)) == 3
    start_server(other, other.hosts[0], tmp_path)
    assert connect_from_root(other.hosts[0].address, 5) == "host-1"


def test_remove_stale_cleans_up_after_a_session_that_died(network_namespaces):
    leaker = f"""
import os, sys
sys.path.insert(0, {str(Path(hosts_module.__file__).parent)!r})
import hosts
net = hosts.NetworkHosts(2)
net.spawn(net.hosts[0], ["sleep", "600"], log_path=os.devnull)
print(net.prefix, net.hosts[0].state_dir.parent, flush=True)
os._exit(0)  # dies without teardown
"""
    result = subprocess.run([sys.executable, "-c", leaker], capture_output=True, text=True, timeout=WAIT, check=True)
    prefix, tmpdir = result.stdout.split()
    assert len(names_in_use(prefix)) == 5

    remove_stale()

    assert names_in_use(prefix) == []
    assert not Path(tmpdir).exists()
