"""The notebookos Jupyter Server extension as an ``ExtensionApp``: every option under ``c.NotebookOS``.

Installing the package enables it for every Jupyter server of the environment
(``etc/jupyter/jupyter_server_config.d/notebookos.json``), so plain ``jupyter lab``, ``jupyter server`` and
JupyterHub's single-user servers serve the REST API under ``/api/notebookos/`` and the dashboard under
``/notebookos/``; ``notebookos lab`` runs JupyterLab with it too, and starts a cluster for it.

The cluster the server's kernels run on, and the API reads, is the first of

1. ``c.NotebookOS.cluster_url`` with ``cluster_token_file``: a shared ``notebookos cluster`` service. The extension
   writes its discovery file in Jupyter's runtime folder and points ``$NOTEBOOKOS_CLUSTER_FILE`` at it, which the
   provisioner (running in this server's process) and the kernel fronts it starts read;
2. ``$NOTEBOOKOS_CLUSTER_FILE`` as the server found it (``notebookos lab`` sets it);
3. ``<runtime dir>/notebookos-cluster.json``, where the first kernel starts an embedded cluster on demand.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from jupyter_core.paths import jupyter_runtime_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Set, Unicode

from ..gpu_broker.cluster.client import CLUSTER_FILE_ENV
from ..gpu_broker.cluster.join_token import TokenError
from ..gpu_broker.cluster.launcher import name_remote_cluster
from ..gpu_broker.cluster.tls import TLSError
from .api import handlers as api_handlers
from .api.metrics import Metrics
from .dashboard import DASHBOARD_PATH, frontend_dir
from .dashboard import handlers as dashboard_handlers
from .permissions import SETTING, PoolAdmins


class ClusterConfigError(ValueError):
    """``c.NotebookOS.cluster_*`` name a cluster this server cannot use; the message says what to change."""


class NotebookOS(ExtensionApp):
    """The notebookos server extension: REST API, dashboard, and who administers the pool."""

    name = "notebookos"
    description = "Replicated Jupyter kernels on a shared GPU pool: the pool's REST API and dashboard."
    load_other_extensions = True

    admin_users = Set(
        Unicode(),
        help="""Users who administer the notebookos GPU pool: they see every kernel and
        may add, resize, drain and remove hosts, migrate and kill replicas and shut down any kernel. Names as the
        server's identity provider gives them (the hub user name under JupyterHub). When neither this nor
        admin_groups is set, the users of a server outside JupyterHub are admins, and under JupyterHub only Hub
        admins are.""",
    ).tag(config=True)
    admin_groups = Set(
        Unicode(),
        help="""Groups whose members administer the notebookos GPU pool (see
        admin_users): JupyterHub groups, or the groups a custom identity provider's users carry in a `groups`
        attribute.""",
    ).tag(config=True)
    cluster_url = Unicode(
        "",
        help="""URL of a shared notebookos cluster service (`notebookos cluster --listen
        ADDR:PORT`) that this server's kernels run on and its dashboard shows, e.g. https://10.0.0.1:8765. Needs
        cluster_token_file. Empty: the cluster named by $NOTEBOOKOS_CLUSTER_FILE (`notebookos lab` sets it), else
        one started on this machine with the first kernel.""",
    ).tag(config=True)
    cluster_token_file = Unicode(
        "",
        help="""With cluster_url: the file holding the cluster service's token (its
        join token works). When the token pins the cluster's CA (`--tls-auto`), https is verified against it.""",
    ).tag(config=True)
    cluster_ca_file = Unicode(
        "",
        help="""With cluster_url: a CA certificate (PEM) to verify its https against,
        instead of the one the token pins or the system's.""",
    ).tag(config=True)

    def initialize_settings(self) -> None:
        if self.cluster_url:
            self.log.info(
                "kernels run on the cluster at %s (discovery file %s)", self.cluster_url, self._name_cluster()
            )
        admins = PoolAdmins(frozenset(self.admin_users), frozenset(self.admin_groups))
        self.settings[SETTING] = admins
        self.log.info("%s", admins.describe())

    def initialize_handlers(self) -> None:
        if self.serverapp is None:
            raise RuntimeError("initialize_handlers runs before the server is linked: Jupyter Server's ExtensionApp")
        # Paths relative to the server's base URL, which ExtensionApp prepends.
        self.handlers.extend(api_handlers(Metrics()))
        self.handlers.extend(dashboard_handlers(str(frontend_dir())))
        self.log.info(
            "REST API at %sapi/notebookos/, dashboard at %s%s",
            self.serverapp.base_url,
            self.serverapp.base_url,
            DASHBOARD_PATH,
        )

    def _name_cluster(self) -> Path:
        """Write the discovery file of ``cluster_url`` and point this process's kernels and API at it. One file per
        URL in the runtime folder, left in place when the server stops: kernel fronts that outlive it read it."""
        if not self.cluster_token_file:
            raise ClusterConfigError(
                f"c.NotebookOS.cluster_url is {self.cluster_url!r} but "
                "c.NotebookOS.cluster_token_file is not set: name the file holding the cluster "
                "service's token (its join token works)"
            )
        digest = hashlib.sha256(self.cluster_url.encode()).hexdigest()[:12]
        path = Path(jupyter_runtime_dir()) / f"notebookos-cluster-{digest}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            name_remote_cluster(
                path,
                self.cluster_url,
                Path(self.cluster_token_file),
                Path(self.cluster_ca_file) if self.cluster_ca_file else None,
            )
        except (TokenError, TLSError, OSError) as err:
            raise ClusterConfigError(f"c.NotebookOS.cluster_url {self.cluster_url}: {err}") from None
        previous = os.environ.get(CLUSTER_FILE_ENV)
        if previous and previous != str(path):
            self.log.warning("c.NotebookOS.cluster_url replaces the cluster $%s named (%s)", CLUSTER_FILE_ENV, previous)
        os.environ[CLUSTER_FILE_ENV] = str(path)
        return path
