"""``%pip install`` changes the machine's environment, which no state delta carries: every replica runs it.

Each replica installs into a folder named after its own host (IPython expands ``{...}`` in the magic's line on the
replica that runs it; a standby expands it in the namespace as it was before the cell, since it installs before it
applies the cell's state), so the test sees which replicas ran the install: a cell pinned on each replica imports
the package from its own host's folder.
"""
from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

from .driver import Notebook, replicas_of

PACKAGE = "nbos_tinypkg"


def _wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, built by hand so that the test needs no build backend and no index."""
    files = {f"{PACKAGE}/__init__.py": b"VALUE = 42\n",
             f"{PACKAGE}-0.1.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 0.1\n".encode(),
             f"{PACKAGE}-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                b"Tag: py3-none-any\n"}
    record = "".join(f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for name, data in files.items()) + f"{PACKAGE}-0.1.dist-info/RECORD,,\n"
    path = folder / f"{PACKAGE}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr(f"{PACKAGE}-0.1.dist-info/RECORD", record)
    return path


def test_pip_install_runs_on_every_replica(notebook: Notebook, tmp_path: Path) -> None:
    wheel = _wheel(tmp_path)
    site = str(tmp_path / "site-")
    assert notebook.run("import os").status == "ok"
    res = notebook.run(f"%pip install --no-index --no-deps --target {site}{{os.environ['NOTEBOOKOS_HOST']}} {wheel}")
    assert res.status == "ok", res.error
    hosts = {r["host"]: r["replica"] for r in replicas_of(notebook)}
    for host, replica in hosts.items():
        probe = (f"__import__('sys').path.insert(0, '{site}{host}') or "
                 f"[__import__('os').environ['NOTEBOOKOS_HOST'], __import__('{PACKAGE}').VALUE]")
        assert notebook.value(probe, replica=replica) == [host, 42]
