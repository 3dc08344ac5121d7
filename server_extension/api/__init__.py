"""The REST API under ``/api/notebookos/``: handlers (:mod:`.handlers`), the OpenAPI document (:mod:`.openapi`),
Prometheus metrics (:mod:`.metrics`) and the way it reads the cluster (:mod:`.cluster`). The extension
(:mod:`..app`) registers the handlers."""

from __future__ import annotations

from .handlers import handlers

__all__ = ["handlers"]
