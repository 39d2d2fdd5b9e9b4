"""The package's shape: layers only look down, tasks never import each other, no import cycles, and the
engine and tasks keep their functions short. Read from the source (every import, lazy ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "oracle_kd"
# bottom to top; a module may import its own layer and the layers below it
LAYERS = [
    ("core", ("oracle_kd.errors", "oracle_kd.paths", "oracle_kd.core")),
    ("components", ("oracle_kd.data", "oracle_kd.models", "oracle_kd.methods")),
    ("config", ("oracle_kd.config",)),
    ("store", ("oracle_kd.store",)),
    ("engine", ("oracle_kd.engine",)),
    ("tasks", ("oracle_kd.tasks",)),
    ("cli", ("oracle_kd.cli", "oracle_kd.launch")),
]
COMPONENTS = ("oracle_kd.data", "oracle_kd.models", "oracle_kd.methods")
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(name: str) -> str:
    """The module an import statement reaches (`from a.b import c` reaches a.b.c when that is a module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports(module: str) -> set[str]:
    """Every oracle_kd module `module` imports, at any depth of its code (lazy imports count)."""
    return imports_in(MODULES[module].read_text()) - {module}


def imports_in(source: str) -> set[str]:
    tree = ast.parse(source)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_resolve(a.name) for a in node.names if a.name.startswith("oracle_kd"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("oracle_kd"):
            found.update(_resolve(f"{node.module}.{a.name}") for a in node.names)
    found.discard("oracle_kd")
    return found


def layer_of(module: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def _owner(module: str, roots: tuple[str, ...]) -> str | None:
    return next((r for r in roots if module == r or module.startswith(r + ".")), None)


def _task_unit(module: str) -> str | None:
    """tasks.<name> (a module or package), or None for the registry/package itself."""
    parts = module.split(".")
    if parts[:2] != ["oracle_kd", "tasks"] or len(parts) < 3 or parts[2] == "registry":
        return None
    return ".".join(parts[:3])


GRAPH = {m: imports(m) for m in MODULES if m != "oracle_kd"}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_only_look_down(module: str) -> None:
    upward = [m for m in GRAPH[module] if layer_of(m) > layer_of(module)]
    assert not upward, f"{module} ({LAYERS[layer_of(module)][0]}) imports a higher layer: {upward}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _owner(m, COMPONENTS)))
def test_components_do_not_import_each_other(module: str) -> None:
    mine = _owner(module, COMPONENTS)
    peers = [m for m in GRAPH[module] if _owner(m, COMPONENTS) not in (None, mine)]
    assert not peers, f"{module} imports another component: {peers}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _task_unit(m)))
def test_no_task_imports_another_task(module: str) -> None:
    others = [m for m in GRAPH[module] if _task_unit(m) not in (None, _task_unit(module))]
    assert not others, f"{module} imports another task's module: {others}"


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(GRAPH.get(m, ())):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_the_import_reader_sees_lazy_and_from_imports() -> None:
    """The checks above are only as good as `imports_in`: a lazy import inside a function counts."""
    source = "import torch\ndef f():\n    from oracle_kd.tasks.tune import tune\n    import oracle_kd.cli\n"
    assert imports_in(source) == {"oracle_kd.tasks.tune", "oracle_kd.cli"}
    assert layer_of("oracle_kd.tasks.tune") > layer_of("oracle_kd.engine.trainer")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(("oracle_kd.engine", "oracle_kd.tasks"))))
def test_engine_and_task_functions_are_short(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text())
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{module}: functions over {MAX_FUNCTION_LINES} lines: {long}"
