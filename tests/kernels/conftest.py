from __future__ import annotations

from pathlib import Path

import pytest
from jupyter_client.manager import start_new_kernel

from .driver import Notebook

LOG_TAIL_LINES = 300
# Lines every few cells repeat (a snapshot taken) would push out the ones that tell what went wrong.
ROUTINE = ("snapshot after cell",)


@pytest.fixture
def notebook(cluster_file: str):
    """A fresh notebookos kernel (front plus three replicas) on the session's cluster."""
    km, kc = start_new_kernel(kernel_name="notebookos", startup_timeout=120)
    yield Notebook(km, kc)
    kc.stop_channels()
    km.shutdown_kernel(now=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """When a test with a kernel fails, attach the end of each of its replicas' logs to the report: the kernel's
    shutdown deletes them right after, and they are what tells a lost election from a lost process."""
    outcome = yield
    report = outcome.get_result()
    funcargs = getattr(item, "funcargs", {})
    notebook, cluster = funcargs.get("notebook"), funcargs.get("cluster_file")
    if report.when != "call" or not report.failed or not isinstance(notebook, Notebook) or not cluster:
        return
    for log in sorted((Path(cluster).parent / "hosts").glob(f"*/{notebook.km.kernel_id}/replica-*/replica.log")):
        lines = [
            line
            for line in log.read_text(errors="replace").splitlines()
            if not any(routine in line for routine in ROUTINE)
        ][-LOG_TAIL_LINES:]
        report.sections.append(
            (f"{log.parent.parent.parent.name} {log.parent.name} log (last lines)", "\n".join(lines))
        )
