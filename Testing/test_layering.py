"""TwoFiveCNNLib is a house with rooms: subpackages by concern, imports pointing down, no cycles.

Every import counts, the lazy ones inside functions included: a lazy import that climbs a layer or
closes a cycle is the same tangle, only hidden until it runs. And no room holds a function over a hundred lines.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "TwoFiveCNN" / "TwoFiveCNNLib"
PACKAGE = "TwoFiveCNNLib"

# Bottom up. A module may import from its own layer or lower ones, never from a higher one.
LAYERS = {
    "io": 1,
    "data": 2, "transforms": 2, "metrics": 2, "reports": 2,
    "networks": 3,
    "training": 4, "inference": 4,
    "evaluation": 5,
    "scene": 6,
    "app": 7,
}
TOP_LEVEL = {"__init__": 0, "__main__": max(LAYERS.values())}  # the package itself; ``python -m``


def module_name(path: Path, lib: Path) -> str:
    """Dotted name under the package: ``data.cache``, ``scene`` (a package's ``__init__``), ``__main__``."""
    parts = list(path.relative_to(lib).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) if parts else "__init__"


def layer(module: str) -> int:
    top = module.split(".")[0]
    return TOP_LEVEL[top] if top in TOP_LEVEL else LAYERS[top]


def imported_modules(path: Path, lib: Path) -> Iterable[tuple[str, int]]:
    """(module, line) of every TwoFiveCNNLib module ``path`` imports, anywhere in the file."""
    name = module_name(path, lib)
    is_package = path.name == "__init__.py"
    known = {module_name(p, lib) for p in lib.rglob("*.py")}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = [] if name == "__init__" else name.split(".")
                package = base if is_package else base[:-1]
                if node.level - 1 > len(package):
                    raise AssertionError(f"{path}:{node.lineno}: relative import beyond the package")
                anchor = package[: len(package) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            elif node.module and (node.module == PACKAGE or node.module.startswith(PACKAGE + ".")):
                target = node.module.removeprefix(PACKAGE).lstrip(".")
            else:
                continue
            for alias in node.names:  # ``from . import x`` may name a submodule
                candidate = f"{target}.{alias.name}" if target else alias.name
                yield (candidate if candidate in known else target or "__init__"), node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    yield alias.name.removeprefix(PACKAGE).lstrip(".") or "__init__", node.lineno


def import_graph(lib: Path) -> dict[str, dict[str, int]]:
    graph: dict[str, dict[str, int]] = {}
    for path in sorted(lib.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        source = module_name(path, lib)
        edges = graph.setdefault(source, {})
        for target, line in imported_modules(path, lib):
            if target != source:
                edges.setdefault(target, line)
    return graph


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    return [f"{source} (layer {layer(source)}) imports {target} (layer {layer(target)}) at line {line}"
            for source, edges in graph.items() for target, line in edges.items() if layer(target) > layer(source)]


def find_cycle(graph: dict[str, Iterable[str]]) -> list[str] | None:
    """One cycle of the directed graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in graph.get(node, ()):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in list(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def package_graph(graph: dict[str, dict[str, int]]) -> dict[str, set[str]]:
    """Subpackage -> the other subpackages it imports."""
    packages: dict[str, set[str]] = {}
    for source, edges in graph.items():
        top = source.split(".")[0]
        packages.setdefault(top, set()).update(t.split(".")[0] for t in edges if t.split(".")[0] != top)
    return packages


MAX_FUNCTION_LINES = 100


def long_functions(lib: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Every function (methods and nested ones included) over ``limit`` lines, counted from its ``def``
    to its last line: one that long does several things, each of which deserves a name."""
    found = []
    for path in sorted(lib.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(lib).as_posix()}:{node.lineno} {node.name} ({lines} lines)")
    return found


# ------------------------------------------------------------------------------------------ the library


def test_every_library_file_sits_in_a_subpackage():
    loose = sorted(p.name for p in LIB.glob("*.py") if p.stem not in TOP_LEVEL)
    assert loose == [], "move these into the subpackage of their concern"
    folders = sorted(p.name for p in LIB.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(LAYERS), "every subpackage has a layer in LAYERS (and in the README's map)"
    for folder in folders:
        assert (LIB / folder / "__init__.py").is_file(), f"{folder}/ has no __init__.py"


def test_no_import_climbs_a_layer():
    assert upward_imports(import_graph(LIB)) == []


def test_no_import_cycle_between_modules():
    assert find_cycle(import_graph(LIB)) is None


def test_no_import_cycle_between_subpackages():
    assert find_cycle(package_graph(import_graph(LIB))) is None


def test_no_function_is_over_a_hundred_lines():
    assert long_functions(LIB) == [], "split these into helpers that each do one thing"


def test_packaging_declares_every_subpackage():
    import tomllib

    settings = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    declared = set(settings["tool"]["setuptools"]["packages"])
    assert declared == {PACKAGE} | {f"{PACKAGE}.{name}" for name in LAYERS}
    import TwoFiveCNNLib

    assert settings["project"]["version"] == TwoFiveCNNLib.__version__


# ------------------------------------------------------------------------------------------ the checker


@pytest.fixture
def tangled(tmp_path) -> Path:
    """A small package with one upward import and one lazy cycle, to prove the checks can fail."""
    lib = tmp_path / PACKAGE
    for folder in ("io", "data", "app"):
        (lib / folder).mkdir(parents=True)
        (lib / folder / "__init__.py").write_text("")
    (lib / "__init__.py").write_text("")
    (lib / "io" / "files.py").write_text("from ..app import cli\n")  # climbs from layer 1 to 7
    (lib / "data" / "index.py").write_text("from . import split\n")
    (lib / "data" / "split.py").write_text("def f():\n    from .index import g\n")  # lazy: still a cycle
    (lib / "app" / "cli.py").write_text("import TwoFiveCNNLib.data.index\nfrom TwoFiveCNNLib.io import files\n")
    return lib


def test_the_checker_finds_upward_imports_and_lazy_cycles(tangled):
    graph = import_graph(tangled)
    assert graph["app.cli"] == {"data.index": 1, "io.files": 2}
    assert upward_imports(graph) == ["io.files (layer 1) imports app.cli (layer 7) at line 1"]
    assert find_cycle(graph) in (["data.index", "data.split", "data.index"], ["data.split", "data.index", "data.split"])
    assert find_cycle(package_graph(graph)) in (["io", "app", "io"], ["app", "io", "app"])


def test_the_checker_counts_every_function_methods_and_nested_ones_included(tmp_path):
    lib = tmp_path / PACKAGE
    lib.mkdir()

    def body(indent: int, lines: int) -> str:
        return "".join(f"{' ' * indent}x{i} = {i}\n" for i in range(lines))

    (lib / "fits.py").write_text("def f():\n" + body(4, 99))  # 100 lines: at the limit, allowed
    (lib / "method.py").write_text("class C:\n    async def m(self):\n" + body(8, 100))
    (lib / "nested.py").write_text("def outer():\n    def inner():\n" + body(8, 100) + "    return inner\n")
    assert long_functions(lib) == ["method.py:2 m (101 lines)", "nested.py:1 outer (103 lines)",
                                   "nested.py:2 inner (101 lines)"]


def test_test_modules_import_no_other_test_module():
    """Fixtures come from conftest.py by name and plain helpers from helpers.py: a test module that
    imports another (or conftest itself) runs that module's fixtures and collection side effects twice."""
    testing = Path(__file__).parent
    found = [f"{path.name}: {line.strip()}" for path in sorted(testing.glob("*.py"))
             for line in path.read_text(encoding="utf-8").splitlines()
             if re.match(r"\s*(from|import)\s+(conftest|test_\w+)\b", line)]
    assert not found
