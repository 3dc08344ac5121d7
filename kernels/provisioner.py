"""The ``notebookos-provisioner``: how jupyter_client starts a notebookos kernel.

It extends jupyter_client's local provisioner, because what runs beside the Jupyter client is an ordinary local
process, the kernel front, started from the kernelspec's argv with the connection file jupyter_client wrote. Before
that, it asks the cluster to place the kernel's three replicas; afterwards it removes them. With no cluster
configured it starts (or reuses) an embedded one on this machine, which exits with its last kernel, so the
kernelspec works from any Jupyter client.

The front outlives the Jupyter server that started it for ``restart_grace_s``: a server restarted on the same state
folder restores the kernel from its record (``get_provisioner_info``/``load_provisioner_info``, as Enterprise
Gateway's kernel persistence does), adopts the front (``claim``) and manages it like one it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from queue import Empty
from typing import Any

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.connect import port_names
from jupyter_client.provisioning import LocalProvisioner
from jupyter_core.paths import secure_write
from traitlets import Float, Integer

from ..gpu_broker.cluster.client import CLUSTER_FILE_ENV, ClusterClient, ClusterError, discovery_file
from ..gpu_broker.cluster.launcher import ensure_cluster
from ..gpu_broker.cluster.ports import PortPool, front_range
from ..server_extension.permissions import kernel_owner
from .front import CLAIM_REPLY, CLAIM_REQUEST, RESTART_GRACE_ENV
from .watched_process import WatchedProcess


_FRONT_PORT_POOLS: dict[str, PortPool] = {}  # by address: the ports this process's kernel fronts hold


def _front_ports(address: str) -> PortPool:
    pool = _FRONT_PORT_POOLS.get(address)
    if pool is None:
        pool = _FRONT_PORT_POOLS[address] = PortPool(front_range(), address, spread=True)
    return pool


class NotebookOSProvisioner(LocalProvisioner):
    """jupyter_client's ``LocalProvisioner`` for the kernel front, plus the kernel's replicas in the cluster.

    jupyter_client's kernel manager (``KernelManager``, and Jupyter Server's kernel manager through it) creates one
    instance per kernel from the kernelspec's ``kernel_provisioner`` and calls its hooks. A start runs
    ``pre_launch`` (here: place the replicas), then ``launch_kernel`` and ``post_launch`` (inherited: start the
    front as a local process with the connection file). A shutdown or restart sends the front a
    ``shutdown_request``, follows it with ``poll`` and ``wait`` (``terminate``, then ``kill``, if it lingers) and runs
    ``cleanup`` (here: remove the replicas); a restart then starts again. Meanwhile ``poll`` serves the restarter's
    liveness checks and ``send_signal`` the kernel manager's ``signal_kernel``. A Jupyter server restarted on the
    same state folder (``server_extension/kernel_persistence.py``) calls ``load_provisioner_info`` and :meth:`claim`
    instead of the start hooks, and from then on the same hooks follow the adopted front.
    """

    gpus = Integer(
        0,
        help="GPUs each cell of this kernel asks for; the kernelspec's provisioner config sets it, "
        "and its replicas are placed (subscribed) accordingly",
    ).tag(config=True)
    restart_grace_s = Float(
        0.0,
        min=0.0,
        help=(
            "Seconds the kernel front waits, once the Jupyter server that manages it is gone (killed, crashed), for a "
            "server restarted on the same state folder to claim it before it removes the kernel. 0: at once, since a "
            "server that does not persist its kernels never claims them; `notebookos lab --state-dir` sets it from "
            "--kernel-grace."
        ),
    ).tag(config=True)

    _cluster: ClusterClient | None = None
    _replicas_file: Path | None = None
    _adopted: WatchedProcess | None = None  # the front of a kernel restored from a dead server's record

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Called by ``KernelManager.pre_start_kernel()`` at every start and restart of the kernel, before
        ``launch_kernel``: after jupyter_client's own preparation (environment substitutions, the connection file's
        ports), ask the cluster to place the kernel's three replicas (starting an embedded cluster when none
        answers), write what it answered to the replicas file beside the connection file, and add to the front's
        command line and environment what it needs to find them and the cluster. Returns the keyword arguments that
        ``launch_kernel`` receives; raises RuntimeError, which fails the start, when the replicas cannot be placed."""
        km = self.parent
        if km is not None and km.transport == "tcp" and km.cache_ports and not self.ports_cached:
            self._take_front_ports(km)
        kwargs = await super().pre_launch(**kwargs)
        self._cluster = await ensure_cluster()
        info = self.connection_info
        key = info["key"].decode() if isinstance(info["key"], bytes) else str(info["key"])
        env = kwargs.get("env") or os.environ
        # Whose kernel this is (the Hub user, else the account running Jupyter: what the REST API and dashboard match
        # their users against) and the notebook it serves (Jupyter Server names the session's path in the kernel's
        # environment).
        owner = kernel_owner(env)
        try:
            described = await self._cluster.create_kernel(
                self.kernel_id,
                key,
                info["signature_scheme"],
                str(kwargs.get("cwd") or os.getcwd()),
                self.gpus,
                owner=owner,
                notebook=env.get("JPY_SESSION_NAME"),
            )
        except ClusterError as err:
            raise RuntimeError(f"notebookos could not place this kernel's replicas: {err}") from err
        if self.parent is None:
            raise RuntimeError("the provisioner has no kernel manager: jupyter_client creates it with one (parent=)")
        connection_file = Path(self.parent.connection_file)
        self._replicas_file = connection_file.with_name(connection_file.stem + "-replicas.json")
        with secure_write(str(self._replicas_file)) as f:  # the replicas' message keys and addresses
            json.dump(described, f)
        env = dict(kwargs.get("env") or os.environ)
        env[CLUSTER_FILE_ENV] = str(discovery_file())
        env[RESTART_GRACE_ENV] = str(self.restart_grace_s)
        kwargs["env"] = env
        kwargs["cmd"] = [*kwargs["cmd"], "--kernel-id", self.kernel_id, "--replicas", str(self._replicas_file)]
        return kwargs

    def _take_front_ports(self, km: Any) -> None:
        """The front's five ports from ``front_range()``, below the ephemeral range, instead of from jupyter_client's
        ``LocalPortCache``: that binds port 0, lets the port go, and the front binds it a second or more later, by
        when an outgoing connection of any program of this machine may have been given it (CI saw the front die at
        its start with "Address already in use"). Marked cached, so LocalProvisioner skips its own choice and the
        kernel keeps them across restarts; :meth:`cleanup` gives them back."""
        pool = _front_ports(km.ip)
        for name in port_names:
            setattr(km, name, pool.take())
        self.ports_cached = True

    async def cleanup(self, restart: bool = False) -> None:
        """Called by ``KernelManager.cleanup_resources()`` once the front has exited, at every shutdown and restart
        (``restart`` True: ``pre_launch`` places fresh replicas next), and by the restoring Jupyter server for a
        kernel whose front did not take its claim: stop following an adopted front, remove the replicas file and
        delete the kernel in the cluster, which stops its replicas (a kernel the cluster no longer knows is not an
        error: its front removed it when no server claimed it)."""
        info: dict[str, Any] = dict(self.connection_info)
        if self.ports_cached and not restart and info:
            _front_ports(str(info["ip"])).release(int(info[name]) for name in port_names)
        await super().cleanup(restart)
        if self._adopted is not None:
            self._adopted.close()
            self._adopted = None
        if self._replicas_file is not None:
            self._replicas_file.unlink(missing_ok=True)
            self._replicas_file = None
        if self._cluster is not None:
            try:
                await self._cluster.delete_kernel(self.kernel_id)
            except ClusterError as err:
                if err.status != 404:  # 404: gone already (its front removed it when no server claimed it)
                    self.log.warning("notebookos: could not remove the replicas of kernel %s: %s", self.kernel_id, err)
            self._cluster = None

    async def get_provisioner_info(self) -> dict[str, Any]:
        """What a restarted Jupyter server needs to manage this kernel again: LocalProvisioner's (the front's pid,
        the connection info), the replicas file, the cluster's discovery file and the working directory.

        Called by ``PersistentKernelManager`` (``server_extension/kernel_persistence.py``) after each start and
        restart of the kernel, to write the kernel's record; jupyter_client itself never calls it."""
        info = await super().get_provisioner_info()
        info.update(
            replicas_file=str(self._replicas_file) if self._replicas_file else None,
            cluster_file=str(discovery_file()) if self._cluster else None,
            cwd=str(self.cwd) if self.cwd else None,
        )
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        """Take over a kernel whose front a dead server started: ``has_process`` while that front runs.

        Called by ``PersistentKernelManager`` while a restarted Jupyter server restores the kernel from its record
        (what :meth:`get_provisioner_info` returned), on a fresh instance, before :meth:`claim`; no start hook runs
        for such a kernel."""
        await super().load_provisioner_info(provisioner_info)
        replicas_file, cluster_file = provisioner_info.get("replicas_file"), provisioner_info.get("cluster_file")
        self._replicas_file = Path(replicas_file) if replicas_file else None
        self._cluster = ClusterClient.from_file(Path(cluster_file)) if cluster_file else None
        self.cwd = provisioner_info.get("cwd")
        self._adopted = WatchedProcess(self.pid) if self.pid else None

    async def claim(self, timeout_s: float) -> dict | None:
        """Ask the adopted front to answer to this process from now on (kernels/front.py: it watches the claiming
        server as it watched the one that started it). The front's answer (``execution_state``), or None when
        nothing answers on its control channel with its key within ``timeout_s``: it is gone, or hangs.

        Not a jupyter_client hook: called by ``PersistentKernelManager`` right after :meth:`load_provisioner_info`;
        a kernel whose front does not answer is then given :meth:`cleanup`."""
        if self._adopted is None or not self._adopted.alive():
            return None
        client = AsyncKernelClient()
        client.load_connection_info(self.connection_info)
        client.start_channels(shell=False, iopub=False, stdin=False, hb=False, control=True)
        request = client.session.msg(CLAIM_REQUEST, {"pid": os.getpid()})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            client.control_channel.send(request)
            while (remaining := deadline - loop.time()) > 0:
                reply = await client.control_channel.get_msg(timeout=remaining)
                if reply["msg_type"] == CLAIM_REPLY and reply["parent_header"].get("msg_id") == request["msg_id"]:
                    return reply["content"] if reply["content"].get("status") == "ok" else None
        except Empty:
            pass
        finally:
            client.stop_channels()
        return None

    # An adopted front is not our child: these follow it through WatchedProcess where LocalProvisioner uses its Popen.

    @property
    def has_process(self) -> bool:
        """Whether a front is managed: one this process launched, or an adopted one. Read by
        ``KernelManager.has_kernel`` (shutdown, restart, interrupt and liveness checks ask it first), and asserted
        right after ``launch_kernel``."""
        return self._adopted is not None or super().has_process

    async def poll(self) -> int | None:
        """None while the front runs, else its exit status (0 for an adopted front, whose status is its parent's to
        know). Called by ``KernelManager.is_alive()``: the kernel restarter's periodic check, and the shutdown
        sequence's wait for the front to exit."""
        if self._adopted is None:
            return await super().poll()
        return None if self._adopted.alive() else 0  # not our child: its exit status is not ours to know

    async def wait(self) -> int | None:
        """Return once the front has exited. Called by ``KernelManager.finish_shutdown()`` when the front exited
        after its ``shutdown_request`` or SIGTERM, and by ``kill_kernel()`` after :meth:`kill`."""
        if self._adopted is None:
            return await super().wait()
        while self._adopted.alive():
            await asyncio.sleep(0.1)
        self._adopted.close()
        self._adopted = None
        return 0

    async def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the front (it reaches the replicas only as the front relays it). Called by
        ``KernelManager.signal_kernel()``; the kernelspec's ``interrupt_mode`` is ``message``, so an interrupt
        arrives as an ``interrupt_request`` on the control channel, not through here. A front already gone is
        ignored."""
        if self._adopted is None:
            return await super().send_signal(signum)
        try:
            self._adopted.send_signal(signum)
        except ProcessLookupError:
            pass  # gone already

    async def kill(self, restart: bool = False) -> None:
        """SIGKILL to the front. Called by ``KernelManager.kill_kernel()``: an immediate shutdown or restart
        (``now``), or a graceful one the front did not finish within :meth:`get_shutdown_wait_time`; ``restart``
        True when a launch follows. The replicas go in :meth:`cleanup`, which follows."""
        if self._adopted is None:
            return await super().kill(restart)
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        """SIGTERM to the front. Called by ``KernelManager.finish_shutdown()`` when the front has not exited within
        half of :meth:`get_shutdown_wait_time` after its ``shutdown_request`` (jupyter_client passes ``restart``
        False here even on a restart)."""
        if self._adopted is None:
            return await super().terminate(restart)
        await self.send_signal(signal.SIGTERM)

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        """How long a graceful shutdown waits for the front: half before :meth:`terminate`, half more before
        :meth:`kill`. The kernel manager's own setting; called by ``KernelManager.finish_shutdown()``."""
        return recommended

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        """How long the kernel must have stayed alive before jupyter_client's ``KernelRestarter``, which calls
        this, counts its start as stable (a death before that counts as a failed start): at least 20 s."""
        # Replicas start, elect a Raft leader and replay their journal before the first cell: allow for it.
        return max(recommended, 20.0)
