"""Closed sets are spelled once: no module writes a member of one as a string literal; it imports the name."""

import ast
from pathlib import Path

import pytest

from annotation import tables
from pipeline.core import patterns
from tests.conftest import REPO

SOURCES = sorted(p for package in ("pipeline", "annotation") for p in (REPO / package).rglob("*.py"))

# (where the set is defined, its members); another set that happens to share a member's spelling is listed below
CLOSED_SETS = {
    "annotation reason codes": ("annotation/tables.py", set(tables.INVALID_REASONS) | set(tables.OUTCOME_REASONS)),
    "answer letters": ("pipeline/core/patterns.py", set(patterns.ANSWERS)),
}
# (module, literal): why it is not a respelling
OTHER_SETS = {
    ("pipeline/release/items.py", "unknown_pattern"): "PackageReject: package's own reasons for refusing an accepted row",
    ("pipeline/release/items.py", "duplicate_pair"): "PackageReject: package's own reasons for refusing an accepted row",
    ("pipeline/commands/benchmarks/package.py", "(a)"): "a benchmark's made-up accepted rows (data, not the set)",
    ("pipeline/commands/benchmarks/package.py", "(b)"): "a benchmark's made-up accepted rows (data, not the set)",
}


def _literals(path: Path) -> set[str]:
    """The string constants of a module, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}


@pytest.mark.parametrize("name", sorted(CLOSED_SETS))
def test_members_of_a_closed_set_are_spelled_only_where_it_is_defined(name):
    home, members = CLOSED_SETS[name]
    respelled = sorted((str(p.relative_to(REPO)), m) for p in SOURCES if str(p.relative_to(REPO)) != home
                       for m in _literals(p) & members if (str(p.relative_to(REPO)), m) not in OTHER_SETS)
    assert not respelled, f"{name} spelled outside {home}: {respelled}; import the name from there"
