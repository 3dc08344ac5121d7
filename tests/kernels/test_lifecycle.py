"""Interrupt and restart, as JupyterLab's Kernel menu does them."""

from __future__ import annotations

import socket
import stat
import threading
import time
from pathlib import Path

import pytest
import zmq
from jupyter_client.manager import start_new_kernel
from jupyter_client.session import Session

from notebookos.gpu_broker.cluster.client import CLUSTER_FILE_ENV, ClusterError
from notebookos.gpu_broker.cluster.launcher import write_remote_discovery_file

from .driver import replicas_of


def test_interrupt_stops_the_running_cell_and_the_kernel_keeps_its_state(notebook):
    assert notebook.run("kept = 'yes'").status == "ok"
    started = threading.Event()

    def on_output(text: str) -> None:
        if "sleeping" in text:
            started.set()
            notebook.km.interrupt_kernel()

    res = notebook.run(
        "import time\nprint('sleeping', flush=True)\ntime.sleep(60)\nkept = 'no'", on_output=on_output, timeout=50
    )
    assert started.is_set()
    assert res.status == "error"
    assert res.error.startswith("KeyboardInterrupt")
    assert notebook.value("kept") == "yes"


def test_restart_gives_a_fresh_namespace_on_new_replicas(notebook):
    assert notebook.run("gone = 1").status == "ok"
    before = {r["pid"] for r in replicas_of(notebook)}
    notebook.km.restart_kernel(now=False)
    notebook.kc.wait_for_ready(timeout=120)
    res = notebook.run("'gone' in dir()")
    assert res.status == "ok", res.error
    assert res.result == "False"
    after = {r["pid"] for r in replicas_of(notebook)}
    assert len(after) == 3 and not before & after


def test_comms_reach_the_executor_and_answer_like_widgets_do(notebook):
    """ipywidgets rides on comms: a comm opened by the client must reach the kernel's comm target and its
    messages must come back on IOPub."""
    code = (
        "def _target(comm, open_msg):\n"
        "    comm.send({'echo': open_msg['content']['data']['value'] * 2})\n"
        "get_ipython().kernel.comm_manager.register_target('notebookos-test', _target)"
    )
    assert notebook.run(code).status == "ok"
    kc = notebook.kc
    msg = kc.session.msg("comm_open", {"comm_id": "c-1", "target_name": "notebookos-test", "data": {"value": 21}})
    kc.shell_channel.send(msg)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = kc.get_iopub_msg(timeout=30)
        if reply["msg_type"] == "comm_msg" and reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            assert reply["content"]["data"] == {"echo": 42}
            return
    raise AssertionError("no comm_msg came back")


def test_every_file_holding_a_key_or_token_is_readable_by_its_owner_only(notebook, cluster_file):
    """The kernel's connection and replicas files (message key), each replica's connection and configuration files
    (message key, Raft password) and the cluster's discovery file (its token): mode 0600."""
    connection = Path(notebook.km.connection_file)
    replica_files = list((Path(cluster_file).parent / "hosts").glob(f"*/{notebook.km.kernel_id}/replica-*/*.json"))
    assert len(replica_files) == 6  # connection.json and replica.json of three replicas
    for path in [
        connection,
        connection.with_name(connection.stem + "-replicas.json"),
        *replica_files,
        Path(cluster_file),
    ]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_kernel_start_with_its_cluster_down_says_what_to_start(jupyter_env, tmp_path, monkeypatch):
    """A Jupyter server pointed at a shared cluster (`notebookos lab --cluster URL`) whose service is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once the probe is closed
    discovery = tmp_path / "cluster.json"
    write_remote_discovery_file(discovery, f"http://127.0.0.1:{port}", "token")
    monkeypatch.setenv(CLUSTER_FILE_ENV, str(discovery))
    with pytest.raises(ClusterError, match=r"does not answer: start it on its machine \(notebookos cluster --listen"):
        start_new_kernel(kernel_name="notebookos", startup_timeout=30)


def test_the_replicas_channels_are_curve_encrypted(notebook):
    """A replica answers only a CurveZMQ client that knows its public key (the front is one); a plain ZMQ client,
    even one holding the message key, gets no answer. The cluster's API never shows the replica's secret key."""
    replica = replicas_of(notebook)[0]
    connection = replica["connection"]
    assert connection["curve_publickey"] and "curve_secretkey" not in connection
    session = Session(key=connection["key"].encode(), signature_scheme=connection["signature_scheme"])
    url = f"tcp://{connection['ip']}:{connection['shell_port']}"

    def ask(curve: bool) -> bool:
        context = zmq.Context()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if curve:
            sock.curve_serverkey = connection["curve_publickey"].encode()
            sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        sock.connect(url)
        try:
            session.send(sock, "kernel_info_request", {})
            return bool(sock.poll(5000))
        finally:
            sock.close()
            context.term()

    assert not ask(curve=False)
    assert ask(curve=True)
