"""Kernels that outlive their Jupyter server (``notebookos lab --state-dir``).

A Jupyter server that is killed or crashes leaves its notebookos kernel fronts running: each waits its restart grace
period for a new server to claim it (kernels/front.py). This kernel manager records every notebookos kernel it
starts, one file per kernel; a server started on the same folder restores, before it serves a request, every
recorded kernel whose front still answers, under the same id. ``/api/kernels`` then lists it, the notebook's session
(kept in a database beside the records, ``SessionManager.database_filepath``) still points to it, and the notebook's
websocket reaches the same front, with the same variables. It is Enterprise Gateway's kernel session persistence,
built on jupyter_client's provisioner persistence (``get_provisioner_info``/``load_provisioner_info``).

A record holds the kernel's name and connection file, the provisioner's info (the front's pid, the connection info
with its message key, the replicas file, the cluster's discovery file, the working directory) and the launch
arguments a restart of the kernel reuses (the environment as far as it differs from the server's own). It is written
with ``secure_write`` (mode 0600: it holds the message key) and replaced atomically, rewritten whenever the kernel
(re)starts, and removed when the kernel leaves the server (shut down, or dead). Kernels of other provisioners
(ipykernel exits with its server) are not recorded.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from datetime import datetime, UTC
from pathlib import Path
from typing import IO, Any

import zmq
from jupyter_client.kernelspec import NoSuchKernel
from jupyter_client.provisioning import KernelProvisionerFactory
from jupyter_core.paths import secure_write
from jupyter_server.prometheus.metrics import KERNEL_CURRENTLY_RUNNING_TOTAL
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager, ServerKernelManager
from tornado.ioloop import IOLoop
from traitlets import Unicode, default

from ..kernels.provisioner import NotebookOSProvisioner

# A live front answers a claim at once (its event loop never blocks for long); one silent this long is hung.
CLAIM_TIMEOUT_S = 10.0
LOCK_FILE = "server.lock"


class StateFolderBusy(RuntimeError):
    """Another Jupyter server manages the kernels recorded in this folder."""


def lock_state_folder(folder: Path) -> IO[str]:
    """Hold ``folder``'s lock for as long as the returned file stays open (the process's life, however it ends):
    two servers on one folder would take the same kernels from each other. StateFolderBusy if another holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = open(folder / LOCK_FILE, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise StateFolderBusy(
            f"another Jupyter server (pid {holder}) manages the kernels recorded in {folder}: "
            "stop it, or start this one with another --state-dir"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


class KernelRecords:
    """The records of a server's kernels: ``<folder>/<kernel id>.json`` each."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def save(self, kernel_id: str, record: dict[str, Any]) -> None:
        path = self._path(kernel_id)
        partial = path.with_suffix(".partial")  # a server killed mid-write leaves the previous record whole
        with secure_write(str(partial)) as f:
            json.dump(record, f)
        os.replace(partial, path)

    def remove(self, kernel_id: str) -> None:
        self._path(kernel_id).unlink(missing_ok=True)

    def load(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """The readable records by kernel id, and a line for each file that is not one."""
        records, unreadable = {}, []
        for path in sorted(self.folder.glob("*.json")):
            try:
                records[path.stem] = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                unreadable.append(f"{path}: {err}")
        return records, unreadable

    def _path(self, kernel_id: str) -> Path:
        if Path(kernel_id).name != kernel_id or kernel_id in ("", ".", ".."):
            raise ValueError(f"{kernel_id!r} cannot name a kernel's record file")
        return self.folder / f"{kernel_id}.json"


class RecordedKernelManager(ServerKernelManager):
    """One kernel's manager: records its kernel each time it starts or restarts (a new front, a new pid)."""

    async def _async_post_start_kernel(self, **kw: Any) -> None:
        await super()._async_post_start_kernel(**kw)
        if isinstance(self.parent, PersistentKernelManager):
            await self.parent.record(self)


class PersistentKernelManager(AsyncMappingKernelManager):
    """Jupyter Server's kernel manager, plus records of its kernels under ``persistence_dir`` and, at start, the
    restoration of those whose front still runs (see the module's docstring)."""

    persistence_dir = Unicode(
        "",
        help="Folder of the kernel records; one Jupyter server at a time may use it "
        "(`notebookos lab --state-dir S` uses S/jupyter).",
    ).tag(config=True)

    @default("kernel_manager_class")
    def _default_kernel_manager_class(self) -> str:
        return f"{RecordedKernelManager.__module__}.{RecordedKernelManager.__qualname__}"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.persistence_dir:
            raise ValueError(
                "PersistentKernelManager.persistence_dir is not set: name the folder where the server "
                "keeps its kernel records (notebookos lab --state-dir sets it)"
            )
        folder = Path(self.persistence_dir)
        self._lock = lock_state_folder(folder)
        self.records = KernelRecords(folder / "kernels")
        # Restored before the server serves anything: the session manager deletes a session whose kernel it does
        # not find. The server's loop (created, not yet running) runs the claims, so that the restored kernels'
        # sockets, restarters and activity watchers belong to it.
        IOLoop.current().run_sync(self._restore)

    async def record(self, km: ServerKernelManager) -> None:
        """Record a kernel whose front can outlive this server. A kernel that cannot be recorded still runs: the
        log says so, and it is lost if this server dies."""
        provisioner = km.provisioner
        if not isinstance(provisioner, NotebookOSProvisioner):
            return
        try:
            self.records.save(km.kernel_id, await _record_of(km, provisioner))
        except (OSError, TypeError, ValueError) as err:
            self.log.error(
                "notebookos: kernel %s could not be recorded in %s, so it will not outlive this server: %s",
                km.kernel_id,
                self.records.folder,
                err,
            )

    def remove_kernel(self, kernel_id: str) -> Any:
        """Every way out of the server (shut down, or dead and not restarted) ends here: so does the record."""
        km = super().remove_kernel(kernel_id)
        self.records.remove(kernel_id)
        return km

    async def _restore(self) -> None:
        records, unreadable = self.records.load()
        for line in unreadable:
            self.log.error("notebookos: not a kernel record, ignored: %s", line)
        await asyncio.gather(*(self._restore_kernel(kernel_id, record) for kernel_id, record in records.items()))

    async def _restore_kernel(self, kernel_id: str, record: dict[str, Any]) -> None:
        """Adopt the kernel if its front answers our claim; else remove what is left of it, as its cleanup would
        have (the replicas in the cluster, the replicas and connection files), and its record."""
        try:
            km = self.kernel_manager_factory(
                connection_file=record["connection_file"],
                parent=self,
                log=self.log,
                kernel_name=record["kernel_name"],
                kernel_spec_manager=self.kernel_spec_manager,
            )
            km.kernel_id = kernel_id
            km.load_connection_info(record["provisioner"]["connection_info"])
            km.provisioner = KernelProvisionerFactory.instance(parent=self).create_provisioner_instance(
                kernel_id, km.kernel_spec, parent=km
            )
            await km.provisioner.load_provisioner_info(record["provisioner"])
        except (KeyError, NoSuchKernel, TypeError, ValueError, OSError, ImportError) as err:
            self.log.error(
                "notebookos: kernel %s cannot be restored from its record (%s); if its front still runs, "
                "it removes the kernel when its grace period ends",
                kernel_id,
                err,
            )
            self.records.remove(kernel_id)
            return
        try:
            answer = await km.provisioner.claim(CLAIM_TIMEOUT_S)
        except (zmq.ZMQError, OSError) as err:
            self.log.error("notebookos: could not reach the front of kernel %s: %s", kernel_id, err)
            answer = None
        if answer is None:
            self.log.warning(
                "notebookos: kernel %s did not outlive the previous server (its front does not take a "
                "claim); removing what is left of it",
                kernel_id,
            )
            await km.provisioner.cleanup()
            Path(km.connection_file).unlink(missing_ok=True)
            self.records.remove(kernel_id)
            return
        await self._adopt(kernel_id, km, record["launch_args"], answer.get("execution_state") or "idle")
        self.log.info("notebookos: kernel %s restored: its front answers to this server now", kernel_id)

    async def _adopt(self, kernel_id: str, km: ServerKernelManager, launch_args: dict[str, Any], state: str) -> None:
        """Register a claimed kernel as if this server had started it (the private names are jupyter_client's and
        Jupyter Server's own bookkeeping of a started kernel, which Enterprise Gateway's restoration sets too)."""
        env = {**os.environ, **launch_args.get("env", {})}
        km.write_connection_file(jupyter_session=env.get("JPY_SESSION_NAME", ""))  # as written at start: ours again
        relaunch: dict[str, Any] = {**launch_args, "env": env}
        km._launch_args = relaunch  # what a restart of the kernel starts it with
        km._attempted_start = True
        km.ready.set_result(None)
        km.start_restarter()
        self._kernels[kernel_id] = km
        self._kernel_connections[kernel_id] = 0
        km.execution_state = state
        km.reason = ""
        km.last_activity = datetime.now(UTC)
        KERNEL_CURRENTLY_RUNNING_TOTAL.labels(type=km.kernel_name).inc()
        await self._finish_kernel_start(kernel_id)  # ports, activity watching, the restarter's "dead" callback
        if not self._initialized_culler:
            self.initialize_culler()


async def _record_of(km: ServerKernelManager, provisioner: NotebookOSProvisioner) -> dict[str, Any]:
    info = await provisioner.get_provisioner_info()
    launch: dict[str, Any] = dict(km._launch_args or {})
    env: dict[str, str] = launch.pop("env", None) or {}
    return {
        "kernel_name": km.kernel_name,
        "connection_file": km.connection_file,
        "provisioner": {
            **info,
            "connection_info": {
                k: v.decode() if isinstance(v, bytes) else v for k, v in info["connection_info"].items()
            },
        },
        "launch_args": {**launch, "env": {k: v for k, v in env.items() if os.environ.get(k) != v}},
    }
