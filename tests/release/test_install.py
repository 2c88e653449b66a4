"""The base install (pyproject's dependencies) holds what people run on a release, and no torch."""

from __future__ import annotations

import importlib.metadata
import re
import sys

import pytest

from tests.conftest import REPO
from tests.test_dvc_deps import import_closure, imported_modules, module_file

# What people run on a release, with the base install only.
RELEASE_COMMANDS = ("pipeline.commands.verify", "pipeline.commands.status", "pipeline.commands.remove",
                    "pipeline.commands.tag", "pipeline.commands.publish")
RUN_AS_PROGRAMS = {"tag": ["dvc"], "publish": ["dvc"]}  # `python -m dvc status` checks the stage that built the release
tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
HEAVY = ("torch", "torchvision", "open_clip_torch", "transformers", "faiss-cpu", "ray", "label-studio-sdk")


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    """Normalised distribution names of requirement strings."""
    return {re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]).lower() for r in requirements}


def third_party(module: str) -> set[str]:
    """Distributions that `module` and the project modules it imports may import, in functions too."""
    distributions = importlib.metadata.packages_distributions()
    found: set[str] = set()
    for path in import_closure(module):
        for name in imported_modules(REPO / path):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in ("pipeline", "annotation") or module_file(name) is not None:
                continue
            assert top in distributions, f"{path} imports {top}, which no installed distribution provides"
            found.update(distributions[top])
    return names(sorted(found))


@pytest.mark.parametrize("module", RELEASE_COMMANDS)
def test_the_base_install_holds_what_a_release_command_imports(module):
    base = names(project()["dependencies"])
    needed = third_party(module) | names(RUN_AS_PROGRAMS.get(module.rsplit(".", 1)[1], []))
    assert needed <= base, f"{module} needs {sorted(needed - base)} beyond the base install"


def test_heavy_libraries_are_extras_and_every_extra_the_makefile_installs_exists():
    base = names(project()["dependencies"])
    extras = project()["optional-dependencies"]
    assert not base & names(list(HEAVY))
    assert names(list(HEAVY)) <= names([r for reqs in extras.values() for r in reqs])
    installed = re.search(r'-e "\.\[([a-z,]+)\]"', (REPO / "Makefile").read_text())
    assert installed and set(installed[1].split(",")) == set(extras)  # the demo and the tests need every extra
