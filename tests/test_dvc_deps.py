"""Every DVC stage depends on the code it runs: its `deps` hold the import closure of its module.

A stage's outputs change when any project module it imports changes, so each of those modules
must be one of its deps, or `dvc repro` keeps outputs made by old code. The closure is found
statically (ast), imports inside functions included; imports under `if TYPE_CHECKING:` never
run and are not followed.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PROJECT_PACKAGES = ("pipeline", "annotation")

# Modules a stage imports that are deliberately not its deps, each with the reason.
NOT_DEPS: dict[str, str] = {
    # Package markers: a docstring and the CLI's version string. No stage reads either, and listing
    # them would rerun every stage on a version bump.
    "pipeline/__init__.py": "package marker (docstring; __version__ for `clipblind --version` only)",
    "annotation/__init__.py": "package marker (docstring only)",
}

MODULE_IN_CMD = re.compile(r"python -m ([\w.]+)")


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The file of project module `name` under `root`, or None for a module outside the project."""
    if not name or name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(node: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement under `node`, in functions too, except in the body of `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            found.append(child)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for branch in child.orelse:
                found.extend(runtime_imports(ast.Module(body=[branch], type_ignores=[])))
        else:
            found.extend(runtime_imports(child))
    return found


def imported_modules(path: Path, root: Path = REPO) -> set[str]:
    """Dotted names that the module in `path` may import when it runs, parent packages included.

    `from a import b` yields both `a` and `a.b` (b may be a submodule); names that are not
    modules are dropped later, when no file matches them.
    """
    parts = path.relative_to(root).with_suffix("").parts
    package = list(parts[:-1])  # the package a module (or an __init__) belongs to
    names: set[str] = set()
    for node in runtime_imports(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        anchor = package[: len(package) - node.level + 1] if node.level else []
        base = ".".join(anchor + ([node.module] if node.module else []))
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names)
    return {".".join(n.split(".")[:i]) for n in names for i in range(1, len(n.split(".")) + 1)}


def import_closure(module: str, root: Path = REPO) -> set[str]:
    """Paths (relative to `root`) of every project module that `python -m module` imports."""
    dotted = module.split(".")
    start = [module_file(".".join(dotted[:i]), root) for i in range(1, len(dotted) + 1)]
    assert start[-1] is not None, f"{module} is not a project module"
    seen: set[Path] = set()
    todo = [p for p in start if p is not None]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(f for f in (module_file(n, root) for n in imported_modules(path, root)) if f is not None)
    return {p.relative_to(root).as_posix() for p in seen}


def dvc_stages() -> dict[str, dict]:
    """The stages of the repository's dvc.yaml."""
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def stage_modules() -> dict[str, str]:
    """Each stage whose command runs a project module (`python -m pipeline.x`), and that module."""
    found = {}
    for name, stage in dvc_stages().items():
        match = MODULE_IN_CMD.search(str(stage["cmd"]))
        if match and module_file(match.group(1)) is not None:
            found[name] = match.group(1)
    return found


def test_the_analysis_follows_function_level_and_relative_imports_but_not_type_checking(tmp_path):
    package = tmp_path / "pipeline"
    (package / "deep").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "deep" / "__init__.py").write_text("")
    (package / "top.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import numpy\n"
        "from pipeline import sibling\n"
        "from pipeline.sibling import a_function\n"
        "if TYPE_CHECKING:\n    from pipeline import typing_only\nelse:\n    from pipeline import runtime_branch\n"
        "def late():\n    from .lazy import thing\n    import pipeline.deep.inner\n"
    )
    for name in ("sibling", "typing_only", "runtime_branch", "lazy", "unused"):
        (package / f"{name}.py").write_text("import json\n")
    (package / "deep" / "inner.py").write_text("from ..chained import x\n")
    (package / "chained.py").write_text("class x: ...\n")
    assert import_closure("pipeline.top", tmp_path) == {
        "pipeline/__init__.py", "pipeline/top.py", "pipeline/sibling.py", "pipeline/runtime_branch.py",
        "pipeline/lazy.py", "pipeline/deep/__init__.py", "pipeline/deep/inner.py", "pipeline/chained.py",
    }


def test_every_exclusion_names_a_project_module():
    for path in NOT_DEPS:
        assert (REPO / path).is_file(), f"NOT_DEPS lists {path}, which does not exist: remove it"


def test_every_stage_that_runs_python_runs_a_project_module():
    running_python = {name for name, stage in dvc_stages().items() if "python -m" in str(stage["cmd"])}
    assert running_python == set(stage_modules())


@pytest.mark.parametrize("stage", sorted(stage_modules()))
def test_stage_deps_hold_the_import_closure_of_its_module(stage):
    module = stage_modules()[stage]
    deps = set(dvc_stages()[stage].get("deps", []))
    missing = sorted(import_closure(module) - deps - set(NOT_DEPS))
    assert not missing, (
        f"dvc.yaml stage {stage!r} runs `python -m {module}`, which imports {', '.join(missing)}, "
        f"but its deps do not list them: add them to the stage's deps (or, for a module that cannot "
        f"change the stage's outputs, to NOT_DEPS in tests/{Path(__file__).name} with the reason)"
    )


def test_the_corpus_is_named_once_and_every_stage_reading_it_depends_on_it():
    text = (REPO / "dvc.yaml").read_text()
    corpus = yaml.safe_load(text)["vars"][0]["corpus"]
    readers = {name: stage for name, stage in dvc_stages().items() if "--source" in str(stage["cmd"])}
    assert {"ingest", "embed", "export", "gallery", "gate", "package"} <= set(readers)
    for name, stage in readers.items():
        assert '--source "${corpus}"' in stage["cmd"], f"stage {name!r} must read the corpus as --source \"${{corpus}}\""
        assert "${corpus}" in stage["deps"], f"stage {name!r} reads the corpus but does not depend on ${{corpus}}"
    # the location is spelled once (the demo's own stage writes its default there), never per stage
    assert text.count(corpus) == 1 + str(dvc_stages()["sample_corpus"]).count(corpus)


def _git(*args: str) -> str:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout


def test_tracked_metrics_and_plots_are_exactly_what_the_stages_write():
    declared: set[str] = set()
    for stage in dvc_stages().values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                declared.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    tracked = set(_git("ls-files", "metrics", "plots").split())
    # a tracked file no stage writes goes stale; a stage output in git is regenerated by `make demo`
    assert tracked <= declared, f"tracked but written by no stage: {sorted(tracked - declared)}"


@pytest.mark.parametrize("path", [
    "dvc_plots/index.html",          # `dvc plots show`
    "metrics/push.json",             # `clipblind push`
    "metrics/pull_writing.json",     # `clipblind pull`
    "metrics/pull_verification.json",  # `clipblind pull verification`
    "metrics/verify_push.json",      # `clipblind push-verification`
])
def test_run_logs_of_commands_outside_the_pipeline_are_ignored(path):
    result = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
    assert result.returncode == 0, f"{path} is neither tracked nor ignored: add it to .gitignore"
