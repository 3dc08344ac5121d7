"""Installing the package enables the extension in every Jupyter server of the environment: a plain ``jupyter
server`` process, started with nothing but a token, serves the REST API and the dashboard, and reads the
``c.NotebookOS`` options (here on its command line) that name a shared cluster and its admins.

The switch is ``<prefix>/etc/jupyter/jupyter_server_config.d/notebookos.json``: a wheel installs it, and ``make``
copies it into the editable checkout's venv (an editable install skips data files).
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from notebookos.gpu_broker.cluster.client import CLUSTER_FILE_ENV

from ..jupyter_process import JupyterProcess, start_jupyter

JUPYTER_SERVER = [str(Path(sys.prefix) / "bin" / "jupyter"), "server"]
SWITCH = Path(sys.prefix) / "etc" / "jupyter" / "jupyter_server_config.d" / "notebookos.json"


@pytest.fixture
def plain_server(tmp_path: Path) -> Iterator[Callable[..., JupyterProcess]]:
    """Starts ``jupyter server`` with the extra options given, outside any notebookos cluster; stops it after."""
    started: list[JupyterProcess] = []

    def start(*extra_args: str) -> JupyterProcess:
        assert SWITCH.is_file(), f"{SWITCH} is missing: `make install` puts it there"
        env = {k: v for k, v in os.environ.items() if k != CLUSTER_FILE_ENV}
        started.append(
            start_jupyter(
                JUPYTER_SERVER, tmp_path / f"server-{len(started)}", secrets.token_hex(16), extra_args, env=env
            )
        )
        return started[-1]

    yield start
    for server in started:
        server.stop()


def test_a_plain_jupyter_server_serves_the_api_and_the_dashboard(plain_server: Callable[..., JupyterProcess]) -> None:
    server = plain_server()
    status, body = server.get("api/notebookos/openapi.json")
    assert status == 200 and json.loads(body)["openapi"].startswith("3."), server.output()
    status, body = server.get("api/notebookos/me")
    assert status == 200 and json.loads(body)["admin"] is True, body  # a personal server's user is its admin
    status, body = server.get("notebookos/")
    assert status == 200 and '"baseUrl": "/"' in body, body[:500]
    # No cluster yet (none is named, and no kernel has started one): 503 saying how to get one.
    status, body = server.get("api/notebookos/cluster")
    assert status == 503 and "c.NotebookOS.cluster_url" in json.loads(body)["message"], body
    assert "NotebookOS] REST API at /api/notebookos/, dashboard at /notebookos/" in server.output()


def test_the_cluster_and_the_admins_come_from_c_notebookos(
    plain_server: Callable[..., JupyterProcess], cluster_file: str, tmp_path: Path
) -> None:
    """The options of the extension, on the server's command line as in a jupyter_server_config.py: the session's
    cluster named by URL and token file, and an admin who is not the token's user."""
    discovery = json.loads(Path(cluster_file).read_text())
    token_file = tmp_path / "cluster-token"
    token_file.write_text(discovery["token"] + "\n")
    token_file.chmod(0o600)
    server = plain_server(
        f"--NotebookOS.cluster_url={discovery['url']}",
        f"--NotebookOS.cluster_token_file={token_file}",
        "--NotebookOS.admin_users=someone-else",
    )
    status, body = server.get("api/notebookos/cluster")
    assert status == 200, body
    assert [host["name"] for host in json.loads(body)["hosts"]] == ["host-1", "host-2", "host-3", "host-4"]
    status, body = server.get("api/notebookos/me")
    assert status == 200 and json.loads(body)["admin"] is False, body
    assert f"kernels run on the cluster at {discovery['url']}" in server.output()
