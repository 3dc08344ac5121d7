"""Tornado handlers of the REST API under ``/api/notebookos/``.

Every method is behind Jupyter Server's authentication (``@web.authenticated``: an API request without a valid
token or login cookie gets 403) and its authorizer (``@authorized`` on the ``notebookos`` resource: ``read`` for
GETs, ``write`` for the replica actions, which is what "admin" means here). Errors are JSON
(``{"message": ..., "reason": ...}``, Jupyter's APIHandler format): 400 for a malformed request, 404 for an unknown
kernel or replica, 503 when the cluster is not there, with what to do about it.
"""
from __future__ import annotations

import json
from http.client import responses
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from .cluster import (ClusterRefused, ClusterUnavailable, cluster_model, get_cluster, get_kernel, gpus_model,
                      hosts_model, kernel_model, replica_action)
from .metrics import CONTENT_TYPE, Metrics
from .openapi import API_PREFIX, RESOURCE, document

ADMIN_MESSAGE = (f"This action needs the notebookos admin permission (action 'write' on resource '{RESOURCE}'); "
                 "reading needs 'read' only.")


class NotebookOSHandler(APIHandler):
    auth_resource = RESOURCE

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Jupyter's APIHandler error JSON, with the message as written: APIHandler shows tornado's
        ``log_message``, in which tornado 6.5+ doubles every ``%`` (a kernel id with a % in it would show wrong)."""
        error = kwargs.get("exc_info", (None, None, None))[1]
        if not isinstance(error, web.HTTPError):
            super().write_error(status_code, **kwargs)
            return
        if hasattr(error, "get_message"):
            message = error.get_message()
        else:
            message = error.log_message % error.args if error.args else error.log_message
        self.log.warning("wrote error: %r", message)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message or responses.get(status_code, "Unknown HTTP Error"),
                                "reason": error.reason}))

    def reply(self, model: Any) -> None:
        self.finish(json.dumps(model))

    async def cluster_call(self, coro: Any) -> Any:
        """Await a call on the cluster, turning its failures into HTTP errors."""
        try:
            return await coro
        except ClusterUnavailable as err:
            raise web.HTTPError(503, str(err), reason="Cluster Unavailable") from None
        except ClusterRefused as err:
            if err.status == 404:
                raise web.HTTPError(404, str(err)) from None
            raise web.HTTPError(502, f"the notebookos cluster answered {err.status}: {err}") from None


class OpenAPIHandler(NotebookOSHandler):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    def get(self) -> None:
        self.reply(document(self.base_url))


class ClusterHandler(NotebookOSHandler):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self) -> None:
        self.reply(cluster_model(await self.cluster_call(get_cluster())))


class HostsHandler(NotebookOSHandler):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self) -> None:
        self.reply({"hosts": hosts_model(await self.cluster_call(get_cluster()))})


class GpusHandler(NotebookOSHandler):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self) -> None:
        self.reply({"gpus": gpus_model(await self.cluster_call(get_cluster()))})


class KernelsHandler(NotebookOSHandler):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self) -> None:
        raw = await self.cluster_call(get_cluster())
        self.reply({"kernels": [kernel_model(k) for k in raw.get("kernels", [])]})


class KernelHandler(NotebookOSHandler):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self, kernel_id: str) -> None:
        self.reply(await self.cluster_call(get_kernel(kernel_id)))


class ReplicaActionHandler(NotebookOSHandler):
    @web.authenticated
    @authorized("write", resource=RESOURCE, message=ADMIN_MESSAGE)
    async def post(self, kernel_id: str, replica: str, action: str) -> None:
        if not (replica.isascii() and replica.isdigit()):
            raise web.HTTPError(400, f"the replica must be an index (0, 1, 2, ...), not {replica[:40]!r}")
        kernel = await self.cluster_call(get_kernel(kernel_id))
        # Compared as text first: an index of thousands of digits is refused without making it an int.
        if len(replica) > 6 or int(replica) >= len(kernel["replicas"]):
            raise web.HTTPError(404, f"kernel {kernel_id} has no replica {replica[:40]}; it has "
                                     f"{len(kernel['replicas'])}")
        self.reply(await self.cluster_call(replica_action(kernel_id, int(replica), action)))


class MetricsHandler(NotebookOSHandler):
    _track_activity = False  # a scraper is not user activity (it would keep an idle server from culling)

    def initialize(self, metrics: Metrics) -> None:
        self.metrics = metrics

    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self) -> None:
        try:
            raw = await get_cluster()
        except (ClusterUnavailable, ClusterRefused) as err:
            self.log.warning("notebookos metrics: %s", err)
            raw = None
        self.finish(self.metrics.render(raw), set_content_type=CONTENT_TYPE)


def handlers(metrics: Metrics) -> list[tuple[str, type, dict] | tuple[str, type]]:
    """The API's routes, relative to the server's base URL."""
    kernel = r"/kernels/(?P<kernel_id>[^/]+)"
    return [
        (rf"{API_PREFIX}/openapi\.json", OpenAPIHandler),
        (rf"{API_PREFIX}/cluster", ClusterHandler),
        (rf"{API_PREFIX}/hosts", HostsHandler),
        (rf"{API_PREFIX}/gpus", GpusHandler),
        (rf"{API_PREFIX}/kernels", KernelsHandler),
        (rf"{API_PREFIX}{kernel}", KernelHandler),
        (rf"{API_PREFIX}{kernel}/replicas/(?P<replica>[^/]+)/(?P<action>kill|restart)", ReplicaActionHandler),
        (rf"{API_PREFIX}/metrics", MetricsHandler, {"metrics": metrics}),
    ]
