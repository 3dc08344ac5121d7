"""The REST API under ``/api/notebookos/``: handlers (:mod:`.handlers`), the OpenAPI document (:mod:`.openapi`),
Prometheus metrics (:mod:`.metrics`) and the way it reads the cluster (:mod:`.cluster`)."""
from __future__ import annotations

from typing import Any

from jupyter_server.utils import url_path_join

from .handlers import handlers
from .metrics import Metrics


def load(serverapp: Any) -> None:
    """Register the API's handlers on a Jupyter server."""
    metrics = Metrics()
    base_url = serverapp.web_app.settings["base_url"]
    routes = [(url_path_join(base_url, route[0]), *route[1:]) for route in handlers(metrics)]
    serverapp.web_app.add_handlers(".*$", routes)
    # Where later parts of the extension (the event stream, bind latency) find the registry to record into.
    serverapp.web_app.settings["notebookos_metrics"] = metrics
    serverapp.log.info("notebookos: REST API at %s", url_path_join(base_url, "api/notebookos/"))
