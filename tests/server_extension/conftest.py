"""pytest-jupyter's Jupyter Server fixtures, for this directory only, with the notebookos kernelspec installed.

pytest-jupyter's ``jupyter_server`` plugin is imported here rather than named in ``pytest_plugins``: pytest refuses
``pytest_plugins`` in a conftest below the rootdir, and as a global plugin its autouse fixtures (a fresh event loop
per test, ``ServerApp`` cleanup) and its coroutine-test hooks would apply to every test of the suite. Imported into
this conftest they apply to the tests under this directory only.

``jp_environ`` (used by every server fixture) gives each test its own HOME, data, config and runtime directories
and replaces jupyter_core's system and environment paths with empty temporary ones, so the kernelspecs installed in
the virtual environment (``sys.prefix/share/jupyter/kernels``) are hidden. ``notebookos_kernelspec`` copies the
installed ``notebookos`` kernelspec into the test's data directory, which the server does search. Our session
fixtures set their variables in ``os.environ`` before any function-scoped fixture runs (higher scopes are set up
first), and ``jp_environ``'s monkeypatch restores them after each test; ``NOTEBOOKOS_CLUSTER_FILE``, which points the
provisioner at the session's cluster, is not among the variables it changes.

``api`` is the REST API's client for the tests here: it checks every answer against the OpenAPI document the
server serves; ``event_stream`` opens its server-sent event stream.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import referencing
import referencing.jsonschema
from jupyter_client.kernelspec import KernelSpecManager
from pytest_jupyter.jupyter_server import *  # noqa: F403  (fixtures and hooks, scoped to this directory)
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from traitlets.config import Config

KERNEL_START_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def installed_notebookos_kernelspec() -> Path:
    """The ``notebookos`` kernelspec as installed, found before any test isolates the Jupyter paths."""
    return Path(KernelSpecManager().get_kernel_spec("notebookos").resource_dir)


@pytest.fixture
def notebookos_kernelspec(installed_notebookos_kernelspec: Path, jp_kernel_dir: Path) -> Path:
    target = Path(jp_kernel_dir) / "notebookos"
    shutil.copytree(installed_notebookos_kernelspec, target)
    return target


@pytest.fixture
def jp_server_config(notebookos_kernelspec: Path, cluster_file: str) -> Config:
    """A plain Jupyter Server (no terminals) that may run as root, with the notebookos server extension (the REST
    API), and the notebookos kernelspec and the session's cluster in place before it starts."""
    return Config(
        {
            "ServerApp": {
                "allow_root": True,
                "jpserver_extensions": {"jupyter_server_terminals": False, "notebookos.server_extension": True},
            }
        }
    )


@pytest.fixture
def notebook_session(jp_fetch: Any, jp_asyncio_loop: asyncio.AbstractEventLoop) -> Any:
    """A notebook session on the notebookos kernel, created over REST: the session's model."""
    resp = fetch_in_loop(
        jp_asyncio_loop,
        jp_fetch,
        "api",
        "sessions",
        method="POST",
        request_timeout=KERNEL_START_TIMEOUT_S,
        body=json.dumps(
            {
                "path": "notebooks/Untitled.ipynb",
                "name": "Untitled.ipynb",
                "type": "notebook",
                "kernel": {"name": "notebookos"},
            }
        ),
    )
    assert resp.code == 201
    model = json.loads(resp.body)
    yield model
    # The server's own cleanup would shut the kernel down too; deleting here keeps each test's footprint on the
    # cluster to the test. A 404 means the test deleted the session itself.
    try:
        fetch_in_loop(
            jp_asyncio_loop,
            jp_fetch,
            "api",
            "sessions",
            model["id"],
            method="DELETE",
            request_timeout=KERNEL_START_TIMEOUT_S,
        )
    except HTTPClientError as err:
        if err.code != 404:
            raise


def fetch_in_loop(loop: asyncio.AbstractEventLoop, jp_fetch: Any, *parts: str, **kwargs: Any) -> Any:
    """jp_fetch from a synchronous fixture. The call itself must happen inside the loop: tornado's HTTP client
    takes the current loop when the request is made, and earlier tests may have left none set."""

    async def fetch() -> Any:
        return await jp_fetch(*parts, **kwargs)

    return loop.run_until_complete(fetch())


# --- the REST API, checked against its own OpenAPI document ---------------------------------------------------

API = ("api", "notebookos")
PREFIX = "/api/notebookos"
DOC_URI = "urn:notebookos:openapi"


class Api:
    """Calls the API through ``jp_fetch`` and checks every answer against the served OpenAPI document.
    ``headers`` go with every request (a test identity provider's user header, say)."""

    def __init__(self, jp_fetch: Any, doc: dict, headers: dict[str, str] | None = None) -> None:
        self.fetch = jp_fetch
        self.doc = doc
        self.headers = headers or {}
        self.registry = referencing.Registry().with_resource(
            DOC_URI, referencing.Resource.from_contents(doc, default_specification=referencing.jsonschema.DRAFT202012)
        )

    def with_headers(self, **headers: str) -> Api:
        return Api(self.fetch, self.doc, {**self.headers, **headers})

    async def call(
        self,
        method: str,
        template: str,
        *,
        headers: dict | None = None,
        body: dict | None = None,
        query: dict | None = None,
        **params: str,
    ) -> HTTPResponse:
        path = template.format(**params)
        data = json.dumps(body).encode() if body is not None else b"" if method in ("POST", "PATCH") else None
        resp = await self.fetch(
            *path.strip("/").split("/"),
            method=method,
            headers={**self.headers, **(headers or {})},
            raise_error=False,
            body=data,
            params=query or {},
            request_timeout=30,
        )
        self.validate(method, template, resp)
        return resp

    def validate(self, method: str, template: str, resp: HTTPResponse) -> None:
        operation = self.doc["paths"][template][method.lower()]
        assert str(resp.code) in operation["responses"], (
            f"{method} {template} answered {resp.code}, which its OpenAPI operation does not document: "
            f"{resp.body[:500]!r}"
        )
        if resp.code == 204:
            assert not resp.body, f"{method} {template} answered 204 with a body"
            return
        content = operation["responses"][str(resp.code)]["content"]
        content_type = resp.headers.get("Content-Type", "")
        media = content_type.split(";")[0].strip()
        assert media in content, f"{method} {template} {resp.code} answered {content_type}, not {list(content)}"
        if media == "application/json":
            pointer = "/".join(
                [
                    "#/paths",
                    template.replace("~", "~0").replace("/", "~1"),
                    method.lower(),
                    "responses",
                    str(resp.code),
                    "content",
                    "application~1json",
                    "schema",
                ]
            )
            validator = jsonschema.Draft202012Validator({"$ref": DOC_URI + pointer}, registry=self.registry)
            validator.validate(json.loads(resp.body))

    async def json(self, method: str, template: str, expect: int = 200, **kw: Any) -> Any:
        resp = await self.call(method, template, **kw)
        assert resp.code == expect, f"{method} {template}: {resp.code} {resp.body[:500]!r}"
        return json.loads(resp.body)


@pytest.fixture
def api(jp_fetch: Any, jp_asyncio_loop: asyncio.AbstractEventLoop) -> Api:
    """The API client, holding the document the server serves (itself checked against the document)."""
    resp = fetch_in_loop(jp_asyncio_loop, jp_fetch, *API, "openapi.json")
    doc = json.loads(resp.body)
    client = Api(jp_fetch, doc)
    client.validate("GET", f"{PREFIX}/openapi.json", resp)
    return client


class EventStream:
    """``events/stream`` read as a browser's EventSource reads it: the ``data:`` of each event block, in order."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.events: list[dict] = []
        self._buffer = b""
        self._arrived = asyncio.Event()
        request = HTTPRequest(url, headers=headers, streaming_callback=self._on_chunk, request_timeout=60)
        self._fetch = asyncio.ensure_future(AsyncHTTPClient().fetch(request, raise_error=False))

    def _on_chunk(self, chunk: bytes) -> None:
        *blocks, self._buffer = (self._buffer + chunk).split(b"\n\n")  # a chunk may end inside a block
        for block in blocks:
            data = [line[len("data: ") :] for line in block.decode().splitlines() if line.startswith("data: ")]
            if data:
                self.events.append(json.loads(data[0]))
                self._arrived.set()

    async def until(self, predicate: Callable[[dict], bool], timeout: float) -> list[dict]:
        """The events received up to the first that ``predicate`` accepts, that one included; waits for it."""
        deadline = time.monotonic() + timeout
        while True:
            for index, event in enumerate(self.events):
                if predicate(event):
                    return self.events[: index + 1]
            if self._fetch.done():
                raise AssertionError(f"the event stream ended ({self._fetch.result().code}) after {self.events}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise AssertionError(f"no such event within {timeout} s; received {self.events}") from None

    def close(self) -> None:
        self._fetch.cancel()


@pytest.fixture
def event_stream(
    jp_serverapp: Any, jp_http_port: int, jp_base_url: str, jp_auth_header: dict
) -> Iterator[Callable[..., EventStream]]:
    """Opens the API's event stream with the server's token and the headers given (``Last-Event-ID``, ...)."""
    url = f"http://127.0.0.1:{jp_http_port}{jp_base_url.rstrip('/')}{PREFIX}/events/stream"
    opened: list[EventStream] = []

    def open_stream(**headers: str) -> EventStream:
        opened.append(EventStream(url, {**jp_auth_header, **headers}))
        return opened[-1]

    yield open_stream
    for stream in opened:
        stream.close()
