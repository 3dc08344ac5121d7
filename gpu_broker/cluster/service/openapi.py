"""The OpenAPI 3.1 document of the cluster service's API, served at ``GET /openapi.json``.

Its clients are notebookos' own: kernel provisioners and fronts, Jupyter servers' REST API
(:class:`..client.ClusterClient`) and host agents. Every request the service takes is checked against this document
(:class:`..openapi.RequestChecker`, in :class:`.handlers.ServiceHandler`) before a handler runs, so the document is
what the service accepts. The fields the Jupyter server extension's REST API takes too (GPU counts, the event
query, the history window) are the shared definitions of :mod:`..openapi`. Answers are described loosely (an
object); the extension's models are the public, exact ones.
"""

from __future__ import annotations

from typing import Any

from ..openapi import CELL_GPUS, EVENT_QUERY, HISTORY_SECONDS, HOST_GPUS, KERNEL_GPUS, MACHINE_GPUS

_OBJECT = {"description": "JSON", "content": {"application/json": {"schema": {"type": "object"}}}}
_ERROR = {
    "description": '`{"error": message}`, the message saying why',
    "content": {
        "application/json": {
            "schema": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
        }
    },
}
_TEXT = {"type": ["string", "null"]}
_SECONDS = {"type": ["number", "null"], "minimum": 0}
_KERNEL_ID = {"name": "kernel_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
_REPLICA = {"name": "replica", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
_HOST_NAME = {
    "type": "string",
    "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
    "description": "1 to 63 letters, digits, '.', '_' or '-'",
}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_LENT_PORTS = {
    "type": "object",
    "properties": {"first": _PORT, "last": _PORT},
    "required": ["first", "last"],
    "description": "the range of its machine's ports (first to last, both included) the agent lends the cluster to "
    "choose its replicas' ports from; without it, the cluster asks the agent for each replica's ports",
}
_REPLICA_REPORTS = {"type": "array", "items": {"type": "object"}, "description": "the replicas the agent runs"}


def _op(
    operation_id: str,
    summary: str,
    *,
    params: list | None = None,
    body: dict | None = None,
    ok: str = "200",
    answer: dict | None = None,
) -> dict[str, Any]:
    responses: dict[str, Any] = {ok: answer or _OBJECT, "400": _ERROR, "401": _ERROR, "404": _ERROR, "409": _ERROR}
    op: dict[str, Any] = {"operationId": operation_id, "summary": summary, "responses": responses}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": bool(body.get("required")), "content": {"application/json": {"schema": body}}}
    return op


def _body(properties: dict, required: tuple[str, ...] = ()) -> dict:
    body: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        body["required"] = list(required)
    return body


DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "notebookos cluster service",
        "version": "0.1.0",
        "description": "The cluster's own API, for notebookos' provisioners, kernel fronts, Jupyter servers and "
        "host agents. `Authorization: token <token>` (or `Bearer`): the cluster's token, or the "
        "join token; agents' calls need the join token.",
    },
    "security": [{"token": []}],
    "paths": {
        "/openapi.json": {"get": _op("getOpenAPI", "This document.")},
        "/cluster": {"get": _op("describeCluster", "Hosts, kernels with their replicas, pending work.")},
        "/scheduler/journal": {"get": _op("getJournal", "The core calls of a cluster started with --journal.")},
        "/events": {"get": _op("listEvents", "Logged events after `since`, oldest first.", params=EVENT_QUERY)},
        "/events/wait": {
            "get": _op(
                "waitEvents",
                "The same, waiting up to `timeout` seconds for one to come.",
                params=[
                    *EVENT_QUERY,
                    {
                        "name": "timeout",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0, "maximum": 60},
                    },
                ],
            )
        },
        "/history": {"get": _op("getHistory", "Samples for charts.", params=[HISTORY_SECONDS])},
        "/metrics": {
            "get": _op(
                "getMetrics",
                "Prometheus text.",
                answer={"description": "Prometheus text", "content": {"text/plain": {"schema": {"type": "string"}}}},
            )
        },
        "/hosts": {
            "post": _op(
                "addHost",
                "A host from the provider (`gpus`: default the cluster's per host).",
                body=_body({"gpus": HOST_GPUS}),
                ok="201",
            )
        },
        "/hosts/{name}": {
            "patch": _op(
                "resizeHost", "Change a host's GPU count.", params=[_NAME], body=_body({"gpus": HOST_GPUS}, ("gpus",))
            ),
            "delete": _op(
                "removeHost", "Remove a drained host.", params=[_NAME], ok="204", answer={"description": "Removed."}
            ),
        },
        "/hosts/{name}/drain": {"post": _op("drainHost", "Move the host's replicas away.", params=[_NAME])},
        "/agents": {
            "post": _op(
                "joinAgent",
                "A `notebookos agent` joins (join token).",
                ok="201",
                body=_body(
                    {
                        "name": _HOST_NAME,
                        "address": {"type": "string", "format": "ip-address", "description": "the agent's IP address"},
                        "url": {"type": "string", "minLength": 1},
                        "token": {"type": "string", "minLength": 1},
                        "gpus": MACHINE_GPUS,
                        "replicas": _REPLICA_REPORTS,
                        "cert_pem": {**_TEXT, "description": "the PEM certificate of an agent serving https"},
                        "ports": _LENT_PORTS,
                    },
                    ("name", "address", "url", "token"),
                ),
            )
        },
        "/agents/{name}/heartbeat": {
            "post": _op(
                "agentHeartbeat",
                "An agent's report of its replicas.",
                params=[_NAME],
                body=_body({"replicas": _REPLICA_REPORTS}),
            )
        },
        "/kernels": {
            "post": _op(
                "createKernel",
                "Place a kernel's replicas and start them.",
                ok="201",
                body=_body(
                    {
                        "kernel_id": {"type": "string", "minLength": 1},
                        "key": {"type": "string"},
                        "signature_scheme": {"type": "string", "minLength": 1},
                        "cwd": _TEXT,
                        "gpus": KERNEL_GPUS,
                        "owner": _TEXT,
                        "notebook": _TEXT,
                    },
                    ("kernel_id", "key"),
                ),
            )
        },
        "/kernels/{kernel_id}": {
            "get": _op("describeKernel", "The kernel with its replicas.", params=[_KERNEL_ID]),
            "delete": _op(
                "deleteKernel",
                "Stop and remove the kernel's replicas.",
                params=[_KERNEL_ID],
                ok="204",
                answer={"description": "Deleted."},
            ),
        },
        "/kernels/{kernel_id}/replicas/{replica}/restart": {
            "post": _op(
                "restartReplica",
                "Replace a lost replica (`seen`: the `ip:shell_port` the caller lost).",
                params=[_KERNEL_ID, _REPLICA],
                body=_body({"seen": _TEXT}),
            )
        },
        "/kernels/{kernel_id}/replicas/{replica}/kill": {
            "post": _op("killReplica", "Fault drill: SIGKILL the replica.", params=[_KERNEL_ID, _REPLICA])
        },
        "/kernels/{kernel_id}/replicas/{replica}/migrate": {
            "post": _op(
                "migrateReplica",
                "Move the replica to `host`.",
                params=[_KERNEL_ID, _REPLICA],
                body=_body({"host": {"type": "string", "minLength": 1}}, ("host",)),
            )
        },
        "/kernels/{kernel_id}/executions": {
            "post": _op(
                "requestExecution",
                "A cell's executor and GPUs (200 granted, 202 queued).",
                params=[_KERNEL_ID],
                body=_body({"gpus": CELL_GPUS}, ("gpus",)),
            )
        },
        "/kernels/{kernel_id}/executions/wait": {
            "post": _op("waitExecution", "Wait until the queued cell is granted.", params=[_KERNEL_ID])
        },
        "/kernels/{kernel_id}/executions/release": {
            "post": _op(
                "releaseExecution",
                "The cell is over: give its GPUs back.",
                params=[_KERNEL_ID],
                body=_body({"bind_s": _SECONDS, "release_s": _SECONDS}),
            )
        },
    },
    "components": {"securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "Authorization"}}},
}
