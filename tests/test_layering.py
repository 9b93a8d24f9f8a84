"""The import graph points down (core <- models <- method packages <- recipes/jobs <- CLI) and has no cycle,
function-level imports included (read from the source with ast, nothing imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "percli"
METHOD_PACKAGES = ("curation", "captioning", "tts", "avsuperb", "nas", "graph", "active", "grounding")
# What each layer may import from percli (a module may always import its own package).
ALLOWED = {
    "core": {"core"},
    "models": {"core", "models"},
    **{name: {"core", "models"} for name in METHOD_PACKAGES},
    "recipes": {"core", "models", "recipes", *METHOD_PACKAGES},
    "jobs": {"core"},
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> set[str]:
    """percli modules imported anywhere in the file (top level or inside functions)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            # `from percli.core import dist` names a module: record both the package and the module.
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    root_name = root.name
    return {m for m in found if m == root_name or m.startswith(root_name + ".")}


def graph(root: Path) -> dict[str, set[str]]:
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        edges[name] = {m for m in imports(path, root) if m in modules and m != name}
    return edges


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(root: Path) -> list[str]:
    bad = []
    for module, targets in graph(root).items():
        allowed = ALLOWED.get(layer(module))
        if allowed is None:  # cli, commands and the package root sit on top
            continue
        for target in sorted(targets):
            if layer(target) and layer(target) not in allowed | {layer(module)}:
                bad.append(f"{module} imports {target}")
    return bad


def cycles(root: Path) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), i.e. import cycles. A package's
    __init__ importing its own submodules (re-exports) is not a cycle when the submodule does not import
    the package back for something the __init__ defines itself."""
    edges = graph(root)
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_imports_only_point_down():
    assert upward_imports(PACKAGE) == []


def test_no_import_cycles():
    assert cycles(PACKAGE) == []


@pytest.fixture
def violating_package(tmp_path: Path) -> Path:
    root = tmp_path / "percli"
    for sub in ("core", "models", "curation", "recipes"):
        (root / sub).mkdir(parents=True)
        (root / sub / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "core" / "engine.py").write_text("def f():\n    from percli.recipes.x import y\n")  # upward, in a function
    (root / "recipes" / "x.py").write_text("from percli.core import engine\ny = 1\n")
    (root / "models" / "a.py").write_text("from percli.models import b\n")
    (root / "models" / "b.py").write_text("from . import a\n")  # a cycle through a relative import
    (root / "curation" / "c.py").write_text("from percli.models.a import *\n")  # allowed
    return root


def test_the_checks_catch_upward_imports_and_cycles(violating_package: Path):
    assert upward_imports(violating_package) == ["percli.core.engine imports percli.recipes.x"]
    found = cycles(violating_package)
    assert ["percli.models.a", "percli.models.b"] in found
    assert ["percli.core.engine", "percli.recipes.x"] in found
