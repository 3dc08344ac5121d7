"""Requests checked against an OpenAPI 3.1 document, and the field schemas both HTTP layers share.

Both HTTP layers serve an OpenAPI document: the cluster service (:mod:`.service.openapi`, ``GET /openapi.json``) and
the Jupyter server extension's REST API (``server_extension/api/openapi.py``, ``GET /api/notebookos/openapi.json``).
Each checks every request against its own document with :class:`RequestChecker` (JSON Schema 2020-12 through
jsonschema), so what a document says a request may carry is what the server takes: path and query parameters
converted from text by their schema's type and checked, query parameters the operation does not declare refused,
the JSON body checked against the operation's ``requestBody``. A request that fails gets 400 with
:class:`RequestInvalid`'s message, which names the field and says why.

A value is first checked by a validator fastjsonschema compiled from the same schema (1 µs for a request, where
jsonschema took 20 to 250 µs: an agent's heartbeat, 50 a second at 200 machines, carries a report per replica);
only a value that fails goes through jsonschema, for its message. The documents use a small set of keywords
(``type``, ``properties``, ``required``, ``items``, ``minimum``/``maximum``, ``minLength``/``maxLength``,
``pattern``, ``format``) on which the two agree, and where jsonschema finds no error the value is taken.

The fields both layers take (GPU counts, the event log's query, the history's window) are defined once, below, and
both documents use these definitions: a host's GPU count means the same through the extension as at the service.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import fastjsonschema
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match

# --- fields both documents use -------------------------------------------------------------------------------------

MAX_GPUS = 1024  # GPUs one request may name: more than any machine has, few enough to catch a typo
HOST_GPUS = {
    "type": "integer",
    "minimum": 1,
    "maximum": MAX_GPUS,
    "description": "the host's GPU count (virtual GPUs where it has none)",
}
KERNEL_GPUS = {
    "type": "integer",
    "minimum": 0,
    "maximum": MAX_GPUS,
    "description": "GPUs each cell of the kernel asks for (0: none)",
}
CELL_GPUS = {"type": "integer", "minimum": 1, "maximum": MAX_GPUS, "description": "GPUs the cell asks for"}
MACHINE_GPUS = {
    "type": "integer",
    "minimum": 0,
    "maximum": MAX_GPUS,
    "description": "the GPUs the agent's machine offers (0: none)",
}
MAX_SEQ = 10**15 - 1  # event sequence numbers and limits are refused past 15 digits
EVENT_QUERY = [
    {
        "name": "since",
        "in": "query",
        "required": False,
        "description": "only events after this sequence number",
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
    },
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "at most this many (the latest)",
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
    },
    {"name": "host", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 200}},
    {"name": "kernel", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 200}},
    {
        "name": "kind",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "maxLength": 200},
        "description": "e.g. decision, replica_moved, host_added, scale_out_requested",
    },
]
HISTORY_SECONDS = {
    "name": "seconds",
    "in": "query",
    "required": False,
    "description": "how far back the samples go (default 3600)",
    "schema": {"type": "number", "minimum": 1, "maximum": 86400},
}

# --- checking ------------------------------------------------------------------------------------------------------

_MESSAGE_MAX = 300  # a message quotes the value it refuses: keep a huge one from filling the answer
_INTEGER = re.compile(r"-?[0-9]+")
_INTEGER_DIGITS_MAX = 4000  # Python converts no longer text to an int (sys.get_int_max_str_digits, 4300)
_FORMATS = FormatChecker()


@_FORMATS.checks("ip-address", raises=ValueError)
def _ip_address(value: object) -> bool:
    """Format ``ip-address``: an IPv4 or IPv6 address (JSON Schema has a format for each, not for either)."""
    if isinstance(value, str):
        ipaddress.ip_address(value)
    return True


def _is_ip_address(value: str) -> bool:
    """``ip-address`` for fastjsonschema, which calls a format's function with strings alone."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


class RequestInvalid(ValueError):
    """A request its document does not allow: the message names the field or parameter and says why (HTTP 400)."""


@dataclass(frozen=True)
class Checked:
    """A request's checked values: path and query parameters converted by their schemas (a query parameter not
    given is absent), and the body (None for an operation that takes none)."""

    path: dict[str, Any]
    query: dict[str, Any]
    body: Any


@dataclass(frozen=True)
class _Operation:
    template: re.Pattern[str]
    parameters: tuple[dict, ...]
    body: dict | None  # the requestBody's JSON schema
    body_required: bool


def _cache_buster(name: str, values: list[bytes]) -> bool:
    """``?1733500000000``: JupyterLab's ServerConnection appends the time to GET requests (its default cache mode,
    no-store) so that no browser cache answers them. It carries nothing, so every endpoint takes it."""
    return name.isdigit() and all(not value for value in values)


class RequestChecker:
    """Checks requests against ``document``'s operations. ``ignored_query``: query parameters any request may carry
    that no operation declares (Jupyter's ``token`` and ``_xsrf``, which its authentication reads)."""

    def __init__(self, document: Mapping[str, Any], ignored_query: frozenset[str] = frozenset()) -> None:
        components = document.get("components", {}).get("schemas", {})
        self.ignored_query = ignored_query
        self._operations: list[tuple[str, _Operation]] = []
        for path, item in document["paths"].items():
            pattern = re.compile(
                "".join(
                    f"(?P<{part[1:-1]}>[^/]+)" if part.startswith("{") else re.escape(part)
                    for part in re.split(r"(\{[^}]+\})", path)
                )
            )
            for method, op in item.items():
                if method == "parameters":
                    continue
                params = tuple(_inline(p, components) for p in (*item.get("parameters", ()), *op.get("parameters", ())))
                content = op.get("requestBody", {}).get("content", {}).get("application/json")
                body = _inline(content["schema"], components) if content else None
                self._operations.append(
                    (method.upper(), _Operation(pattern, params, body, bool(op.get("requestBody", {}).get("required"))))
                )
        # By id(schema): the fast validator, then the full one.
        self._validators: dict[int, tuple[Callable[[Any], Any], Draft202012Validator]] = {}

    def check(self, method: str, path: str, query: Mapping[str, list[bytes]], body: bytes | None) -> Checked:
        """The request's checked values, or RequestInvalid. ``path`` as sent (percent-encoded), relative to the
        document's server; ``query`` as tornado parses it. A request no operation describes is a LookupError: a
        route served without being documented is a bug, not a request to let through unchecked."""
        for op_method, op in self._operations:
            match = op.template.fullmatch(path)
            if match and op_method == method.upper():
                break
        else:
            raise LookupError(f"the OpenAPI document describes no operation {method} {path}")
        declared = {p["name"] for p in op.parameters if p["in"] == "query"}
        unknown = sorted(
            name for name in set(query) - declared - self.ignored_query if not _cache_buster(name, query[name])
        )
        if unknown:
            raise RequestInvalid(
                f"unknown query parameter {unknown[0][:40]!r}; this endpoint takes "
                f"{', '.join(sorted(declared)) or 'none'}"
            )
        values: dict[str, dict[str, Any]] = {"path": {}, "query": {}}
        for param in op.parameters:
            where, name = param["in"], param["name"]
            if where == "path":
                raw: str | None = unquote(match.group(name))
            elif where == "query" and query.get(name):
                raw = query[name][-1].decode(errors="replace")  # the last, as tornado's get_query_argument takes
            else:
                raw = None
            if raw is None:
                if param.get("required"):
                    raise RequestInvalid(f"{where} parameter {name!r} is required")
                continue
            schema = param.get("schema", {})
            value = _from_text(raw, schema, f"{where} parameter {name!r}")
            self._validate(value, schema, f"{where} parameter {name!r}")
            values[where][name] = value
        data = None
        if op.body is not None:
            try:
                data = json.loads(body or b"{}")
            except ValueError as err:
                raise RequestInvalid(f"the request body is not JSON: {err}") from None
            self._validate(data, op.body, "the request body")
        return Checked(values["path"], values["query"], data)

    def _validate(self, value: Any, schema: dict, what: str) -> None:
        validators = self._validators.get(id(schema))
        if validators is None:
            validators = self._validators[id(schema)] = compiled_validators(schema)
        fast, full = validators
        try:
            fast(value)
            return
        except fastjsonschema.JsonSchemaException:
            pass
        error = best_match(full.iter_errors(value))
        if error is not None:
            raise RequestInvalid(_message(error, what))


def compiled_validators(schema: dict) -> tuple[Callable[[Any], Any], Draft202012Validator]:
    """The fast validator (raises ``fastjsonschema.JsonSchemaException``) and jsonschema's, for one schema."""
    return (
        fastjsonschema.compile(schema, formats={"ip-address": _is_ip_address}),
        Draft202012Validator(schema, format_checker=_FORMATS),
    )


def _message(error: ValidationError, what: str) -> str:
    """``body field 'gpus': 0 is less than the minimum of 1``: where, then jsonschema's why."""
    if error.validator == "required" and what == "the request body":
        missing = error.message.split("'")[1] if error.message.count("'") >= 2 else error.message
        path = "".join(f"{p}." for p in error.absolute_path)
        said = f"body field '{path}{missing}' is required"
    else:
        if error.absolute_path and what == "the request body":
            what = "body field '" + ".".join(str(p) for p in error.absolute_path) + "'"
        said = f"{what}: {error.message}"
    return said if len(said) <= _MESSAGE_MAX else said[:_MESSAGE_MAX] + "..."


def _from_text(raw: str, schema: dict, what: str) -> Any:
    """A path or query parameter's text as its schema's type says (OpenAPI's simple style)."""
    kind = schema.get("type")
    if kind == "integer":
        if not (raw.isascii() and _INTEGER.fullmatch(raw)):
            raise RequestInvalid(f"{what} must be a whole number, got {raw[:40]!r}")
        if len(raw) > _INTEGER_DIGITS_MAX:
            raise RequestInvalid(f"{what} must be a whole number of at most {_INTEGER_DIGITS_MAX} digits")
        return int(raw)
    if kind == "number":
        try:
            number = float(raw) if raw.isascii() else math.nan
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise RequestInvalid(f"{what} must be a number, got {raw[:40]!r}")
        return number
    if kind == "boolean":
        if raw not in ("true", "false"):
            raise RequestInvalid(f"{what} must be true or false, got {raw[:40]!r}")
        return raw == "true"
    return raw


def _inline(schema: Any, components: Mapping[str, Any]) -> Any:
    """``schema`` with every ``#/components/schemas/NAME`` reference replaced by that schema (the documents have no
    recursive ones), so that each operation's schema validates on its own."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            return _inline(components[ref.rsplit("/", 1)[1]], components)
        return {k: _inline(v, components) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_inline(v, components) for v in schema]
    return schema
