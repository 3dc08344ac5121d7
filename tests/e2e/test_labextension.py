"""The notebookos labextension end to end: a real ``notebookos lab`` (an embedded cluster of 4 logical hosts with 1
virtual GPU each, and JupyterLab with the extension installed in this environment), driven in headless Chromium.

- The launcher card and the Kernel menu entry open the GPU pool dashboard in a new tab.
- The status-bar item follows the current notebook's notebookos kernel, live from the API's event stream: idle, a
  GPU held while a cell runs, a cell waiting for GPUs (with the scheduler's reason), a replica migrating for a cell's
  GPUs, a replica being replaced after it was killed; it is hidden for a notebook on another kernel.

Every state is cross-checked against the REST API (``GET api/notebookos/kernels/{id}``).
"""

from __future__ import annotations

import re
from pathlib import Path
from collections.abc import Iterator

import pytest

from chromium import missing_reason

_missing = missing_reason()
if _missing:
    pytest.skip(f"browser tests need Chromium and Playwright: {_missing}", allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

from lab_page import LabPage  # noqa: E402
from lab_server import LabServer  # noqa: E402
from labextension_page import (  # noqa: E402
    OPEN_DASHBOARD,
    GpuStatus,
    dashboard_launcher_card,
    expect_cell_done,
    expect_dashboard,
    labextension_problem,
    open_menu_entry,
    start_cell,
    start_notebookos_lab,
)

pytestmark = pytest.mark.browser

HOSTS = 4
NOTEBOOKOS_KERNEL = "Python 3 (notebookos)"
API = "api/notebookos/"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    problem = labextension_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    server = start_notebookos_lab(
        tmp_path_factory.mktemp("labextension"), ["--hosts", str(HOSTS), "--gpus-per-host", "1"]
    )
    yield server
    server.stop()


@pytest.fixture
def lab(page, server: LabServer) -> Iterator[LabPage]:
    lab = LabPage(page, server, timeout_ms=60_000).open()
    yield lab
    lab.close()


def kernel_model(server: LabServer, kernel_id: str) -> dict:
    return server.api("GET", f"{API}kernels/{kernel_id}")


def show_notebook(lab: LabPage, nb) -> None:
    """Make a notebook the current widget by clicking its tab, as a user would."""
    lab.page.locator("#jp-main-dock-panel .lm-TabBar-tabLabel").filter(
        has_text=re.compile("^" + re.escape(nb.session["name"]) + "$")
    ).click()
    expect(nb.panel).to_be_visible()


def test_the_launcher_card_and_the_kernel_menu_open_the_dashboard(lab: LabPage, server: LabServer) -> None:
    page = lab.page
    card = dashboard_launcher_card(page)
    expect(card).to_have_count(1)
    expect(card).to_have_attribute("title", re.compile("GPU pool"))
    with page.context.expect_page() as opened:
        card.click()
    dashboard = opened.value
    errors: list[str] = []
    dashboard.on("pageerror", lambda exc: errors.append(str(exc)))
    expect_dashboard(dashboard, server)
    dashboard.close()

    entry = open_menu_entry(page, "Kernel", OPEN_DASHBOARD)
    expect(entry).to_have_text(re.compile(r"Open GPU Pool Dashboard"))
    with page.context.expect_page() as opened:
        entry.click()
    dashboard = opened.value
    dashboard.on("pageerror", lambda exc: errors.append(str(exc)))
    expect_dashboard(dashboard, server)
    assert not errors, errors


def test_the_status_bar_shows_the_gpu_a_running_cell_holds(lab: LabPage, server: LabServer, tmp_path: Path) -> None:
    nb = lab.new_notebook(NOTEBOOKOS_KERNEL)
    kernel_id = nb.session["kernel"]["id"]
    status = GpuStatus(lab.page, server, kernel_id)
    status.expect_text("GPU: idle")
    expect(status.item).to_have_attribute("title", re.compile(r"No cell of this kernel holds a GPU"))

    nb.run_cell("%gpus 1")
    release = tmp_path / "release"
    prompt = start_cell(nb, f"import os, time\nwhile not os.path.exists({str(release)!r}):\n    time.sleep(0.05)")
    try:
        status.expect_text("GPU: 1 held")
        cell = kernel_model(server, kernel_id)["cell"]
        assert cell["state"] == "running" and cell["gpus"] == 1 and len(cell["devices"]) == 1, cell
        expect(status.item).to_have_attribute(
            "title", re.compile(rf"holds 1 GPU on {re.escape(cell['host'])} \(device {cell['devices'][0]}\)")
        )
        expect(status.item).to_have_attribute("data-state", "held")
    finally:
        release.touch()
    expect_cell_done(prompt)
    status.expect_text("GPU: idle")
    assert kernel_model(server, kernel_id)["cell"]["state"] == "done"

    # Another kernel's notebook: nothing to say, the item goes; back on the notebookos notebook, it comes back.
    lab.page.locator("#jp-main-dock-panel .lm-TabBar-addButton").first.click()  # a new launcher
    lab.new_notebook("Python 3 (ipykernel)")
    expect(status.item).to_be_hidden()
    show_notebook(lab, nb)
    status.expect_text("GPU: idle")


def test_the_status_bar_shows_a_cell_waiting_a_migration_and_a_replacement(
    lab: LabPage, server: LabServer, tmp_path: Path
) -> None:
    nb = lab.new_notebook(NOTEBOOKOS_KERNEL)
    kernel_id = nb.session["kernel"]["id"]
    status = GpuStatus(lab.page, server, kernel_id)
    status.expect_text("GPU: idle")

    # One host gets 2 GPUs: one that holds no replica of this kernel.
    hosts = [h["name"] for h in server.api("GET", f"{API}hosts")["hosts"]]
    spare = next(h for h in hosts if h not in {r["host"] for r in kernel_model(server, kernel_id)["replicas"]})
    server.api("PATCH", f"{API}hosts/{spare}", {"gpus": 2})

    # A second notebook's cell takes both (its replica moves there if it has none there), and keeps them.
    lab.page.locator("#jp-main-dock-panel .lm-TabBar-addButton").first.click()  # a new launcher
    other = lab.new_notebook(NOTEBOOKOS_KERNEL)
    other_status = GpuStatus(lab.page, server, other.session["kernel"]["id"])
    release = tmp_path / "release"
    other_prompt = start_cell(
        other, f"%gpus 2\nimport os, time\nwhile not os.path.exists({str(release)!r}):\n    time.sleep(0.05)"
    )
    try:
        other_status.expect_text("GPU: 2 held")

        # Back on the first notebook: its own state. Its cell asks for 2 GPUs, which only the busy host has: it
        # waits, and the status bar says why, in the scheduler's words.
        show_notebook(lab, nb)
        status.expect_text("GPU: idle")
        prompt = start_cell(nb, "%gpus 2\nprint('ran with 2 GPUs')")
        status.expect_text("GPU: waiting")
        cell = kernel_model(server, kernel_id)["cell"]
        assert cell["state"] == "queued" and cell["decision"] == "queued" and cell["gpus"] == 2, cell
        reason = cell["reason"].removeprefix("queued: ")
        expect(status.detail).to_have_text(reason)
        expect(status.item).to_have_attribute("title", re.compile(r"waits for 2 GPUs: " + re.escape(reason)))
        expect(status.item).to_have_attribute("data-state", "waiting")
    finally:
        release.touch()
    expect_cell_done(other_prompt)

    # The GPUs are free: a replica of this kernel migrates to their host and runs the cell there.
    status.wait_until_shown(r"^GPU: migrating")
    expect_cell_done(prompt)
    status.expect_text("GPU: idle")
    assert "ran with 2 GPUs" in nb.cells.nth(nb.cells.count() - 2).inner_text()
    assert spare in {r["host"] for r in kernel_model(server, kernel_id)["replicas"]}

    # A replica killed (a fault drill): the scheduler replaces it, and the status bar says so until it is ready.
    server.api("POST", f"{API}kernels/{kernel_id}/replicas/1/kill")
    status.wait_until_shown(r"replica 1 being replaced")
    status.expect_text("GPU: idle")
    replica = kernel_model(server, kernel_id)["replicas"][1]
    assert replica["state"] == "ready" and replica["restarts"] >= 1, replica

    # A replica moved on request: migrating, then ready on its new host.
    replicas = kernel_model(server, kernel_id)["replicas"]
    target = next(h for h in hosts if h not in {r["host"] for r in replicas})
    server.api("POST", f"{API}kernels/{kernel_id}/replicas/0/migrate", {"host": target}, timeout=120)
    status.wait_until_shown(r"replica 0 migrating")
    status.expect_text("GPU: idle")
    assert kernel_model(server, kernel_id)["replicas"][0]["host"] == target
