"""Helpers for the labextension's browser tests: a real ``notebookos lab`` for them, and page objects for what the
extension adds to JupyterLab (the launcher card, the Kernel menu entry, the status-bar item).

Every wait is one of Playwright's auto-waiting assertions or ``wait_for_function`` on what the page shows, never a
fixed sleep. The status-bar item's texts are also recorded as they change (a MutationObserver in the page), so a
state that lasts a second, such as a replica migrating, is seen however Playwright spaces its polls.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
import urllib.error
from pathlib import Path
from collections.abc import Sequence

from playwright.sync_api import Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from lab_page import Notebook
from lab_server import LabServer, ServerStartError, _free_port, prepare_lab_dirs

NOTEBOOKOS = Path(sys.prefix) / "bin" / "notebookos"
LABEXTENSION = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "notebookos"
OPEN_DASHBOARD = "notebookos:open-dashboard"


def labextension_problem() -> str | None:
    """Why JupyterLab in this environment would not load the extension, or None."""
    if not (LABEXTENSION / "package.json").is_file():
        return (
            f"the notebookos labextension is not installed at {LABEXTENSION}: `make install` links "
            "labextension/prebuilt there (a wheel installs it as data files)"
        )
    if not any((LABEXTENSION / "static").glob("remoteEntry.*.js")):
        return f"{LABEXTENSION / 'static'} holds no remoteEntry.*.js: run `make labextension` to build it"
    return None


def start_notebookos_lab(base_dir: Path, extra_args: Sequence[str] = (), startup_timeout: float = 120.0) -> LabServer:
    """``notebookos lab`` (its embedded cluster plus JupyterLab) on a free loopback port, isolated from the user's
    Jupyter folders as ``lab_server.start_lab_server`` isolates ``jupyter lab``; returns once ``/api/status`` and the
    extension's ``/api/notebookos/cluster`` answer. ``LabServer.stop()`` shuts it down (JupyterLab's shutdown makes
    ``notebookos lab`` stop its cluster and exit)."""
    root_dir, env = prepare_lab_dirs(base_dir)
    port, token = _free_port(), secrets.token_hex(24)
    log_path = base_dir / "notebookos-lab.log"
    cmd = [
        str(NOTEBOOKOS),
        "lab",
        *extra_args,
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=root_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = LabServer(
        url=f"http://127.0.0.1:{port}/",
        token=token,
        root_dir=root_dir,
        base_dir=base_dir,
        log_path=log_path,
        process=proc,
        extra_args=tuple(extra_args),
    )
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            server.api("GET", "api/status", timeout=2)
            server.api("GET", "api/notebookos/cluster", timeout=5)
            return server
        except (urllib.error.URLError, OSError, ValueError):
            pass
        try:
            proc.wait(timeout=0.2)  # the poll's interval; returns at once if the command exits
        except subprocess.TimeoutExpired:
            pass
    server.stop()
    raise ServerStartError(
        f"`{' '.join(cmd)}` did not serve JupyterLab and the notebookos API within "
        f"{startup_timeout:.0f} s (exit code {proc.returncode})\n--- log ---\n{server.log_tail()}"
    )


# -- the launcher card and the menu entry ----------------------------------------------------------------------------


def dashboard_launcher_card(page: Page) -> Locator:
    return page.locator('.jp-Launcher .jp-LauncherCard[data-category="Other"]').filter(
        has_text=re.compile(r"^\s*GPU Pool Dashboard\s*$")
    )


def open_menu_entry(page: Page, menu: str, command: str) -> Locator:
    """Open a menu of the main menu bar by its title; the entry of ``command`` in it."""
    page.locator("#jp-menu-panel .lm-MenuBar-item").filter(has_text=re.compile(rf"^{re.escape(menu)}$")).click()
    return page.locator(f'.lm-Menu .lm-Menu-item[data-command="{command}"]')


def expect_dashboard(dashboard: Page, server: LabServer, timeout_ms: float = 60_000) -> None:
    """The page is the notebookos dashboard of this server, showing its hosts."""
    expect(dashboard).to_have_url(re.compile("^" + re.escape(server.url) + r"notebookos/(#.*)?$"), timeout=timeout_ms)
    expect(dashboard.get_by_test_id("view-cluster")).to_be_visible(timeout=timeout_ms)
    hosts = server.api("GET", "api/notebookos/hosts")["hosts"]
    for host in hosts:
        expect(dashboard.locator(f'[data-testid="host-card"][data-host="{host["name"]}"]')).to_be_visible(
            timeout=timeout_ms
        )


# -- the status-bar item -------------------------------------------------------------------------------------------

# Records every text the item shows, in order, in window.__notebookosGpuTexts (its label, and "" while hidden).
_RECORD_TEXTS = """() => {
  if (window.__notebookosGpuTexts) return;
  const texts = window.__notebookosGpuTexts = [];
  const read = () => {
    const item = document.querySelector('#jp-main-statusbar .notebookos-GpuStatus');
    const shown = item && !item.closest('.lm-mod-hidden') ? item.querySelector('.notebookos-GpuStatus-label')
      .textContent : '';
    if (texts[texts.length - 1] !== shown) texts.push(shown);
  };
  new MutationObserver(read).observe(document.getElementById('jp-main-statusbar'),
    {subtree: true, childList: true, characterData: true, attributes: true});
  read();
}"""


class GpuStatus:
    """The extension's status-bar item, showing the state of kernel ``kernel_id`` of ``server`` (whose model and
    events a failed assertion reports beside what the item showed)."""

    def __init__(self, page: Page, server: LabServer, kernel_id: str, timeout_ms: float = 120_000) -> None:
        self.page = page
        self.server = server
        self.kernel_id = kernel_id
        self.timeout_ms = timeout_ms
        self.item = page.locator("#jp-main-statusbar .notebookos-GpuStatus")
        self.label = self.item.locator(".notebookos-GpuStatus-label")
        self.detail = self.item.locator(".notebookos-GpuStatus-detail")
        page.evaluate(_RECORD_TEXTS)

    def expect_text(self, text: str | re.Pattern[str]) -> None:
        try:
            expect(self.item).to_be_visible(timeout=self.timeout_ms)
            expect(self.label).to_have_text(text, timeout=self.timeout_ms)
        except AssertionError as exc:
            raise AssertionError(f"the status bar did not show {text!r}: {self.diagnose()}") from exc

    def diagnose(self) -> str:
        """What the item showed, and what the API says of the kernel, for an assertion's message."""
        lines = [f"the item showed, in order: {self.texts()}"]
        try:
            model = self.server.api("GET", f"api/notebookos/kernels/{self.kernel_id}")
            lines.append(f"replicas: {[(r['index'], r['host'], r['state'], r['restarts']) for r in model['replicas']]}")
            lines.append(f"cell: {model['cell']}")
            events = self.server.api("GET", f"api/notebookos/events?kernel={self.kernel_id}")["events"]
            lines += [
                f"  event {e['kind']} replica={e['replica']} host={e['host']}: {e['reason'][:160]}"
                for e in events[-25:]
            ]
        except (urllib.error.URLError, OSError, ValueError) as err:
            lines.append(f"the API did not answer: {err}")
        return "\n".join(lines)

    def texts(self) -> list[str]:
        """Every text the item showed since this object was made, in order."""
        return self.page.evaluate("() => window.__notebookosGpuTexts")

    def wait_until_shown(self, pattern: str) -> None:
        """Until the item has shown a text matching the regular expression ``pattern`` (now or since recording)."""
        try:
            self.page.wait_for_function(
                "p => window.__notebookosGpuTexts.some(t => new RegExp(p).test(t))",
                arg=pattern,
                timeout=self.timeout_ms,
            )
        except PlaywrightTimeout as exc:
            raise AssertionError(f"the status bar never showed /{pattern}/: {self.diagnose()}") from exc


# -- cells that keep running ---------------------------------------------------------------------------------------


def start_cell(nb: Notebook, code: str) -> Locator:
    """Type ``code`` into the notebook's last (empty) cell and run it with Shift+Enter, without waiting for it to
    end; its prompt, which turns to ``[n]:`` when it has."""
    cell = nb.cells.nth(nb.cells.count() - 1)
    editor = cell.locator(".jp-InputArea-editor .cm-content")
    prompt = cell.locator(".jp-InputArea-prompt")
    expect(prompt).to_have_text(re.compile(r"^\[\s*\]:$"))
    editor.click()
    expect(cell).to_have_class(re.compile(r"\bjp-mod-active\b"))
    nb.page.keyboard.insert_text(code)
    expect(editor.locator(".cm-line")).to_have_text(code.split("\n"))
    editor.press("Shift+Enter")
    expect(prompt).to_have_text("[*]:")
    return prompt


def expect_cell_done(prompt: Locator, timeout_ms: float = 120_000) -> None:
    expect(prompt).to_have_text(re.compile(r"^\[\d+\]:$"), timeout=timeout_ms)
