"""State capture and apply, end to end: real cell code runs in an executor namespace, its delta goes through the
same bytes a Raft log entry would carry, and a standby namespace applies it."""

import dataclasses
import errno
import io
import math
import os
import pickle
import socket
import threading

import numpy as np
import pytest
import torch

from notebookos.replication import namespace
from notebookos.replication.fingerprint import NotebookPickler
from notebookos.replication.namespace import NamespaceTracker, ObjectPointer, StateApplyError, StateDelta
from notebookos.replication.object_store import LocalDirectoryStore, StoreFullError


class Replicas:
    """An executor namespace and a standby namespace, kept in sync the way replica kernels do."""

    def __init__(self, store, **tracker_options):
        self.store = store
        self.executor_ns = {"__name__": "__main__"}
        self.standby_ns = {"__name__": "__main__"}
        self.executor = NamespaceTracker(store, **tracker_options)
        self.standby = NamespaceTracker(store, **tracker_options)
        self.execution_count = 0
        self.extra = {}

    def run_cell(self, code, extra=None):
        """Run `code` on the executor, capture it, ship the delta as log bytes, apply it on the standby."""
        delta = self.execute(code, extra)
        self.extra = self.standby.apply(StateDelta.from_bytes(delta.to_bytes()), self.standby_ns)
        return delta

    def execute(self, code, extra=None):
        """Run `code` on the executor and capture it, without applying."""
        self.execution_count += 1
        self.executor.snapshot(self.executor_ns)
        exec(code, self.executor_ns)
        return self.executor.capture(self.executor_ns, self.execution_count, extra)

    def assert_in_sync(self):
        """Every replicated name has the same value on both sides."""
        names = user_names(self.executor_ns) - self.executor.not_replicated.keys()
        assert names == user_names(self.standby_ns)
        for name in names:
            assert_same_value(self.executor_ns[name], self.standby_ns[name])


def user_names(ns):
    return {name for name in ns if name not in ("__builtins__", "__name__")}


def assert_same_value(expected, actual):
    if isinstance(expected, torch.Tensor):
        assert torch.equal(expected, actual)
    elif isinstance(expected, torch.nn.Module):
        assert type(expected).__name__ == type(actual).__name__
        assert expected.state_dict().keys() == actual.state_dict().keys()
        for key, tensor in expected.state_dict().items():
            assert torch.equal(tensor, actual.state_dict()[key]), key
    elif isinstance(expected, torch.optim.Optimizer):
        assert expected.state_dict()["param_groups"] == actual.state_dict()["param_groups"]
    elif isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(expected, actual)
    elif callable(expected):  # functions, lambdas, classes: same code under the same name
        assert expected.__qualname__ == actual.__qualname__
    else:
        assert expected == actual


@pytest.fixture
def store(tmp_path):
    return LocalDirectoryStore(tmp_path / "objects")


@pytest.fixture
def replicas(store):
    return Replicas(store)


# --- names bound, rebound, deleted -------------------------------------------------------------------------------


def test_assignment_is_replicated(replicas):
    delta = replicas.run_cell("x = 1\ns = 'text'\nitems = [1, 2, 3]")
    assert delta.assigned == ("x", "s", "items")
    assert replicas.standby_ns["items"] == [1, 2, 3]
    replicas.assert_in_sync()


def test_tuple_unpacking_targets_are_replicated(replicas):
    delta = replicas.run_cell("a, (b, *rest) = 1, (2, 3, 4)")
    assert set(delta.assigned) == {"a", "b", "rest"}
    assert (replicas.standby_ns["a"], replicas.standby_ns["b"], replicas.standby_ns["rest"]) == (1, 2, [3, 4])


def test_for_and_with_targets_are_replicated(replicas):
    replicas.run_cell(
        "import contextlib\nfor i in range(3):\n    last = i * 10\nwith contextlib.nullcontext(7) as w:\n    pass"
    )
    assert (replicas.standby_ns["i"], replicas.standby_ns["last"], replicas.standby_ns["w"]) == (2, 20, 7)


def test_augmented_assignment_is_replicated_for_immutable_and_mutable_values(replicas):
    replicas.run_cell("n = 1\nt = (1,)\nlst = [1]")
    delta = replicas.run_cell("n += 2\nt += (2,)\nlst += [2]")  # lst += mutates in place: same object
    assert set(delta.assigned) == {"n", "t", "lst"}
    assert (replicas.standby_ns["n"], replicas.standby_ns["t"], replicas.standby_ns["lst"]) == (3, (1, 2), [1, 2])


def test_in_place_mutation_of_lists_dicts_and_nested_values_is_replicated(replicas):
    replicas.run_cell("lst = [1]\nd = {'k': 1, 'inner': []}\nuntouched = {'a': 1}")
    delta = replicas.run_cell("lst.append(2)\nd['k'] = 2\nd['inner'].append('deep')")
    assert set(delta.assigned) == {"lst", "d"}
    assert replicas.standby_ns["d"] == {"k": 2, "inner": ["deep"]}
    replicas.assert_in_sync()


def test_deleted_names_are_deleted_on_the_standby(replicas):
    replicas.run_cell("x = 1\ny = 2")
    delta = replicas.run_cell("del x")
    assert delta.deleted == ("x",) and delta.assigned == ()
    assert "x" not in replicas.standby_ns and replicas.standby_ns["y"] == 2


def test_values_of_every_kind_that_a_cell_does_not_touch_are_not_captured_again(replicas):
    replicas.run_cell(
        "import collections, numpy as np, torch\n"
        "x = 1\ndata = {'a': [1, 2]}\nsquare = lambda v: v * v\n"
        "def helper(v=[]):\n    return v\n"
        "class Point:\n    def norm(self):\n        return 0\n"
        "p = Point()\ncounts = collections.Counter('abc')\n"
        "small, large = np.arange(10), np.zeros(1_000_000)\nobjects = np.array([[1], 'a'], dtype=object)\n"
        "model = torch.nn.Linear(4, 2)\noptimizer = torch.optim.Adam(model.parameters())\n"
        "model(torch.ones(1, 4)).sum().backward()\noptimizer.step()\ntensors = [torch.ones(3), torch.zeros(100_000)]"
    )
    delta = replicas.run_cell("y = data['a'][0]")
    assert delta.assigned == ("y",) and delta.deleted == ()


# --- code: imports, functions, classes, closures -----------------------------------------------------------------


def test_imported_modules_come_back_as_the_modules(replicas):
    replicas.run_cell("import math as m\nimport os.path\nfrom math import sqrt")
    assert replicas.standby_ns["m"] is math
    assert replicas.standby_ns["os"] is os
    assert replicas.standby_ns["sqrt"] is math.sqrt


def test_functions_are_replicated_and_see_later_rebindings_of_their_globals(replicas):
    replicas.run_cell("k = 3\ndef scale(v, by=2):\n    return v * k * by")
    assert replicas.standby_ns["scale"](1) == 6
    delta = replicas.run_cell("k = 10")
    assert delta.assigned == ("k",)  # the function itself did not change
    assert replicas.standby_ns["scale"](1) == 20


def test_a_function_using_a_global_that_cannot_be_pickled_is_still_replicated(replicas, tmp_path):
    replicas.run_cell(f"log = open({str(tmp_path / 'log.txt')!r}, 'w')\ndef note(msg):\n    log.write(msg)")
    assert "note" in replicas.standby_ns and "log" in replicas.standby.not_replicated
    replicas.executor_ns["log"].close()


def test_classes_and_their_instances_are_replicated(replicas):
    replicas.run_cell(
        "class Point:\n"
        "    def __init__(self, x, y):\n        self.x, self.y = x, y\n"
        "    def norm(self):\n        return (self.x ** 2 + self.y ** 2) ** 0.5\n"
        "p = Point(3, 4)"
    )
    standby_point = replicas.standby_ns["p"]
    assert standby_point.norm() == 5.0
    assert isinstance(standby_point, replicas.standby_ns["Point"])
    delta = replicas.run_cell("p.x = 6\np.y = 8")
    assert delta.assigned == ("p",)
    assert replicas.standby_ns["p"].norm() == 10.0
    assert isinstance(replicas.standby_ns["p"], replicas.standby_ns["Point"])


def test_instances_created_later_use_the_standbys_class(replicas):
    replicas.run_cell("class Box:\n    pass")
    replicas.run_cell("b = Box()")
    assert type(replicas.standby_ns["b"]) is replicas.standby_ns["Box"]


def test_lambdas_and_closures_are_replicated_with_their_state(replicas):
    replicas.run_cell(
        "square = lambda v: v * v\n"
        "def make_counter():\n"
        "    n = 0\n"
        "    def increment():\n"
        "        nonlocal n\n"
        "        n += 1\n"
        "        return n\n"
        "    return increment\n"
        "counter = make_counter()\n"
        "counter(); counter()"
    )
    assert replicas.standby_ns["square"](7) == 49
    delta = replicas.run_cell("counter()")  # mutates the closure cell only
    assert delta.assigned == ("counter",)
    assert replicas.standby_ns["counter"]() == 4


# --- shared references -------------------------------------------------------------------------------------------


def test_references_shared_between_changed_values_survive(replicas):
    replicas.run_cell("a = [1]\nholder = {'a': a}\nalias = a")
    assert replicas.standby_ns["holder"]["a"] is replicas.standby_ns["a"] is replicas.standby_ns["alias"]
    delta = replicas.run_cell("a.append(2)")
    assert set(delta.assigned) == {"a", "holder", "alias"}
    assert replicas.standby_ns["holder"]["a"] is replicas.standby_ns["a"] is replicas.standby_ns["alias"]
    assert replicas.standby_ns["a"] == [1, 2]


def test_references_to_unchanged_top_level_objects_resolve_to_the_standbys_objects(replicas):
    replicas.run_cell("config = {'lr': 0.1, 'layers': [64, 64]}")
    delta = replicas.run_cell("experiment = {'config': config, 'layers': config['layers']}\nsame = config")
    assert delta.assigned == ("experiment", "same")
    assert replicas.standby_ns["experiment"]["config"] is replicas.standby_ns["config"]
    assert replicas.standby_ns["same"] is replicas.standby_ns["config"]


def test_extra_values_travel_with_the_delta_and_keep_their_references(replicas):
    replicas.run_cell("result = [1, 2]")
    replicas.run_cell("y = 5", extra={"out": replicas.executor_ns["result"], "note": "done"})
    assert replicas.extra["out"] is replicas.standby_ns["result"]
    assert replicas.extra["note"] == "done"


def test_extra_values_that_cannot_be_pickled_are_left_out_without_failing_the_cell(replicas):
    delta = replicas.run_cell("y = 5", extra={"out": (i for i in range(3)), "note": "done"})
    assert replicas.extra == {"note": "done"} and delta.unpicklable == {}
    assert replicas.standby_ns["y"] == 5


# --- torch and numpy ---------------------------------------------------------------------------------------------


TRAINING_SETUP = """
import torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
inputs, targets = torch.randn(32, 4), torch.randn(32, 1)
"""
TRAINING_STEPS = """
for step in range(5):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(inputs), targets)
    loss.backward()
    optimizer.step()
"""


def test_training_a_model_replicates_parameters_and_optimizer_state_sharing_parameters(replicas):
    replicas.run_cell(TRAINING_SETUP)
    replicas.run_cell("optimizer = torch.optim.Adam(model.parameters(), lr=0.01)")
    standby_model = replicas.standby_ns["model"]
    assert replicas.standby_ns["optimizer"].param_groups[0]["params"][0] is standby_model[0].weight

    delta = replicas.run_cell(TRAINING_STEPS)
    assert {"model", "optimizer", "loss", "step"} <= set(delta.assigned)
    assert delta.inline is None and delta.pointer is not None  # torch payloads go to the store
    replicas.assert_in_sync()
    standby_model, standby_optimizer = replicas.standby_ns["model"], replicas.standby_ns["optimizer"]
    assert standby_optimizer.param_groups[0]["params"][0] is standby_model[0].weight
    for name, tensor in replicas.executor_ns["optimizer"].state_dict()["state"][0].items():
        assert torch.equal(tensor, standby_optimizer.state_dict()["state"][0][name]), name

    # After a failover the standby trains on exactly as the executor does.
    exec(TRAINING_STEPS, replicas.executor_ns)
    exec(TRAINING_STEPS, replicas.standby_ns)
    for executor_param, standby_param in zip(replicas.executor_ns["model"].parameters(), standby_model.parameters()):
        assert torch.equal(executor_param, standby_param)


def test_switching_a_model_to_eval_mode_is_replicated(replicas):
    replicas.run_cell(TRAINING_SETUP)
    delta = replicas.run_cell("model.eval()")
    assert delta.assigned == ("model",)
    assert not replicas.standby_ns["model"].training and not replicas.standby_ns["model"][0].training


def test_writes_through_data_are_caught_for_small_tensors(replicas):
    replicas.run_cell(TRAINING_SETUP)
    delta = replicas.run_cell("model[0].weight.data.mul_(2)")  # does not bump _version
    assert delta.assigned == ("model",)
    replicas.assert_in_sync()


def test_an_unchanged_large_tensor_is_not_captured_again(replicas):
    replicas.run_cell("import torch\nbig = torch.zeros(4_000_000)")
    delta = replicas.run_cell("x = 1")
    assert delta.assigned == ("x",) and delta.inline is not None
    delta = replicas.run_cell("big.add_(1)")
    assert delta.assigned == ("big",)
    assert torch.equal(replicas.standby_ns["big"], torch.ones(4_000_000))


def test_views_of_one_tensor_stay_views_on_the_standby(replicas):
    replicas.run_cell("import torch\nbase = torch.zeros(10)\nwindow = base[2:5]")
    replicas.standby_ns["window"][0] = 7
    assert replicas.standby_ns["base"][2] == 7


def test_a_tensor_s_bytes_are_stored_once_however_many_views_share_them(replicas):
    replicas.run_cell("import torch")
    delta = replicas.run_cell("base = torch.zeros(250_000)\nviews = [base[i:] for i in range(10)]")
    base_bytes = 250_000 * 4  # float32
    assert base_bytes <= delta.pointer.size < base_bytes + 4096
    replicas.standby_ns["base"][9] = 5
    assert [view[9 - i].item() for i, view in enumerate(replicas.standby_ns["views"])] == [5.0] * 10


def test_tensors_stay_resizable_on_both_sides(replicas):
    replicas.run_cell("import torch\nt = torch.arange(4.0)\nempty = torch.empty(0)")
    replicas.run_cell("t.resize_(100)")  # what `out=` arguments do: fails on storages torch cannot reallocate
    standby_t = replicas.standby_ns["t"]
    standby_t.resize_(200)
    assert standby_t.shape == (200,) and standby_t[:4].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert replicas.standby_ns["empty"].shape == (0,)


def test_numpy_in_place_mutation_is_replicated_for_small_and_large_arrays(replicas):
    replicas.run_cell("import numpy as np\nsmall = np.arange(10.0)\nlarge = np.zeros(2_000_000)")
    delta = replicas.run_cell("small *= 2\nlarge += 1")
    assert set(delta.assigned) == {"small", "large"}
    replicas.assert_in_sync()
    assert replicas.standby_ns["large"].sum() == 2_000_000


# --- values that cannot be pickled -------------------------------------------------------------------------------


UNPICKLABLE_CELL = """
import socket, threading
handle = open({path!r}, "w")
connection = socket.socket()
numbers = (i for i in range(3))
worker = threading.Thread(target=print)
holder = [numbers]
fine = 42
"""


def test_unpicklable_values_are_reported_on_both_sides_and_the_rest_is_replicated(replicas, tmp_path):
    path = str(tmp_path / "out.txt")
    delta = replicas.run_cell(UNPICKLABLE_CELL.format(path=path))
    assert delta.unpicklable == {
        "handle": f"open file {path!r} (_io.TextIOWrapper) cannot be pickled",
        "connection": "socket.socket cannot be pickled: cannot pickle 'socket' object",
        "numbers": "generator cannot be pickled: cannot pickle 'generator' object",
        "worker": "threading.Thread cannot be pickled: cannot pickle '_thread.lock' object",
        "holder": "list cannot be pickled: cannot pickle 'generator' object",
    }
    assert replicas.executor.not_replicated == delta.unpicklable
    assert replicas.standby.not_replicated == delta.unpicklable
    assert replicas.standby_ns["fine"] == 42 and replicas.standby_ns["socket"] is socket
    assert not delta.unpicklable.keys() & replicas.standby_ns.keys()

    delta = replicas.run_cell("x = 1")  # unchanged unpicklable names are not reported again
    assert delta.unpicklable == {}
    assert replicas.executor.not_replicated.keys() == {"handle", "connection", "numbers", "worker", "holder"}

    replicas.run_cell("handle.close()\nhandle = 'closed'\nconnection.close()\ndel connection\nholder.clear()")
    assert replicas.executor.not_replicated.keys() == {"numbers", "worker"}
    assert replicas.standby.not_replicated.keys() == {"numbers", "worker"}
    assert replicas.standby_ns["handle"] == "closed" and replicas.standby_ns["holder"] == []


def test_a_standby_drops_a_name_whose_new_value_cannot_be_replicated(replicas):
    replicas.run_cell("g = 1")
    replicas.run_cell("g = (i for i in range(3))")
    assert "g" not in replicas.standby_ns
    assert replicas.standby.not_replicated == {"g": "generator cannot be pickled: cannot pickle 'generator' object"}


def test_locks_cannot_be_replicated(replicas):
    delta = replicas.run_cell("import threading\nguard = threading.Lock()")
    assert delta.unpicklable == {"guard": "_thread.lock cannot be pickled: cannot pickle '_thread.lock' object"}
    assert replicas.standby_ns["threading"] is threading


# --- where payloads go, and apply failures -----------------------------------------------------------------------


def test_small_payloads_go_inline_and_large_ones_to_the_store(store):
    replicas = Replicas(store, inline_limit=1000)
    small = replicas.run_cell("small = b'x' * 100")
    assert small.inline is not None and small.pointer is None
    large = replicas.run_cell("large = b'x' * 5000")
    assert large.inline is None and large.pointer.size > 5000
    assert store.contains(large.pointer.key)
    assert replicas.standby_ns["large"] == b"x" * 5000


def test_any_torch_object_goes_to_the_store_however_small(replicas):
    delta = replicas.run_cell("import torch\nt = torch.ones(2)")
    assert delta.inline is None and replicas.store.contains(delta.pointer.key)


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_damaged_store_object_fails_apply_naming_the_variables_and_leaves_the_namespace_unchanged(replicas, damage):
    replicas.run_cell("import torch\nkeep = [1, 2]\nweights = torch.zeros(3)")
    delta = replicas.execute("weights = torch.ones(3)\nbias = torch.ones(1)\nkeep.append(3)")
    path = replicas.store.root / delta.pointer.key[7:9] / delta.pointer.key[7:]
    if damage == "corrupt":
        path.write_bytes(path.read_bytes()[:-1] + b"\0")
    else:
        path.unlink()
    before = dict(replicas.standby_ns)
    with pytest.raises(StateApplyError) as raised:
        replicas.standby.apply(delta, replicas.standby_ns)
    message = str(raised.value)
    assert "could not restore keep, weights, bias from cell [2]" in message
    assert delta.pointer.key in message and "re-run that cell" in message
    assert replicas.standby_ns.keys() == before.keys()
    assert all(replicas.standby_ns[name] is value for name, value in before.items())


def test_a_payload_that_cannot_be_unpickled_here_fails_apply_and_leaves_the_namespace_unchanged(replicas):
    replicas.run_cell("base = [1]")
    delta = replicas.execute("def helper():\n    return base\nderived = [base, 2]")
    del replicas.standby_ns["base"]  # the standby lost a name the delta refers to
    before = dict(replicas.standby_ns)
    with pytest.raises(StateApplyError, match=r"could not restore helper, derived.*'base'"):
        replicas.standby.apply(delta, replicas.standby_ns)
    assert replicas.standby_ns == before


def test_a_payload_whose_header_does_not_fit_it_fails_apply_and_leaves_the_namespace_unchanged(replicas):
    replicas.run_cell("import torch\nkeep = 1")
    delta = replicas.execute("t = torch.ones(3)")
    data = replicas.store.get(delta.pointer.key) + b"\0"
    longer = dataclasses.replace(delta, pointer=ObjectPointer(replicas.store.put(data), len(data)))
    before = dict(replicas.standby_ns)
    with pytest.raises(StateApplyError, match=r"could not restore t from cell \[2\].*malformed"):
        replicas.standby.apply(longer, replicas.standby_ns)
    assert replicas.standby_ns == before


class _PicklerBeforeTheHeader(NotebookPickler):
    """Pickles values as payloads were pickled before they had a header: each storage's bytes inside the pickle."""

    def reducer_override(self, obj):
        if isinstance(obj, torch.storage.TypedStorage):
            return namespace._typed_storage, (obj._untyped_storage, obj.dtype)
        if isinstance(obj, torch.UntypedStorage):
            data = torch.empty(0, dtype=torch.uint8).set_(obj).numpy().tobytes()
            return namespace._untyped_storage, (pickle.PickleBuffer(bytearray(data)),)
        return super().reducer_override(obj)


def test_a_payload_written_before_the_header_still_applies(replicas):
    """A journal or snapshot written by the previous version still restores: its payloads are bare pickles."""
    base = torch.arange(6.0)
    stream = io.BytesIO()
    _PicklerBeforeTheHeader(stream, replicas.executor_ns).dump(({"base": base, "window": base[2:]}, {}))
    key = replicas.store.put(stream.getvalue())
    delta = StateDelta(1, ("base", "window"), (), {}, None, ObjectPointer(key, len(stream.getvalue())))
    replicas.standby.apply(delta, replicas.standby_ns)
    assert replicas.standby_ns["window"].tolist() == [2.0, 3.0, 4.0, 5.0]
    replicas.standby_ns["base"][2] = 7  # still a view of the same storage
    assert replicas.standby_ns["window"][0] == 7


def test_capture_on_a_full_store_raises_and_can_be_retried(replicas, monkeypatch):
    replicas.executor.snapshot(replicas.executor_ns)
    exec("import torch\nt = torch.ones(3)", replicas.executor_ns)

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", disk_full)
        with pytest.raises(StoreFullError):
            replicas.executor.capture(replicas.executor_ns, 1)
    delta = replicas.executor.capture(replicas.executor_ns, 1)
    assert set(delta.assigned) == {"torch", "t"}


# --- the delta itself --------------------------------------------------------------------------------------------


def test_delta_round_trips_through_bytes(replicas):
    inline = replicas.run_cell("x = 1\ng = (i for i in [])")
    stored = replicas.run_cell("import torch\nt = torch.ones(1)\ndel x")
    for delta in (inline, stored):
        assert StateDelta.from_bytes(delta.to_bytes()) == delta
    assert len(inline.to_bytes()) < 200


def test_delta_bytes_never_run_code():
    class Evil:
        def __reduce__(self):
            return os.system, ("echo pwned",)

    with pytest.raises(pickle.UnpicklingError, match="builtin"):
        StateDelta.from_bytes(pickle.dumps((1, 1, (), (), (), Evil(), None)))
    with pytest.raises(ValueError, match="not a notebookos state delta"):
        StateDelta.from_bytes(pickle.dumps(("something", "else")))


# --- what is tracked ---------------------------------------------------------------------------------------------


def test_ipython_names_are_not_captured_but_user_names_with_an_underscore_are(store):
    replicas = Replicas(store, ignore=lambda name: name.startswith("secret"))
    ipython = {
        "In": [""], "Out": {}, "_": 1, "__": 2, "___": 3, "_i": "", "_ii": "", "_iii": "", "_i1": "x = 1",
        "_1": 1, "_oh": {}, "_ih": [], "_dh": ["/"], "exit": object(), "quit": object(),
        "get_ipython": lambda: None, "__builtin__": io, "__doc__": None, "__package__": None,
        "__loader__": None, "__spec__": None, "__warningregistry__": {},
    }  # fmt: skip
    replicas.executor_ns.update(ipython)
    delta = replicas.run_cell("_cache = {'k': 1}\n__private = 2\nsecret_token = 'x'\n_i2 = 'y = 2'\n_2 = 4")
    assert delta.assigned == ("_cache", "__private")
    assert delta.deleted == ()


def test_a_standby_that_becomes_executor_captures_only_what_its_own_cell_changes(replicas):
    replicas.run_cell(TRAINING_SETUP + "optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\nrows = [1]")
    new_executor, ns = replicas.standby, replicas.standby_ns
    exec("rows.append(2)\ny = 1", ns)  # no snapshot: the fingerprints left by apply are the baseline
    delta = new_executor.capture(ns, replicas.execution_count + 1)
    assert set(delta.assigned) == {"rows", "y"} and delta.deleted == ()


def test_names_that_are_never_replicated_are_judged_once_so_a_cell_costs_no_more_after_thousands(tmp_path):
    """IPython keeps `_i<N>` and `_<N>` for every cell it ran, and an ignore rule may refuse many names: each is
    judged untracked once, not again at every cell."""
    asked = []
    tracker = NamespaceTracker(
        LocalDirectoryStore(tmp_path), ignore=lambda name: asked.append(name) is None and name.startswith("tmp")
    )
    user_ns = {"x": 1}
    for count in range(1, 2001):  # what 2,000 cells leave behind
        user_ns.update({f"_i{count}": "x += 1", f"_{count}": count, f"tmp{count}": count})
    tracker.snapshot(user_ns)
    user_ns["x"] += 1
    assert tracker.capture(user_ns, 2001).assigned == ("x",)
    asked.clear()
    for count in range(2002, 2012):  # ten more cells
        user_ns.update({f"_i{count}": "x += 1", f"tmp{count}": count})
        tracker.snapshot(user_ns)
        user_ns["x"] += 1
        assert tracker.capture(user_ns, count).assigned == ("x",)
    # The rule heard of x at each look, of each new name once, and of none of the thousands of earlier ones.
    assert sorted(set(asked)) == sorted({"x", *(f"tmp{count}" for count in range(2002, 2012))})
    assert asked.count("x") == 20 and len(asked) == 30


def test_ipythons_own_open_is_not_replicated_but_a_users_open_is(replicas):
    """IPython binds ``open`` in every namespace to its wrapper of the builtin: fingerprinting it pickled a function
    at every cell for nothing. A value the user binds to that name is replicated like any other."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    replicas.executor_ns["open"] = shell.user_ns["open"]
    replicas.standby_ns["open"] = shell.user_ns["open"]
    assert replicas.run_cell("x = 1").assigned == ("x",)
    assert replicas.executor.tracked_names(replicas.executor_ns) == ["x"]
    assert replicas.executor.capture_all(replicas.executor_ns, 1).assigned == ("x",)
    assert replicas.run_cell("open = len").assigned == ("open",)
    assert replicas.standby_ns["open"] is len
