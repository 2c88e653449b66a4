"""The house rules of pipeline/ARCHITECTURE.md, checked on the source: stages import the library and
never each other, the library never imports a stage or a command, and no import circle exists,
imports inside functions included (so none can hide a circle).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_dvc_deps import imported_modules, module_file, stage_modules

PACKAGES = ("pipeline", "annotation")
# The library: folders that stages and commands build on. Each may import only the library.
LIBRARY = ("pipeline.core", "pipeline.images", "pipeline.embedding", "pipeline.mining", "pipeline.vlm", "pipeline.diagnostics",
           "pipeline.release", "pipeline.params", "annotation.labelstudio", "annotation.snapshot",
           "annotation.results", "annotation.tables", "annotation.adjudication")


def module_name(path: Path, root: Path = REPO) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """Module → the project modules it imports (at any depth, parent packages left out)."""
    files = [p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))]
    graph: dict[str, set[str]] = {}
    for path in files:
        name = module_name(path, root)
        targets = set()
        for imported in imported_modules(path, root):
            target = module_file(imported, root)
            if target is None or target.name == "__init__.py":  # package markers hold no code
                continue
            targets.add(module_name(target, root))
        graph[name] = targets - {name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), each sorted."""
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
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def in_library(module: str) -> bool:
    return any(module == lib or module.startswith(lib + ".") for lib in LIBRARY)


GRAPH = import_graph()
STAGES = set(stage_modules().values())


def test_the_stage_list_is_the_dvc_stages():
    assert {"pipeline.ingest", "pipeline.embed", "pipeline.search", "pipeline.package", "annotation.accept"} <= STAGES
    assert all(s in GRAPH for s in STAGES)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_imports_no_other_stage(stage):
    others = sorted(GRAPH[stage] & (STAGES - {stage}))
    assert not others, f"stage {stage} imports the stage(s) {others}: move what they share into the library"


def test_the_library_imports_only_the_library():
    wrong = {m: sorted(t for t in GRAPH[m] if not in_library(t)) for m in GRAPH if in_library(m)}
    wrong = {m: t for m, t in wrong.items() if t}
    assert not wrong, f"library modules importing stages or commands: {wrong}"


def test_no_import_circle():
    assert not circles(GRAPH), f"import circles (imports inside functions count): {circles(GRAPH)}"


def test_the_checks_catch_a_circle_through_a_function_level_import(tmp_path):
    package = tmp_path / "pipeline"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pipeline import b\n")
    (package / "b.py").write_text("def f():\n    from pipeline.a import x\n")
    (package / "c.py").write_text("from pipeline import a\n")
    graph = {k: v for k, v in import_graph(tmp_path).items()}
    assert circles(graph) == [["pipeline.a", "pipeline.b"]]
