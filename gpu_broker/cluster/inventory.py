"""GPU inventory of this machine: NVML (nvidia-ml-py) where there is an NVIDIA driver, else none.

The embedded cluster's logical hosts all live on this machine, so they split its GPUs (each sees only its slice,
providers/local.py); without any, they carry ``--gpus-per-host`` virtual GPUs (scheduling is real, tensors stay on
whatever device exists).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def nvml_gpu_count() -> int | None:
    """How many GPUs NVML sees, or None where there is no NVIDIA driver (or no GPU)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        log.info("no NVML here (%s): GPUs come from --gpus-per-host", err)
        return None
    try:
        return int(pynvml.nvmlDeviceGetCount()) or None
    finally:
        pynvml.nvmlShutdown()
