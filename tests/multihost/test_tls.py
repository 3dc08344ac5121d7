"""TLS across machines: a cluster service started with ``--tls-auto`` makes a CA, pins it in the join token file,
and serves https; agents on three machines (network namespaces) given that file trust that CA alone, serve their
own API over https, and a kernel runs on them. An agent whose token pins another CA is refused before it sends its
token; a plain-HTTP request to the service gets no answer.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.manager import start_new_kernel

from notebookos.gpu_broker.cluster.client import CLUSTER_FILE_ENV
from notebookos.gpu_broker.cluster.join_token import read_token
from notebookos.gpu_broker.cluster.launcher import start_cluster, stop_cluster
from notebookos.gpu_broker.cluster.tls import fingerprint

from ..kernels.driver import Notebook, wait_until
from .hosts import Host, NetworkHosts, available

DEADLINE_S = 60.0


class TLSPool:
    def __init__(self, hosts: NetworkHosts, state: Path, discovery: Path) -> None:
        self.hosts, self.state, self.discovery = hosts, state, discovery
        data = json.loads(discovery.read_text())
        self.url, self.token, self.ca_pem = data["url"], data["token"], data["ca_pem"]

    def get(self, path: str) -> dict:
        """A verified https request with the service's token, trusting its CA alone."""
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10, context=ssl.create_default_context(cadata=self.ca_pem)) as r:
            return json.loads(r.read())

    def start_agent(self, host: Host, token_file: Path) -> subprocess.Popen:
        argv = [
            sys.executable,
            "-m",
            "notebookos.server_extension.cli",
            "agent",
            "--join",
            self.url,
            "--join-token-file",
            str(token_file),
            "--name",
            host.name,
            "--address",
            host.address,
            "--gpus",
            "1",
            "--state-dir",
            str(host.state_dir / "agent"),
        ]
        return self.hosts.spawn(host, argv, log_path=self.state / f"agent-{host.name}.log")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, jupyter_env: Path) -> Iterator[TLSPool]:
    reason = available()
    if reason is not None:
        pytest.skip(f"multi-host tests need network namespaces: {reason}")
    state = tmp_path_factory.mktemp("tls-cluster")
    with NetworkHosts(3) as hosts, pytest.MonkeyPatch.context() as env:
        proc, discovery = start_cluster(
            state,
            0,
            extra_args=(
                "--listen",
                f"{hosts.cluster_address}:0",
                "--join-token-file",
                str(state / "join-token"),
                "--tls-auto",
            ),
            log_path=state / "cluster.log",
        )
        env.setenv(CLUSTER_FILE_ENV, str(discovery))
        try:
            yield TLSPool(hosts, state, discovery)
        finally:
            stop_cluster(proc)


def test_the_join_token_pins_the_cluster_ca_and_the_service_speaks_only_https(pool: TLSPool) -> None:
    assert pool.url.startswith("https://")
    assert read_token(pool.state / "join-token").ca_pin == fingerprint(pool.ca_pem)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(pool.url.replace("https:", "http:") + "/cluster", timeout=5)
    # Nothing else is trusted: the system's CAs do not verify the service.
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(pool.url + "/cluster", timeout=5)


def test_an_agent_whose_token_pins_another_ca_is_refused_in_one_line(pool: TLSPool, tmp_path: Path) -> None:
    token = read_token(pool.state / "join-token")
    forged = tmp_path / "join-token"
    forged.write_text(f"{token.secret} sha256:{'0' * 64}\n")
    forged.chmod(0o600)
    agent = pool.start_agent(pool.hosts.hosts[0], forged)
    assert agent.wait(30) == 2
    said = (pool.state / f"agent-{pool.hosts.hosts[0].name}.log").read_text().strip().splitlines()
    assert "not the sha256:000" in said[-1] and "this is not the cluster the token was made for" in said[-1]
    assert pool.hosts.hosts[0].name not in {h["name"] for h in pool.get("/cluster")["hosts"]}


def test_agents_join_over_verified_tls_and_a_kernel_runs_on_them(pool: TLSPool, tmp_path: Path) -> None:
    for host in pool.hosts.hosts:
        pool.start_agent(host, pool.state / "join-token")
    wait_until(lambda: len(pool.get("/cluster")["hosts"]) == 3, "three agents to join over TLS", DEADLINE_S)
    km, kc = start_new_kernel(kernel_name="notebookos", startup_timeout=120, cwd=str(tmp_path))
    try:
        notebook = Notebook(km, kc)
        assert notebook.run("x = 20").status == "ok"
        assert notebook.value("x * 2 + 2") == 42
        replicas = pool.get(f"/kernels/{km.kernel_id}")["replicas"]
        assert {r["host"] for r in replicas} == {h.name for h in pool.hosts.hosts}
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
