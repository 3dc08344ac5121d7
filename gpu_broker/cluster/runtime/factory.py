"""The runtime an agent's options ask for (``notebookos agent --runtime ...``)."""

from __future__ import annotations

import argparse
import sys
from importlib.util import find_spec
from importlib.metadata import PackageNotFoundError, version

from .base import ReplicaRuntime
from .process import ProcessRuntime
from .template import DEFAULT_PRELOAD

RUNTIMES = ("process", "docker")


def default_image() -> str:
    """The notebookos image of this version, as deploy/docker/Dockerfile builds it."""
    try:
        return f"notebookos:{version('notebookos')}"
    except PackageNotFoundError:
        return "notebookos:latest"


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("how replicas run")
    group.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="process",
        help="run each replica as a process of this machine (default) or in a Docker container",
    )
    group.add_argument(
        "--image", default=None, help=f"with --runtime docker: the image replicas run in (default: {default_image()})"
    )
    group.add_argument(
        "--replica-cpus",
        type=float,
        default=None,
        metavar="CPUS",
        help="with --runtime docker: CPUs each replica may use, e.g. 4 or 0.5 (default: no limit)",
    )
    group.add_argument(
        "--replica-memory",
        default=None,
        metavar="SIZE",
        help="with --runtime docker: memory each replica may use, e.g. 16g (default: no limit); "
        "a replica past it is OOM-killed, reported and replaced",
    )
    group.add_argument(
        "--replica-mount",
        action="append",
        default=[],
        metavar="SRC:DST[:ro]",
        help="with --runtime docker: a folder of this machine replicas see, e.g. the users' home folders (repeatable)",
    )
    group.add_argument(
        "--replica-preload",
        default=",".join(DEFAULT_PRELOAD),
        metavar="MODULES",
        help="what the replica template imports before forking replicas, comma-separated; a module that is not "
        f"installed is skipped (default: {','.join(DEFAULT_PRELOAD)})",
    )
    group.add_argument(
        "--no-replica-template",
        action="store_true",
        help="start every replica process from scratch instead of forking it from the warm template",
    )
    group.add_argument(
        "--replica-python",
        default=None,
        metavar="PATH",
        help="the Python that runs replicas (default: this agent's for processes, 'python' in the image)",
    )


def make_runtime(args: argparse.Namespace, gpu_devices: tuple[int, ...] | None) -> ReplicaRuntime:
    """``gpu_devices``: the machine's GPUs a container sees (None or empty: virtual GPUs, none to expose).
    RuntimeError, with what to do, when the runtime cannot work here."""
    if args.runtime == "process":
        given = [
            flag
            for flag, value in (
                ("--image", args.image),
                ("--replica-cpus", args.replica_cpus),
                ("--replica-memory", args.replica_memory),
                ("--replica-mount", args.replica_mount),
            )
            if value
        ]
        if given:
            raise RuntimeError(f"{', '.join(given)} only apply to --runtime docker")
        preload = tuple(name.strip() for name in args.replica_preload.split(",") if name.strip())
        return ProcessRuntime(args.replica_python or sys.executable, None if args.no_replica_template else preload)
    if args.replica_cpus is not None and args.replica_cpus <= 0:
        raise RuntimeError(f"--replica-cpus must be more than 0, got {args.replica_cpus}")
    if find_spec("docker") is None:  # imported only where used, so the import below would not tell
        raise RuntimeError("--runtime docker needs the Docker SDK: pip install 'notebookos[docker]'")
    from .docker import ContainerLimits, DockerRuntime

    return DockerRuntime(
        args.image or default_image(),
        python=args.replica_python or "python",
        limits=ContainerLimits(args.replica_cpus, args.replica_memory),
        mounts=tuple(args.replica_mount),
        gpu_devices=gpu_devices,
    )
