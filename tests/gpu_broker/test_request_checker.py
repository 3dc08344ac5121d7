"""Requests checked against the OpenAPI documents of both HTTP layers (gpu_broker/cluster/openapi.py): the cluster
service's and the Jupyter server extension's, with the fields they share defined once."""

from __future__ import annotations

import json

import fastjsonschema
import hypothesis
import hypothesis.strategies as st
import pytest
from jsonschema import Draft202012Validator

from notebookos.gpu_broker.cluster.openapi import HOST_GPUS, RequestChecker, RequestInvalid, compiled_validators
from notebookos.gpu_broker.cluster.service.openapi import DOCUMENT as SERVICE
from notebookos.server_extension.api.openapi import DOCUMENT as EXTENSION

SERVICE_CHECKER = RequestChecker(SERVICE)
EXTENSION_CHECKER = RequestChecker(EXTENSION, ignored_query=frozenset({"token"}))


def refused(checker: RequestChecker, method: str, path: str, body: object = None, **query: str) -> str:
    with pytest.raises(RequestInvalid) as raised:
        checker.check(
            method,
            path,
            {k: [v.encode()] for k, v in query.items()},
            None if body is None else json.dumps(body).encode(),
        )
    return str(raised.value)


def test_the_service_document_is_openapi_with_valid_schemas() -> None:
    assert SERVICE["openapi"].startswith("3.1")
    for item in SERVICE["paths"].values():
        for op in item.values():
            for param in op.get("parameters", ()):
                Draft202012Validator.check_schema(param["schema"])
            if "requestBody" in op:
                Draft202012Validator.check_schema(op["requestBody"]["content"]["application/json"]["schema"])


def test_both_layers_take_the_same_gpu_count_for_a_host() -> None:
    assert (
        EXTENSION["paths"]["/api/notebookos/hosts/{name}"]["patch"]["requestBody"]["content"]["application/json"][
            "schema"
        ]["properties"]["gpus"]
        is HOST_GPUS
    )
    assert (
        SERVICE["paths"]["/hosts/{name}"]["patch"]["requestBody"]["content"]["application/json"]["schema"][
            "properties"
        ]["gpus"]
        is HOST_GPUS
    )
    for checker, path in ((SERVICE_CHECKER, "/hosts/h1"), (EXTENSION_CHECKER, "/api/notebookos/hosts/h1")):
        assert checker.check("PATCH", path, {}, b'{"gpus": 2}').body == {"gpus": 2}
        for bad, why in (
            (0, "less than the minimum of 1"),
            (1025, "greater than the maximum of 1024"),
            (True, "not of type 'integer'"),
            ("2", "not of type 'integer'"),
        ):
            assert f"body field 'gpus': {bad!r} is {why}" in refused(checker, "PATCH", path, {"gpus": bad})
        assert refused(checker, "PATCH", path, {}) == "body field 'gpus' is required"


def test_a_kernel_may_ask_for_no_gpu_but_a_cell_asks_for_one_at_least() -> None:
    body = {"kernel_id": "k", "key": "secret", "gpus": 0}
    assert SERVICE_CHECKER.check("POST", "/kernels", {}, json.dumps(body).encode()).body == body
    assert "minimum of 1" in refused(SERVICE_CHECKER, "POST", "/kernels/k/executions", {"gpus": 0})
    assert refused(SERVICE_CHECKER, "POST", "/kernels", {"key": "x"}) == "body field 'kernel_id' is required"


def test_parameters_are_converted_by_their_schemas_and_unknown_ones_refused() -> None:
    checked = SERVICE_CHECKER.check("GET", "/events", {"since": [b"7"], "kind": [b"decision"]}, None)
    assert checked.query == {"since": 7, "kind": "decision"}
    assert SERVICE_CHECKER.check("GET", "/history", {"seconds": [b"90.5"]}, None).query == {"seconds": 90.5}
    assert "query parameter 'since' must be a whole number, got 'x'" in refused(
        SERVICE_CHECKER, "GET", "/events", since="x"
    )
    assert "unknown query parameter 'sinse'" in refused(SERVICE_CHECKER, "GET", "/events", sinse="1")
    assert "query parameter 'seconds' must be a number" in refused(SERVICE_CHECKER, "GET", "/history", seconds="nan")
    path = "/api/notebookos/kernels/k%2F1/replicas/{}/kill"
    assert EXTENSION_CHECKER.check("POST", path.format(2), {}, None).path == {"kernel_id": "k/1", "replica": 2}
    for bad in ("x", "1.5", "\u00b2", "9" * 5000):
        assert "path parameter 'replica' must be a whole number" in refused(EXTENSION_CHECKER, "POST", path.format(bad))
    # Any whole number the schema allows is taken: an index past the kernel's replicas is the handler's 404.
    assert EXTENSION_CHECKER.check("POST", path.format("9" * 40), {}, None).path["replica"] == int("9" * 40)
    assert "-1 is less than the minimum of 0" in refused(EXTENSION_CHECKER, "POST", path.format(-1))
    # Jupyter's own authentication reads `token` from the query of any request.
    assert EXTENSION_CHECKER.check("GET", "/api/notebookos/cluster", {"token": [b"t"]}, None).query == {}
    assert "unknown query parameter 'x'" in refused(EXTENSION_CHECKER, "GET", "/api/notebookos/cluster", x="1")
    # JupyterLab's requests carry `?<milliseconds>` so that no browser cache answers them: taken, and ignored.
    assert EXTENSION_CHECKER.check("GET", "/api/notebookos/cluster", {"1733500000000": [b""]}, None).query == {}
    assert "unknown query parameter '17'" in refused(EXTENSION_CHECKER, "GET", "/api/notebookos/cluster", **{"17": "1"})


def test_bodies_that_are_not_json_objects_and_agents_that_are_not_addresses() -> None:
    with pytest.raises(RequestInvalid, match="the request body is not JSON"):
        SERVICE_CHECKER.check("POST", "/hosts", {}, b"{nope")
    assert "is not of type 'object'" in refused(SERVICE_CHECKER, "POST", "/hosts", [1])
    join = {"name": "gpu-1", "address": "10.0.0.7", "url": "http://10.0.0.7:1", "token": "t", "gpus": 8}
    assert SERVICE_CHECKER.check("POST", "/agents", {}, json.dumps(join).encode()).body == join
    assert "body field 'address'" in refused(SERVICE_CHECKER, "POST", "/agents", {**join, "address": "nowhere"})
    assert "body field 'name'" in refused(SERVICE_CHECKER, "POST", "/agents", {**join, "name": "-bad"})
    # A long value is quoted, not the whole of it.
    assert len(refused(SERVICE_CHECKER, "POST", "/kernels/k/replicas/0/migrate", {"host": ["x" * 10_000]})) < 400


def test_a_route_the_document_does_not_describe_is_a_bug_not_a_free_pass() -> None:
    with pytest.raises(LookupError, match="describes no operation GET /nowhere"):
        SERVICE_CHECKER.check("GET", "/nowhere", {"x": [b"1"]}, b"junk")


def _schemas(checker: RequestChecker) -> list[tuple[str, dict]]:
    """Every schema a checker validates with: each operation's body and parameters."""
    found = []
    for method, op in checker._operations:
        where = f"{method} {op.template.pattern}"
        if op.body is not None:
            found.append((f"{where} body", op.body))
        found += [(f"{where} {p['name']}", p["schema"]) for p in op.parameters if "schema" in p]
    return found


SCHEMAS = _schemas(SERVICE_CHECKER) + _schemas(EXTENSION_CHECKER)
EDGE_NUMBERS = st.sampled_from([0, 1, -1, 1.0, 0.5, 1024, 1025, 10**15, 10**16, -(10**15), 86400, 86400.5, 1e308])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    EDGE_NUMBERS,
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


STRINGS = st.sampled_from(["", "x", "10.0.0.7", "::1", "not an address", "host-1", "http://10.0.0.7:8000", "-" * 201])
OF_TYPE: dict[str, st.SearchStrategy] = {
    "string": STRINGS | st.text(max_size=30),
    "integer": EDGE_NUMBERS | st.integers(),
    "number": EDGE_NUMBERS | st.floats(allow_nan=True, allow_infinity=True),
    "boolean": st.booleans(),
    "null": st.none(),
}


def _values_for(schema: dict) -> st.SearchStrategy:
    """Values near what ``schema`` takes, at its edges (its required fields there, each of its own type or of
    another), and now and then any JSON at all."""
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    near = [OF_TYPE[kind] for kind in kinds if kind in OF_TYPE]
    if "array" in kinds:
        near.append(st.lists(_values_for(schema.get("items", {})), max_size=3))
    if "object" in kinds or "properties" in schema:
        fields = {name: _values_for(sub) for name, sub in schema.get("properties", {}).items()}
        required = set(schema.get("required", ()))
        near.append(
            st.fixed_dictionaries(
                {name: v for name, v in fields.items() if name in required},
                optional={name: v for name, v in fields.items() if name not in required},
            )
        )
    return st.one_of(*near, JSON) if near else JSON


@pytest.mark.parametrize(("what", "schema"), SCHEMAS, ids=[what for what, _ in SCHEMAS])
def test_the_fast_validator_takes_only_what_jsonschema_takes(what: str, schema: dict) -> None:
    """The checker takes a value on the word of fastjsonschema's validator: it must never take one that jsonschema,
    whose messages the checker gives, refuses. Refusing one that jsonschema takes only costs the slow check."""
    fast, full = compiled_validators(schema)

    @hypothesis.settings(max_examples=100, deadline=None, derandomize=True)
    @hypothesis.given(_values_for(schema))
    def agree(value: object) -> None:
        try:
            fast(value)
        except fastjsonschema.JsonSchemaException:
            fast_takes = False
        else:
            fast_takes = True
        assert fast_takes == full.is_valid(value), (what, value)

    agree()
