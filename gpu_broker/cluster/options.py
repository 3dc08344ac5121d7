"""Command-line checks and logging shared by the commands that start a cluster service (``notebookos lab``,
``notebookos cluster``, and the service process they start), so that each refuses the same mistakes with the same
words and every process under ``notebookos lab`` logs in Jupyter's format."""

from __future__ import annotations

import argparse
import logging

# Jupyter's log line, `[I 2026-01-01 12:00:00.123 ServerApp] message`, without its colours: under `notebookos lab`
# the cluster service's lines interleave with JupyterLab's.
LOG_FORMAT = "[%(levelname)1.1s %(asctime)s.%(msecs)03d %(name)s] %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
LOG_LEVELS = ("DEBUG", "INFO", "WARN", "ERROR", "CRITICAL")  # Jupyter's --log-level names


def configure_logging(level: str = "INFO") -> None:
    """The root logger in Jupyter's format at ``level`` (one of LOG_LEVELS)."""
    logging.basicConfig(
        level=logging.getLevelName("WARNING" if level == "WARN" else level), format=LOG_FORMAT, datefmt=LOG_DATE_FORMAT
    )


def log_level(text: str) -> str:
    """``--log-level`` as argparse's type: a Jupyter log level name, any case."""
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
    return level


def gpu_count(text: str) -> int:
    """``--gpus-per-host`` as argparse's type: 0 or more (0: hosts without GPUs, for kernels that need none)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of GPUs (0 or more)")
    return value


def hosts_problem(hosts: int, replicas: int) -> str | None:
    """Why a cluster of ``hosts`` logical hosts cannot run kernels of ``replicas`` replicas each (None: it can)."""
    if hosts < 0:
        return f"--hosts {hosts}: give the number of logical hosts to start, 0 or more"
    if 0 < hosts < replicas:
        return (
            f"--hosts {hosts}: each kernel runs as {replicas} replicas on {replicas} different hosts, so no kernel "
            f"could start; give --hosts {replicas} or more, or --hosts 0 to start none and use only the hosts "
            "whose agents join (notebookos agent)"
        )
    return None
