"""The cluster service's HTTP handlers: token authentication, JSON in and out, errors as JSON with a message.

Every change goes through :meth:`ClusterService.run`, which runs it on the cluster's thread and turns the
cluster's refusals into 4xx answers with the reason; reads describe the cluster directly.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
import time
from typing import TYPE_CHECKING, Any

import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST

from ...scheduler.events import Decision
from ...scheduler.journal import outcome_json
from ..embedded import AgentRemoved
from ..tls import CA_PATH
from ..json_api import JsonHandler

if TYPE_CHECKING:
    from .cluster_service import ClusterService


class ClusterHandler(JsonHandler):
    """Base handler: token authentication and JSON in and out, errors as JSON with a message."""

    def initialize(self, service: "ClusterService") -> None:
        self.service = service

    def prepare(self) -> None:
        if not any(self.presents(token) for token in (self.service.token, self.service.join_token) if token):
            raise tornado.web.HTTPError(401, reason="missing or wrong cluster token")

    @staticmethod
    def gpus(value: Any) -> int:
        """A GPU count from a request body, or 400."""
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise tornado.web.HTTPError(400, reason=f"gpus must be a whole number of GPUs >= 0, got {value!r}")
        return value

    def kernel(self, kernel_id: str) -> None:
        if kernel_id not in self.service.cluster.kernels:
            raise tornado.web.HTTPError(404, reason=f"no kernel {kernel_id} in this cluster")


class ClusterRoot(ClusterHandler):
    def get(self) -> None:
        self.finish(self.service.describe())


class KernelsHandler(ClusterHandler):
    async def post(self) -> None:
        data = self.body()
        try:
            kernel_id, key = str(data["kernel_id"]), str(data["key"])
        except KeyError as err:
            raise tornado.web.HTTPError(400, reason=f"missing field {err}") from None
        if kernel_id in self.service.cluster.kernels:
            raise tornado.web.HTTPError(409, reason=f"kernel {kernel_id} already exists")
        gpus = self.gpus(data.get("gpus", 0))
        described = await self.service.run(
            self.service.cluster.create_kernel, kernel_id, key, str(data.get("signature_scheme", "hmac-sha256")),
            data.get("cwd"), gpus, _text(data.get("owner")), _text(data.get("notebook")))
        self.service.kernels_changed()
        self.set_status(201)
        self.finish(described)


class KernelHandler(ClusterHandler):
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


class ReplicaActionHandler(ClusterHandler):
    """``restart``: the kernel front lost the replica; the scheduler replaces it (on another host). ``kill``: the
    fault drill. ``migrate``: move it to the host named in the body."""

    ACTIONS = {"restart": "replace_replica", "kill": "kill_replica", "migrate": "migrate_replica"}

    async def post(self, kernel_id: str, replica: str, action: str) -> None:
        self.kernel(kernel_id)
        index = int(replica)
        if index >= len(self.service.cluster.kernels[kernel_id].replicas):
            raise tornado.web.HTTPError(404, reason=f"kernel {kernel_id} has no replica {index}")
        args: tuple[Any, ...] = (kernel_id, index)
        if action == "migrate":
            host = self.body().get("host")
            if not isinstance(host, str):
                raise tornado.web.HTTPError(400, reason="give the target host as {\"host\": \"host-N\"}")
            args += (host,)
        elif action == "restart":
            args += (_text(self.body().get("seen")),)
        self.finish(await self.service.run(getattr(self.service.cluster, self.ACTIONS[action]), *args))


class ExecutionsHandler(ClusterHandler):
    """A cell's GPUs: ask (``POST .../executions``), wait while queued (``.../executions/wait``), give back
    (``.../executions/release``, with the bind and release times the executor measured)."""

    async def post(self, kernel_id: str, step: str | None = None) -> None:
        self.kernel(kernel_id)
        service = self.service
        if step == "release":
            data = self.body()
            await service.run(service.cluster.release, kernel_id, _seconds(data.get("bind_s")),
                              _seconds(data.get("release_s")))
            self.finish({"released": True})
        elif step == "wait":
            self.finish(decision_json(await service.wait_for_grant(kernel_id)))
        else:
            gpus = self.gpus(self.body().get("gpus"))
            decision = await service.request_execution(kernel_id, gpus)
            self.set_status(200 if decision.granted else 202)
            self.finish(decision_json(decision))


class AgentsHandler(ClusterHandler):
    """``POST /agents``: a ``notebookos agent`` joins with the join token (the cluster's own token is not enough:
    it is the Jupyter servers'). ``POST /agents/{name}/heartbeat``: its report of the replicas it runs; 404 for an
    agent the cluster does not know (it then joins again), 410 for one whose host was removed (it then stops)."""

    def prepare(self) -> None:
        if not (self.service.join_token and self.presents(self.service.join_token)):
            raise tornado.web.HTTPError(401, reason="missing or wrong join token" if self.service.join_token else
                                        "this cluster takes no agents (start it with --join-token-file)")

    async def post(self, name: str | None = None) -> None:
        data = self.body()
        replicas = data.get("replicas", [])
        if not isinstance(replicas, list) or not all(isinstance(r, dict) for r in replicas):
            raise tornado.web.HTTPError(400, reason="replicas must be a list of replica reports")
        if name is not None:
            # On the event loop, not the cluster's thread: a heartbeat must count when it arrives, even while the
            # cluster waits on an agent that is down (queued behind that, every host would look silent).
            try:
                stop = self.service.cluster.agent_heartbeat(name, replicas)
            except KeyError as err:
                raise tornado.web.HTTPError(404, reason=str(err.args[0])) from None
            except AgentRemoved as err:
                raise tornado.web.HTTPError(410, reason=str(err)) from None
            self.finish({"stop": stop})
            return
        fields = {k: data.get(k) for k in ("name", "address", "url", "token")}
        missing = [k for k, v in fields.items() if not isinstance(v, str) or not v]
        if missing:
            raise tornado.web.HTTPError(400, reason=f"a join needs {', '.join(missing)} (text)")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", fields["name"]):
            raise tornado.web.HTTPError(400, reason="a host name is 1 to 63 letters, digits, '.', '_' or '-'")
        try:
            ipaddress.ip_address(fields["address"])
        except ValueError:
            raise tornado.web.HTTPError(400, reason=f"address must be an IP address, got {fields['address']!r}") from None
        gpus = self.gpus(data.get("gpus", 0))
        cert_pem = data.get("cert_pem")
        if cert_pem is not None and not (isinstance(cert_pem, str) and fields["url"].startswith("https:")):
            raise tornado.web.HTTPError(400, reason="cert_pem is the PEM certificate of an agent serving https")
        try:
            joined = await self.service.run(self.service.cluster.join_agent, fields["name"], fields["address"], gpus,
                                            fields["url"], fields["token"], replicas, cert_pem)
        except AgentRemoved as err:
            raise tornado.web.HTTPError(410, reason=str(err)) from None
        self.set_status(201)
        self.finish(joined)


def decision_json(decision: Decision) -> dict[str, Any]:
    return {"kind": decision.kind.value, "granted": decision.granted, "replica": decision.replica,
            "host": decision.host_id, "devices": list(decision.devices), "gpus": decision.gpus,
            "reason": decision.reason}


class HostsHandler(ClusterHandler):
    """``POST /hosts`` adds a host (``{"gpus": N}``, default the cluster's GPUs per host)."""

    async def post(self) -> None:
        data = self.body()
        gpus = self.gpus(data["gpus"]) if "gpus" in data else None
        if gpus == 0:
            raise tornado.web.HTTPError(400, reason="a host needs at least 1 GPU")
        self.set_status(201)
        self.finish(await self.service.run(self.service.cluster.add_host, gpus))


class HostHandler(ClusterHandler):
    """``PATCH`` changes a host's GPU count, ``DELETE`` removes a drained host, ``POST .../drain`` drains it."""

    async def patch(self, name: str) -> None:
        data = self.body()
        if "gpus" not in data:
            raise tornado.web.HTTPError(400, reason="give the new GPU count as {\"gpus\": N}")
        self.finish(await self.service.run(self.service.cluster.resize_host, name, self.gpus(data["gpus"])))

    async def delete(self, name: str) -> None:
        await self.service.run(self.service.cluster.remove_host, name)
        self.set_status(204)
        self.finish()


class DrainHandler(ClusterHandler):
    async def post(self, name: str) -> None:
        self.finish(await self.service.run(self.service.cluster.drain_host, name))


class EventsHandler(ClusterHandler):
    """``GET /events?since=SEQ&limit=N&host=&kernel=&kind=``: logged events after SEQ, oldest first.
    ``GET /events/wait?since=SEQ&timeout=S``: the same, but waits up to S seconds (at most 60) for one to come."""

    async def get(self, wait: str | None = None) -> None:
        since = self._int("since", 0)
        filters = {k: self.get_query_argument(k, None) for k in ("host", "kernel", "kind")}
        log_ = self.service.cluster.events
        if wait and log_.last_seq <= since:
            timeout = min(self._int("timeout", 25), 60)
            await self.service.new_event(since, timeout)
        self.finish({"events": log_.since(since, limit=self._int("limit", 0) or None, **filters),
                     "last_seq": log_.last_seq})

    def _int(self, name: str, default: int) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        if not (raw.isascii() and raw.isdigit() and len(raw) < 16):
            raise tornado.web.HTTPError(400, reason=f"{name} must be a whole number >= 0, got {raw[:40]!r}")
        return int(raw)


class HistoryHandler(ClusterHandler):
    def get(self) -> None:
        try:
            seconds = float(self.get_query_argument("seconds", "3600"))
        except ValueError:
            raise tornado.web.HTTPError(400, reason="seconds must be a number") from None
        history = self.service.cluster.history
        self.finish({"interval_s": history.interval_s, "samples": history.since(time.time(), seconds)})


class MetricsHandler(ClusterHandler):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.service.cluster.metrics.render())


class JournalHandler(ClusterHandler):
    """The core calls of a cluster started with --journal, with their outcomes, for replay on another core."""

    def get(self) -> None:
        cluster = self.service.cluster
        if cluster.journal is None:
            raise tornado.web.HTTPError(404, reason="this cluster keeps no journal; start it with --journal")
        self.finish({
            "policy": cluster.policy.name, "config": dataclasses.asdict(cluster.core_config),
            "calls": [{"method": c.method, "args": list(c.args), "now": c.now} for c in cluster.journal.calls],
            "outcomes": [outcome_json(o) for o in cluster.journal.outcomes],
        })


def _text(value: Any) -> str | None:
    return str(value)[:1000] if isinstance(value, str) and value else None


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None


class CAHandler(tornado.web.RequestHandler):
    """``GET /tls/ca.pem``, unauthenticated: the CA this service made. Public by nature; a client trusts it only
    if its fingerprint is the one its join token pins (tls.py)."""

    def initialize(self, service: "ClusterService") -> None:
        self.service = service

    def get(self) -> None:
        if self.service.ca_pem is None:
            raise tornado.web.HTTPError(404, reason="this service made no CA (it was not started with --tls-auto)")
        self.set_header("Content-Type", "application/x-pem-file")
        self.finish(self.service.ca_pem)


def routes(service: "ClusterService") -> list[tuple[str, type, dict]]:
    """The service's API; every handler gets the service."""
    args = {"service": service}
    return [
        (CA_PATH, CAHandler, args),
        (r"/cluster", ClusterRoot, args),
        (r"/scheduler/journal", JournalHandler, args),
        (r"/events(?:/(wait))?", EventsHandler, args),
        (r"/history", HistoryHandler, args),
        (r"/metrics", MetricsHandler, args),
        (r"/hosts", HostsHandler, args),
        (r"/hosts/([^/]+)", HostHandler, args),
        (r"/hosts/([^/]+)/drain", DrainHandler, args),
        (r"/agents", AgentsHandler, args),
        (r"/agents/([^/]+)/heartbeat", AgentsHandler, args),
        (r"/kernels", KernelsHandler, args),
        (r"/kernels/([^/]+)", KernelHandler, args),
        (r"/kernels/([^/]+)/replicas/(\d+)/(restart|kill|migrate)", ReplicaActionHandler, args),
        (r"/kernels/([^/]+)/executions(?:/(wait|release))?", ExecutionsHandler, args),
    ]
