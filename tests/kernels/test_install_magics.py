"""``%pip install`` changes the machine's environment, which no state delta carries: every replica runs it.

Each replica installs into a folder named after its own host (IPython expands ``{...}`` in the magic's line on the
replica that runs it; a standby expands it in the namespace as it was before the cell, since it installs before it
applies the cell's state), so the test sees which replicas ran the install: a cell pinned on each replica imports
the package from its own host's folder.
"""

from __future__ import annotations

from pathlib import Path

from ..wheels import TINY_PACKAGE, tiny_wheel
from .driver import Notebook, replicas_of


def test_pip_install_runs_on_every_replica(notebook: Notebook, tmp_path: Path) -> None:
    wheel = tiny_wheel(tmp_path)
    site = str(tmp_path / "site-")
    assert notebook.run("import os").status == "ok"
    res = notebook.run(f"%pip install --no-index --no-deps --target {site}{{os.environ['NOTEBOOKOS_HOST']}} {wheel}")
    assert res.status == "ok", res.error
    hosts = {r["host"]: r["replica"] for r in replicas_of(notebook)}
    for host, replica in hosts.items():
        probe = (
            f"__import__('sys').path.insert(0, '{site}{host}') or "
            f"[__import__('os').environ['NOTEBOOKOS_HOST'], __import__('{TINY_PACKAGE}').VALUE]"
        )
        assert notebook.value(probe, replica=replica) == [host, 42]
