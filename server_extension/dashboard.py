"""The admin dashboard: the static page in ``frontend/``, served at ``{base_url}notebookos/``.

The page is plain HTML, CSS and ES modules (no build step) that talk only to the REST API under
``/api/notebookos/``. This module serves it behind Jupyter Server's authentication, like JupyterLab itself: a browser
without a login is redirected to Jupyter's login page, and seeing the page needs ``read`` on the ``notebookos``
resource. What the page may *do* is decided by the API on every request (:mod:`.permissions`); the page only asks
``GET me`` so it can hide what would be refused.

The assets are located with :mod:`importlib.resources` as the package ``notebookos.frontend`` (``frontend/`` mapped in
``pyproject.toml``), so the same code serves them from an editable checkout and from an installed wheel.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import web

from .permissions import RESOURCE, request_access

DASHBOARD_PATH = "notebookos/"
STATIC_PATH = "notebookos/static/"
# Replaced in index.html by the page's settings (JSON in a <script type="application/json"> element).
SETTINGS_PLACEHOLDER = "{{NOTEBOOKOS_SETTINGS}}"
STATIC_PLACEHOLDER = "{{NOTEBOOKOS_STATIC}}"

# Only this origin's scripts, styles and connections. Inline styles stay allowed: the charting library sizes its
# canvases through element styles.
_PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'"
)


def frontend_dir() -> Path:
    """The folder of the dashboard's static files, wherever the package is installed."""
    root = files("notebookos.frontend")
    path = Path(str(root))
    if not (path / "index.html").is_file():
        raise FileNotFoundError(f"the notebookos dashboard's index.html is missing from {path}")
    return path


@lru_cache(maxsize=1)
def _index_template() -> str:
    return (frontend_dir() / "index.html").read_text(encoding="utf-8")


def render_index(base_url: str, admin: bool, user: str) -> str:
    """index.html with the page's settings filled in.

    ``admin`` is a hint the page uses only if the API's ``GET me`` cannot be reached; the API checks every action.
    The JSON is made safe for a ``<script>`` element (no ``</``), and the static URL is plain path characters.
    """
    settings = json.dumps({"baseUrl": base_url, "admin": admin, "user": user}).replace("</", "<\\/")
    static = url_path_join(base_url, STATIC_PATH)
    return _index_template().replace(SETTINGS_PLACEHOLDER, settings).replace(STATIC_PLACEHOLDER, static)


class DashboardHandler(JupyterHandler):
    """The page itself. Reading the XSRF token here sets the ``_xsrf`` cookie that the page's POSTs send back."""

    auth_resource = RESOURCE

    @property
    def content_security_policy(self) -> str:
        return f"{super().content_security_policy}; {_PAGE_CSP}"

    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self) -> None:
        _ = self.xsrf_token
        access = await request_access(self)
        user = getattr(self.current_user, "display_name", None) or getattr(self.current_user, "username", "")
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(render_index(self.base_url, access.admin, str(user)))


class DashboardStaticHandler(JupyterHandler, web.StaticFileHandler):
    """The page's scripts, styles and the vendored charting library.

    ``no-cache`` with validators (tornado's ETag and Last-Modified): a browser revalidates each asset and gets 304
    when it is unchanged, so an upgraded package never runs with stale modules.
    """

    auth_resource = RESOURCE

    # The ignore: tornado's @authenticated is annotated to return Callable[..., Awaitable[None] | None], which hides
    # that this is StaticFileHandler.get's coroutine with its signature.
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self, path: str, include_body: bool = True) -> None:  # type: ignore[override]
        await web.StaticFileHandler.get(self, path, include_body)

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")

    def get_content_type(self) -> str:
        # Module scripts must be served with a JavaScript type; do not depend on the machine's mime.types.
        if self.absolute_path and self.absolute_path.endswith((".js", ".mjs")):
            return "text/javascript; charset=UTF-8"
        return super().get_content_type()


def handlers(static_path: str) -> list[tuple[Any, ...]]:
    """The dashboard's routes, relative to the server's base URL; ``static_path``: the folder of its files."""
    return [
        (DASHBOARD_PATH.rstrip("/") + "/?", DashboardHandler),
        (STATIC_PATH + "(.*)", DashboardStaticHandler, {"path": static_path}),
    ]
