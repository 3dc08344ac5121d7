"""Fixtures for the end-to-end browser tests: a real JupyterLab server and headless Chromium (Playwright).

One server and one browser per test session; each test gets a fresh browser context and page whose console errors
and uncaught page errors fail the test.

Other modules in tests/e2e use them like this::

    def test_something(lab):                      # JupyterLab open in a fresh workspace on the shared server
        nb = lab.new_notebook("Python 3 (ipykernel)")
        assert nb.run_cell("1 + 1").execute_result == "2"

    @pytest.fixture(scope="module")
    def dashboard_server(lab_server_factory):     # a second server with extra command-line arguments
        return lab_server_factory(["--ServerApp.jpserver_extensions={'notebookos.server_extension': True}"])

    def test_dashboard(page, dashboard_server):   # `page` records console errors; the server gives URL + token
        page.goto(dashboard_server.lab_url("notebookos/"))
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from collections.abc import Callable, Iterator, Sequence

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so test modules and this file can import the helper modules

from chromium import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, missing_reason  # noqa: E402
from lab_server import LabServer, start_lab_server  # noqa: E402


# Console messages of type "error" that are not failures: (pattern searched in the message text, why it is harmless).
# Everything else fails the test. JupyterLab 4.6 on this server logs no error while loading, creating a notebook,
# starting a kernel and running cells (what it logs is at "debug" level), so the list starts empty. The news feed
# and the update check, which would reach for the internet, are switched off at the server (lab_server.py) rather
# than allow-listed here. Add an entry only for a message seen in a real run, with its reason, e.g.
#     (re.compile(r"^Failed to load resource: .* 404 .*/api/example"), "optional endpoint probed by plugin X"),
CONSOLE_ERROR_ALLOWLIST: list[tuple[re.Pattern[str], str]] = []


# -- server ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def lab_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LabServer]]:
    """Start (or reuse) a JupyterLab server: ``factory(extra_args=())``.

    Servers are cached by their extra arguments, so every module asking for the same configuration shares one
    server; all of them are shut down, kernels included, at the end of the session.
    """
    servers: dict[tuple[str, ...], LabServer] = {}

    def factory(extra_args: Sequence[str] = ()) -> LabServer:
        key = tuple(extra_args)
        if key not in servers:
            base = tmp_path_factory.mktemp("jupyterlab")
            servers[key] = start_lab_server(base, extra_args=key)
        return servers[key]

    yield factory
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="session")
def lab_server(lab_server_factory: Callable[..., LabServer]) -> LabServer:
    """The plain JupyterLab server (no extra arguments): ``.url``, ``.token``, ``.lab_url()``, ``.api()``."""
    return lab_server_factory()


# -- browser -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """One Chromium per test module. Not per session: Playwright's sync API keeps an asyncio loop running on the
    main thread while it is open, which breaks later tests that run their own loop (pytest-jupyter's server)."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class ConsoleRecorder:
    """Every console message and page error of one page."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.errors: list[str] = []

    def on_console(self, msg) -> None:
        loc = msg.location or {}
        where = f" ({loc.get('url', '')}:{loc.get('lineNumber', '')})" if loc.get("url") else ""
        line = f"[{msg.type}] {msg.text}{where}"
        self.messages.append(line)
        if msg.type == "error" and not any(p.search(msg.text) for p, _ in CONSOLE_ERROR_ALLOWLIST):
            self.errors.append(line)

    def on_page_error(self, exc) -> None:
        line = f"[pageerror] {exc}"
        self.messages.append(line)
        self.errors.append(line)

    def on_crash(self, _page) -> None:
        self.messages.append("[crash] the page crashed")
        self.errors.append("[crash] the page crashed")


_console_key = pytest.StashKey[ConsoleRecorder]()


@pytest.fixture
def page(browser, request: pytest.FixtureRequest):
    """A page in a fresh browser context; console errors and page errors make the test fail."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(30_000)
    pg = context.new_page()
    recorder = ConsoleRecorder()
    pg.on("console", recorder.on_console)
    pg.on("pageerror", recorder.on_page_error)
    pg.on("crash", recorder.on_crash)
    request.node.stash[_console_key] = recorder
    yield pg
    context.close()


@pytest.fixture
def lab(page, lab_server: LabServer):
    """JupyterLab open in a fresh workspace on the shared server; kernels it started are shut down afterwards."""
    from lab_page import LabPage

    lab = LabPage(page, lab_server).open()
    yield lab
    lab.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """Fail a passing browser test that logged console/page errors; on any failure keep a screenshot and the log."""
    recorder = item.stash.get(_console_key, None)
    try:
        result = yield
    except BaseException:
        if recorder is not None:
            _attach_diagnostics(item, recorder)
        raise
    if recorder is not None and recorder.errors:
        _attach_diagnostics(item, recorder)
        pytest.fail("browser console errors:\n  " + "\n  ".join(recorder.errors), pytrace=False)
    return result


def _attach_diagnostics(item: pytest.Item, recorder: ConsoleRecorder) -> None:
    item.add_report_section("call", "browser console", "\n".join(recorder.messages) or "<empty>")
    pg = item.funcargs.get("page")
    if pg is None:
        return
    try:
        out_dir = Path(item.config._tmp_path_factory.getbasetemp()) / "e2e-failures"  # type: ignore[attr-defined]
        out_dir.mkdir(parents=True, exist_ok=True)
        shot = out_dir / (re.sub(r"[^\w.-]+", "_", item.nodeid) + ".png")
        pg.screenshot(path=str(shot))
        item.add_report_section("call", "browser screenshot", str(shot))
    except Exception as exc:  # noqa: BLE001 - diagnostics must not hide the real failure
        item.add_report_section("call", "browser screenshot", f"<failed: {exc}>")
