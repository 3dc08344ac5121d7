"""The cluster service's HTTP handlers: token authentication, requests checked against the service's OpenAPI
document (:mod:`.openapi`), JSON in and out, errors as JSON with a message.

Every change goes through :meth:`ClusterService.run`, which runs it on the cluster's thread and turns the
cluster's refusals into 4xx answers with the reason; reads describe the cluster directly. The classes are named
``Service...`` so that a traceback or a log line never confuses them with the Jupyter server extension's handlers.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST

from ...scheduler.events import Decision
from ...scheduler.journal import outcome_json
from ..embedded import AgentRemoved, KernelRequest
from ..json_api import JsonHandler
from ..openapi import Checked, RequestChecker, RequestInvalid
from ..tls import CA_PATH
from .openapi import DOCUMENT

if TYPE_CHECKING:
    from .cluster_service import ClusterService

CHECKER = RequestChecker(DOCUMENT)


class ServiceHandler(JsonHandler):
    """Base handler: token authentication, then the request checked against the document (400 naming the field
    and why), JSON in and out, errors as JSON with a message."""

    checked: Checked

    def initialize(self, service: ClusterService) -> None:
        self.service = service

    def prepare(self) -> None:
        if not any(self.presents(token) for token in (self.service.token, self.service.join_token) if token):
            raise tornado.web.HTTPError(401, reason="missing or wrong cluster token")
        self.check_request()

    def check_request(self) -> None:
        try:
            self.checked = CHECKER.check(
                self.request.method or "GET", self.request.path, self.request.query_arguments, self.request.body
            )
        except RequestInvalid as err:
            raise tornado.web.HTTPError(
                400, reason=" ".join(str(err).split()).replace("<", "(").replace(">", ")")
            ) from None
        except LookupError:  # routed, so the path is served: not with this method
            raise tornado.web.HTTPError(
                405, reason=f"{self.request.method} is not an operation of {self.request.path}"
            ) from None

    def body(self) -> dict[str, Any]:
        """The checked JSON body ({} for an operation that takes none)."""
        return self.checked.body if isinstance(self.checked.body, dict) else {}

    def kernel(self, kernel_id: str) -> None:
        if kernel_id not in self.service.cluster.kernels:
            raise tornado.web.HTTPError(404, reason=f"no kernel {kernel_id} in this cluster")


class ServiceOpenAPIHandler(ServiceHandler):
    def get(self) -> None:
        self.finish(DOCUMENT)


class ServiceClusterHandler(ServiceHandler):
    def get(self) -> None:
        self.finish(self.service.describe())


class ServiceKernelsHandler(ServiceHandler):
    async def post(self) -> None:
        data = self.body()
        # A kernel id already listed, or being started, is refused (409) by the placement's own check.
        described = await self.service.create_kernel(
            KernelRequest(
                data["kernel_id"],
                data["key"],
                data.get("signature_scheme", "hmac-sha256"),
                data.get("cwd"),
                int(data.get("gpus", 0)),
                _text(data.get("owner")),
                _text(data.get("notebook")),
            )
        )
        self.service.kernels_changed()
        self.set_status(201)
        self.finish(described)


class ServiceKernelHandler(ServiceHandler):
    def get(self, kernel_id: str) -> None:
        self.kernel(kernel_id)
        self.finish(self.service.cluster.describe_kernel(kernel_id))

    async def delete(self, kernel_id: str) -> None:
        self.kernel(kernel_id)
        self.service.forget(kernel_id)
        await self.service.run(self.service.cluster.delete_kernel, kernel_id)
        self.set_status(204)
        self.finish()
        self.service.kernels_changed()


class ServiceReplicaActionHandler(ServiceHandler):
    """``restart``: the kernel front lost the replica; the scheduler replaces it (on another host). ``kill``: the
    fault drill. ``migrate``: move it to the host named in the body."""

    ACTIONS = {"restart": "replace_replica", "kill": "kill_replica", "migrate": "migrate_replica"}

    async def post(self, kernel_id: str, replica: str, action: str) -> None:
        self.kernel(kernel_id)
        index = self.checked.path["replica"]
        if index >= len(self.service.cluster.kernels[kernel_id].replicas):
            raise tornado.web.HTTPError(404, reason=f"kernel {kernel_id} has no replica {index}")
        args: tuple[Any, ...] = (kernel_id, index)
        if action == "migrate":
            args += (self.body()["host"],)
        elif action == "restart":
            args += (_text(self.body().get("seen")),)
        self.finish(await self.service.run(getattr(self.service.cluster, self.ACTIONS[action]), *args))


class ServiceExecutionsHandler(ServiceHandler):
    """A cell's GPUs: ask (``POST .../executions``), wait while queued (``.../executions/wait``), give back
    (``.../executions/release``, with the bind and release times the executor measured)."""

    async def post(self, kernel_id: str, step: str | None = None) -> None:
        self.kernel(kernel_id)
        service = self.service
        if step == "release":
            data = self.body()
            await service.run(service.cluster.release, kernel_id, data.get("bind_s"), data.get("release_s"))
            self.finish({"released": True})
        elif step == "wait":
            self.finish(decision_json(await service.wait_for_grant(kernel_id)))
        else:
            decision = await service.request_execution(kernel_id, int(self.body()["gpus"]))
            self.set_status(200 if decision.granted else 202)
            self.finish(decision_json(decision))


class ServiceAgentsHandler(ServiceHandler):
    """``POST /agents``: a ``notebookos agent`` joins with the join token (the cluster's own token is not enough:
    it is the Jupyter servers'). ``POST /agents/{name}/heartbeat``: its report of the replicas it runs; 404 for an
    agent the cluster does not know (it then joins again), 410 for one whose host was removed (it then stops)."""

    def prepare(self) -> None:
        if not (self.service.join_token and self.presents(self.service.join_token)):
            raise tornado.web.HTTPError(
                401,
                reason="missing or wrong join token"
                if self.service.join_token
                else "this cluster takes no agents (start it with --join-token-file)",
            )
        self.check_request()

    async def post(self, name: str | None = None) -> None:
        data = self.body()
        replicas = data.get("replicas", [])
        if name is not None:
            # On the event loop, not the cluster's thread: a heartbeat must count when it arrives, even while the
            # cluster waits on an agent that is down (queued behind that, every host would look silent).
            try:
                answer = self.service.cluster.agent_heartbeat(name, replicas)
            except KeyError as err:
                raise tornado.web.HTTPError(404, reason=str(err.args[0])) from None
            except AgentRemoved as err:
                raise tornado.web.HTTPError(410, reason=str(err)) from None
            self.finish(answer)
            return
        fields = {k: data[k] for k in ("name", "address", "url", "token")}
        gpus = int(data.get("gpus", 0))
        cert_pem = data.get("cert_pem")
        if cert_pem is not None and not fields["url"].startswith("https:"):
            raise tornado.web.HTTPError(400, reason="cert_pem is the PEM certificate of an agent serving https")
        lent = data.get("ports")
        if lent is not None and lent["first"] > lent["last"]:
            raise tornado.web.HTTPError(400, reason="ports: first must not come after last")
        try:
            joined = await self.service.run(
                self.service.cluster.join_agent,
                fields["name"],
                fields["address"],
                gpus,
                fields["url"],
                fields["token"],
                replicas,
                cert_pem,
                None if lent is None else range(lent["first"], lent["last"] + 1),
            )
        except AgentRemoved as err:
            raise tornado.web.HTTPError(410, reason=str(err)) from None
        self.set_status(201)
        self.finish(joined)


def decision_json(decision: Decision) -> dict[str, Any]:
    return {
        "kind": decision.kind.value,
        "granted": decision.granted,
        "replica": decision.replica,
        "host": decision.host_id,
        "devices": list(decision.devices),
        "gpus": decision.gpus,
        "reason": decision.reason,
    }


class ServiceHostsHandler(ServiceHandler):
    """``POST /hosts`` adds a host (``{"gpus": N}``, default the cluster's GPUs per host)."""

    async def post(self) -> None:
        data = self.body()
        gpus = int(data["gpus"]) if "gpus" in data else None
        self.set_status(201)
        self.finish(await self.service.run(self.service.cluster.add_host, gpus))


class ServiceHostHandler(ServiceHandler):
    """``PATCH`` changes a host's GPU count, ``DELETE`` removes a drained host, ``POST .../drain`` drains it."""

    async def patch(self, name: str) -> None:
        self.finish(await self.service.run(self.service.cluster.resize_host, name, int(self.body()["gpus"])))

    async def delete(self, name: str) -> None:
        await self.service.run(self.service.cluster.remove_host, name)
        self.set_status(204)
        self.finish()


class ServiceDrainHandler(ServiceHandler):
    async def post(self, name: str) -> None:
        self.finish(await self.service.run(self.service.cluster.drain_host, name))


class ServiceEventsHandler(ServiceHandler):
    """``GET /events?since=SEQ&limit=N&host=&kernel=&kind=``: logged events after SEQ, oldest first.
    ``GET /events/wait?since=SEQ&timeout=S``: the same, but waits up to S seconds (at most 60) for one to come."""

    async def get(self, wait: str | None = None) -> None:
        query = self.checked.query
        since = query.get("since", 0)
        filters = {k: query.get(k) for k in ("host", "kernel", "kind")}
        log_ = self.service.cluster.events
        if wait and log_.last_seq <= since:
            await self.service.new_event(since, query.get("timeout", 25))
        self.finish(
            {"events": log_.since(since, limit=query.get("limit") or None, **filters), "last_seq": log_.last_seq}
        )


class ServiceHistoryHandler(ServiceHandler):
    def get(self) -> None:
        seconds = self.checked.query.get("seconds", 3600.0)
        history = self.service.cluster.history
        self.finish({"interval_s": history.interval_s, "samples": history.since(time.time(), seconds)})


class ServiceMetricsHandler(ServiceHandler):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.service.cluster.metrics.render())


class ServiceJournalHandler(ServiceHandler):
    """The core calls of a cluster started with --journal, with their outcomes, for replay on another core."""

    def get(self) -> None:
        cluster = self.service.cluster
        if cluster.journal is None:
            raise tornado.web.HTTPError(404, reason="this cluster keeps no journal; start it with --journal")
        self.finish(
            {
                "policy": cluster.policy.name,
                "config": dataclasses.asdict(cluster.core_config),
                "calls": [{"method": c.method, "args": list(c.args), "now": c.now} for c in cluster.journal.calls],
                "outcomes": [outcome_json(o) for o in cluster.journal.outcomes],
            }
        )


def _text(value: Any) -> str | None:
    return str(value)[:1000] if isinstance(value, str) and value else None


class ServiceCAHandler(tornado.web.RequestHandler):
    """``GET /tls/ca.pem``, unauthenticated: the CA this service made. Public by nature; a client trusts it only
    if its fingerprint is the one its join token pins (tls.py)."""

    def initialize(self, service: ClusterService) -> None:
        self.service = service

    def get(self) -> None:
        if self.service.ca_pem is None:
            raise tornado.web.HTTPError(404, reason="this service made no CA (it was not started with --tls-auto)")
        self.set_header("Content-Type", "application/x-pem-file")
        self.finish(self.service.ca_pem)


def routes(service: ClusterService) -> list[tuple[str, type, dict]]:
    """The service's API; every handler gets the service."""
    args = {"service": service}
    return [
        (CA_PATH, ServiceCAHandler, args),
        (r"/openapi\.json", ServiceOpenAPIHandler, args),
        (r"/cluster", ServiceClusterHandler, args),
        (r"/scheduler/journal", ServiceJournalHandler, args),
        (r"/events(?:/(wait))?", ServiceEventsHandler, args),
        (r"/history", ServiceHistoryHandler, args),
        (r"/metrics", ServiceMetricsHandler, args),
        (r"/hosts", ServiceHostsHandler, args),
        (r"/hosts/([^/]+)", ServiceHostHandler, args),
        (r"/hosts/([^/]+)/drain", ServiceDrainHandler, args),
        (r"/agents", ServiceAgentsHandler, args),
        (r"/agents/([^/]+)/heartbeat", ServiceAgentsHandler, args),
        (r"/kernels", ServiceKernelsHandler, args),
        (r"/kernels/([^/]+)", ServiceKernelHandler, args),
        (r"/kernels/([^/]+)/replicas/([^/]+)/(restart|kill|migrate)", ServiceReplicaActionHandler, args),
        (r"/kernels/([^/]+)/executions(?:/(wait|release))?", ServiceExecutionsHandler, args),
    ]
