"""docs/architecture.md names real code, and the package's imports point one way (STYLE 9).

The import checks read the source with `ast` and count only statements that run when a module is
imported: top-level `import` / `from` statements, also inside top-level `if` (except `if
TYPE_CHECKING:`), `try` and `with` blocks and class bodies; imports inside functions are ignored.
The parent packages Python loads before a submodule are not edges: only what a statement names.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
SRC = ROOT / "src"
PACKAGE = "pitscope"

# A backticked dotted name under the package: `pitscope.models.hog.hog_features`.
NAME = re.compile(r"`(pitscope(?:\.[A-Za-z_][A-Za-z0-9_]*)+)`")

DEPLOY = (
    "pitscope.inference",
    "pitscope.serve",
    "pitscope.predict",
    "pitscope.export",
    "pitscope.report",
    "pitscope.evaluation",
    "pitscope.defect_regions",
    "pitscope.history.store",
    "pitscope.history.recorder",
    "pitscope.wear",
)
FORBIDDEN = ("pitscope.training", "pitscope.cli")


# -- the document ------------------------------------------------------------------------------
def documented_names() -> list[str]:
    """Every distinct backticked `pitscope.` name of docs/architecture.md, in order of appearance."""
    return list(dict.fromkeys(NAME.findall(DOC.read_text(encoding="utf-8"))))


def resolve(name: str) -> object:
    """The object a dotted name stands for: the longest importable module prefix, then attributes
    (so `pitscope.models`, `pitscope.scoring.GaussianScorer` and `pitscope.inference.Detector.fit`
    all resolve). Raises ImportError or AttributeError when it does not."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            # Only "this name is not a module" moves to a shorter prefix; a missing dependency of
            # a real module is a failure of its own.
            if error.name is not None and module_name.startswith(error.name) and error.name.startswith(PACKAGE):
                continue
            raise
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no module of {name!r} can be imported")


def test_architecture_doc_names_enough_symbols():
    names = documented_names()
    assert len(names) >= 25, f"docs/architecture.md names only {len(names)} `pitscope.` symbols: {names}"


def test_every_documented_name_resolves():
    failures = []
    for name in documented_names():
        try:
            resolve(name)
        except (ImportError, AttributeError) as error:
            failures.append(f"{name}: {type(error).__name__}: {error}")
    assert not failures, "names in docs/architecture.md that do not resolve:\n" + "\n".join(failures)


def test_resolve_refuses_a_missing_name():
    with pytest.raises(AttributeError):
        resolve("pitscope.scoring.NoSuchScorer")
    with pytest.raises(AttributeError):
        resolve("pitscope.inference.Detector.no_such_method")
    assert resolve("pitscope.models") is importlib.import_module("pitscope.models")


# -- the import graph --------------------------------------------------------------------------
def module_files() -> dict[str, Path]:
    """{dotted module name: source file} of every module of the package."""
    files = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_time_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of `body` that run when the module is imported."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                found += import_time_imports(node.body)
            found += import_time_imports(node.orelse)
        elif isinstance(node, ast.Try):
            found += import_time_imports(node.body) + import_time_imports(node.orelse)
            found += import_time_imports(node.finalbody)
            for handler in node.handlers:
                found += import_time_imports(handler.body)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            found += import_time_imports(node.body)
    return found


def import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports at import time}."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in import_time_imports(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import name`: the submodule pkg.name if there is one, else pkg itself
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                parts = target.split(".")  # `import pitscope.a.b` names pitscope.a.b, the longest module
                while parts and ".".join(parts) not in files:
                    parts.pop()
                if parts:
                    edges.add(".".join(parts))
        edges.discard(module)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found, key=sorted)


def cycle_edges(graph: dict[str, set[str]], component: frozenset[str]) -> str:
    """The imports inside one cycle, one importing module a line, for the failure message."""
    return "\n".join(f"  {v} -> {', '.join(sorted(graph[v] & component))}" for v in sorted(component))


def reaches(graph: dict[str, set[str]], source: str, targets: tuple[str, ...]) -> list[list[str]]:
    """A shortest import path from `source` to each of `targets` it reaches (breadth first)."""
    parent: dict[str, str | None] = {source: None}
    queue = [source]
    for v in queue:
        for w in sorted(graph.get(v, ())):
            if w not in parent:
                parent[w] = v
                queue.append(w)
    paths = []
    for target in targets:
        if target in parent:
            path, v = [], target
            while v is not None:
                path.append(v)
                v = parent[v]
            paths.append(path[::-1])
    return paths


def test_graph_sees_the_imports():
    graph = import_graph()
    assert "pitscope.model_file" in graph["pitscope.inference"]
    assert "pitscope.training" in graph["pitscope.fitting"]
    assert "pitscope.distributed" in graph["pitscope.fitting"]  # `from pitscope import distributed`
    assert "pitscope.inference" not in graph["pitscope.predict"]  # imported inside functions only
    assert "pitscope.inference" not in graph["pitscope.serve"]  # under `if TYPE_CHECKING:` only
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_no_import_cycle():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles among pitscope modules:\n" + "\n".join(cycle_edges(graph, c) for c in found)


def test_deploy_code_does_not_import_training_or_cli():
    graph = import_graph()
    direct = [f"{m} imports {t}" for m in DEPLOY for t in sorted(graph[m]) if t in FORBIDDEN]
    assert not direct, "deploy modules importing training or the CLI:\n" + "\n".join(direct)
    indirect = {m: reaches(graph, m, FORBIDDEN) for m in DEPLOY}
    reached = [" -> ".join(p) for paths in indirect.values() for p in paths]
    assert not reached, "deploy modules importing training or the CLI through other modules:\n" + "\n".join(reached)


def test_only_the_cli_parses_arguments_and_prints():
    """STYLE 11: library code returns values and logs; only `pitscope.cli` reads a command line
    (argparse) and prints. Imports and calls anywhere in a module count, also inside functions."""
    found = []
    for module, path in module_files().items():
        if module == f"{PACKAGE}.cli" or module.startswith(f"{PACKAGE}.cli."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "argparse" for a in node.names):
                found.append(f"{module}:{node.lineno} imports argparse")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "argparse":
                found.append(f"{module}:{node.lineno} imports argparse")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                found.append(f"{module}:{node.lineno} calls print")
    assert not found, "library modules that parse arguments or print:\n" + "\n".join(found)
