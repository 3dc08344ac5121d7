"""Log compaction with real replicas: the journal stays bounded however many cells run, and a replica restarted
from its journal and dump restores the namespace from the last snapshot instead of replaying every cell.

The cluster of this module snapshots every 5 cells and compacts at 40 journal entries (production: 100 cells and
400 entries), so that 60 cells compact more than once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from notebookos.kernels.replica_config import COMPACT_AFTER_ENV, SNAPSHOT_EVERY_ENV

from .driver import kill, replicas_of, wait_until

SNAPSHOT_EVERY, COMPACT_AFTER, CELLS = 5, 40, 60


@pytest.fixture(scope="module")
def cluster_file(jupyter_env: Path, tmp_path_factory: pytest.TempPathFactory):
    """An embedded cluster of its own whose kernels snapshot and compact often."""
    from notebookos.gpu_broker.cluster.client import CLUSTER_FILE_ENV
    from notebookos.gpu_broker.cluster.launcher import start_cluster, stop_cluster

    with pytest.MonkeyPatch.context() as env:
        env.setenv(SNAPSHOT_EVERY_ENV, str(SNAPSHOT_EVERY))
        env.setenv(COMPACT_AFTER_ENV, str(COMPACT_AFTER))
        proc, discovery = start_cluster(tmp_path_factory.mktemp("compacting-cluster"), hosts=4)
        env.setenv(CLUSTER_FILE_ENV, str(discovery))
        yield str(discovery)
        stop_cluster(proc)


LOG_LEN = "get_ipython().kernel.raft.getStatus()['log_len']"
RECORDS_APPLIED = "get_ipython().kernel.records_applied"
STATE = "[x, len(xs), xs[-1], float(t.sum())]"


def test_the_journal_stays_bounded_and_a_restarted_replica_restores_from_its_snapshot(notebook):
    setup = notebook.run("import torch\nt = torch.ones(300_000)\nx = 0\nxs = []")
    assert setup.status == "ok", setup.error
    for n in range(CELLS):
        res = notebook.run(f"x += 1\nxs.append({n})\nt += 1")
        assert res.status == "ok", (res.error, res.stderr)
    expected = [CELLS, CELLS, CELLS - 1, 300_000.0 * (CELLS + 1)]
    # Each cell appends its record, every fifth a snapshot too, so without compaction every journal would hold 72.
    for replica in (0, 1, 2):
        assert notebook.value(LOG_LEN, replica=replica) <= COMPACT_AFTER + 10
    assert notebook.value(STATE) == expected

    executor = notebook.value("__import__('os').getpid()")
    standby = next(r for r in replicas_of(notebook) if r["pid"] != executor)
    kill(standby["pid"])
    restarted = wait_until(
        lambda: next(
            (
                r
                for r in replicas_of(notebook)
                if r["replica"] == standby["replica"] and r["restarts"] == 1 and r["alive"]
            ),
            None,
        ),
        "the standby's restart",
    )
    assert notebook.run("x += 1\nxs.append('after')").status == "ok"
    on_restarted = f"[__import__('os').getpid(), {STATE}, {RECORDS_APPLIED}, get_ipython().kernel.restored_index]"

    def run_on_restarted_standby():
        # The front pins cells to a replica only once it answers heartbeats again; until then cells run elsewhere.
        pid, *rest = notebook.value(on_restarted, replica=standby["replica"])
        return rest if pid == restarted["pid"] else None

    state, records_applied, restored_index = wait_until(run_on_restarted_standby, "a cell on the restarted standby")
    assert state == [CELLS + 1, CELLS + 1, "after", expected[3]]
    # It restored its last snapshot and applied only the records after it, not the 60-odd of the notebook.
    assert restored_index is not None
    assert records_applied <= SNAPSHOT_EVERY + COMPACT_AFTER // 2
