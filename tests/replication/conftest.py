"""A real Redis server for the replication tests: Debian's redis-server on a free loopback port, one per session."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

_START_DEADLINE_S = 10.0
_START_ATTEMPTS = 3  # the free port we picked can be taken before redis-server binds it


@dataclass(frozen=True)
class RedisServer:
    """A running redis-server: where it listens, and a raw client for tests to inspect and break it."""

    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=5)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers_ping(port: int) -> bool:
    """Whether a Redis server answers PING on `port` (raw RESP, so this needs nothing but a socket)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _start(executable: str, directory: Path) -> tuple[subprocess.Popen, int]:
    """Start redis-server on a free port and wait until it answers PING; fail with its log if it does not."""
    log = directory / "redis.log"
    for _ in range(_START_ATTEMPTS):
        port = _free_loopback_port()
        command = [
            executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(directory), "--logfile", str(log), "--daemonize", "no",
        ]  # fmt: skip
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + _START_DEADLINE_S
        while time.monotonic() < deadline and process.poll() is None:
            if _answers_ping(port):
                return process, port
            time.sleep(0.05)
        if process.poll() is None:  # running but silent past the deadline
            _stop(process)
            break
    text = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log written)"
    pytest.fail(f"redis-server did not answer PING within {_START_DEADLINE_S} s on 127.0.0.1. Its log:\n{text}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """Debian's redis-server, without persistence, in a temporary directory; stopped at the end of the session."""
    executable = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists()
                                                    else None)  # fmt: skip
    if executable is None:
        pytest.skip("redis-server is not installed: install Debian's redis-server package (`make system-deps`)")
    directory = tmp_path_factory.mktemp("redis")
    process, port = _start(executable, directory)
    yield RedisServer(port, directory)
    _stop(process)


@pytest.fixture
def redis_client(redis_server):
    """A raw client on an emptied server; the server's memory settings are put back after the test."""
    client = redis_server.client()
    client.flushall()
    yield client
    client.config_set("maxmemory", "0")
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("proto-max-bulk-len", str(512 << 20))
    client.flushall()
    client.close()
