from __future__ import annotations

import pytest
from jupyter_client.manager import start_new_kernel

from .driver import Notebook


@pytest.fixture
def notebook(cluster_file: str):
    """A fresh notebookos kernel (front plus three replicas) on the session's cluster."""
    km, kc = start_new_kernel(kernel_name="notebookos", startup_timeout=120)
    yield Notebook(km, kc)
    kc.stop_channels()
    km.shutdown_kernel(now=False)
