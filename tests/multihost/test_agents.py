"""Agents on separate machines (network namespaces, each with its own address and private disk) join a cluster
service, and a notebook's replicas run on three of them.

The cluster service and the kernel front run in the root namespace, listening on the bridge's address, as a
Jupyter machine would; each agent runs in its host's namespace with ``--state-dir`` on that host's private tmpfs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from jupyter_client.manager import start_new_kernel

from notebookos.gpu_broker.cluster.client import CLUSTER_FILE_ENV
from notebookos.gpu_broker.cluster.launcher import start_cluster, stop_cluster
from notebookos.kernels.replica_config import COMPACT_AFTER_ENV, GC_GRACE_ENV, SNAPSHOT_EVERY_ENV

from ..kernels.driver import Notebook, cluster_request, wait_until
from ..wheels import TINY_PACKAGE, tiny_wheel
from .hosts import Host, NetworkHosts, available

HOST_TIMEOUT_S = 5.0  # the cluster's loss detection (its default)
REPLACEMENT_DEADLINE_S = 90.0
# The objects a replica keeps: its dump's snapshot and tail, the records of its journal since that dump (at most
# about 17 at 20 entries per compaction: a cell appends its record, every fifth cell a snapshot too), the latest
# snapshot's, and a cell's in flight; 60 cells wrote 61.
MAX_KEPT_OBJECTS = 24
JOIN_DEADLINE_S = 60.0
REFUSAL_TIMEOUT_S = 30.0


@dataclass
class Pool:
    """A cluster service with agents on separate machines."""

    hosts: NetworkHosts
    discovery: Path
    token_file: Path
    url: str
    agents: dict[str, subprocess.Popen]
    service: subprocess.Popen | None = None

    def start_service(self) -> None:
        """Start the cluster service (again: on the same state folder and address, it takes its state back)."""
        self.service, _ = start_cluster(
            self.discovery.parent,
            0,
            discovery=self.discovery,
            log_path=self.discovery.parent / "cluster.log",
            extra_args=(
                "--listen",
                f"{self.hosts.cluster_address}:0",
                "--join-token-file",
                str(self.token_file),
                "--host-timeout",
                str(HOST_TIMEOUT_S),
            ),
        )

    def request(self, method: str, path: str) -> object:
        return cluster_request(str(self.discovery), method, path)

    def request_json(self, method: str, path: str, body: dict) -> object:
        return cluster_request(str(self.discovery), method, path, body)

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts.hosts if h.name == name)

    def replicas(self, kernel_id: str) -> list[dict]:
        return self.request("GET", f"/kernels/{kernel_id}")["replicas"]  # type: ignore[index]

    def placement(self, kernel_id: str) -> list[Host]:
        """The machines of the kernel's replicas, in replica order."""
        return [self.host(r["host"]) for r in self.replicas(kernel_id)]

    def hosts_listed(self) -> dict[str, dict]:
        return {h["name"]: h for h in self.request("GET", "/cluster")["hosts"]}  # type: ignore[index]

    def start_agent(self, host: Host, token_file: Path | None = None, log_name: str | None = None) -> subprocess.Popen:
        argv = [
            sys.executable,
            "-m",
            "notebookos.server_extension.cli",
            "agent",
            "--join",
            self.url,
            "--join-token-file",
            str(token_file or self.token_file),
            "--name",
            host.name,
            "--address",
            host.address,
            "--gpus",
            "1",
            "--state-dir",
            str(host.state_dir / "agent"),
        ]
        return self.hosts.spawn(host, argv, log_path=self.log(log_name or host.name))

    def log(self, name: str) -> Path:
        return self.discovery.parent / f"agent-{name}.log"


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, jupyter_env: Path) -> Iterator[Pool]:
    reason = available()
    if reason is not None:
        pytest.skip(f"multi-host tests need network namespaces: {reason}")
    state = tmp_path_factory.mktemp("multihost-cluster")
    token_file = state / "join-token"
    with NetworkHosts(6) as hosts, pytest.MonkeyPatch.context() as env:
        # Kernels snapshot every 5 cells and compact at 20 journal entries (production: 100 and 400), so that a
        # replacement in a notebook of tens of cells restores from the leader's dump; objects no snapshot or later
        # entry needs are deleted at once (production: after 60 s).
        for name, value in ((SNAPSHOT_EVERY_ENV, "5"), (COMPACT_AFTER_ENV, "20"), (GC_GRACE_ENV, "0")):
            env.setenv(name, value)
        pool = Pool(hosts, state / "cluster.json", token_file, "", {})
        pool.start_service()
        pool.url = json.loads(pool.discovery.read_text())["url"]
        env.setenv(CLUSTER_FILE_ENV, str(pool.discovery))  # restored after: the session's embedded cluster may use it
        try:
            for host in hosts.hosts:
                pool.agents[host.name] = pool.start_agent(host)
            wait_until(lambda: len(pool.hosts_listed()) == len(hosts.hosts), "every agent to join", JOIN_DEADLINE_S)
            yield pool
        finally:
            if pool.service is not None:
                stop_cluster(pool.service)


@pytest.fixture
def notebook(pool: Pool, tmp_path: Path) -> Iterator[Notebook]:
    """A notebookos kernel whose replicas the pool's agents run; shut down after the test. Its working directory
    is on storage every machine sees (the harness's machines share the root file system, as deployments mount home
    folders on every GPU machine)."""
    km, kc = start_new_kernel(kernel_name="notebookos", startup_timeout=120, cwd=str(tmp_path))
    yield Notebook(km, kc)
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def test_agents_join_with_their_own_addresses_and_gpus(pool: Pool) -> None:
    listed = pool.hosts_listed()
    assert {name: (h["address"], h["gpus"], h["state"]) for name, h in listed.items()} == {
        host.name: (host.address, 1, "active") for host in pool.hosts.hosts
    }


def test_an_agent_with_a_wrong_token_is_refused_in_one_line_and_never_listed(pool: Pool, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-cluster-token-at-all\n")
    intruder = Host(
        name="intruder",
        netns=pool.hosts.hosts[0].netns,
        address=pool.hosts.hosts[0].address,
        veth=pool.hosts.hosts[0].veth,
        state_dir=pool.hosts.hosts[0].state_dir,
    )
    agent = pool.start_agent(intruder, token_file=wrong)
    assert agent.wait(REFUSAL_TIMEOUT_S) != 0
    log_lines = pool.log("intruder").read_text().strip().splitlines()
    assert "join token" in log_lines[-1] and "refused" in log_lines[-1], log_lines[-1]
    assert "intruder" not in pool.hosts_listed()


def test_a_missing_token_file_is_a_one_line_error(pool: Pool, tmp_path: Path) -> None:
    agent = pool.start_agent(pool.hosts.hosts[0], token_file=tmp_path / "absent", log_name="no-token")
    assert agent.wait(REFUSAL_TIMEOUT_S) != 0
    last = pool.log("no-token").read_text().strip().splitlines()[-1]
    assert "does not exist" in last and str(tmp_path / "absent") in last


def _where_and(notebook: Notebook, expr: str, replica: int | None = None) -> list:
    """The host that ran the cell, and the value of ``expr`` there."""
    return notebook.value(f"[__import__('os').environ['NOTEBOOKOS_HOST'], {expr}]", replica=replica)


def _on_disk(pool: Pool, replica: dict, *parts: str) -> Path:
    """A path under the agent's state folder on the replica's machine, read through the replica process's own
    root (that folder is on the machine's private disk)."""
    return Path(f"/proc/{replica['pid']}/root{pool.host(replica['host']).state_dir}/agent", *parts)


def _objects_on_disk(pool: Pool, kernel_id: str, replica: dict) -> int:
    return sum(1 for _ in _on_disk(pool, replica, "objects", kernel_id).glob("??/*"))


def _replacement(pool: Pool, kernel_id: str, originals: list[Host]) -> dict | None:
    """The kernel's replica on a host that none of its original replicas ran on, once it has caught up."""
    replicas = pool.replicas(kernel_id)
    names = {h.name for h in originals}
    return next((r for r in replicas if r["host"] not in names and r["state"] == "ready"), None)


def test_executor_host_loss_mid_cell_then_a_second_host_loss_lose_nothing(pool: Pool, notebook: Notebook) -> None:
    """The executor's machine dies during a cell holding a 108 MB tensor: the cell re-runs on a survivor, a
    replacement joins on a spare machine and rebuilds the state from its peers (and sees the file a cell wrote in
    the working directory), and the kernel then survives the loss of a second original machine, with the
    replacement running cells on the same state."""
    assert (
        notebook.run(
            "import torch\nbig = torch.arange(13_500_000, dtype=torch.int64)\n"
            "small = {'count': 1}\nopen('checkpoint.txt', 'w').write('epoch 1')"
        ).status
        == "ok"
    )
    placed = pool.placement(notebook.km.kernel_id)
    executor = pool.host(_where_and(notebook, "0")[0])

    def power_off(text: str) -> None:
        if "started" in text:
            pool.hosts.kill_host(executor)

    res = notebook.run(
        "print('started', flush=True)\nimport time\ntime.sleep(2)\nsmall['count'] += 1\n"
        "print(small['count'], int(big[-1]))",
        on_output=power_off,
    )
    assert res.status == "ok", (res.reply["content"], res.stderr)
    assert "re-running it" in res.stderr and res.stdout.strip().endswith("2 13499999"), (res.stdout, res.stderr)
    replacement = wait_until(
        lambda: _replacement(pool, notebook.km.kernel_id, placed),
        "a replacement to catch up on a spare host",
        REPLACEMENT_DEADLINE_S,
    )
    spare = pool.host(replacement["host"])
    assert pool.hosts.host_of_pid(replacement["pid"]) == spare
    assert not (spare.state_dir / "agent").exists(), "its state is on the spare's own disk"

    def on_replacement() -> list | None:
        state = "[small['count'], int(big[-1]), big.numel(), open('checkpoint.txt').read()]"
        where, value = _where_and(notebook, state, replica=replacement["replica"])
        return value if where == spare.name else None  # the front takes it in once it sees it caught up

    assert wait_until(on_replacement, "a cell to run on the replacement", 30) == [2, 13_499_999, 13_500_000, "epoch 1"]
    second = next(h for h in placed if h not in (executor, spare))
    pool.hosts.kill_host(second)
    assert notebook.run("small['count'] += 1").status == "ok"
    assert _where_and(notebook, "[small['count'], int(big[-1])]", replica=replacement["replica"]) == [
        spare.name,
        [3, 13_499_999],
    ]
    wait_until(
        lambda: second.name not in pool.hosts_listed(), f"{second.name} to be declared lost", HOST_TIMEOUT_S + 10
    )


def test_a_full_state_folder_costs_the_user_nothing_its_replica_is_replaced_elsewhere(
    pool: Pool, notebook: Notebook
) -> None:
    """A standby's machine runs out of disk: at the next cell the replica leaves, saying why, and a replacement
    catches up on another machine; the cell and the ones after it run as if nothing happened."""
    kernel_id = notebook.km.kernel_id
    assert notebook.run("v = [1]").status == "ok"
    placed = pool.placement(kernel_id)
    standby = pool.host(pool.replicas(kernel_id)[2]["host"])
    pool.hosts.limit_disk(standby, free_mb=32)  # replicas keep 128 MB free (NOTEBOOKOS_MIN_FREE_MB)
    try:
        result = notebook.run("v.append(2)")
        assert result.status == "ok" and result.error is None and "replica" not in result.stderr, result.stderr
        replacement = wait_until(
            lambda: _replacement(pool, kernel_id, placed), "a replacement on another machine", REPLACEMENT_DEADLINE_S
        )
        assert wait_until(
            lambda: (
                _where_and(notebook, "v", replica=2)[0] == replacement["host"] and _where_and(notebook, "v", replica=2)
            ),
            "a cell on the replacement",
            30,
        ) == [replacement["host"], [1, 2]]
    finally:
        pool.hosts.limit_disk(standby, free_mb=None)
    exited = pool.request("GET", f"/events?kind=replica_exited&kernel={kernel_id}")["events"]  # type: ignore[index]
    assert [e["host"] for e in exited] == [standby.name]
    assert "state folder was full" in exited[0]["reason"], exited[0]["reason"]


def test_a_replica_moved_to_another_machine_joins_there_with_the_state(pool: Pool, notebook: Notebook) -> None:
    assert notebook.run("import torch\nw = torch.ones(3_000_000)\nn = 5").status == "ok"
    replicas = pool.replicas(notebook.km.kernel_id)
    placed = pool.placement(notebook.km.kernel_id)
    target = next(h for h in pool.hosts.hosts if h.name in pool.hosts_listed() and h not in placed)
    moved = replicas[1]
    pool.request_json("POST", f"/kernels/{notebook.km.kernel_id}/replicas/1/migrate", {"host": target.name})
    caught_up = wait_until(
        lambda: _replacement(pool, notebook.km.kernel_id, placed),
        f"replica 1 to catch up on {target.name}",
        REPLACEMENT_DEADLINE_S,
    )
    assert caught_up["replica"] == 1
    # The old replica's agent stops it at its next heartbeat (the cluster makes no call that could wait out a connect
    # time-out), which may come after the new member has caught up.
    wait_until(
        lambda: moved["pid"] not in pool.hosts.pids(pool.host(moved["host"])), "the old replica to be stopped", 30
    )
    assert notebook.run("n += 1").status == "ok"

    def on_target() -> list | None:
        where, value = _where_and(notebook, "[n, float(w.sum())]", replica=1)
        return value if where == target.name else None

    assert wait_until(on_target, "a cell on the moved replica", 30) == [6, 3_000_000.0]


def test_a_restarted_agent_adopts_the_replicas_still_running_on_its_machine(pool: Pool, notebook: Notebook) -> None:
    assert notebook.run("z = 7").status == "ok"
    before = {r["replica"]: (r["host"], r["pid"]) for r in pool.replicas(notebook.km.kernel_id)}
    host = pool.host(before[0][0])
    agent = pool.agents[host.name]
    agent.kill()
    agent.wait()
    pool.agents[host.name] = pool.start_agent(host, log_name=f"{host.name}-restarted")
    wait_until(
        lambda: "adopted replica" in pool.log(f"{host.name}-restarted").read_text(),
        "the new agent to adopt the running replica",
        JOIN_DEADLINE_S,
    )
    assert notebook.run("z += 1").status == "ok"
    assert _where_and(notebook, "z", replica=0) == [host.name, 8]
    after = {r["replica"]: (r["host"], r["pid"]) for r in pool.replicas(notebook.km.kernel_id)}
    assert after == before, "no replica was restarted or replaced"
    assert host.name in pool.hosts_listed()


def test_a_restarted_cluster_service_takes_back_its_agents_and_kernels(pool: Pool, notebook: Notebook) -> None:
    """The shared service crashes and is started again on its state folder: its agents heartbeat to it again,
    and the kernel runs on the same replicas, none replaced (their machines were silent only while it was down)."""
    assert notebook.run("w = 1").status == "ok"
    before = {r["replica"]: (r["host"], r["pid"]) for r in pool.replicas(notebook.km.kernel_id)}
    crashed = pool.request("GET", "/cluster")["pid"]  # type: ignore[index]
    hosts = set(pool.hosts_listed())
    assert pool.service is not None
    pool.service.kill()
    pool.service.wait()
    pool.start_service()
    assert json.loads(pool.discovery.read_text())["url"] == pool.url, "the restarted service listens where it did"
    restored = pool.request("GET", "/events?kind=cluster_restored")["events"][-1]["seq"]  # type: ignore[index]

    def back() -> set[str]:
        """Agents heard by the restarted service: by a heartbeat, or a new join if theirs failed meanwhile."""
        events = pool.request("GET", f"/events?since={restored}")["events"]  # type: ignore[index]
        return {e["host"] for e in events if e["kind"] in ("agent_back", "agent_rejoined")}

    wait_until(
        lambda: back() == set(pool.hosts_listed()), "every agent to report to the restarted service", JOIN_DEADLINE_S
    )
    assert notebook.run("w += 1").status == "ok"
    assert notebook.value("w") == 2
    listed = pool.request("GET", "/cluster")
    assert listed["pid"] != crashed and {h["name"] for h in listed["hosts"]} == hosts  # type: ignore[index]
    after = {r["replica"]: (r["host"], r["pid"]) for r in pool.replicas(notebook.km.kernel_id)}
    assert after == before, "no replica was restarted or replaced"
    assert pool.request("GET", f"/events?kind=host_lost&since={restored}")["events"] == []


def test_a_standby_cut_off_briefly_catches_up_when_its_link_is_back(pool: Pool, notebook: Notebook) -> None:
    """A partition shorter than the host time-out: the cut-off standby cannot commit, the notebook goes on with the
    two others, and once the link is back the same replica process catches up through Raft (nothing replaced)."""
    assert notebook.run("v = 1").status == "ok"
    before = {r["replica"]: (r["host"], r["pid"]) for r in pool.replicas(notebook.km.kernel_id)}
    executor = _where_and(notebook, "0")[0]
    index, (cut_name, _) = next((i, hp) for i, hp in before.items() if hp[0] != executor)
    pool.hosts.link_down(pool.host(cut_name))
    try:
        assert notebook.run("v += 1").status == "ok"
    finally:
        pool.hosts.link_up(pool.host(cut_name))
    assert wait_until(
        lambda: _where_and(notebook, "v", replica=index) == [cut_name, 2],
        "the cut-off replica to run a cell with the state",
        30,
    )
    assert {r["replica"]: (r["host"], r["pid"]) for r in pool.replicas(notebook.km.kernel_id)} == before


def test_an_executor_cut_off_mid_cell_leaves_the_cell_counted_once(pool: Pool, notebook: Notebook) -> None:
    """Found by the chaos run: the executor's machine is cut off for 3 s (less than the host time-out) during a
    cell that holds a GPU. The front re-runs the cell; the cut-off executor finishes its own attempt meanwhile and
    cannot store or commit its state. Once back, it gets the re-run (its GPU is there): its namespace must not
    keep the abandoned attempt's changes, or the cell counts twice. Every replica ends with the count of one run."""
    assert notebook.run("%gpus 1\ncount = 0").status == "ok"
    executor = pool.host(_where_and(notebook, "0")[0])
    healed = threading.Timer(3.0, pool.hosts.link_up, (executor,))  # the fault's length, not a synchronization

    def cut_off(text: str) -> None:
        if "started" in text and healed.ident is None:  # the first attempt only
            pool.hosts.link_down(executor)
            healed.start()

    try:
        res = notebook.run(
            "print('started', flush=True)\nimport time\ntime.sleep(2)\ncount += 1\nprint('count', count)",
            on_output=cut_off,
        )
    finally:
        healed.join()
    assert res.status == "ok", (res.reply["content"], res.stderr)
    assert "count 1" in res.stdout and "count 2" not in res.stdout, (res.stdout, res.stderr)
    assert notebook.run("count += 10\nprint(count)").stdout.strip() == "11"
    for replica in range(3):
        assert wait_until(
            lambda replica=replica: _where_and(notebook, "count", replica=replica)[1] == 11,
            f"replica {replica} to hold the count of one run",
            60,
        )


def test_a_cut_off_standby_stops_nothing_and_its_machine_rejoins_the_pool(pool: Pool, notebook: Notebook) -> None:
    """A standby's network link goes down: the notebook's cells go on with the two others (the cut-off replica
    cannot commit anything), the kernel gets a third replica elsewhere, and when the link is back the machine
    joins the pool again and the replica it still ran is stopped (it is no member of the group any more)."""
    assert notebook.run("y = 1").status == "ok"
    replicas = pool.replicas(notebook.km.kernel_id)
    placed = pool.placement(notebook.km.kernel_id)
    executor = _where_and(notebook, "0")[0]
    cut = next(h for h in placed if h.name != executor)
    stale_pid = next(r["pid"] for r in replicas if r["host"] == cut.name)
    pool.hosts.link_down(cut)
    try:
        assert notebook.run("y += 1").status == "ok"
        assert notebook.value("y") == 2
        wait_until(lambda: cut.name not in pool.hosts_listed(), f"{cut.name} to be declared lost", HOST_TIMEOUT_S + 10)
    finally:
        pool.hosts.link_up(cut)
    wait_until(lambda: cut.name in pool.hosts_listed(), f"{cut.name} to join again", JOIN_DEADLINE_S)
    wait_until(lambda: stale_pid not in pool.hosts.pids(cut), "the cut-off replica to be stopped", 30)
    wait_until(
        lambda: _replacement(pool, notebook.km.kernel_id, placed), "a third replica to catch up", REPLACEMENT_DEADLINE_S
    )
    for replica in pool.replicas(notebook.km.kernel_id):
        assert wait_until(
            lambda replica=replica: _where_and(notebook, "y", replica=replica["replica"]) == [replica["host"], 2],
            f"a cell on replica {replica['replica']}",
            30,
        )


def test_a_kernel_started_on_a_machine_cut_off_unnoticed_is_placed_again_without_it(pool: Pool) -> None:
    """A machine's link goes down a moment before kernels start, before its missing heartbeats tell the cluster.
    A start that placed a replica there finds its agent unreachable: it stops what it started on the others, marks
    the machine silent and places the kernel again without it. The start succeeds, on three other machines."""
    listed = pool.hosts_listed()
    # The placement rule takes the least subscribed hosts first: this one is in the first or the second start.
    cut = pool.host(min(listed, key=lambda name: (listed[name]["subscription_ratio"], name)))
    log = pool.discovery.parent / "cluster.log"
    retries = log.read_text().count("again without the host that did not answer")
    started: list[dict] = []
    pool.hosts.link_down(cut)
    try:
        for index in range(4):
            body = {"kernel_id": f"cut-off-start-{index}", "key": "k" * 32, "gpus": 1}
            started.append(pool.request_json("POST", "/kernels", body))  # type: ignore[arg-type]
            if log.read_text().count("again without the host that did not answer") > retries:
                break
        assert log.read_text().count("again without the host that did not answer") == retries + 1, (
            f"no start tried {cut.name} while its cut-off went unnoticed"
        )
        for kernel in started:
            assert len({r["host"] for r in kernel["replicas"]}) == 3
            assert cut.name not in {r["host"] for r in kernel["replicas"]}
            assert wait_until(
                lambda kernel=kernel: all(r["state"] == "ready" for r in pool.replicas(kernel["id"])),
                f"kernel {kernel['id']}'s replicas to be ready",
                REPLACEMENT_DEADLINE_S,
            )
    finally:
        pool.hosts.link_up(cut)
        for kernel in started:
            pool.request("DELETE", f"/kernels/{kernel['id']}")
    wait_until(
        lambda: cut.name in pool.hosts_listed() and pool.hosts_listed()[cut.name]["reachable"],
        f"{cut.name} to be heard again",
        JOIN_DEADLINE_S,
    )


def test_a_replacement_restores_from_the_leaders_snapshot_and_the_log_tail(
    pool: Pool, notebook: Notebook, tmp_path: Path
) -> None:
    """After 60 cells the kernel's log is compacted and the objects no snapshot or later entry needs are deleted;
    a replacement on a spare machine gets the leader's dump, restores the namespace from its snapshot (fetching its
    objects from its peers) and applies only the entries after it. The package the first cell installed, long
    compacted out of the log, is installed on the replacement's machine too (into a folder named after it)."""
    site = tmp_path / "site-"
    install = (
        f"%pip install --no-index --no-deps --target {site}{{__import__('os').environ['NOTEBOOKOS_HOST']}} "
        f"{tiny_wheel(tmp_path)}"
    )
    assert notebook.run(f"{install}\nimport torch\nt = torch.zeros(100_000)\nn = 0").status == "ok"
    for _ in range(60):
        assert notebook.run("n += 1\nt += 1").status == "ok"
    # Each cell stored a new 400 KB tensor on every replica's disk; only the latest snapshot's and the tail's stay.
    for replica in pool.replicas(notebook.km.kernel_id):
        assert wait_until(
            lambda replica=replica: _objects_on_disk(pool, notebook.km.kernel_id, replica) <= MAX_KEPT_OBJECTS,
            f"replica {replica['replica']}'s unreferenced objects to be deleted",
            30,
        )
    placed = pool.placement(notebook.km.kernel_id)
    executor = _where_and(notebook, "0")[0]
    pool.hosts.kill_host(next(h for h in placed if h.name != executor))
    replacement = wait_until(
        lambda: _replacement(pool, notebook.km.kernel_id, placed),
        "a replacement to catch up on a spare host",
        REPLACEMENT_DEADLINE_S,
    )
    host = pool.host(replacement["host"])
    marker = _on_disk(
        pool, replacement, "replicas", notebook.km.kernel_id, f"replica-{replacement['replica']}", "ready"
    )
    restored = json.loads(marker.read_text())
    assert restored["restored_index"] is not None and restored["records_applied"] < 20, restored

    def on_replacement() -> list | None:
        state = (
            f"[n, float(t.sum()), __import__('sys').path.insert(0, '{site}{host.name}'), "
            f"__import__('{TINY_PACKAGE}').VALUE]"
        )
        where, value = _where_and(notebook, state, replica=replacement["replica"])
        return value if where == host.name else None

    assert wait_until(on_replacement, "a cell on the replacement", 30) == [60, 6_000_000.0, None, 42]


def test_a_kernels_replicas_run_on_three_machines_and_a_standby_host_loss_costs_nothing(
    pool: Pool, notebook: Notebook
) -> None:
    assert notebook.run("x = 41\nimport socket").status == "ok"
    assert notebook.value("x + 1") == 42
    replicas = pool.replicas(notebook.km.kernel_id)
    placed = pool.placement(notebook.km.kernel_id)
    assert len({h.name for h in placed}) == 3
    for replica, host in zip(replicas, placed):
        assert replica["address"] == host.address == replica["connection"]["ip"]
        assert pool.hosts.host_of_pid(replica["pid"]) == host, "the replica runs in its host's namespace"
        # Its journal is on that host's private disk: the root namespace cannot see it.
        assert not (host.state_dir / "agent").exists()
    # Every replica holds the state: run a cell pinned on each.
    for replica in replicas:
        assert notebook.value("x", replica=replica["replica"]) == 41
    executor = notebook.value("__import__('os').environ['NOTEBOOKOS_HOST']")
    standby = next(h for h in placed if h.name != executor)
    pool.hosts.kill_host(standby)
    assert notebook.run("x += 1").status == "ok"
    assert notebook.value("x") == 42
    wait_until(
        lambda: standby.name not in pool.hosts_listed(), f"{standby.name} to be declared lost", HOST_TIMEOUT_S + 10
    )
    events = pool.request("GET", f"/events?host={standby.name}&kind=host_lost")["events"]  # type: ignore[index]
    assert events and "no heartbeat" in events[0]["reason"]
