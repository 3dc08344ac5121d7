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
"""
from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from pytest_jupyter.jupyter_server import *  # noqa: F403  (fixtures and hooks, scoped to this directory)
from tornado.httpclient import HTTPClientError
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
    return Config({"ServerApp": {"allow_root": True, "jpserver_extensions": {
        "jupyter_server_terminals": False, "notebookos.server_extension": True}}})


@pytest.fixture
def notebook_session(jp_fetch: Any, jp_asyncio_loop: asyncio.AbstractEventLoop) -> Any:
    """A notebook session on the notebookos kernel, created over REST: the session's model."""
    resp = fetch_in_loop(jp_asyncio_loop, jp_fetch,
        "api", "sessions", method="POST", request_timeout=KERNEL_START_TIMEOUT_S, body=json.dumps({
            "path": "notebooks/Untitled.ipynb", "name": "Untitled.ipynb", "type": "notebook",
            "kernel": {"name": "notebookos"},
        }))
    assert resp.code == 201
    model = json.loads(resp.body)
    yield model
    # The server's own cleanup would shut the kernel down too; deleting here keeps each test's footprint on the
    # cluster to the test. A 404 means the test deleted the session itself.
    try:
        fetch_in_loop(jp_asyncio_loop, jp_fetch, "api", "sessions", model["id"], method="DELETE",
                      request_timeout=KERNEL_START_TIMEOUT_S)
    except HTTPClientError as err:
        if err.code != 404:
            raise


def fetch_in_loop(loop: asyncio.AbstractEventLoop, jp_fetch: Any, *parts: str, **kwargs: Any) -> Any:
    """jp_fetch from a synchronous fixture. The call itself must happen inside the loop: tornado's HTTP client
    takes the current loop when the request is made, and earlier tests may have left none set."""

    async def fetch() -> Any:
        return await jp_fetch(*parts, **kwargs)

    return loop.run_until_complete(fetch())
