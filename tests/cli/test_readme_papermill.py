"""The README's papermill line, run as written from a notebook's folder with nothing else running: papermill starts
the notebookos kernel, whose provisioner starts a cluster on demand, and that cluster exits after the kernel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import psutil

ROOT = Path(__file__).resolve().parents[2]
LINE = ".venv/bin/papermill in.ipynb out.ipynb -k notebookos"
RUN_TIMEOUT_S = 180
CLUSTER_EXIT_S = 30


def test_the_readmes_papermill_line_runs_a_notebook_on_notebookos(tmp_path: Path) -> None:
    assert LINE in (ROOT / "README.md").read_text(), "the README's papermill line changed: update this test"
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("x = 6 * 7"),
        nbformat.v4.new_code_cell("print(x, type(get_ipython().kernel).__name__)"),
    ]
    nbformat.write(notebook, tmp_path / "in.ipynb")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "NOTEBOOKOS"))}
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")  # no cluster of the test session's is found there
    papermill = str(Path(sys.prefix) / "bin" / "papermill")  # `.venv/bin/papermill`, wherever the venv is
    done = subprocess.run(
        [papermill, *LINE.split()[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr
    result = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    # Run by a notebookos replica, with the state of the cell before.
    assert [o.get("text") for o in result.cells[1].outputs] == ["42 ReplicaKernel\n"]
    # The on-demand cluster (it carries papermill's runtime folder) goes away once its last kernel has.
    cluster = [
        p
        for p in psutil.process_iter(["environ"])
        if (p.info["environ"] or {}).get("JUPYTER_RUNTIME_DIR") == env["JUPYTER_RUNTIME_DIR"]
    ]
    _, alive = psutil.wait_procs(cluster, timeout=CLUSTER_EXIT_S)
    assert not alive, f"still running after papermill's kernel: {alive}"
