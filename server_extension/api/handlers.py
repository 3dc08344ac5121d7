"""Tornado handlers of the REST API under ``/api/notebookos/``.

Every method is behind Jupyter Server's authentication (``@web.authenticated``: an API request without a valid
token or login cookie gets 403) and its authorizer (``@authorized`` on the ``notebookos`` resource: ``read`` for
GETs, ``write`` for every changing action). Within that, :mod:`..permissions` decides per user: a pool admin sees
every kernel and may change the pool; anyone else sees the pool's hosts and GPUs but only their own kernels (another
user's kernel answers 404, as an unknown one does, so ids do not leak), may shut their own kernels down and restart
their dead replicas, and gets 403 saying how the admin permission is granted for the rest. Errors are JSON
(``{"message": ..., "reason": ...}``, Jupyter's APIHandler format): 400 for a malformed request, 404 for an unknown
kernel, replica or host, 409 when the cluster refuses an action (with its reason), 503 when the cluster is not there,
with what to do about it.

Every request is checked against the OpenAPI document this server serves (:mod:`.openapi`), once the user is known
to be allowed the action: :meth:`NotebookOSHandler.checked` (the shared
:class:`~notebookos.gpu_broker.cluster.openapi.RequestChecker`) converts path and query parameters, refuses unknown
query parameters and checks the JSON body, answering 400 with the field and why. Handlers read their inputs from
what it returns, never from the raw request.
"""

from __future__ import annotations

import json
from http.client import responses
from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated, authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web
from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamClosedError

from ...gpu_broker.cluster.openapi import Checked, RequestChecker, RequestInvalid
from ..permissions import ADMIN_MESSAGE, RESOURCE, WRITE_MESSAGE, Access, request_access
from .cluster import (
    ClusterRefused,
    ClusterUnavailable,
    add_host,
    cluster_model,
    delete_kernel,
    drain_host,
    event_visible,
    get_cluster,
    get_cluster_metrics,
    get_events,
    get_history,
    get_kernel,
    gpus_model,
    hosts_model,
    kernel_owners,
    kernels_model,
    kill_replica,
    learn_owners,
    migrate_replica,
    remove_host,
    resize_host,
    restart_replica,
)
from .metrics import CONTENT_TYPE, Metrics
from .openapi import API_PREFIX, DOCUMENT, document

STREAM_WAIT_S = 15  # how long the event stream waits for an event before it writes a keep-alive comment
STREAM_RETRY_MS = 3000  # how soon a browser reconnects after the stream ends
ADMIN_ACTIONS = ("kill", "migrate")  # replica actions that move work around the pool; an owner may "restart"
# Jupyter's authentication reads these from any request's query: no operation declares them, none refuses them.
CHECKER = RequestChecker(DOCUMENT, ignored_query=frozenset({"token", "_xsrf"}))


class NotebookOSHandler(APIHandler):
    auth_resource = RESOURCE
    _access: Access | None = None

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
            message = error.log_message % error.args if error.args and error.log_message else error.log_message
        self.log.warning("wrote error: %r", message)
        self.set_header("Content-Type", "application/json")
        self.finish(
            json.dumps({"message": message or responses.get(status_code, "Unknown HTTP Error"), "reason": error.reason})
        )

    def reply(self, model: Any) -> None:
        self.finish(json.dumps(model))

    async def access(self) -> Access:
        """What this request's user may see and do (asked once per request)."""
        if self._access is None:
            self._access = await request_access(self)
        return self._access

    async def require_admin(self) -> None:
        """403, saying how the permission is granted, unless the user is a pool admin."""
        if not (await self.access()).admin:
            raise web.HTTPError(403, ADMIN_MESSAGE)

    async def visible_kernel(self, kernel_id: str) -> dict:
        """The kernel's model if the user may see it; else 404 in the cluster's own words for an unknown kernel, so
        that another user's kernel cannot be told from none."""
        kernel = await self.cluster_call(get_kernel(kernel_id))
        if not (await self.access()).sees(kernel["owner"]):
            raise web.HTTPError(404, f"no kernel {kernel_id} in this cluster")
        return kernel

    async def notebook_paths(self) -> dict[str, str]:
        """Kernel id -> the path of the notebook its session serves, for the sessions of this server (relative to
        the server's root, as JupyterLab shows it; kernels of other servers keep what their provisioner said)."""
        return {s["kernel"]["id"]: s["path"] for s in await self.session_manager.list_sessions() if s.get("kernel")}

    async def cluster_call(self, coro: Any) -> Any:
        """Await a call on the cluster, turning its failures into HTTP errors."""
        try:
            return await coro
        except ClusterUnavailable as err:
            raise web.HTTPError(503, str(err), reason="Cluster Unavailable") from None
        except ClusterRefused as err:
            if err.status in (400, 404, 409):  # the cluster refused, saying why: a mistake the user can mend
                raise web.HTTPError(err.status, str(err)) from None
            raise web.HTTPError(502, f"the notebookos cluster answered {err.status}: {err}") from None

    def checked(self) -> Checked:
        """The request checked against the served document: its path and query parameters and JSON body, or 400
        naming the field and why. Called once the user may do what they ask (a refusal comes first)."""
        path = self.request.path
        try:
            return CHECKER.check(
                self.request.method or "GET",
                path[path.find(API_PREFIX) :],
                self.request.query_arguments,
                self.request.body,
            )
        except RequestInvalid as err:
            raise web.HTTPError(400, str(err)) from None


class OpenAPIHandler(NotebookOSHandler):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    def get(self) -> None:
        self.checked()
        self.reply(document(self.base_url))


class MeHandler(NotebookOSHandler):
    """Who is asking, whose kernels they see, and whether they are a pool admin: the dashboard shows its actions
    only to admins."""

    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self) -> None:
        self.checked()
        user = self.current_user
        access = await self.access()
        self.reply(
            {
                "name": getattr(user, "name", None) or getattr(user, "username", "") or "",
                "owner": access.owner,
                "admin": access.admin,
            }
        )


class ClusterHandler(NotebookOSHandler):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self) -> None:
        self.checked()
        self.reply(cluster_model(await self.cluster_call(get_cluster()), (await self.access()).sees))


class HostsHandler(NotebookOSHandler):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self) -> None:
        self.checked()
        self.reply({"hosts": hosts_model(await self.cluster_call(get_cluster()), (await self.access()).sees)})

    @web.authenticated
    @authorized("write", resource=RESOURCE, message=WRITE_MESSAGE)
    async def post(self) -> None:
        await self.require_admin()
        gpus = self.checked().body.get("gpus")
        self.set_status(201)
        self.reply(await self.cluster_call(add_host(None if gpus is None else int(gpus))))


class HostHandler(NotebookOSHandler):
    @web.authenticated
    @authorized("write", resource=RESOURCE, message=WRITE_MESSAGE)
    async def patch(self, name: str) -> None:
        await self.require_admin()
        self.reply(await self.cluster_call(resize_host(name, int(self.checked().body["gpus"]))))

    @web.authenticated
    @authorized("write", resource=RESOURCE, message=WRITE_MESSAGE)
    async def delete(self, name: str) -> None:
        await self.require_admin()
        self.checked()
        await self.cluster_call(remove_host(name))
        self.set_status(204)
        self.finish()


class DrainHandler(NotebookOSHandler):
    @web.authenticated
    @authorized("write", resource=RESOURCE, message=WRITE_MESSAGE)
    async def post(self, name: str) -> None:
        await self.require_admin()
        self.checked()
        self.reply(await self.cluster_call(drain_host(name)))


class GpusHandler(NotebookOSHandler):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self) -> None:
        self.checked()
        self.reply({"gpus": gpus_model(await self.cluster_call(get_cluster()), (await self.access()).sees)})


class KernelsHandler(NotebookOSHandler):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self) -> None:
        self.checked()
        raw = await self.cluster_call(get_cluster())
        paths = await self.notebook_paths()
        self.reply({"kernels": [with_notebook(k, paths) for k in kernels_model(raw, (await self.access()).sees)]})


class KernelHandler(NotebookOSHandler):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self, kernel_id: str) -> None:
        self.checked()
        self.reply(with_notebook(await self.visible_kernel(kernel_id), await self.notebook_paths()))

    @web.authenticated
    @authorized("write", resource=RESOURCE, message=WRITE_MESSAGE)
    async def delete(self, kernel_id: str) -> None:
        """Shut the kernel down (the user's own, or any for an admin): through this server's kernel manager when it
        started the kernel (its sessions and clients are told), else on the cluster directly (a kernel of another
        Jupyter server sharing the cluster)."""
        self.checked()
        await self.visible_kernel(kernel_id)  # 404 for a kernel the cluster does not know, or another user's
        if kernel_id in self.kernel_manager:
            await self.kernel_manager.shutdown_kernel(kernel_id)
        else:
            await self.cluster_call(delete_kernel(kernel_id))
        self.set_status(204)
        self.finish()


class ReplicaActionHandler(NotebookOSHandler):
    """Fault drills and migrations (admins), and restarting a dead replica (its kernel's owner too)."""

    @web.authenticated
    @authorized("write", resource=RESOURCE, message=WRITE_MESSAGE)
    async def post(self, kernel_id: str, replica: str, action: str) -> None:
        if action in ADMIN_ACTIONS:
            await self.require_admin()
        checked = self.checked()
        index = checked.path["replica"]
        kernel = await self.visible_kernel(kernel_id)
        if index >= len(kernel["replicas"]):
            raise web.HTTPError(404, f"kernel {kernel_id} has no replica {index}; it has {len(kernel['replicas'])}")
        if action == "migrate":
            done = migrate_replica(kernel_id, index, checked.body["host"])
        else:
            done = (kill_replica if action == "kill" else restart_replica)(kernel_id, index)
        self.reply(await self.cluster_call(done))


class EventsHandler(NotebookOSHandler):
    """The scheduler's decisions and operators' actions, oldest first, after ``since`` and filtered: those the user
    may see (:func:`.cluster.event_visible`)."""

    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self) -> None:
        answer = await self.cluster_call(get_events(event_query(self.checked())))
        access = await self.access()
        if not access.admin:
            owners = kernel_owners(await self.cluster_call(get_cluster()))
            answer["events"] = [e for e in answer["events"] if event_visible(e, owners, access.sees)]
        self.reply(answer)


class EventStreamHandler(NotebookOSHandler):
    """The same events as server-sent events, as they happen. Resumes after ``Last-Event-ID`` (what EventSource
    sends when it reconnects) or ``?since=``; a comment line every time-out keeps proxies from closing it.

    For a user who is not an admin the stream learns the owners of the kernels its events name
    (:func:`.cluster.learn_owners`: asking the cluster only about kernels it has not seen, waiting briefly for one
    being placed) and remembers them while it lasts, so that the events of the user's kernel that is shut down while
    the stream is open (its ``kernel_closed`` too) still come through."""

    _track_activity = False  # an open dashboard is not user activity (it would keep an idle server from culling)

    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self) -> None:
        connection = self.request.connection
        if not isinstance(connection, HTTP1Connection):  # what tornado's HTTP server gives every request
            raise RuntimeError(f"an event stream needs tornado's HTTP/1 server, not {type(connection).__name__}")
        query = event_query(self.checked())
        since = self.request.headers.get("Last-Event-ID", "")
        if since.isascii() and since.isdigit() and len(since) < 16:
            query["since"] = int(since)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        self.write(f"retry: {STREAM_RETRY_MS}\n\n")
        access = await self.access()
        owners: dict[str, str | None] = {}
        try:
            await self.flush()  # the browser reports the stream open once the headers arrive: send them now
            while not connection.stream.closed():
                try:
                    answer = await get_events(query, wait_s=STREAM_WAIT_S)
                    if not access.admin:
                        await learn_owners(owners, answer["events"])
                        answer["events"] = [e for e in answer["events"] if event_visible(e, owners, access.sees)]
                except (ClusterUnavailable, ClusterRefused) as err:
                    # The browser reconnects after `retry`; until the cluster is back it hears why.
                    self.write(f"event: cluster_unavailable\ndata: {json.dumps({'message': str(err)})}\n\n")
                    await self.flush()
                    break
                for event in answer["events"]:
                    self.write(f"id: {event['seq']}\ndata: {json.dumps(event)}\n\n")
                if not answer["events"]:
                    self.write(": keepalive\n\n")
                query["since"] = answer["last_seq"]
                await self.flush()
        except StreamClosedError:
            return
        self.finish()


def with_notebook(kernel: dict, paths: dict[str, str]) -> dict:
    if kernel["id"] in paths:
        kernel["notebook"] = paths[kernel["id"]]
    return kernel


def event_query(checked: Checked) -> dict[str, Any]:
    """``since``, ``limit`` and the ``host``, ``kernel``, ``kind`` filters of a checked events request (an empty
    filter is none)."""
    query = {k: v for k, v in checked.query.items() if v != ""}
    if "kernel" not in query and "since" not in query:
        query.setdefault("limit", 1000)  # the whole log can be large; a first look gets the latest
    return query


class HistoryHandler(NotebookOSHandler):
    @web.authenticated
    @authorized("read", resource=RESOURCE)
    async def get(self) -> None:
        seconds = self.checked().query.get("seconds", 3600.0)
        self.reply(await self.cluster_call(get_history(seconds)))


class MetricsHandler(NotebookOSHandler):
    """Prometheus metrics, authenticated as the server's own ``/metrics`` is: a login (a token) is needed unless
    ``ServerApp.authenticate_prometheus`` is False."""

    _track_activity = False  # a scraper is not user activity (it would keep an idle server from culling)

    def initialize(self, metrics: Metrics) -> None:
        self.metrics = metrics

    @allow_unauthenticated
    async def get(self) -> None:
        if self.settings.get("authenticate_prometheus", True) and not self.logged_in:
            raise web.HTTPError(
                403, reason="metrics need a Jupyter token unless ServerApp.authenticate_prometheus is False"
            )
        self.checked()
        try:
            raw, counted = await get_cluster(), await get_cluster_metrics()
        except (ClusterUnavailable, ClusterRefused) as err:
            self.log.warning("notebookos metrics: %s", err)
            raw, counted = None, ""
        # The cluster service counts what happens to cells (bind latency, GPU-seconds, ...); this server adds the
        # gauges of the cluster's current shape. Both are in the text format, so they concatenate.
        self.finish(self.metrics.render(raw) + counted.encode(), set_content_type=CONTENT_TYPE)


def handlers(metrics: Metrics) -> list[tuple[str, type, dict] | tuple[str, type]]:
    """The API's routes, relative to the server's base URL."""
    kernel = r"/kernels/(?P<kernel_id>[^/]+)"
    host = r"/hosts/(?P<name>[^/]+)"
    return [
        (rf"{API_PREFIX}/openapi\.json", OpenAPIHandler),
        (rf"{API_PREFIX}/me", MeHandler),
        (rf"{API_PREFIX}/cluster", ClusterHandler),
        (rf"{API_PREFIX}/hosts", HostsHandler),
        (rf"{API_PREFIX}{host}", HostHandler),
        (rf"{API_PREFIX}{host}/drain", DrainHandler),
        (rf"{API_PREFIX}/gpus", GpusHandler),
        (rf"{API_PREFIX}/kernels", KernelsHandler),
        (rf"{API_PREFIX}{kernel}", KernelHandler),
        (rf"{API_PREFIX}{kernel}/replicas/(?P<replica>[^/]+)/(?P<action>kill|restart|migrate)", ReplicaActionHandler),
        (rf"{API_PREFIX}/events", EventsHandler),
        (rf"{API_PREFIX}/events/stream", EventStreamHandler),
        (rf"{API_PREFIX}/history", HistoryHandler),
        (rf"{API_PREFIX}/metrics", MetricsHandler, {"metrics": metrics}),
    ]
