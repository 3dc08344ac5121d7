"""Failover with real processes: replicas are killed with SIGKILL, as a crash or a lost host would end them."""

from __future__ import annotations

import json
from pathlib import Path

from notebookos.kernels.replica import COMMIT_TIMEOUT_S

from .driver import kill, replicas_of, wait_until


def executor_pid(notebook) -> int:
    return notebook.value("__import__('os').getpid()")


def test_executor_killed_mid_cell_reruns_on_a_survivor(notebook):
    assert notebook.run("history = ['before']").status == "ok"
    victim = executor_pid(notebook)
    killed = []

    def kill_when_started(text: str) -> None:
        if "started" in text and not killed:
            kill(victim)
            killed.append(victim)

    res = notebook.run(
        "import os, time\nprint('started', os.getpid(), flush=True)\ntime.sleep(4)\n"
        "history.append('cell')\nprint('finished', os.getpid())",
        on_output=kill_when_started,
    )
    assert killed == [victim]
    assert res.status == "ok", (res.reply["content"], res.stderr)
    assert "was lost while running this cell; re-running it" in res.stderr
    # The notice clears the interrupted run's output: what remains is the re-run's, on another process.
    started, finished = res.stdout.splitlines()
    assert started.split()[0] == "started" and finished.split()[0] == "finished"
    assert int(started.split()[1]) != victim
    # The committed state before the cell survived, and the cell's effect is there exactly once.
    assert notebook.value("history") == ["before", "cell"]
    # The killed replica is replaced (on another host, with its journal) and rejoins.
    wait_until(
        lambda: (
            all(r["alive"] for r in replicas_of(notebook)) and sum(r["restarts"] for r in replicas_of(notebook)) == 1
        ),
        "the killed replica to be restarted",
    )


def test_a_lead_lost_before_the_election_leaves_the_cell_to_the_survivors_at_once(notebook):
    """The replica invited to lead a cell dies before it can propose: the survivors, waiting for its bid, are
    released as soon as the front sees the loss, and re-run the cell, instead of holding it until their own wait
    for a decision times out."""
    assert notebook.run("count = 0").status == "ok"
    executor = executor_pid(notebook)
    lead = next(r for r in replicas_of(notebook) if r["pid"] != executor)
    kill(lead["pid"])
    # Sent at once, the cell reaches the front before its heartbeats notice the loss: it invites the dead replica.
    res = notebook.run(
        "count += 1\nprint(__import__('os').getpid())", replica=lead["replica"], timeout=COMMIT_TIMEOUT_S / 2
    )
    assert res.status == "ok", (res.reply["content"], res.stderr)
    assert "was lost while running this cell; re-running it" in res.stderr
    assert int(res.stdout.split()[-1]) != lead["pid"]
    assert notebook.value("count") == 1


def test_killed_standby_is_restarted_and_catches_up(notebook):
    assert notebook.run("xs = [1]").status == "ok"
    executor = executor_pid(notebook)
    standby = next(r for r in replicas_of(notebook) if r["pid"] != executor)
    kill(standby["pid"])
    # The kernel keeps going with two replicas while the third is down.
    res = notebook.run("xs.append(2)")
    assert res.status == "ok", (res.reply["content"], res.stderr)
    wait_until(
        lambda: next(r for r in replicas_of(notebook) if r["replica"] == standby["replica"])["restarts"] == 1,
        "the standby's restart",
    )
    assert notebook.run("xs.append(3)").status == "ok"
    # The restarted replica replays its journal plus what it missed: run a cell on it.
    assert notebook.value("xs", replica=standby["replica"]) == [1, 2, 3]


def test_two_replicas_lost_reports_that_the_kernel_cannot_continue(notebook):
    assert notebook.run("y = 1").status == "ok"
    executor = executor_pid(notebook)
    standbys = [r["pid"] for r in replicas_of(notebook) if r["pid"] != executor]
    for pid in standbys:
        kill(pid)
    res = notebook.run("y + 1", timeout=90)
    assert res.status == "error"
    assert "cannot continue" in res.stderr
    assert "Restart the kernel" in res.stderr
    wait_until(lambda: not notebook.km.is_alive(), "the kernel to be reported dead", deadline_s=30)


def test_unpicklable_names_are_named_and_lost_names_reported_after_failover(notebook):
    res = notebook.run(
        "import socket, threading\nkept = 41\nfh = open('/dev/null')\ngen = (i for i in range(3))\n"
        "sock = socket.socket()\nworker = threading.Thread(target=lambda: None)"
    )
    assert res.status == "ok", res.error
    warning = res.stderr
    assert "will not survive a failover" in warning
    for name in ("fh", "gen", "sock", "worker"):
        assert f"{name}:" in warning
    assert "kept" not in warning
    kill(executor_pid(notebook))
    after = notebook.run("kept + 1")
    assert after.status == "ok", after.error
    assert after.result == "42"
    lost_line = next(line for line in after.stderr.splitlines() if "could not be carried over" in line)
    names = {part.split(" (")[0].strip() for part in lost_line.split("undefined here:")[1].split(";")}
    assert names == {"fh", "gen", "sock", "worker"}


def test_corrupt_object_found_on_recovery_is_named_not_silently_wrong(notebook, cluster_file):
    """A standby that must restore state from a damaged object store never holds a wrong or missing value without a
    word. Either it runs a cell before any other replica has stored the state again, and then it names what it could
    not restore; or another replica's cell ran first and took the snapshot the standby asked for (replica.py
    ``_diverge``), which rewrites the damaged objects, and then the standby holds the right values. Which of the two
    happens depends on when the front starts sending cells to the restarted replica; both are correct."""
    assert notebook.run("import torch\nweights = torch.arange(10.0)\nsmall = 3").status == "ok"
    # The kernel's objects folder, which its replicas share on this one machine.
    kernel_objects = Path(cluster_file).parent / "hosts" / "objects" / notebook.km.kernel_id
    objects = [p for p in kernel_objects.rglob("*") if p.is_file()]
    assert objects, "the tensor should have gone to the object store"
    for path in objects:
        path.write_bytes(b"damaged")
    executor = executor_pid(notebook)
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
    probe = (
        "import os, json\nprint(json.dumps([os.getpid(), globals().get('small'),\n"
        "  float(weights.sum()) if 'weights' in globals() else None]))"
    )

    def first_cell_on_restarted_standby():
        # The front pins cells to a replica only once it answers heartbeats again; until then cells run elsewhere.
        res = notebook.run(probe, replica=standby["replica"])
        assert res.status == "ok", res.error
        pid, small, weights_sum = json.loads(res.stdout)
        return (res, small, weights_sum) if pid == restarted["pid"] else None

    res, small, weights_sum = wait_until(first_cell_on_restarted_standby, "a cell to run on the restarted standby")
    notice = next((line for line in res.stderr.splitlines() if "could not restore part of the state" in line), None)
    if notice is None:
        assert (small, weights_sum) == (3, 45.0), f"the standby holds wrong values without a word: {res.stderr!r}"
    else:
        assert "weights" in notice and "small" in notice
