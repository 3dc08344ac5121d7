"""Page objects for JupyterLab 4 driven by Playwright (sync API).

Every wait here is on real UI state (an element appearing, a prompt getting its execution count, the status bar
showing the kernel idle), never a fixed sleep. Selectors are JupyterLab's own stable class names and data
attributes (the same ones JupyterLab's Galata test helpers use).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, expect

from lab_server import LabServer

STDOUT = "application/vnd.jupyter.stdout"
STDERR = "application/vnd.jupyter.stderr"
TEXT = "text/plain"


@dataclass
class CellOutput:
    """What one executed cell shows: its execution count and every output, in order, as (mime type, text)."""

    execution_count: int
    outputs: list[tuple[str, str]] = field(default_factory=list)
    execute_result: str | None = None  # text of the Out[n] result, if the cell produced one

    @property
    def stdout(self) -> str:
        return "".join(text for mime, text in self.outputs if mime == STDOUT)

    @property
    def stderr(self) -> str:
        return "".join(text for mime, text in self.outputs if mime == STDERR)

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.outputs)


class LabPage:
    """The JupyterLab application in one browser page, talking to one ``LabServer``."""

    def __init__(self, page: Page, server: LabServer, timeout_ms: float = 30_000):
        self.page = page
        self.server = server
        self.timeout_ms = timeout_ms
        self.notebooks: list[Notebook] = []

    # -- application -----------------------------------------------------------------------------------------------

    def open(self, workspace: str | None = None) -> LabPage:
        """Load JupyterLab in a fresh workspace (``?reset``): a known layout with the launcher, nothing restored."""
        workspace = workspace or f"e2e-{uuid.uuid4().hex[:8]}"
        self.page.goto(self.server.lab_url(f"lab/workspaces/{workspace}?reset"))
        # The splash screen goes once the shell is laid out; the launcher is the first thing a fresh workspace shows.
        expect(self.page.locator("#jupyterlab-splash")).to_have_count(0, timeout=self.timeout_ms * 2)
        expect(self.page.locator("#jp-main-dock-panel")).to_be_visible(timeout=self.timeout_ms)
        expect(self.page.locator(".jp-Launcher").first).to_be_visible(timeout=self.timeout_ms)
        return self

    @property
    def statusbar(self) -> Locator:
        return self.page.locator("#jp-main-statusbar")

    def launcher_card(self, display_name: str, category: str = "Notebook") -> Locator:
        """The launcher card for a kernel, by its display name (the card's title), in a section (Notebook/Console)."""
        return self.page.locator(f'.jp-Launcher .jp-LauncherCard[data-category="{category}"]').and_(
            self.page.get_by_title(display_name, exact=True)
        )

    def new_notebook(self, kernel_display_name: str, kernel_timeout_ms: float = 120_000) -> Notebook:
        """Create a notebook from the launcher card of ``kernel_display_name``; return once its kernel is idle."""
        card = self.launcher_card(kernel_display_name)
        try:
            expect(card).to_have_count(1, timeout=self.timeout_ms)
        except AssertionError as exc:
            cards = self.page.locator('.jp-LauncherCard[data-category="Notebook"]').all_inner_texts()
            raise AssertionError(
                f"no launcher card for kernel {kernel_display_name!r}; notebook cards: {cards}"
            ) from exc

        sessions_before = {s["id"] for s in self.server.api("GET", "api/sessions")}
        panels_before = self.page.locator(".jp-NotebookPanel").evaluate_all("els => els.map(e => e.id)")
        card.click()
        # The new notebook panel is the one whose id was not there before the click.
        handle = self.page.wait_for_function(
            """before => {
                const p = [...document.querySelectorAll('.jp-NotebookPanel')].find(e => !before.includes(e.id));
                return p ? p.id : null;
            }""",
            arg=panels_before,
            timeout=self.timeout_ms,
        )
        panel_id = handle.json_value()
        notebook = Notebook(self, self.page.locator(f'[id="{panel_id}"]'), kernel_display_name)
        notebook.wait_for_kernel_idle(kernel_timeout_ms)

        # Cross-check with the server: exactly one new notebook session, running the kernelspec we asked for.
        new = [s for s in self.server.api("GET", "api/sessions") if s["id"] not in sessions_before]
        assert len(new) == 1, f"expected one new session after creating the notebook, got {new}"
        notebook.session = new[0]
        specs = self.server.api("GET", "api/kernelspecs")["kernelspecs"]
        spec_name = notebook.session["kernel"]["name"]
        assert specs[spec_name]["spec"]["display_name"] == kernel_display_name, (
            f"notebook runs kernelspec {spec_name!r}, not the one displayed as {kernel_display_name!r}"
        )
        self.notebooks.append(notebook)
        return notebook

    def screenshot(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))
        return path

    def close(self) -> None:
        """Shut down the kernels of the notebooks this page created (through the REST API)."""
        for nb in self.notebooks:
            if nb.session is not None:
                try:
                    self.server.api("DELETE", f"api/sessions/{nb.session['id']}", timeout=60)
                except Exception:  # noqa: BLE001 - best effort; the server's shutdown kills leftovers
                    pass
        self.notebooks.clear()

    def describe_state(self) -> str:
        """Status bar text and any open dialog, for assertion messages."""
        parts = []
        try:
            parts.append(
                "status bar: "
                + " | ".join(
                    t.strip()
                    for t in self.statusbar.locator(".jp-StatusBar-Item:not(.lm-mod-hidden)").all_inner_texts()
                    if t.strip()
                )
            )
            dialogs = self.page.locator(".jp-Dialog").all_inner_texts()
            if dialogs:
                parts.append("dialog: " + " / ".join(d.replace("\n", " ") for d in dialogs))
            toasts = self.page.locator(".Toastify__toast").all_inner_texts()
            if toasts:
                parts.append("notifications: " + " / ".join(t.replace("\n", " ") for t in toasts))
        except PlaywrightError as exc:
            parts.append(f"<could not read page state: {exc}>")
        return "; ".join(parts)


class Notebook:
    """One open notebook panel."""

    def __init__(self, lab: LabPage, panel: Locator, kernel_display_name: str):
        self.lab = lab
        self.page = lab.page
        self.panel = panel
        self.kernel_display_name = kernel_display_name
        self.session: dict | None = None

    @property
    def cells(self) -> Locator:
        return self.panel.locator(".jp-Notebook .jp-Cell")

    def wait_for_kernel_idle(self, timeout_ms: float = 120_000) -> None:
        """Wait until this notebook's kernel is connected and idle.

        The toolbar's execution indicator reads "idle" for a moment before any kernel exists, so it is not enough on
        its own; the status bar's kernel item reads "<display name> | Idle" only once the kernel connection is up and
        the kernel reported idle. The notebook must be the current widget (it is, right after it is created).
        """
        expect(self.panel.locator('[data-jp-item-name="kernelName"]')).to_have_text(
            self.kernel_display_name, timeout=self.lab.timeout_ms
        )
        kernel_status = self.lab.statusbar.locator(".jp-StatusBar-TextItem").filter(
            has_text=re.compile("^" + re.escape(self.kernel_display_name) + r" \| ")
        )
        try:
            expect(kernel_status).to_have_text(f"{self.kernel_display_name} | Idle", timeout=timeout_ms)
            expect(self.panel.locator(".jp-Notebook-ExecutionIndicator")).to_have_attribute(
                "data-status", "idle", timeout=self.lab.timeout_ms
            )
        except AssertionError as exc:
            raise AssertionError(
                f"kernel {self.kernel_display_name!r} did not become idle: {self.lab.describe_state()}"
            ) from exc

    def run_cell(self, code: str, timeout_ms: float = 60_000) -> CellOutput:
        """Type ``code`` into the last (empty) cell, run it with Shift+Enter and return its outputs.

        A cell's prompt turns from ``[ ]:``/``[*]:`` to ``[n]:`` when JupyterLab has both the execute reply and the
        kernel's idle status for that request; every output of the request precedes that idle status on IOPub, so
        by then all outputs are rendered.
        """
        index = self.cells.count() - 1
        cell = self.cells.nth(index)  # fixed index: Shift+Enter appends a new last cell
        editor = cell.locator(".jp-InputArea-editor .cm-content")
        lines = editor.locator(".cm-line")  # CodeMirror renders one element per line of the cell's source
        prompt = cell.locator(".jp-InputArea-prompt")
        expect(prompt).to_have_text(re.compile(r"^\[\s*\]:$"), timeout=self.lab.timeout_ms)
        expect(lines).to_have_text([""], timeout=self.lab.timeout_ms)

        editor.click()
        expect(cell).to_have_class(re.compile(r"\bjp-mod-active\b"), timeout=self.lab.timeout_ms)
        # insert_text types the code as one input event: no auto-closed brackets or auto-indent to fight with.
        self.page.keyboard.insert_text(code)
        expect(lines).to_have_text(code.split("\n"), timeout=self.lab.timeout_ms)
        editor.press("Shift+Enter")

        try:
            expect(prompt).to_have_text(re.compile(r"^\[\d+\]:$"), timeout=timeout_ms)
        except AssertionError as exc:
            raise AssertionError(
                f"cell did not finish within {timeout_ms / 1000:.0f}s (prompt {prompt.inner_text()!r}): "
                f"{self.lab.describe_state()}"
            ) from exc
        count = int(re.search(r"\d+", prompt.inner_text()).group())

        result = CellOutput(execution_count=count)
        for out in cell.locator(".jp-OutputArea-output").all():
            mime = out.get_attribute("data-mime-type") or ""
            result.outputs.append((mime, out.inner_text()))
        exec_result = cell.locator(".jp-OutputArea-executeResult .jp-OutputArea-output")
        if exec_result.count():
            result.execute_result = exec_result.first.inner_text()
        return result
