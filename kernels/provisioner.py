"""The ``notebookos-provisioner``: how jupyter_client starts a notebookos kernel.

It extends jupyter_client's local provisioner, because what runs beside the Jupyter client is an ordinary local
process, the kernel front, started from the kernelspec's argv with the connection file jupyter_client wrote. Before
that, it asks the cluster to place the kernel's three replicas; afterwards it removes them. With no cluster
configured it starts (or reuses) an embedded one on this machine, which exits with its last kernel, so the
kernelspec works from any Jupyter client.
"""
from __future__ import annotations

import getpass
import json
import os
from pathlib import Path
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from jupyter_core.paths import secure_write
from traitlets import Integer

from ..gpu_broker.cluster.client import CLUSTER_FILE_ENV, ClusterClient, ClusterError, discovery_file
from ..gpu_broker.cluster.launcher import ensure_cluster


class NotebookOSProvisioner(LocalProvisioner):  # type: ignore[misc]
    gpus = Integer(0, help="GPUs each cell of this kernel asks for; the kernelspec's provisioner config sets it, "
                           "and its replicas are placed (subscribed) accordingly").tag(config=True)

    _cluster: ClusterClient | None = None
    _replicas_file: Path | None = None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        kwargs = await super().pre_launch(**kwargs)
        self._cluster = await ensure_cluster()
        info = self.connection_info
        key = info["key"].decode() if isinstance(info["key"], bytes) else str(info["key"])
        env = kwargs.get("env") or os.environ
        # Shown on the dashboard: whose kernel this is (the Hub user, else the account running Jupyter) and the
        # notebook it serves (Jupyter Server names the session's path in the kernel's environment).
        owner = env.get("JUPYTERHUB_USER") or getpass.getuser()
        try:
            described = await self._cluster.create_kernel(self.kernel_id, key, info["signature_scheme"],
                                                          str(kwargs.get("cwd") or os.getcwd()), self.gpus,
                                                          owner=owner, notebook=env.get("JPY_SESSION_NAME"))
        except ClusterError as err:
            raise RuntimeError(f"notebookos could not place this kernel's replicas: {err}") from err
        connection_file = Path(self.parent.connection_file)
        self._replicas_file = connection_file.with_name(connection_file.stem + "-replicas.json")
        with secure_write(str(self._replicas_file)) as f:  # the replicas' message keys and addresses
            json.dump(described, f)
        env = dict(kwargs.get("env") or os.environ)
        env[CLUSTER_FILE_ENV] = str(discovery_file())
        kwargs["env"] = env
        kwargs["cmd"] = [*kwargs["cmd"], "--kernel-id", self.kernel_id, "--replicas", str(self._replicas_file)]
        return kwargs

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart)
        if self._replicas_file is not None:
            self._replicas_file.unlink(missing_ok=True)
            self._replicas_file = None
        if self._cluster is not None:
            try:
                await self._cluster.delete_kernel(self.kernel_id)
            except ClusterError as err:
                self.log.warning("notebookos: could not remove the replicas of kernel %s: %s", self.kernel_id, err)
            self._cluster = None

    async def get_provisioner_info(self) -> dict[str, Any]:
        """What a restarted Jupyter server needs to manage this kernel again (see jupyter_client's persistence)."""
        info = await super().get_provisioner_info()
        info.update(replicas_file=str(self._replicas_file) if self._replicas_file else None,
                    cluster_file=str(discovery_file()) if self._cluster else None)
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        await super().load_provisioner_info(provisioner_info)
        replicas_file, cluster_file = provisioner_info.get("replicas_file"), provisioner_info.get("cluster_file")
        self._replicas_file = Path(replicas_file) if replicas_file else None
        self._cluster = ClusterClient.from_file(Path(cluster_file)) if cluster_file else None

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return recommended

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        # Replicas start, elect a Raft leader and replay their journal before the first cell: allow for it.
        return max(recommended, 20.0)
