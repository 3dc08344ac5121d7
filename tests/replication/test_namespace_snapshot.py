"""Full namespace snapshots for log compaction: `capture_all` on the executor, `apply` on a fresh tracker and an
empty namespace (a replica that joins late), then the log entries after the snapshot; and the object-store keys a
collector must keep (`referenced_keys`)."""

import pytest
import torch

from notebookos.replication.namespace import NamespaceTracker, StateDelta
from notebookos.replication.object_store import LocalDirectoryStore

from .test_namespace import TRAINING_SETUP, TRAINING_STEPS, Replicas, assert_same_value, user_names


def fresh_namespace():
    """What a new replica's shell starts with, as far as the tracker is concerned."""
    return {"__name__": "__main__"}


def restore(store, snapshot, extra_out=None):
    """A late joiner: a fresh tracker and an empty namespace, restored from the snapshot's log bytes."""
    tracker = NamespaceTracker(store)
    ns = fresh_namespace()
    extra = tracker.apply(StateDelta.from_bytes(snapshot.to_bytes()), ns)
    if extra_out is not None:
        extra_out.update(extra)
    return tracker, ns


def assert_same_namespace(expected_ns, expected_tracker, actual_ns):
    names = user_names(expected_ns) - expected_tracker.not_replicated.keys()
    assert names == user_names(actual_ns)
    for name in names:
        expected, actual = expected_ns[name], actual_ns[name]
        if type(expected).__module__ == "__main__" and not isinstance(expected, type):  # a notebook class's instance
            assert type(expected).__qualname__ == type(actual).__qualname__, name
            assert vars(expected) == vars(actual), name
        else:
            assert_same_value(expected, actual)


def stored_keys(store):
    return {"sha256:" + path.name for path in store.root.glob("??/*") if not path.name.startswith(".")}


@pytest.fixture
def store(tmp_path):
    return LocalDirectoryStore(tmp_path / "objects")


@pytest.fixture
def replicas(store):
    return Replicas(store)


NOTEBOOK = """
import math
import collections as col
count = 3
ratio = 0.5
rows = [1, 2, [3, 4]]
shared = {'lr': 0.1, 'layers': [64, 64]}
config = shared
experiment = {'config': shared, 'name': 'run'}
square = lambda v: v * v
def scale(v):
    return v * count
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def norm(self):
        return math.hypot(self.x, self.y)
p = Point(3, 4)
def make_counter():
    n = 0
    def increment():
        nonlocal n
        n += 1
        return n
    return increment
counter = make_counter()
counter(); counter()
counts = col.Counter('abca')
"""


# --- restoring a snapshot into an empty namespace ----------------------------------------------------------------


def test_a_snapshot_restores_every_name_into_an_empty_namespace(replicas, store):
    replicas.run_cell(NOTEBOOK)
    snapshot = replicas.executor.capture_all(replicas.executor_ns, replicas.execution_count)
    assert snapshot.deleted == () and snapshot.unpicklable == {}
    assert set(snapshot.assigned) == user_names(replicas.executor_ns)

    tracker, ns = restore(store, snapshot)
    assert_same_namespace(replicas.executor_ns, replicas.executor, ns)
    assert tracker.not_replicated == {}
    assert ns["math"] is __import__("math") and ns["col"] is __import__("collections")
    assert ns["rows"] == [1, 2, [3, 4]] and ns["count"] == 3 and ns["ratio"] == 0.5


def test_references_shared_between_names_survive_a_snapshot(replicas, store):
    replicas.run_cell(NOTEBOOK)
    snapshot = replicas.executor.capture_all(replicas.executor_ns, replicas.execution_count)
    _, ns = restore(store, snapshot)
    assert ns["shared"] is ns["config"] is ns["experiment"]["config"]
    ns["shared"]["lr"] = 0.2
    assert ns["config"]["lr"] == 0.2


def test_functions_classes_lambdas_and_closures_work_after_a_restore(replicas, store):
    replicas.run_cell(NOTEBOOK)
    snapshot = replicas.executor.capture_all(replicas.executor_ns, replicas.execution_count)
    _, ns = restore(store, snapshot)
    assert ns["square"](7) == 49
    assert ns["scale"](2) == 6
    assert ns["scale"].__globals__ is ns  # bound to the restored namespace, so later rebindings are seen
    ns["count"] = 10
    assert ns["scale"](2) == 20
    assert isinstance(ns["p"], ns["Point"]) and ns["p"].norm() == 5.0
    assert ns["counter"]() == 3  # the closure's state came along
    exec("q = Point(6, 8)\nr = q.norm()", ns)
    assert ns["r"] == 10.0


def test_a_snapshot_restores_into_a_truly_empty_dict(replicas, store):
    replicas.run_cell("k = 2\ndef double(v):\n    return v * k")
    snapshot = replicas.executor.capture_all(replicas.executor_ns, replicas.execution_count)
    ns = {}
    NamespaceTracker(store).apply(snapshot, ns)
    assert set(ns) == {"k", "double"} and ns["double"](4) == 8


def test_a_snapshot_never_refers_to_names_by_reference(replicas, store):
    """In an incremental delta an object held by an unchanged name is a reference; in a snapshot it is a copy."""
    replicas.run_cell("base = [1, 2]")
    replicas.run_cell("derived = {'base': base}\nimport torch\nmodel = torch.nn.Linear(2, 2)")
    replicas.run_cell("optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\nalias = base")
    snapshot = replicas.executor.capture_all(replicas.executor_ns, replicas.execution_count)
    _, ns = restore(store, snapshot)  # would raise StateApplyError on any reference by name
    assert ns["alias"] is ns["base"] is ns["derived"]["base"]
    assert ns["optimizer"].param_groups[0]["params"][0] is ns["model"].weight


def test_extra_values_travel_with_the_snapshot(replicas, store):
    replicas.run_cell("result = [1, 2]")
    extra = {}
    snapshot = replicas.executor.capture_all(replicas.executor_ns, 1, extra={"out": replicas.executor_ns["result"]})
    _, ns = restore(store, snapshot, extra)
    assert extra["out"] is ns["result"]


def test_an_empty_namespace_gives_an_empty_snapshot(store):
    tracker = NamespaceTracker(store)
    snapshot = tracker.capture_all({"__name__": "__main__", "In": [], "_i1": "x"}, 0)
    assert (snapshot.assigned, snapshot.inline, snapshot.pointer) == ((), None, None)
    ns = fresh_namespace()
    assert NamespaceTracker(store).apply(snapshot, ns) == {} and ns == fresh_namespace()


# --- torch and large values --------------------------------------------------------------------------------------


def test_a_model_and_its_optimizer_keep_sharing_parameters_and_train_on_after_a_restore(replicas, store):
    replicas.run_cell(TRAINING_SETUP + "optimizer = torch.optim.Adam(model.parameters(), lr=0.01)")
    replicas.run_cell(TRAINING_STEPS)
    snapshot = replicas.executor.capture_all(replicas.executor_ns, replicas.execution_count)
    assert snapshot.inline is None and store.contains(snapshot.pointer.key)

    _, ns = restore(store, snapshot)
    model, optimizer = ns["model"], ns["optimizer"]
    restored = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(restored) == len(list(model.parameters()))
    assert all(a is b for a, b in zip(restored, model.parameters()))
    executor_state = replicas.executor_ns["optimizer"].state_dict()["state"]
    for index, state in optimizer.state_dict()["state"].items():
        for key, tensor in executor_state[index].items():
            assert torch.equal(tensor, state[key]), (index, key)

    # The restored optimizer steps the restored model's parameters, exactly as the executor's does.
    before = model[0].weight.clone()
    exec(TRAINING_STEPS, replicas.executor_ns)
    exec(TRAINING_STEPS, ns)
    assert not torch.equal(before, model[0].weight)
    for executor_param, restored_param in zip(replicas.executor_ns["model"].parameters(), model.parameters()):
        assert torch.equal(executor_param, restored_param)


def test_a_large_tensor_goes_to_the_store_and_comes_back(replicas, store):
    replicas.run_cell("import torch\nbig = torch.arange(5_000_000, dtype=torch.float32)\nview = big[10:20]\nx = 1")
    snapshot = replicas.executor.capture_all(replicas.executor_ns, replicas.execution_count)
    assert snapshot.inline is None and snapshot.pointer.size > 20_000_000
    assert store.contains(snapshot.pointer.key)
    assert NamespaceTracker.referenced_keys(snapshot) == {snapshot.pointer.key}
    _, ns = restore(store, snapshot)
    assert torch.equal(ns["big"], replicas.executor_ns["big"]) and ns["x"] == 1
    ns["view"][0] = -1  # views stay views within one payload
    assert ns["big"][10] == -1


def test_a_large_plain_value_goes_to_the_store(store):
    replicas = Replicas(store, inline_limit=1000)
    replicas.run_cell("blob = b'x' * 5000\nsmall = 1")
    snapshot = replicas.executor.capture_all(replicas.executor_ns, replicas.execution_count)
    assert snapshot.inline is None and store.contains(snapshot.pointer.key)
    small = replicas.executor.capture_all({"small": 1}, 0)
    assert small.inline is not None and small.pointer is None


# --- values that cannot be pickled -------------------------------------------------------------------------------


def test_unpicklable_values_are_reported_and_absent_after_a_restore(replicas, store, tmp_path):
    path = str(tmp_path / "log.txt")
    replicas.run_cell(f"handle = open({path!r}, 'w')\nnumbers = (i for i in range(3))\nholder = [numbers]\nfine = 1")
    snapshot = replicas.executor.capture_all(replicas.executor_ns, replicas.execution_count)
    assert snapshot.unpicklable == replicas.executor.not_replicated
    assert snapshot.unpicklable.keys() == {"handle", "numbers", "holder"}
    assert snapshot.assigned == ("fine",)
    tracker, ns = restore(store, snapshot)
    assert user_names(ns) == {"fine"}
    assert tracker.not_replicated == snapshot.unpicklable
    replicas.executor_ns["handle"].close()


class CountsPickling:
    pickled = 0

    def __reduce__(self):
        type(self).pickled += 1
        return CountsPickling, ()


def test_a_known_unpicklable_value_does_not_make_the_snapshot_pickle_everything_twice(replicas, tmp_path):
    replicas.run_cell(f"handle = open({str(tmp_path / 'log.txt')!r}, 'w')")
    replicas.executor_ns["counted"] = CountsPickling()
    CountsPickling.pickled = 0
    snapshot = replicas.executor.capture_all(replicas.executor_ns, replicas.execution_count)
    assert CountsPickling.pickled == 1
    assert snapshot.assigned == ("counted",) and snapshot.unpicklable.keys() == {"handle"}
    replicas.executor_ns["handle"].close()


def test_a_snapshot_taken_on_a_standby_carries_the_names_it_lost(replicas, store):
    replicas.run_cell("g = (i for i in range(3))\nkeep = 1")
    assert "g" not in replicas.standby_ns
    snapshot = replicas.standby.capture_all(replicas.standby_ns, replicas.execution_count)
    assert snapshot.unpicklable == {"g": "generator cannot be pickled: cannot pickle 'generator' object"}
    tracker, ns = restore(store, snapshot)
    assert user_names(ns) == {"keep"} and tracker.not_replicated == replicas.executor.not_replicated


# --- the tracker's bookkeeping -----------------------------------------------------------------------------------


def test_capture_all_leaves_the_next_capture_exact(replicas):
    replicas.run_cell(NOTEBOOK + "import torch\nmodel = torch.nn.Linear(2, 2)\ng = (i for i in [])")
    replicas.run_cell("warm = 1")  # see the next test: the first capture after a class's instance is pickled
    executor = replicas.executor
    not_replicated = executor.not_replicated
    executor.capture_all(replicas.executor_ns, replicas.execution_count)
    assert executor.not_replicated == not_replicated

    # capture() right after capture_all(), without a snapshot(): the baseline is still the last capture.
    exec("rows.append(5)\nnew = 1", replicas.executor_ns)
    delta = executor.capture(replicas.executor_ns, 99)
    assert set(delta.assigned) == {"rows", "new"} and delta.deleted == () and delta.unpicklable == {}

    # capture_all() between snapshot() and capture(): the cell's changes are still reported, and only them.
    executor.snapshot(replicas.executor_ns)
    exec("del ratio\nshared['lr'] = 0.3\nmodel.weight.data.mul_(2)", replicas.executor_ns)
    executor.capture_all(replicas.executor_ns, 100)
    delta = executor.capture(replicas.executor_ns, 101)
    assert set(delta.assigned) == {"shared", "config", "experiment", "model"} and delta.deleted == ("ratio",)
    assert executor.not_replicated == not_replicated


def test_capture_all_reports_what_the_next_cell_changes_exactly_as_without_it(store):
    """Pickling a notebook class's instance for the first time caches `__slotnames__` on the class (copyreg), which
    changes the class's fingerprint: `capture` re-sends such a class and its instances once, in the next cell.
    capture_all leaves that as it is; every following capture equals the one a tracker without snapshots makes."""
    with_snapshots, control = Replicas(store), Replicas(store)
    cells = [NOTEBOOK, "rows.append(5)\nnew = 1", "del ratio\np.x = 0", "import torch\nt = torch.ones(2)", "t.add_(1)"]
    for code in cells:
        with_snapshots.executor.capture_all(with_snapshots.executor_ns, with_snapshots.execution_count)
        ours, theirs = with_snapshots.run_cell(code), control.run_cell(code)
        assert (ours.assigned, ours.deleted, ours.unpicklable) == (theirs.assigned, theirs.deleted, theirs.unpicklable)
        assert (ours.inline is None, ours.pointer is None) == (theirs.inline is None, theirs.pointer is None)
    assert with_snapshots.executor.not_replicated == control.executor.not_replicated


def test_capture_all_on_a_restored_tracker_and_then_capture(replicas, store):
    """A restored replica can itself become the executor and snapshot again."""
    replicas.run_cell(NOTEBOOK)
    tracker, ns = restore(store, replicas.executor.capture_all(replicas.executor_ns, 1))
    exec("rows.append(9)", ns)  # no snapshot(): the fingerprints left by the restore are the baseline
    delta = tracker.capture(ns, 2)
    assert delta.assigned == ("rows",) and delta.deleted == ()
    _, again = restore(store, tracker.capture_all(ns, 2))
    assert_same_namespace(ns, tracker, again)


# --- snapshot plus the log after it ------------------------------------------------------------------------------


LATER_CELLS = [
    "rows.append(5)\ncount = 4",
    "optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\nalias = shared",  # references restored objects by name
    TRAINING_STEPS,
    "del ratio\nshared['layers'].append(32)\nlabel = experiment['name'].upper()",
    "import numpy as np\narr = np.arange(10.0) * count\nmodel.eval()",
    "g = (i for i in [])\ndef total():\n    return sum(rows[:2]) + count",
    "del g\np.x = 6\np.y = 8",
]


@pytest.mark.parametrize("cells_before_snapshot", [1, 3, 5])
def test_snapshot_after_n_cells_plus_the_later_deltas_equals_the_executors_namespace(store, cells_before_snapshot):
    cells = [NOTEBOOK, TRAINING_SETUP, *LATER_CELLS]
    replicas = Replicas(store)
    log = []  # what a compacted log holds: one snapshot, then the entries after it
    for index, code in enumerate(cells, 1):
        delta = replicas.run_cell(code)
        if index < cells_before_snapshot:
            continue
        if index == cells_before_snapshot:
            log.append(replicas.executor.capture_all(replicas.executor_ns, replicas.execution_count).to_bytes())
        else:
            log.append(delta.to_bytes())

    tracker, ns = NamespaceTracker(store), fresh_namespace()
    for entry in log:
        tracker.apply(StateDelta.from_bytes(entry), ns)
    assert_same_namespace(replicas.executor_ns, replicas.executor, ns)
    assert tracker.not_replicated == replicas.executor.not_replicated
    assert ns["optimizer"].param_groups[0]["params"][0] is ns["model"][0].weight
    assert ns["alias"] is ns["shared"] is ns["config"]
    assert ns["total"]() == replicas.executor_ns["total"]() and ns["p"].norm() == 10.0
    # and the late joiner matches the standby that applied every delta since the start
    assert_same_namespace(replicas.standby_ns, replicas.standby, ns)


# --- object-store keys, for garbage collection -------------------------------------------------------------------


def test_referenced_keys_are_exactly_the_store_keys_used(store):
    replicas = Replicas(store, inline_limit=1000)
    deltas = [replicas.run_cell(code) for code in (
        "x = 1",  # inline
        "import torch\nt = torch.ones(3)",  # stored (torch)
        "blob = b'y' * 5000",  # stored (large)
        "del x",  # no payload
        "t.add_(1)",
    )]  # fmt: skip
    assert [len(NamespaceTracker.referenced_keys(d)) for d in deltas] == [0, 1, 1, 0, 1]
    assert NamespaceTracker.referenced_keys(deltas[1].to_bytes()) == {deltas[1].pointer.key}  # log bytes too
    used = set().union(*(NamespaceTracker.referenced_keys(d) for d in deltas))
    assert used == stored_keys(store)

    snapshot = replicas.executor.capture_all(replicas.executor_ns, replicas.execution_count)
    later = replicas.run_cell("blob = b'z' * 6000\ny = 2")
    keep = NamespaceTracker.referenced_keys(snapshot) | NamespaceTracker.referenced_keys(later)
    assert keep == {snapshot.pointer.key, later.pointer.key}
    assert keep <= stored_keys(store) and keep | used == stored_keys(store)

    # Collect: delete every object the snapshot and the entries after it do not refer to; a late joiner still
    # restores the executor's namespace.
    for key in stored_keys(store) - keep:
        store.delete(key)
    assert stored_keys(store) == keep
    tracker, ns = restore(store, snapshot)
    tracker.apply(StateDelta.from_bytes(later.to_bytes()), ns)
    assert_same_namespace(replicas.executor_ns, replicas.executor, ns)


def test_referenced_keys_of_a_delta_without_payload_is_empty(store):
    delta = NamespaceTracker(store).capture_all({}, 0)
    assert NamespaceTracker.referenced_keys(delta) == set()
    assert NamespaceTracker.referenced_keys(delta.to_bytes()) == set()


# --- a model changed without its parameters keeps sharing them with its optimizer --------------------------------


@pytest.mark.parametrize("change", ["model.eval()", "model.extra = torch.nn.Identity()", "model[1].inplace = True"])
def test_a_model_changed_without_its_parameters_keeps_sharing_them_with_its_unchanged_optimizer(replicas, change):
    """The model is captured, the optimizer is not (its fingerprint covers only the parameters): the model's
    parameters must then be references to the standby's, or the standby's optimizer would step orphaned tensors
    after a failover (found while testing snapshots plus later deltas)."""
    replicas.run_cell(TRAINING_SETUP + "optimizer = torch.optim.SGD(model.parameters(), lr=0.1)")
    replicas.run_cell(TRAINING_STEPS)
    delta = replicas.run_cell(change)
    assert delta.assigned == ("model",)
    ns = replicas.standby_ns
    assert all(a is b for a, b in zip(ns["optimizer"].param_groups[0]["params"], ns["model"].parameters()))
    exec(TRAINING_STEPS, replicas.executor_ns)
    exec(TRAINING_STEPS, ns)
    for executor_param, standby_param in zip(replicas.executor_ns["model"].parameters(), ns["model"].parameters()):
        assert torch.equal(executor_param, standby_param)
