"""The OpenAPI 3.1 document of the REST API, served at ``/api/notebookos/openapi.json``.

Built here as a Python dict, so it ships with the package without package data. Every handler in
:mod:`.handlers` is described, with the statuses it answers; tests validate every response they get against it and
fuzz the live server from it (schemathesis). Schemas are JSON Schema 2020-12, as OpenAPI 3.1 uses.
"""
from __future__ import annotations

import copy

API_PREFIX = "/api/notebookos"
RESOURCE = "notebookos"  # the authorization resource of every endpoint


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict:
    return _json(_ref("Error"), description)


_FORBIDDEN = _error("Not authenticated (no or a wrong token), or not authorized for this action on the "
                    f"`{RESOURCE}` resource.")
_UNAVAILABLE = _error("The notebookos cluster is not configured or does not answer; the message says what to do.")
_BAD_GATEWAY = _error("The notebookos cluster answered with an unexpected error.")
_KERNEL_ID = {"name": "kernel_id", "in": "path", "required": True, "description": "Jupyter kernel id",
              "schema": {"type": "string", "minLength": 1}}
_REPLICA = {"name": "replica", "in": "path", "required": True, "description": "replica index (0, 1, 2)",
            "schema": {"type": "integer", "minimum": 0}}


def _get(operation_id: str, summary: str, ok: dict, *, params: list | None = None,
         not_found: bool = False) -> dict:
    responses = {"200": ok, "403": _FORBIDDEN, "502": _BAD_GATEWAY, "503": _UNAVAILABLE}
    if not_found:
        responses["404"] = _error("No such kernel in the cluster.")
    op = {"operationId": operation_id, "summary": summary, "responses": responses,
          "x-notebookos-permission": "read"}
    if params:
        op["parameters"] = params
    return {"get": op}


def _replica_action(action: str, summary: str) -> dict:
    return {"post": {
        "operationId": f"{action}Replica",
        "summary": summary,
        "description": "Needs the admin permission: action `write` on the `notebookos` resource.",
        "parameters": [_KERNEL_ID, _REPLICA],
        "x-notebookos-permission": "write",
        "responses": {
            "200": _json(_ref("Kernel"), "The kernel after the action."),
            "400": _error("The replica index is not a non-negative integer."),
            "403": _FORBIDDEN,
            "404": _error("No such kernel, or the kernel has no such replica."),
            "502": _BAD_GATEWAY,
            "503": _UNAVAILABLE,
        },
    }}


SCHEMAS: dict = {
    "Error": {
        "type": "object",
        "required": ["message"],
        "properties": {"message": {"type": "string"}, "reason": {"type": ["string", "null"]}},
    },
    "Replica": {
        "type": "object",
        "required": ["index", "host", "alive", "pid", "restarts"],
        "additionalProperties": False,
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "host": {"type": "string", "description": "the host the replica is placed on"},
            "alive": {"type": "boolean", "description": "whether its process is running"},
            "pid": {"type": ["integer", "null"], "description": "its process id on its host, if started"},
            "restarts": {"type": "integer", "minimum": 0, "description": "in-place restarts so far"},
        },
    },
    "Kernel": {
        "type": "object",
        "required": ["id", "replicas", "replicas_alive"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string"},
            "replicas": {"type": "array", "items": _ref("Replica")},
            "replicas_alive": {"type": "integer", "minimum": 0},
        },
    },
    "KernelList": {
        "type": "object",
        "required": ["kernels"],
        "properties": {"kernels": {"type": "array", "items": _ref("Kernel")}},
    },
    "Host": {
        "type": "object",
        "required": ["name", "replicas", "replicas_alive", "kernels"],
        "properties": {
            "name": {"type": "string"},
            "replicas": {"type": "integer", "minimum": 0, "description": "replicas placed on the host"},
            "replicas_alive": {"type": "integer", "minimum": 0},
            "kernels": {"type": "array", "items": {"type": "string"}, "description": "kernels with a replica here"},
            "gpus": {"type": "integer", "minimum": 0, "description": "the host's GPUs (virtual where it has none)"},
            "idle_gpus": {"type": "integer", "minimum": 0, "description": "GPUs not committed to a cell now"},
            "subscribed_gpus": {"type": "integer", "minimum": 0,
                                "description": "GPUs requested by the replicas placed on the host"},
            "subscription_ratio": {"type": "number", "minimum": 0,
                                   "description": "subscribed_gpus / gpus; placement refuses past the limit"},
            "state": {"type": "string", "enum": ["active", "draining"]},
        },
    },
    "Gpu": {
        "type": "object",
        "required": ["host", "device", "kernel"],
        "properties": {
            "host": {"type": "string"},
            "device": {"type": "integer", "minimum": 0, "description": "device index on its host"},
            "kernel": {"type": ["string", "null"],
                       "description": "the kernel whose running cell holds the GPU; null when idle"},
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
        "required": ["hosts", "kernels", "replicas"],
        "properties": {
            "hosts": {
                "type": "array",
                "description": "every host with the number of replicas placed on it",
                "items": {"type": "object", "required": ["name", "replicas"],
                          "properties": {"name": {"type": "string"}, "replicas": {"type": "integer", "minimum": 0}}},
            },
            "kernels": {"type": "integer", "minimum": 0, "description": "kernels placed on the cluster"},
            "replicas": {
                "type": "object",
                "required": ["total", "alive", "dead"],
                "properties": {k: {"type": "integer", "minimum": 0} for k in ("total", "alive", "dead")},
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
            f"token); reads need action `read` on the `{RESOURCE}` resource, changing actions (the replica fault "
            "drills) need `write`, the admin permission."
        ),
    },
    "servers": [{"url": "/"}],
    "security": [{"token": []}],
    "paths": {
        f"{API_PREFIX}/openapi.json": _get(
            "getOpenAPI", "This document.", _json({"type": "object", "required": ["openapi", "paths"]},
                                                  "The OpenAPI document.")),
        f"{API_PREFIX}/cluster": _get("getCluster", "Summary: hosts, replicas per host, kernels.",
                                      _json(_ref("Cluster"), "The cluster summary.")),
        f"{API_PREFIX}/hosts": _get("listHosts", "Hosts with their replicas and kernels.",
                                    _json(_ref("HostList"), "The hosts.")),
        f"{API_PREFIX}/gpus": _get("listGpus", "Every GPU of the cluster and the kernel whose cell holds it now.",
                                   _json(_ref("GpuList"), "The GPUs.")),
        f"{API_PREFIX}/kernels": _get("listKernels", "Kernels on the cluster with their replicas.",
                                      _json(_ref("KernelList"), "The kernels.")),
        f"{API_PREFIX}/kernels/{{kernel_id}}": _get(
            "getKernel", "One kernel with its replicas (never its connection info).",
            _json(_ref("Kernel"), "The kernel."), params=[_KERNEL_ID], not_found=True),
        f"{API_PREFIX}/kernels/{{kernel_id}}/replicas/{{replica}}/kill": _replica_action(
            "kill", "Fault drill: SIGKILL the replica's process, as a crash would. The kernel front notices and "
                    "restarts it in place."),
        f"{API_PREFIX}/kernels/{{kernel_id}}/replicas/{{replica}}/restart": _replica_action(
            "restart", "Start a dead replica again in place (same ports and journal); nothing happens to a live "
                       "one."),
        f"{API_PREFIX}/metrics": _get(
            "getMetrics", "Prometheus metrics of the cluster (text exposition format).",
            {"description": "Prometheus text; `notebookos_cluster_up` is 0 when the cluster does not answer.",
             "content": {"text/plain": {"schema": {"type": "string"}}}}),
    },
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "token": {"type": "apiKey", "in": "header", "name": "Authorization",
                      "description": "`token <Jupyter Server token>`"},
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
