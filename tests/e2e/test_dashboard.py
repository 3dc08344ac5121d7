"""The admin dashboard end to end: a real embedded cluster (4 hosts, 1 virtual GPU each), a real JupyterLab server
with the notebookos extension, a real kernel, and the page in headless Chromium.

The cluster is started as ``notebookos lab`` starts it (``gpu_broker.cluster.launcher.start_cluster``) and the server
gets
the same extension switch and ``NOTEBOOKOS_CLUSTER_FILE``; one cluster and one server serve the whole module (a
second server, with a read-only authorizer, shares the cluster for the last test). Every page check is
cross-checked against a direct API call. The tests run in order and share one GPU kernel: the drain and resize
tests change the cluster (a host drained, removed, another added and given 2 GPUs, a replica moved), so they come
after the tests that want four hosts of one GPU.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from collections.abc import Callable, Iterator

import pytest
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager

from chromium import missing_reason
from dashboard_page import DashboardPage
from lab_server import LabServer

_missing = missing_reason()
if _missing:
    pytest.skip(f"browser tests need Chromium and Playwright: {_missing}", allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

from notebookos.gpu_broker.cluster.client import CLUSTER_FILE_ENV  # noqa: E402
from notebookos.gpu_broker.cluster.launcher import start_cluster  # noqa: E402
from notebookos.server_extension.lab import ENABLE_EXTENSION_ARG  # noqa: E402

pytestmark = pytest.mark.browser

HOSTS = 4
GPU_KERNELSPEC = "notebookos-1gpu"
KERNEL_START_TIMEOUT_S = 180
CELL_TIMEOUT_S = 120
REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO_ROOT / "docs" / "img"
LAPTOP = {"width": 1366, "height": 768}


# -- the system under test ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An embedded cluster of 4 hosts with 1 (virtual) GPU each; its discovery file."""
    process, discovery = start_cluster(tmp_path_factory.mktemp("dashboard-cluster"), HOSTS, gpus_per_host=1)
    yield discovery
    process.terminate()
    process.wait(30)


@pytest.fixture(scope="module")
def start_server(lab_server_factory: Callable[..., LabServer], cluster_file: Path) -> Callable[..., LabServer]:
    """Start a JupyterLab server on the module's cluster, as ``notebookos lab`` would, with a 1-GPU kernelspec."""

    def start(*extra_args: str) -> LabServer:
        with pytest.MonkeyPatch.context() as env:
            env.setenv(CLUSTER_FILE_ENV, str(cluster_file))
            # The read-only server imports its authorizer from dashboard_page.py, beside this file.
            env.setenv(
                "PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
            )
            server = lab_server_factory([ENABLE_EXTENSION_ARG, *extra_args])
        install_gpu_kernelspec(server)
        return server

    return start


@pytest.fixture(scope="module")
def server(start_server: Callable[..., LabServer]) -> LabServer:
    return start_server()


@pytest.fixture(scope="module")
def reader_server(start_server: Callable[..., LabServer]) -> LabServer:
    return start_server("--ServerApp.authorizer_class=dashboard_page.ReaderAuthorizer")


def install_gpu_kernelspec(server: LabServer) -> None:
    """The notebookos kernelspec, with every cell asking for one GPU, in the server's own data folder."""
    target = server.base_dir / "data" / "kernels" / GPU_KERNELSPEC
    if target.exists():
        return
    shutil.copytree(KernelSpecManager().get_kernel_spec("notebookos").resource_dir, target)
    spec = json.loads((target / "kernel.json").read_text())
    spec["display_name"] = "Python 3 (notebookos, 1 GPU)"
    spec["metadata"]["kernel_provisioner"]["config"] = {"gpus": 1}
    (target / "kernel.json").write_text(json.dumps(spec))


class Kernel:
    """A notebook session's kernel, started over Jupyter's REST API, driven through its connection file."""

    def __init__(self, server: LabServer, session: dict) -> None:
        self.server = server
        self.session = session
        self.id: str = session["kernel"]["id"]
        self.client = BlockingKernelClient(connection_file=str(server.base_dir / "runtime" / f"kernel-{self.id}.json"))
        self.client.load_connection_file()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=KERNEL_START_TIMEOUT_S)

    def start_cell(self, code: str) -> str:
        return self.client.execute(code)

    def wait_reply(self, msg_id: str) -> dict:
        """The execute reply of ``msg_id`` (replies to other requests are skipped)."""
        while True:
            reply = self.client.get_shell_msg(timeout=CELL_TIMEOUT_S)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"]

    def close(self) -> None:
        self.client.stop_channels()
        self.server.api("DELETE", f"api/sessions/{self.session['id']}", timeout=KERNEL_START_TIMEOUT_S)


@pytest.fixture(scope="module")
def kernel(server: LabServer) -> Iterator[Kernel]:
    """One notebook session on the 1-GPU kernelspec, shared by the module's tests."""
    session = server.api(
        "POST",
        "api/sessions",
        {
            "path": "dashboard/gpu.ipynb",
            "name": "gpu.ipynb",
            "type": "notebook",
            "kernel": {"name": GPU_KERNELSPEC},
        },
        timeout=KERNEL_START_TIMEOUT_S,
    )
    k = Kernel(server, session)
    yield k
    k.close()


def screenshot(dashboard: DashboardPage, name: str, tmp_path: Path) -> None:
    """A full-page screenshot; into docs/img/ when NOTEBOOKOS_UPDATE_SCREENSHOTS=1, else a temporary folder."""
    folder = SCREENSHOTS if os.environ.get("NOTEBOOKOS_UPDATE_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    dashboard.page.screenshot(path=str(folder / name), full_page=True)
    assert (folder / name).stat().st_size > 0


# -- tests -------------------------------------------------------------------------------------------------------


def test_lists_the_hosts_and_gpus_the_api_reports(page, server: LabServer, kernel: Kernel) -> None:
    page.set_viewport_size(LAPTOP)
    dashboard = DashboardPage(page, server).open()

    hosts = dashboard.api("hosts")["hosts"]
    gpus = dashboard.api("gpus")["gpus"]
    assert len(hosts) == HOSTS and len(gpus) == HOSTS, (hosts, gpus)
    expect(dashboard.host_cards()).to_have_count(len(hosts))
    for host in hosts:
        card = dashboard.host_card(host["name"])
        expect(card).to_have_attribute("data-state", host.get("state", "active"))
        expect(card.get_by_test_id("host-gpus")).to_have_text(f"{host['idle_gpus']} idle of {host['gpus']}")
    expect(dashboard.gpus()).to_have_count(len(gpus))
    for gpu in gpus:
        item = page.locator(f'[data-testid="gpu"][data-host="{gpu["host"]}"][data-device="{gpu["device"]}"]')
        expect(item).to_have_attribute("data-state", gpu.get("state", "idle"))
    cluster = dashboard.api("cluster")
    expect(page.get_by_test_id("summary-gpus")).to_contain_text(
        f"{cluster['gpus']['committed']} / {cluster['gpus']['total']}"
    )
    expect(page.get_by_test_id("summary-service")).to_contain_text(f"pid {cluster['pid']}")

    # The kernel's three replicas are on three hosts, as the API says.
    dashboard.show("kernels")
    api_kernel = dashboard.api(f"kernels/{kernel.id}")
    for replica in api_kernel["replicas"]:
        expect(dashboard.replica_row(kernel.id, replica["index"])).to_have_attribute("data-host", replica["host"])

    # Fits a laptop screen without sideways scrolling, and follows a dark system theme.
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    page.emulate_media(color_scheme="dark")
    expect(page.locator("body")).to_have_css("background-color", "rgb(20, 23, 28)")


def test_a_running_cell_shows_its_gpu_committed_then_idle(
    page, server: LabServer, kernel: Kernel, tmp_path: Path
) -> None:
    page.set_viewport_size(LAPTOP)
    dashboard = DashboardPage(page, server).open()
    expect(dashboard.gpus(state="idle")).to_have_count(HOSTS)

    release = tmp_path / "release"
    msg_id = kernel.start_cell(
        f"import os, time\nwhile not os.path.exists({str(release)!r}):\n    time.sleep(0.05)\n'released'"
    )
    try:
        committed = dashboard.gpus(state="committed", kernel=kernel.id)
        expect(committed).to_have_count(1, timeout=CELL_TIMEOUT_S * 1000)
        held = [g for g in dashboard.api("gpus")["gpus"] if g["kernel"] == kernel.id]
        assert [(g["host"], g["device"], g.get("state")) for g in held] == [
            (committed.get_attribute("data-host"), int(committed.get_attribute("data-device")), "committed")
        ]
        expect(page.get_by_test_id("summary-gpus")).to_contain_text(f"1 / {HOSTS}")
        # The charts draw the history the API has (a sample every few seconds since the cluster started).
        expect(page.get_by_test_id("charts")).to_have_attribute(
            "data-samples", re.compile(r"^[1-9]\d*$"), timeout=CELL_TIMEOUT_S * 1000
        )
        screenshot(dashboard, "dashboard-cluster.png", tmp_path)
    finally:
        release.touch()
    assert kernel.wait_reply(msg_id)["status"] == "ok"

    expect(dashboard.gpus(state="idle")).to_have_count(HOSTS)
    assert all(g["kernel"] is None for g in dashboard.api("gpus")["gpus"])

    dashboard.show("kernels")
    cell = dashboard.kernel_card(kernel.id).get_by_test_id("kernel-cell")
    expect(cell).to_have_attribute("data-state", "done")
    api_kernel = dashboard.api(f"kernels/{kernel.id}")
    api_cell = api_kernel["cell"]
    assert api_cell["state"] == "done" and api_cell["ended"] >= api_cell["started"] >= api_cell["submitted"]
    card = dashboard.kernel_card(kernel.id)
    expect(card.get_by_test_id("kernel-owner")).to_have_text(api_kernel["owner"] or "—")
    expect(card.get_by_test_id("kernel-notebook")).to_have_text(api_kernel["notebook"] or "—")
    screenshot(dashboard, "dashboard-kernels.png", tmp_path)


def test_killing_a_replica_from_the_page_brings_a_replacement(page, server: LabServer, kernel: Kernel) -> None:
    dashboard = DashboardPage(page, server).open(f"kernels/{kernel.id}")
    row = dashboard.replica_row(kernel.id, 1)
    expect(row).to_have_attribute("data-alive", "true")
    old_pid, old_host = row.get_attribute("data-pid"), row.get_attribute("data-host")

    row.get_by_test_id("action-kill").click()
    dashboard.confirm()
    dashboard.expect_outcome("kill-replica")

    # The replacement: a new process for replica 1 on another host, alive and caught up.
    expect(row).not_to_have_attribute("data-pid", old_pid, timeout=CELL_TIMEOUT_S * 1000)
    expect(row).to_have_attribute("data-state", "ready", timeout=CELL_TIMEOUT_S * 1000)
    replica = dashboard.api(f"kernels/{kernel.id}")["replicas"][1]
    assert replica["alive"] and str(replica["pid"]) == row.get_attribute("data-pid") != old_pid
    assert replica["restarts"] >= 1 and replica["host"] != old_host
    dashboard.show("events")
    expect(page.locator('[data-testid="event"][data-kind="replica_killed"]').first).to_be_visible()


def test_draining_a_host_moves_its_replicas_then_it_can_be_removed(page, server: LabServer, kernel: Kernel) -> None:
    dashboard = DashboardPage(page, server).open()
    drained = dashboard.api(f"kernels/{kernel.id}")["replicas"][0]["host"]
    card = dashboard.host_card(drained)

    card.get_by_test_id("action-drain").press("Enter")  # keyboard-reachable, like every control
    dashboard.confirm()
    dashboard.expect_outcome("drain-host")
    expect(card).to_have_attribute("data-state", "draining")
    expect(card).to_have_attribute("data-replicas", "0", timeout=CELL_TIMEOUT_S * 1000)

    # The page and the API agree: the kernel's three replicas live on the other hosts.
    dashboard.show("kernels")
    rows = dashboard.kernel_card(kernel.id).get_by_test_id("replica")
    expect(rows).to_have_count(3)
    expect(rows.and_(page.locator(f'[data-host="{drained}"]'))).to_have_count(0)
    api_kernel = dashboard.api(f"kernels/{kernel.id}")
    assert drained not in {r["host"] for r in api_kernel["replicas"]}
    for replica in api_kernel["replicas"]:
        expect(dashboard.replica_row(kernel.id, replica["index"])).to_have_attribute("data-host", replica["host"])
    api_host = next(h for h in dashboard.api("hosts")["hosts"] if h["name"] == drained)
    assert api_host["state"] == "draining" and api_host["replicas"] == 0

    # A drained host can be removed; a new one added takes its place.
    dashboard.show("cluster")
    card.get_by_test_id("action-remove").click()
    dashboard.confirm()
    dashboard.expect_outcome("remove-host")
    expect(card).to_have_count(0)
    remaining = {h["name"] for h in dashboard.api("hosts")["hosts"]}
    assert drained not in remaining and len(remaining) == HOSTS - 1

    page.get_by_test_id("action-add-host").click()
    dashboard.confirm()
    added = dashboard.expect_outcome("add-host")
    [new_host] = [h for h in dashboard.api("hosts")["hosts"] if h["name"] not in remaining]
    expect(added).to_contain_text(new_host["name"])
    expect(dashboard.host_card(new_host["name"])).to_be_visible()
    expect(dashboard.host_cards()).to_have_count(HOSTS)


def test_a_host_can_be_resized_and_receive_a_migrated_replica(page, server: LabServer, kernel: Kernel) -> None:
    dashboard = DashboardPage(page, server).open()
    replicas = dashboard.api(f"kernels/{kernel.id}")["replicas"]
    [spare] = [h["name"] for h in dashboard.api("hosts")["hosts"] if h["name"] not in {r["host"] for r in replicas}]

    card = dashboard.host_card(spare)
    card.get_by_test_id("action-resize").click()
    dashboard.confirm({"gpus": "2"})
    dashboard.expect_outcome("resize-host")
    expect(card.get_by_test_id("host-gpus")).to_have_text("2 idle of 2")
    assert next(h for h in dashboard.api("hosts")["hosts"] if h["name"] == spare)["gpus"] == 2

    dashboard.show("kernels")
    row = dashboard.replica_row(kernel.id, 2)
    row.get_by_test_id("action-migrate").click()
    dashboard.confirm({"host": spare})
    dashboard.expect_outcome("migrate-replica")
    expect(row).to_have_attribute("data-host", spare)
    expect(row).to_have_attribute("data-state", "ready", timeout=CELL_TIMEOUT_S * 1000)
    assert dashboard.api(f"kernels/{kernel.id}")["replicas"][2]["host"] == spare


def test_a_user_without_admin_rights_sees_the_page_read_only(page, reader_server: LabServer, kernel: Kernel) -> None:
    dashboard = DashboardPage(page, reader_server).open()
    expect(page.get_by_test_id("readonly-banner")).to_be_visible()
    expect(page.get_by_test_id("who")).to_contain_text("read-only")
    expect(dashboard.host_cards()).to_have_count(len(dashboard.api("hosts")["hosts"]))
    expect(dashboard.action_buttons()).to_have_count(0)
    dashboard.show("kernels")
    expect(page.get_by_test_id("kernel-card").first).to_be_visible()
    expect(dashboard.action_buttons()).to_have_count(0)
    assert dashboard.api("me")["admin"] is False

    # What the page does not offer, the API refuses too.
    host = dashboard.api("hosts")["hosts"][0]["name"]
    for method, path in (
        ("POST", f"hosts/{host}/drain"),
        ("POST", f"kernels/{kernel.id}/replicas/0/kill"),
        ("DELETE", f"kernels/{kernel.id}"),
    ):
        status, body = dashboard.api_as_page(method, path)
        assert status == 403, (method, path, status, body)
        assert "admin" in body["message"], body
