"""Import rules of ``services/`` (docs/architecture.md, "Packages and import rules"), checked on
the source with ``ast``:

* the service packages (receiver, worker, reporter) never import one another: they talk
  through the database and the broker, in the shapes of ``services.core``;
* ``services.core`` imports nothing from above it;
* ``services.analysis`` imports only ``services.core`` and itself (a pure library);
* the modules imported at run time (top-level imports, not under ``TYPE_CHECKING``, not
  inside functions) form no cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
SERVICE_PACKAGES = ("receiver", "worker", "reporter")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (or the package a name was imported from)
    line: int
    runtime: bool  # top level and not under TYPE_CHECKING: runs when the module is imported


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SERVICES.rglob("*.py")):
        if "migrations" in path.parts:  # alembic scripts: frozen, loaded by alembic
            continue
        found[module_name(path)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(
    nodes: list[ast.stmt], *, runtime: bool
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, runtime
        elif isinstance(node, ast.If):
            body_runtime = runtime and not _is_type_checking(node.test)
            yield from _walk(node.body, runtime=body_runtime)
            yield from _walk(node.orelse, runtime=runtime)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _walk(block, runtime=runtime)
            for handler in node.handlers:
                yield from _walk(handler.body, runtime=runtime)
        elif isinstance(node, ast.With | ast.ClassDef):  # class bodies run at import too
            yield from _walk(node.body, runtime=runtime)
        else:  # functions, classes, loops: whatever they import runs later, if at all
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    yield from _walk([child], runtime=False)


def imports_of(name: str, path: Path, known: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node, runtime in _walk(tree.body, runtime=True):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # ``from a import b`` imports the module a.b when there is one, else a name of a
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                for alias in node.names
            ]
        for target in dict.fromkeys(targets):
            if target == "services" or target.startswith("services."):
                found.append(Import(name, target, node.lineno, runtime))
    return found


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    known = modules()
    return [imp for name, path in known.items() for imp in imports_of(name, path, known)]


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _where(imp: Import) -> str:
    return f"{imp.module}:{imp.line} imports {imp.target}"


def test_the_walk_sees_the_services() -> None:
    known = modules()
    assert {"services.core.contracts", "services.worker.jobs", "services.reporter.results"} <= set(
        known
    )


@pytest.mark.parametrize("service", SERVICE_PACKAGES)
def test_a_service_does_not_import_another_service(graph: list[Import], service: str) -> None:
    others = {f"services.{name}" for name in SERVICE_PACKAGES if name != service}
    bad = [
        _where(imp)
        for imp in graph
        if _package(imp.module) == service
        and any(imp.target == other or imp.target.startswith(other + ".") for other in others)
    ]
    assert bad == []


def test_core_imports_nothing_above_it(graph: list[Import]) -> None:
    bad = [
        _where(imp)
        for imp in graph
        if _package(imp.module) == "core" and _package(imp.target) not in ("core", "")
    ]
    assert bad == []


def test_analysis_imports_only_core_and_itself(graph: list[Import]) -> None:
    bad = [
        _where(imp)
        for imp in graph
        if _package(imp.module) == "analysis"
        and _package(imp.target) not in ("core", "analysis", "")
    ]
    assert bad == []


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with a cycle (Tarjan), each as one cycle path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
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
            if len(component) > 1 or node in edges.get(node, ()):
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [_one_cycle(component, edges) for component in components]


def _one_cycle(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A path ``a -> b -> … -> a`` inside one strongly connected component."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(edges.get(node, ())):
            if nxt == start:
                return [*paths[node], start]
            if nxt in members and nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    return component


def test_find_cycles_lists_each_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert find_cycles(edges) == [["a", "b", "c", "a"], ["e", "e"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_at_run_time(graph: list[Import]) -> None:
    known = set(modules())
    edges: dict[str, set[str]] = {}
    for imp in graph:
        if imp.runtime and imp.target in known and imp.target != imp.module:
            edges.setdefault(imp.module, set()).add(imp.target)
    cycles = find_cycles(edges)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
