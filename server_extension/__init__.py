"""The notebookos Jupyter Server extension: the REST API under ``/api/notebookos/`` (see :mod:`.api`) and the admin
dashboard at ``/notebookos/`` (see :mod:`.dashboard`), both showing each user what :mod:`.permissions` allows, and
configured as ``c.NotebookOS`` (:mod:`.app`).

Installing the package enables it (``jupyter-config/jupyter_server_config.d/notebookos.json``, installed under
``etc/jupyter``); ``notebookos lab`` enables it on its command line as well. Jupyter Server is imported only when
the extension is listed, so the ``notebookos`` command line, which lives in this package, stays quick to start.
"""

from __future__ import annotations

from typing import Any

EXTENSION_NAME = "notebookos.server_extension"


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import NotebookOS

    return [{"module": EXTENSION_NAME, "app": NotebookOS}]
