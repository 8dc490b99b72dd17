"""Which fastmae module may import which: the reference is a leaf oracle, the data layer has no cycle.

Read from the source with ``ast`` (every import statement, lazy ones inside functions included), so
nothing is imported and a new module is covered as soon as it exists.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fastmae"
# the benchmark harness runs the reference as its baseline; everything else is production code
MAY_IMPORT_REFERENCE = ("fastmae.bench", "fastmae.reference")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (never imported at run time)."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))
    return nodes


def imported_modules(path: Path) -> set[str]:
    """Every fastmae module ``path`` imports at run time (``from a import b`` also counts a.b)."""
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "fastmae" or name.startswith("fastmae.")}


SOURCES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def test_the_sources_are_found() -> None:
    assert {"fastmae.reference", "fastmae.models.mae", "fastmae.train.step", "fastmae.data.loader"} <= set(SOURCES)


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if not m.startswith(MAY_IMPORT_REFERENCE)))
def test_production_code_does_not_import_the_reference(module: str) -> None:
    imports = imported_modules(SOURCES[module])
    assert "fastmae.reference" not in imports, f"{module} imports the test oracle fastmae.reference"


def test_the_reference_reads_only_plain_facts_of_fastmae() -> None:
    """The oracle writes the algorithm out itself: no fast layer, op, trainer or loader under it."""
    imports = imported_modules(SOURCES["fastmae.reference"])
    allowed = {"fastmae._validation", "fastmae.models.configs"}
    assert {m for m in imports if m in SOURCES} <= allowed


def test_the_data_layer_has_no_import_cycle() -> None:
    data = {m for m in SOURCES if m.startswith("fastmae.data")}
    graph = {m: {i for i in imported_modules(SOURCES[m]) if i in data and i != m} for m in data}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            assert state.get(target) != "open", f"import cycle: {' -> '.join([*trail, module, target])}"
            if target not in state:
                visit(target, [*trail, module])
        state[module] = "done"

    for module in sorted(data):
        if module not in state:
            visit(module, [])
