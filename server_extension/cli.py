"""The ``notebookos`` command line: one entry point, one subcommand per service.

Each subcommand lives beside the code it drives and registers its options here through ``add_parser``. Only the
module of the subcommand given is imported: ``notebookos --help`` and ``--version`` import none of them (the
cluster service and the simulator load plotting and numerical libraries, a second of start-up), and ``notebookos
simulate`` does not load the cluster. So that ``--help`` can list every subcommand without its module, each one's
summary is kept here too; a test checks it against the module's own.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import version

# module -> (subcommand, its summary). Every module exposes add_parser(subparsers) -> None, which sets ``func`` on
# its parser to a callable taking the parsed arguments and returning an exit code.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "notebookos.server_extension.lab": ("lab", "start an embedded cluster and JupyterLab"),
    "notebookos.gpu_broker.cluster.service.main": (
        "cluster",
        "run the shared cluster service that agents join and Jupyter servers use",
    ),
    "notebookos.gpu_broker.cluster.agent.daemon": (
        "agent",
        "run this machine's agent: join a cluster and run replicas here",
    ),
    "notebookos.gpu_broker.simulator.cli": ("simulate", "replay a GPU training trace under scheduling policies"),
    "notebookos.gpu_broker.loadtest.replay": (
        "replay",
        "replay a time-scaled trace slice against a real notebookos cluster and measure delays",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the options of ``command`` (one of SUBCOMMANDS' names); the others are listed only."""
    parser = argparse.ArgumentParser(
        prog="notebookos",
        description="Replicated Jupyter kernels on a shared GPU pool. `notebookos COMMAND --help` for a command's "
        "options.",
    )
    parser.add_argument("--version", action="version", version=f"notebookos {version('notebookos')}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, (name, summary) in SUBCOMMANDS.items():
        if name == command:
            importlib.import_module(module_name).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv else None)
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
