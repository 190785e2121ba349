"""Imports flow one way, service -> workers -> search_spaces, and no module of them imports itself round a circle.

Read from the source (``ast``), not by importing: every import counts, also one inside a function (a lazy import
hides a circle, it does not remove it); only imports under ``if TYPE_CHECKING:`` are left out.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("search_spaces", "workers", "service")  # each may import only those before it (and itself)


def _module_name(path: Path) -> str:
    """The name the module has once installed: each code folder is ``phasetune.<folder>``."""
    parts = ["phasetune", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for layer in LAYERS for p in (ROOT / layer).rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str) -> set[str]:
    """The project modules ``module`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in MODULES}


GRAPH = {module: _imports(module) for module in MODULES}


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[1])


def test_the_walk_sees_the_project():
    assert {"phasetune.service.main", "phasetune.workers.driver", "phasetune.search_spaces.phased"} <= set(GRAPH)
    assert "phasetune.workers.spec" in GRAPH["phasetune.service.studies"]
    assert "phasetune.search_spaces.plan" in GRAPH["phasetune.workers.train"]


TOP_LEVEL = re.compile(r"^\s*(?:from|import)\s+(service|workers|search_spaces)\b", re.M)


def test_no_module_imports_the_folders_by_their_top_level_names():
    """Installed, the folders are ``phasetune.*`` only: ``import workers`` works in the repo and nowhere else."""
    sources = [p for top in (*LAYERS, "phasetune", "tests", "bench", "examples") for p in (ROOT / top).rglob("*.py")]
    assert len(sources) > 100
    offenders = [str(p.relative_to(ROOT)) for p in sources if TOP_LEVEL.search(p.read_text())]
    assert not offenders, f"import phasetune.<folder> instead, in {offenders}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_run_one_way(module: str):
    upstream = sorted(m for m in GRAPH[module] if _layer(m) > _layer(module))
    assert not upstream, f"{module} imports {upstream}: against the flow service -> workers -> search_spaces"


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
