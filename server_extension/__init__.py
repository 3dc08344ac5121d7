"""The notebookos Jupyter Server extension: the REST API under ``/api/notebookos/`` (see :mod:`.api`) and the admin
dashboard at ``/notebookos/`` (see :mod:`.dashboard`), both showing each user what :mod:`.permissions` allows.

Enabled with ``--ServerApp.jpserver_extensions={'notebookos.server_extension': True}``, which ``notebookos lab``
passes to the Jupyter server it starts. Jupyter Server is imported only when the extension loads, so the
``notebookos`` command line stays quick to start.
"""
from __future__ import annotations

from typing import Any

EXTENSION_NAME = "notebookos.server_extension"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": EXTENSION_NAME}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from .api import load as load_api
    from .dashboard import load as load_dashboard
    from .permissions import install as install_permissions

    install_permissions(serverapp)
    load_api(serverapp)
    load_dashboard(serverapp)
