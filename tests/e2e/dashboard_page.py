"""Page object for the notebookos admin dashboard (``/notebookos/``), and the read-only authorizer its tests use.

Every wait is one of Playwright's auto-waiting ``expect`` assertions on what the page shows (an element with a
state, an outcome entry), never a fixed sleep. Elements are found by their ``data-testid`` and ``data-*``
attributes, which the page sets for exactly this purpose.

``ReaderAuthorizer`` is imported by the Jupyter server the read-only test starts (``--ServerApp.authorizer_class``),
so this module imports Playwright only when a page object is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jupyter_server.auth import Authorizer

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

    from lab_server import LabServer

API = "api/notebookos/"


class ReaderAuthorizer(Authorizer):
    """Everything Jupyter offers, but only ``read`` on the ``notebookos`` resource: a user who is not an admin."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return resource != "notebookos" or action == "read"


class DashboardPage:
    """The dashboard in one browser page, served by one ``LabServer``."""

    def __init__(self, page: Page, server: LabServer, timeout_ms: float = 60_000) -> None:
        self.page = page
        self.server = server
        self.timeout_ms = timeout_ms

    # -- navigation --------------------------------------------------------------------------------------------------

    def open(self, view: str = "cluster") -> DashboardPage:
        """Load the page at a view (``cluster``, ``kernels/<id>``, ``events``; the token in the address logs the
        browser in) and wait for the hosts and the live stream."""
        from playwright.sync_api import expect

        self.page.goto(f"{self.server.lab_url('notebookos/')}#{view}")
        expect(self.page.get_by_test_id(f"view-{view.split('/')[0]}")).to_be_visible(timeout=self.timeout_ms)
        expect(self.page.get_by_test_id("host-card").first).to_be_attached(timeout=self.timeout_ms)
        expect(self.page.get_by_test_id("live-status")).to_have_attribute("data-state", "live", timeout=self.timeout_ms)
        return self

    def show(self, view: str) -> None:
        """Switch views with the tab, as a user would."""
        from playwright.sync_api import expect

        self.page.get_by_test_id(f"tab-{view}").click()
        expect(self.page.get_by_test_id(f"view-{view}")).to_be_visible()

    # -- what the page shows -----------------------------------------------------------------------------------------

    def host_cards(self) -> Locator:
        return self.page.get_by_test_id("host-card")

    def host_card(self, name: str) -> Locator:
        return self.page.locator(f'[data-testid="host-card"][data-host="{name}"]')

    def gpus(self, state: str | None = None, kernel: str | None = None) -> Locator:
        selector = '[data-testid="gpu"]'
        if state:
            selector += f'[data-state="{state}"]'
        if kernel:
            selector += f'[data-kernel="{kernel}"]'
        return self.page.locator(selector)

    def kernel_card(self, kernel_id: str) -> Locator:
        return self.page.locator(f'[data-testid="kernel-card"][data-kernel="{kernel_id}"]')

    def replica_row(self, kernel_id: str, index: int) -> Locator:
        return self.kernel_card(kernel_id).locator(f'[data-testid="replica"][data-replica="{index}"]')

    def action_buttons(self) -> Locator:
        """The admin actions a user can see (and so reach with the mouse or keyboard)."""
        return self.page.locator('button[data-testid^="action-"]').filter(visible=True)

    # -- acting ------------------------------------------------------------------------------------------------------

    def confirm(self, fields: dict[str, str] | None = None) -> None:
        """Answer the open confirmation dialog: fill its fields, then confirm."""
        from playwright.sync_api import expect

        dialog = self.page.get_by_test_id("confirm-dialog")
        expect(dialog).to_be_visible()
        for name, value in (fields or {}).items():
            field = dialog.get_by_test_id(f"field-{name}")
            if field.evaluate("el => el.tagName") == "SELECT":
                field.select_option(value)
            else:
                field.fill(value)
        dialog.get_by_test_id("confirm").click()
        expect(dialog).to_be_hidden()

    def expect_outcome(self, action: str, status: str = "ok") -> Locator:
        """The newest outcome of ``action`` once it settled with ``status``; its text says what happened."""
        from playwright.sync_api import expect

        outcome = self.page.locator(f'[data-testid="action-outcome"][data-action="{action}"]').first
        expect(outcome).not_to_have_attribute("data-status", "pending", timeout=self.timeout_ms)
        if outcome.get_attribute("data-status") != status:
            raise AssertionError(f"{action}: expected outcome {status!r}, the page says: {outcome.inner_text()}")
        return outcome

    # -- the API, for cross-checks -----------------------------------------------------------------------------------

    def api(self, path: str) -> Any:
        """GET from the notebookos REST API with the server's token (not through the page)."""
        return self.server.api("GET", API + path)

    def api_as_page(self, method: str, path: str) -> tuple[int, Any]:
        """A request with the page's login cookie and XSRF token, as the page's own code would send it, made outside
        the page (so an expected error status is not logged to the browser console). Returns (status, JSON)."""
        cookies = {c["name"]: c["value"] for c in self.page.context.cookies()}
        response = self.page.request.fetch(
            self.server.url + API + path,
            method=method,
            headers={"X-XSRFToken": cookies.get("_xsrf", ""), "Referer": self.server.url + "notebookos/"},
        )
        try:
            body = response.json()
        except Exception:  # noqa: BLE001 - a body that is not JSON is reported as its text
            body = response.text()
        return response.status, body
