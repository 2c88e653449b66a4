#!/usr/bin/env python3
"""Check that two runs of the pipeline wrote the same bytes: a change of structure, not behaviour.

    python .ci/same_outputs.py world OUT        # in a checkout: build the release test world into OUT
    python .ci/same_outputs.py compare A B      # byte-compare two output trees

`compare` takes two `data/` folders of `make demo` on fresh clones (embeddings, candidates, pairs,
tasks, display copies, gallery, release...) or two `world` folders (a release with items: parquet,
webdataset tars, MMVP layouts, withheld images and their fetch script), and lists every file that
is missing on one side or differs. `data/ingest_state/` is skipped: it is ingest's cache, keyed by
each corpus file's stamps, which differ on every checkout. Exit 0 when the trees are identical.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path

SKIPPED = ("ingest_state/",)


def files(root: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under `root`, skipped folders left out."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith(SKIPPED):
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def compare(a: Path, b: Path) -> int:
    left, right = files(a), files(b)
    only_a = sorted(set(left) - set(right))
    only_b = sorted(set(right) - set(left))
    differ = sorted(p for p in set(left) & set(right) if left[p] != right[p])
    for label, paths in (("only in " + str(a), only_a), ("only in " + str(b), only_b), ("differ", differ)):
        for path in paths:
            print(f"{label}: {path}")
    same = len(set(left) & set(right)) - len(differ)
    print(f"{same} files identical, {len(differ)} differ, {len(only_a)} + {len(only_b)} on one side only")
    return 0 if not (only_a or only_b or differ) else 1


def _first_module(*names: str):
    """The first of `names` whose file is in this checkout (an installed clipblind may hold the others)."""
    for name in names:
        if Path.cwd().joinpath(*name.split(".")).with_suffix(".py").is_file():
            return importlib.import_module(name)
    raise SystemExit(f"none of {names} in this checkout")


def world(out: Path) -> int:
    """The release test world, built by this checkout's code (older checkouts kept these elsewhere)."""
    sys.path.insert(0, str(Path.cwd()))
    generator = _first_module("pipeline.sample_corpus", "pipeline.samplecorpus")
    release_world = _first_module("tests.helpers.release_world", "tests.release_world")
    print(f"code from {Path(generator.__file__).resolve().parents[1]}")
    corpus = out / "corpus"
    generator.generate(corpus, scenes=3, seed=1)
    release_world.build_release(corpus, out / "world")
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["compare"] and len(args) == 3:
        sys.exit(compare(Path(args[1]), Path(args[2])))
    if args[:1] == ["world"] and len(args) == 2:
        sys.exit(world(Path(args[1])))
    sys.exit(__doc__)
