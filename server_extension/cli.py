"""The ``notebookos`` command line: one entry point, one subcommand per service.

Each subcommand lives beside the code it drives and registers itself here through ``add_parser``; this module
only assembles them, so that ``notebookos --help`` lists everything the product can do.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# (module, description) for each subcommand; every module exposes add_parser(subparsers) -> None and sets
# ``func`` on its parser to a callable taking the parsed arguments and returning an exit code.
SUBCOMMANDS: tuple[str, ...] = (
    "notebookos.server_extension.lab",
    "notebookos.gpu_broker.cluster.service.main",
    "notebookos.gpu_broker.cluster.agent.daemon",
    "notebookos.gpu_broker.simulator.cli",
    "notebookos.gpu_broker.loadtest.replay",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notebookos",
        description="Replicated Jupyter kernels on a shared GPU pool.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMANDS:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
