"""The scheduling core imports nothing that does I/O: the live scheduler and the simulator must both be able to
drive it with their own clock and events (docs/architecture.md, "Processes today" and "The cluster service")."""

from __future__ import annotations

import ast
from pathlib import Path

import notebookos.gpu_broker.scheduler as core_package

ALLOWED = {"__future__", "dataclasses", "enum", "typing", "math", "bisect", "heapq"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_modules_import_only_pure_standard_modules_and_each_other():
    sources = sorted(Path(core_package.__file__).parent.glob("*.py"))
    assert len(sources) >= 6
    for path in sources:
        assert _imports(path) <= ALLOWED, f"{path.name} imports {sorted(_imports(path) - ALLOWED)}"
