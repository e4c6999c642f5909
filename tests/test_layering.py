"""Package boundaries, read from the source with the standard library's `ast`: imports run orchestrator ->
workers -> rollout and never back up, and no module imports itself back through others (no cycle).

Every import statement counts, including those inside functions and `if TYPE_CHECKING:` blocks: a lazy
import that runs upwards is still a dependency that runs upwards.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYER_RANK = {"rollout": 0, "workers": 1, "orchestrator": 2}
"""A module may import from its own layer or a lower one."""


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imported_names(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return names


def project_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    sources = {module_name(p): p for layer in LAYER_RANK for p in (ROOT / layer).rglob("*.py")}
    return {
        module: {name for name in imported_names(ast.parse(path.read_text())) if name in sources and name != module}
        for module, path in sources.items()
    }


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if LAYER_RANK[target.split(".")[0]] > LAYER_RANK[module.split(".")[0]]
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per back edge found by depth-first search (empty when the graph is acyclic)."""
    found, state = [], {}  # state: 1 = on the current path, 2 = finished

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_checker_sees_upward_imports_and_cycles():
    graph = {"rollout.a": {"workers.b"}, "workers.b": {"workers.c"}, "workers.c": {"workers.b"}, "orchestrator.d": {"rollout.a"}}
    assert upward_imports(graph) == ["rollout.a -> workers.b"]
    assert cycles(graph) == [["workers.b", "workers.c", "workers.b"]]


def test_imports_never_run_back_up_the_layers():
    graph = project_graph()
    assert "orchestrator.tune_trainable" in graph["orchestrator.driver"]  # the parser does see real imports
    assert "workers.algorithms.gigpo" in graph["workers.algorithms"]  # ... including `from package import module`
    assert upward_imports(graph) == []


def test_no_import_cycle():
    assert cycles(project_graph()) == []
