"""GPU inventory from NVML: on a machine with an NVIDIA driver the embedded cluster's hosts report its GPUs."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from notebookos.gpu_broker.cluster.inventory import nvml_gpu_count

needs_nvidia = pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="no NVIDIA driver on this machine")


@pytest.mark.gpu
@needs_nvidia
def test_nvml_counts_the_gpus_nvidia_smi_lists():
    listed = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, check=True).stdout
    assert nvml_gpu_count() == len(listed.strip().splitlines())
