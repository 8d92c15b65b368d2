"""The package's import graph: no cycle, and no layer importing a layer above it.

Layers, lowest first (a module may import only from its own layer or the layers before it):
core -> config -> postfix -> engine -> delivery -> service -> frontdoors -> tools -> cli.

Every import counts, wherever it is written: at the top, inside a function (lazy imports), and
under ``if TYPE_CHECKING:`` (a type-only import is still a dependency a reader must follow, and
the cycle it closes is still a cycle). The graph is read from the source with ``ast``, so
nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "smtpfilter"
LAYERS = ("core", "config", "postfix", "engine", "delivery", "service", "frontdoors", "tools", "cli")


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    """smtpfilter.engine.checks.date → engine; smtpfilter.cli and __main__ → cli."""
    parts = module.split(".")
    if len(parts) == 1:
        return "core"  # the package itself: a docstring and __version__
    if parts[1] in ("cli", "__main__"):
        return "cli"
    return parts[1]


def imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """The smtpfilter modules ``path`` imports (relative imports resolved, ``from package
    import submodule`` read as the submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "smtpfilter")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "smtpfilter":
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in known else target)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(p, root): p for p in root.rglob("*.py")}
    known = set(paths)
    return {name: imports_of(path, name, known) & known - {name} for name, path in paths.items()}


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    rank = {layer: index for index, layer in enumerate(LAYERS)}
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if rank[layer_of(target)] > rank[layer_of(module)]:
                found.append(
                    f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
                )
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), as a list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def test_every_module_is_in_a_layer():
    graph = import_graph()
    assert "smtpfilter.engine.judge" in graph and "smtpfilter.core.envelope" in graph
    assert {layer_of(module) for module in graph} <= set(LAYERS)


def test_no_layer_imports_a_layer_above_it():
    assert layering_violations(import_graph()) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_core_imports_nothing_else_of_smtpfilter():
    graph = import_graph()
    outside = {
        f"{module} -> {target}"
        for module, targets in graph.items()
        if layer_of(module) == "core"
        for target in targets
        if layer_of(target) != "core"
    }
    assert outside == set()


def test_every_module_says_what_it_owns():
    """STYLE.md: a module's docstring's first line says what it owns."""
    missing = [
        module_name(path)
        for path in PACKAGE.rglob("*.py")
        if path.name != "__main__.py" and not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert missing == []


# --- the checks themselves can fail ----------------------------------------------------------
def write(root: Path, files: dict[str, str]) -> Path:
    package = root / "smtpfilter"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            {"__init__.py": "", "core/__init__.py": "", "engine/__init__.py": "",
             "core/a.py": "from smtpfilter.engine import b\n", "engine/b.py": ""},
            ["smtpfilter.core.a (core) imports smtpfilter.engine.b (engine)"],
            id="core-imports-engine",
        ),
        pytest.param(
            {"__init__.py": "", "service/__init__.py": "", "frontdoors/__init__.py": "",
             "service/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                             "    from ..frontdoors.b import X\n",
             "frontdoors/b.py": "X = 1\n"},
            ["smtpfilter.service.a (service) imports smtpfilter.frontdoors.b (frontdoors)"],
            id="type-checking-import",
        ),
        pytest.param(
            {"__init__.py": "", "delivery/__init__.py": "", "tools/__init__.py": "",
             "delivery/a.py": "def f():\n    import smtpfilter.tools.b\n", "tools/b.py": ""},
            ["smtpfilter.delivery.a (delivery) imports smtpfilter.tools.b (tools)"],
            id="lazy-import",
        ),
    ],
)
def test_a_layering_violation_is_found(tmp_path, files, expected):
    assert layering_violations(import_graph(write(tmp_path, files))) == expected


def test_a_cycle_is_found_type_checking_imports_included(tmp_path):
    package = write(tmp_path, {
        "__init__.py": "", "engine/__init__.py": "",
        "engine/a.py": "from smtpfilter.engine import b\n",
        "engine/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                       "    from .a import A\n",
    })
    assert cycles(import_graph(package)) == [["smtpfilter.engine.a", "smtpfilter.engine.b"]]
