"""A private Docker daemon for tests, and an image to run replicas in without a registry.

The tests start their own ``dockerd`` (Debian's docker.io) with its data, state and socket under a temporary
folder, so that they neither need nor disturb a daemon the machine may run, and stop it after. No image can be
pulled here (no registry), so the replicas' image is made with ``docker import`` from an empty root file system,
and the containers see this machine's Python and the project through read-only mounts of the folders they live in
(``--replica-mount``). A real deployment uses the image of deploy/docker/Dockerfile instead.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

IMAGE = "notebookos-test:imported"
START_DEADLINE_S = 30.0


def unavailable() -> str | None:
    """Why a private dockerd cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "dockerd needs Linux"
    if os.geteuid() != 0:
        return "dockerd needs root"
    missing = [tool for tool in ("dockerd", "containerd", "runc") if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (Debian package docker.io; `make test` installs it)"
    return None


class Dockerd:
    """A running private daemon; ``url`` is its socket, for DOCKER_HOST and the SDK."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"unix://{root / 'docker.sock'}"
        self._log = open(root / "dockerd.log", "wb")
        self.process = subprocess.Popen(
            [
                "dockerd",
                "--data-root",
                str(root / "data"),
                "--exec-root",
                str(root / "exec"),
                "--pidfile",
                str(root / "dockerd.pid"),
                "--host",
                self.url,
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        import docker

        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            try:
                self.client = docker.DockerClient(base_url=self.url)
                self.client.ping()
                break
            except docker.errors.DockerException:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"dockerd did not start: see {root / 'dockerd.log'}") from None
                time.sleep(0.1)

    def import_image(self) -> str:
        """An image made of an empty root file system (with /tmp), named :data:`IMAGE`."""
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            folder = tarfile.TarInfo("tmp")
            folder.type, folder.mode = tarfile.DIRTYPE, 0o1777
            tar.addfile(folder)
        repository, tag = IMAGE.split(":")
        self.client.api.import_image_from_data(data.getvalue(), repository=repository, tag=tag)
        return IMAGE

    def stop(self) -> None:
        """Remove every container the tests left, then stop the daemon."""
        try:
            for container in self.client.containers.list(all=True):
                container.remove(force=True)
        except Exception:  # noqa: BLE001 - the daemon may be the thing that failed
            pass
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
        # dockerd leaves its network namespace's bind mount behind; unmounted so that the folder can be removed.
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for mountpoint in sorted((m for m in mounts if m.startswith(str(self.root) + "/")), key=len, reverse=True):
            subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)


def host_python_mounts() -> list[str]:
    """``--replica-mount`` values that let a container of the imported image run this machine's Python with the
    project installed: the system folders (as they are named: /lib may be a link the container needs), the Python
    installation, the virtual environment and the project's source (an editable install points there)."""
    from notebookos.kernels import replica_config

    project = Path(replica_config.__file__).resolve().parents[1]
    wanted = ["/usr", "/lib", "/lib64", "/bin", os.path.realpath(sys.base_prefix), sys.prefix, str(project)]
    folders: list[str] = []
    for folder in sorted((f for f in wanted if os.path.isdir(f)), key=len):
        if not any(folder == kept or folder.startswith(kept + "/") for kept in folders):
            folders.append(folder)
    return [f"{folder}:{folder}:ro" for folder in folders]
