"""JupyterLab end to end: a notebook on each kernel, created and run through the real UI in headless Chromium."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chromium import missing_reason

_missing = missing_reason()
if _missing:
    pytest.skip(f"browser tests need Chromium and Playwright: {_missing}", allow_module_level=True)

REPO_ROOT = Path(__file__).resolve().parents[2]
README_SCREENSHOT = REPO_ROOT / "docs" / "jupyterlab.png"

KERNELS = [
    pytest.param("Python 3 (ipykernel)", id="ipykernel"),
    pytest.param("Python 3 (notebookos)", id="notebookos"),
]


@pytest.mark.browser
@pytest.mark.parametrize("kernel_display_name", KERNELS)
def test_notebook_runs_cells(lab, kernel_display_name: str, tmp_path: Path) -> None:
    nb = lab.new_notebook(kernel_display_name)

    first = nb.run_cell("import os; x = 6 * 7; print(x, os.getpid() > 0)")
    assert first.stdout.strip() == "42 True", first.outputs
    assert first.stderr == "", first.outputs
    assert first.execute_result is None, first.outputs

    second = nb.run_cell("x + 1")
    assert second.execute_result == "43", second.outputs
    assert second.execution_count == first.execution_count + 1

    # NOTEBOOKOS_UPDATE_SCREENSHOTS=1 refreshes the README's picture; otherwise tests leave the tree untouched.
    update_docs = os.environ.get("NOTEBOOKOS_UPDATE_SCREENSHOTS") == "1"
    is_notebookos = nb.session["kernel"]["name"] == "notebookos"
    shot = README_SCREENSHOT if is_notebookos and update_docs else tmp_path / "jupyterlab.png"
    assert lab.screenshot(shot).stat().st_size > 0
