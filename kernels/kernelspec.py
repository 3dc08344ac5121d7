"""Install the ``notebookos`` kernelspec where Jupyter looks for kernels.

A wheel install puts it under ``<prefix>/share/jupyter/kernels/notebookos`` by itself (pyproject data-files); an
editable install does not, so ``make`` runs ``python -m notebookos.kernels.kernelspec --sys-prefix``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager

KERNEL_NAME = "notebookos"
SPEC_DIR = Path(__file__).parent / "kernelspec"


def install(user: bool = False, prefix: str | None = None) -> str:
    return KernelSpecManager().install_kernel_spec(str(SPEC_DIR), KERNEL_NAME, user=user, prefix=prefix)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m notebookos.kernels.kernelspec")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument("--sys-prefix", action="store_true", help="install into this Python environment")
    args = parser.parse_args(argv)
    print(install(user=args.user, prefix=sys.prefix if args.sys_prefix else None))


if __name__ == "__main__":
    main()
