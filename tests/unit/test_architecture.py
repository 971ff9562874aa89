"""The import graph of ``bids_app`` runs one way (docs/architecture.md draws it).

Built with :mod:`ast` from the source, every ``import`` counted (module level, inside
functions and under ``TYPE_CHECKING``), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "bids_app"

#: Modules every layer may use: constants, settings and errors that import nothing above.
FOUNDATION = ("bids_app", "bids_app.errors", "bids_app.utils", "bids_app.config",
              "bids_app.natview", "bids_app.natview.facts")
#: Pipeline steps: each imports the foundation and itself only, never another step or io.
STEPS = ("eeg", "fmri", "coupling", "models", "masking", "report")
#: Groups in layer order; a group may import only the groups before it (and itself),
#: except that steps do not import each other or io.
LAYERS = ("foundation", "io", *STEPS, "natview", "simulate", "workflows", "cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def group_of(module: str) -> str:
    if module in FOUNDATION:
        return "foundation"
    part = module.split(".")[1]
    return "cli" if part in ("cli", "__main__") else part


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``bids_app`` modules it imports (a package means its ``__init__``)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")[: None if is_package else -1]
                    base = base[: len(base) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # ``from pkg import submodule`` depends on the submodule; any other name
                # comes from the module itself (for a package: its ``__init__``).
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in files
                           else module for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in files and t != name}
        graph.setdefault(name, set())
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def allowed(src: str, dst: str) -> bool:
    if src == dst or dst == "foundation":
        return True
    if src in STEPS:
        return False
    if src == "natview" and dst == "simulate":
        return False
    return LAYERS.index(dst) < LAYERS.index(src)


def test_graph_sees_known_edges():
    graph = import_graph()
    assert "bids_app.workflows.run" in graph["bids_app.workflows.demo"]
    assert "bids_app.eeg.forward" in graph["bids_app.simulate.release_eeg"]
    assert "bids_app.natview.facts" in graph["bids_app.io.eeglab"]


def test_no_import_cycle_between_modules():
    assert cycles(import_graph()) == []


def test_no_import_cycle_between_packages():
    groups: dict[str, set[str]] = defaultdict(set)
    for src, targets in import_graph().items():
        groups[group_of(src)] |= {group_of(t) for t in targets} - {group_of(src)}
    assert cycles(groups) == []


def test_imports_follow_the_layers():
    wrong = sorted(
        f"{src} -> {dst}"
        for src, targets in import_graph().items()
        for dst in targets
        if not allowed(group_of(src), group_of(dst))
    )
    assert wrong == [], "imports against docs/architecture.md:\n" + "\n".join(wrong)


def test_only_workflows_and_cli_import_across_pipeline_steps():
    crossing = {
        (group_of(src), group_of(dst))
        for src, targets in import_graph().items()
        for dst in targets
        if group_of(dst) in STEPS and group_of(src) in STEPS and group_of(src) != group_of(dst)
    }
    assert crossing == set()


def test_layer_rule_rejects_a_step_importing_another():
    assert not allowed("masking", "models")
    assert not allowed("eeg", "io")
    assert not allowed("natview", "simulate")
    assert not allowed("workflows", "cli")
    assert allowed("simulate", "eeg") and allowed("workflows", "masking")
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_module_left_in_the_old_data_package():
    assert not (PACKAGE / "data").exists()
