"""The OpenAPI 3.1 document of the REST API, served at ``/api/notebookos/openapi.json``.

Built here as a Python dict, so it ships with the package without package data. Every handler in
:mod:`.handlers` is described, with the statuses it answers, and checks its requests against it
(:class:`~notebookos.gpu_broker.cluster.openapi.RequestChecker`); tests validate every response they get against it
and fuzz the live server from it (schemathesis). Schemas are JSON Schema 2020-12, as OpenAPI 3.1 uses. The fields
the cluster service takes too (a host's GPU count, the event query, the history window) are its definitions
(:mod:`notebookos.gpu_broker.cluster.openapi`), so the two layers agree.
"""

from __future__ import annotations

import copy
from typing import Literal

from ...gpu_broker.cluster.openapi import EVENT_QUERY, HISTORY_SECONDS, HOST_GPUS
from ..permissions import RESOURCE

API_PREFIX = "/api/notebookos"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict:
    return _json(_ref("Error"), description)


_FORBIDDEN = _error(
    f"Not authenticated (no or a wrong token), or not authorized for this action on the `{RESOURCE}` resource."
)
_FORBIDDEN_ADMIN = _error(
    "Not authenticated, not authorized for action `write` on the "
    f"`{RESOURCE}` resource, or not a pool admin; the message says how an operator grants it."
)
_UNAVAILABLE = _error("The notebookos cluster is not configured or does not answer; the message says what to do.")
_BAD_GATEWAY = _error("The notebookos cluster answered with an unexpected error.")
_BAD_REQUEST = _error(
    "A malformed request (a parameter or body field this document does not allow, or a query "
    "parameter it does not declare): the message says which and why."
)
_KERNEL_ID = {
    "name": "kernel_id",
    "in": "path",
    "required": True,
    "description": "Jupyter kernel id",
    "schema": {"type": "string", "minLength": 1},
}
_REPLICA = {
    "name": "replica",
    "in": "path",
    "required": True,
    "description": "replica index (0, 1, 2)",
    "schema": {"type": "integer", "minimum": 0},
}


def _get(operation_id: str, summary: str, ok: dict, *, params: list | None = None, not_found: bool = False) -> dict:
    responses = {"200": ok, "400": _BAD_REQUEST, "403": _FORBIDDEN, "502": _BAD_GATEWAY, "503": _UNAVAILABLE}
    if not_found:
        responses["404"] = _error("No such kernel in the cluster.")
    op = {"operationId": operation_id, "summary": summary, "responses": responses, "x-notebookos-permission": "read"}
    if params:
        op["parameters"] = params
    return {"get": op}


_PERMISSIONS: dict[Permission, str] = {
    "admin": (
        f"Needs action `write` on the `{RESOURCE}` resource from the server's authorizer and the pool admin "
        "permission (`c.NotebookOS.admin_users`, `c.NotebookOS.admin_groups`, or a JupyterHub admin; on a "
        "server outside JupyterHub with neither set, its users)."
    ),
    "owner": (
        f"Needs action `write` on the `{RESOURCE}` resource from the server's authorizer, and the kernel "
        "must be the user's own (any kernel for a pool admin); another user's kernel is a 404, as an unknown "
        "one."
    ),
}


Permission = Literal["admin", "owner"]


def _action(
    operation_id: str,
    summary: str,
    ok: dict,
    *,
    permission: Permission,
    params: list | None = None,
    body: dict | None = None,
    status: str = "200",
    not_found: str = "No such kernel or replica.",
    conflict: str | None = None,
) -> dict:
    """A changing action, with the permission it needs (``admin`` or ``owner``) and the statuses it answers."""
    responses = {
        status: ok,
        "400": _BAD_REQUEST,
        "403": _FORBIDDEN_ADMIN if permission == "admin" else _FORBIDDEN,
        "404": _error(not_found),
        "502": _BAD_GATEWAY,
        "503": _UNAVAILABLE,
    }
    if conflict:
        responses["409"] = _error(conflict)
    op = {
        "operationId": operation_id,
        "summary": summary,
        "x-notebookos-permission": permission,
        "description": _PERMISSIONS[permission],
        "responses": responses,
    }
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = {"required": "required" in body, "content": {"application/json": {"schema": body}}}
    return op


def _replica_action(
    action: str, summary: str, permission: Permission, body: dict | None = None, conflict: str | None = None
) -> dict:
    return {
        "post": _action(
            f"{action}Replica",
            summary,
            _json(_ref("Kernel"), "The kernel after the action."),
            permission=permission,
            params=[_KERNEL_ID, _REPLICA],
            body=body,
            conflict=conflict,
        )
    }


_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "host name",
    "schema": {"type": "string", "minLength": 1},
}
_GPUS_BODY = {"type": "object", "properties": {"gpus": HOST_GPUS}}
_TIME = {"type": ["number", "null"], "description": "epoch seconds"}
_NULL_STR = {"type": ["string", "null"]}

SCHEMAS: dict = {
    "Error": {
        "type": "object",
        "required": ["message"],
        "properties": {"message": {"type": "string"}, "reason": {"type": ["string", "null"]}},
    },
    "Me": {
        "type": "object",
        "required": ["name", "owner", "admin"],
        "properties": {
            "name": {"type": "string", "description": "the user, as the server's identity provider names them"},
            "owner": {
                "type": "string",
                "description": "the owner name of the user's kernels: the hub user under JupyterHub, else the "
                "account running this server",
            },
            "admin": {
                "type": "boolean",
                "description": "a pool admin: sees every kernel and may change the pool (hosts, other users' "
                "kernels, migrations, fault drills); others see their own kernels only",
            },
        },
    },
    "Replica": {
        "type": "object",
        "required": ["index", "host", "alive", "pid", "restarts", "role", "state"],
        "additionalProperties": False,
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "host": {"type": "string", "description": "the host the replica is placed on"},
            "alive": {"type": "boolean", "description": "whether its process is running"},
            "pid": {"type": ["integer", "null"], "description": "its process id on its host, if started"},
            "restarts": {"type": "integer", "minimum": 0, "description": "restarts and replacements so far"},
            "role": {
                "enum": ["executor", "standby", None],
                "description": "executor: the replica the scheduler last gave the kernel's GPUs; null for a "
                "kernel that has not asked for GPUs (its executor is elected among replicas)",
            },
            "state": {"enum": ["ready", "catching_up", "migrating", "lost"]},
            "exit_reason": {
                "type": ["string", "null"],
                "description": "why its last run ended (an exit code, a signal, OOMKilled); null while it runs",
            },
        },
    },
    "Cell": {
        "type": ["object", "null"],
        "description": "the kernel's current or last cell that asked for GPUs",
        "properties": {
            "state": {"enum": ["queued", "running", "done"]},
            "gpus": {"type": "integer", "minimum": 0},
            "decision": {"type": "string", "description": "lead, migrate, queued, ..."},
            "reason": {"type": "string", "description": "the scheduler's reason for its decision"},
            "host": _NULL_STR,
            "devices": {"type": "array", "items": {"type": "integer"}},
            "submitted": _TIME,
            "started": _TIME,
            "ended": _TIME,
            "bind_s": {"type": ["number", "null"]},
            "release_s": {"type": ["number", "null"]},
        },
    },
    "Kernel": {
        "type": "object",
        "required": ["id", "owner", "notebook", "gpus", "replicas", "replicas_alive", "cell"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string"},
            "owner": _NULL_STR,
            "notebook": {"type": ["string", "null"], "description": "the notebook's path, when Jupyter said it"},
            "gpus": {"type": "integer", "minimum": 0, "description": "GPUs each cell asks for"},
            "replicas": {"type": "array", "items": _ref("Replica")},
            "replicas_alive": {"type": "integer", "minimum": 0},
            "cell": _ref("Cell"),
        },
    },
    "KernelList": {
        "type": "object",
        "required": ["kernels"],
        "properties": {"kernels": {"type": "array", "items": _ref("Kernel")}},
    },
    "Host": {
        "type": "object",
        "required": [
            "name",
            "state",
            "gpus",
            "idle_gpus",
            "subscribed_gpus",
            "subscription_ratio",
            "replicas",
            "replicas_alive",
            "kernels",
        ],
        "properties": {
            "name": {"type": "string"},
            "state": {"enum": ["active", "draining", "starting", "lost"]},
            "reachable": {
                "type": "boolean",
                "description": "false while the host's agent misses heartbeats: nothing new is placed there",
            },
            "gpus": {"type": "integer", "minimum": 0, "description": "the host's GPUs (virtual where it has none)"},
            "idle_gpus": {"type": "integer", "minimum": 0, "description": "GPUs not committed to a cell now"},
            "subscribed_gpus": {
                "type": "integer",
                "minimum": 0,
                "description": "GPUs requested by the replicas placed on the host",
            },
            "subscription_ratio": {
                "type": "number",
                "minimum": 0,
                "description": "subscribed_gpus / gpus; placement refuses past the limit",
            },
            "replicas": {"type": "integer", "minimum": 0, "description": "replicas placed on the host"},
            "replicas_alive": {"type": "integer", "minimum": 0},
            "kernels": {
                "type": "array",
                "items": {"type": "string"},
                "description": "kernels with a replica here (of those the user may see)",
            },
        },
    },
    "Gpu": {
        "type": "object",
        "required": ["host", "device", "state", "kernel", "replica", "since"],
        "properties": {
            "host": {"type": "string"},
            "device": {"type": "integer", "minimum": 0, "description": "device index on its host"},
            "state": {
                "enum": ["idle", "pending", "committed"],
                "description": "pending: reserved for an executor that has not started yet",
            },
            "kernel": {
                "type": ["string", "null"],
                "description": "the kernel whose cell holds the GPU; null for another user's kernel",
            },
            "replica": {"type": ["integer", "null"], "description": "the executor replica holding it (ditto)"},
            "since": {"type": ["number", "null"], "description": "epoch seconds since it is held"},
        },
    },
    "GpuList": {
        "type": "object",
        "required": ["gpus"],
        "properties": {"gpus": {"type": "array", "items": _ref("Gpu")}},
    },
    "HostList": {
        "type": "object",
        "required": ["hosts"],
        "properties": {"hosts": {"type": "array", "items": _ref("Host")}},
    },
    "Cluster": {
        "type": "object",
        "required": [
            "policy",
            "hosts",
            "kernels",
            "replicas",
            "gpus",
            "subscription_ratio",
            "subscription_limit",
            "pending_cells",
            "pending_hosts",
            "max_hosts",
            "pid",
            "started_at",
        ],
        "properties": {
            "policy": {"type": ["string", "null"], "description": "the scheduling policy"},
            "hosts": {
                "type": "array",
                "description": "every host with the number of replicas placed on it",
                "items": {
                    "type": "object",
                    "required": ["name", "replicas"],
                    "properties": {"name": {"type": "string"}, "replicas": {"type": "integer", "minimum": 0}},
                },
            },
            "kernels": {
                "type": "integer",
                "minimum": 0,
                "description": "kernels placed on the cluster (of those the user may see)",
            },
            "replicas": {
                "type": "object",
                "description": "the replicas of those kernels",
                "required": ["total", "alive", "dead"],
                "properties": {k: {"type": "integer", "minimum": 0} for k in ("total", "alive", "dead")},
            },
            "gpus": {
                "type": "object",
                "required": ["total", "idle", "pending", "committed"],
                "properties": {k: {"type": "integer", "minimum": 0} for k in ("total", "idle", "pending", "committed")},
            },
            "subscription_ratio": {
                "type": "number",
                "minimum": 0,
                "description": "GPUs subscribed by all replicas over all GPUs",
            },
            "subscription_limit": {"type": ["number", "null"]},
            "pending_cells": {"type": "integer", "minimum": 0, "description": "cells waiting for GPUs"},
            "pending_hosts": {"type": "integer", "minimum": 0, "description": "hosts asked for, not arrived yet"},
            "max_hosts": {"type": ["integer", "null"], "description": "the autoscaler's ceiling"},
            "pid": {
                "type": ["integer", "null"],
                "description": "the cluster service's process id: a restart of the service shows as a new one",
            },
            "started_at": {"type": ["number", "null"], "description": "when that process started (Unix time)"},
        },
    },
    "Event": {
        "type": "object",
        "required": ["seq", "time", "kind", "reason", "host", "kernel", "replica", "data"],
        "properties": {
            "seq": {"type": "integer", "minimum": 1},
            "time": {"type": "number", "description": "epoch seconds"},
            "kind": {"type": "string"},
            "reason": {"type": "string", "description": "why the scheduler (or operator) did it"},
            "host": _NULL_STR,
            "kernel": _NULL_STR,
            "replica": {"type": ["integer", "null"]},
            "data": {"type": "object", "description": "the rest of the event's fields, by kind"},
        },
    },
    "EventList": {
        "type": "object",
        "required": ["events", "last_seq"],
        "properties": {
            "events": {"type": "array", "items": _ref("Event")},
            "last_seq": {"type": "integer", "minimum": 0},
        },
    },
    "History": {
        "type": "object",
        "required": ["interval_s", "samples"],
        "properties": {
            "interval_s": {"type": "number"},
            "samples": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "time",
                        "gpus_total",
                        "gpus_committed",
                        "pending_cells",
                        "delay_p50",
                        "delay_p99",
                        "migrations",
                        "scale_events",
                    ],
                    "properties": {
                        "time": {"type": "number"},
                        "gpus_total": {"type": "integer"},
                        "gpus_committed": {"type": "integer"},
                        "pending_cells": {"type": "integer"},
                        "delay_p50": {"type": ["number", "null"]},
                        "delay_p99": {"type": ["number", "null"]},
                        "migrations": {"type": "integer"},
                        "scale_events": {"type": "integer"},
                    },
                },
            },
        },
    },
}

DOCUMENT: dict = {
    "openapi": "3.1.0",
    "info": {
        "title": "notebookos REST API",
        "version": "0.1.0",
        "description": (
            "The notebookos cluster as seen from Jupyter Server. Every endpoint needs Jupyter Server "
            "authentication (a token in `Authorization: token <token>`, or the login cookie with its XSRF "
            f"token); reads need action `read` on the `{RESOURCE}` resource, changing actions `write`. A user sees "
            "the pool's hosts and GPUs and their own kernels and those kernels' events; another user's kernel is a "
            "404. Pool admins (`x-notebookos-permission: admin`: `c.NotebookOS.admin_users`, "
            "`c.NotebookOS.admin_groups`, JupyterHub admins) see every kernel and may change the pool; owners may "
            "shut down their own kernels and restart their dead replicas (`owner`)."
        ),
    },
    "servers": [{"url": "/"}],
    "security": [{"token": []}],
    "paths": {
        f"{API_PREFIX}/openapi.json": _get(
            "getOpenAPI",
            "This document.",
            _json({"type": "object", "required": ["openapi", "paths"]}, "The OpenAPI document."),
        ),
        f"{API_PREFIX}/cluster": _get(
            "getCluster", "Summary: hosts, replicas per host, kernels.", _json(_ref("Cluster"), "The cluster summary.")
        ),
        f"{API_PREFIX}/hosts": {
            **_get("listHosts", "Hosts with their GPUs, replicas and kernels.", _json(_ref("HostList"), "The hosts.")),
            "post": _action(
                "addHost",
                "Add a host (from the cluster's provider); `gpus` defaults to the cluster's GPUs per host.",
                _json(_ref("Host"), "The new host."),
                body=_GPUS_BODY,
                permission="admin",
                status="201",
                not_found="Not used.",
                conflict="The provider cannot add a host (its maximum is reached); the message says what to do.",
            ),
        },
        f"{API_PREFIX}/hosts/{{name}}": {
            "patch": _action(
                "resizeHost",
                "Change a host's GPU count (not while cells use its GPUs).",
                _json(_ref("Host"), "The host."),
                permission="admin",
                params=[_NAME],
                body={**_GPUS_BODY, "required": ["gpus"]},
                not_found="No such host.",
                conflict="Cells use the host's GPUs now; the message says what to do.",
            ),
            "delete": _action(
                "removeHost",
                "Remove a drained host.",
                {"description": "Removed."},
                permission="admin",
                params=[_NAME],
                status="204",
                not_found="No such host.",
                conflict="The host still holds replicas: drain it first.",
            ),
        },
        f"{API_PREFIX}/hosts/{{name}}/drain": {
            "post": _action(
                "drainHost",
                "Stop placing work on the host and move its replicas away (replicas running a cell move after it).",
                _json(_ref("Host"), "The host, now draining."),
                permission="admin",
                params=[_NAME],
                not_found="No such host.",
            )
        },
        f"{API_PREFIX}/gpus": _get(
            "listGpus",
            "Every GPU of the cluster and the kernel whose cell holds it now.",
            _json(_ref("GpuList"), "The GPUs."),
        ),
        f"{API_PREFIX}/kernels": _get(
            "listKernels",
            "Kernels on the cluster with their replicas (a user's own; every kernel for a pool admin).",
            _json(_ref("KernelList"), "The kernels."),
        ),
        f"{API_PREFIX}/kernels/{{kernel_id}}": {
            **_get(
                "getKernel",
                "One kernel with its replicas (never its connection info).",
                _json(_ref("Kernel"), "The kernel."),
                params=[_KERNEL_ID],
                not_found=True,
            ),
            "delete": _action(
                "shutdownKernel",
                "Shut the kernel down (through Jupyter when this server started it, so its sessions know).",
                {"description": "Shut down."},
                permission="owner",
                params=[_KERNEL_ID],
                status="204",
                not_found="No such kernel (or another user's).",
            ),
        },
        f"{API_PREFIX}/kernels/{{kernel_id}}/replicas/{{replica}}/kill": _replica_action(
            "kill",
            "Fault drill: SIGKILL the replica's process, as a crash would. The kernel front notices and "
            "the scheduler replaces it on another host.",
            "admin",
        ),
        f"{API_PREFIX}/kernels/{{kernel_id}}/replicas/{{replica}}/restart": _replica_action(
            "restart",
            "Replace a dead replica (on another host where one has room); nothing happens to a live one.",
            "owner",
        ),
        f"{API_PREFIX}/kernels/{{kernel_id}}/replicas/{{replica}}/migrate": _replica_action(
            "migrate",
            "Move the replica to the named host; the kernel keeps running.",
            "admin",
            body={"type": "object", "required": ["host"], "properties": {"host": {"type": "string", "minLength": 1}}},
            conflict="The scheduler refused the move (the replica runs a cell, the host already holds a replica "
            "of the kernel, is not active, or would pass the subscription limit); the message says which.",
        ),
        f"{API_PREFIX}/me": _get(
            "getMe",
            "The user asking, the owner name of their kernels, and whether they are a pool admin.",
            _json(_ref("Me"), "The user."),
        ),
        f"{API_PREFIX}/events": _get(
            "listEvents",
            "The scheduler's decisions and operators' actions, oldest first: "
            "the hosts' and those of the user's kernels (every one for a "
            "pool admin).",
            _json(_ref("EventList"), "The events."),
            params=EVENT_QUERY,
        ),
        f"{API_PREFIX}/events/stream": _get(
            "streamEvents",
            "The same events as server-sent events, as they happen (resumes after Last-Event-ID).",
            {
                "description": "`text/event-stream`: `id: <seq>` and `data: <Event as JSON>` per event.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            params=EVENT_QUERY,
        ),
        f"{API_PREFIX}/history": _get(
            "getHistory",
            "Samples of the last hour for charts: GPUs committed and total, pending cells, delays.",
            _json(_ref("History"), "The samples."),
            params=[HISTORY_SECONDS],
        ),
        f"{API_PREFIX}/metrics": _get(
            "getMetrics",
            "Prometheus metrics of the cluster (text exposition format).",
            {
                "description": "Prometheus text; `notebookos_cluster_up` is 0 when the cluster does not answer.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
        ),
    },
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "token": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "`token <Jupyter Server token>`",
            },
        },
    },
}
# The document does not depend on the cluster, and metrics answer 200 without one (cluster_up 0).
for _path in ("metrics", "openapi.json"):
    for _status in ("502", "503"):
        del DOCUMENT["paths"][f"{API_PREFIX}/{_path}"]["get"]["responses"][_status]


def document(base_url: str = "/") -> dict:
    """The document, its server being the Jupyter server's base URL."""
    doc = copy.deepcopy(DOCUMENT)
    doc["servers"] = [{"url": base_url.rstrip("/") or "/"}]
    return doc
