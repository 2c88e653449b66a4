"""How to cite a release: data_cards/CITATION.cff rendered as BibTeX; params.yaml holds no multi-line value."""

from __future__ import annotations

import csv
import datetime
import io
import os
import shutil
import subprocess
import sys

import pytest

from pipeline.release import citation
from pipeline.release.folder import ReleaseError
from tests.conftest import REPO

# The BibTeX the demo's card and manifest have always carried (it was params.yaml's package.citation).
DEMO_BIBTEX = """@misc{clipblind,
  title = {clipblind: CLIP-blind image pairs mined from an image corpus},
  note  = {Release built with the clipblind pipeline}
}"""


def test_the_demo_citation_renders_the_bibtex_the_card_always_carried():
    assert citation.bibtex(citation.read_cff(REPO / "data_cards/CITATION.cff")) == DEMO_BIBTEX


def test_a_full_citation_names_authors_year_doi_and_url_under_a_scholar_key():
    cff = {"title": "Top title", "authors": [{"name": "top"}],
           "preferred-citation": {"type": "data", "title": "Eyes Wide Shut? CLIP-blind pairs", "version": "1.2.0",
                                  "authors": [{"family-names": "Tong", "given-names": "Shengbang"}, {"name": "A Lab"}],
                                  "date-released": datetime.date(2024, 6, 1), "doi": "10.1/x",
                                  "repository-code": "https://example.org/repo"}}
    assert citation.bibtex(cff) == (
        "@misc{tong2024eyes,\n"
        "  author  = {Tong, Shengbang and A Lab},\n"
        "  title   = {Eyes Wide Shut? CLIP-blind pairs},\n"
        "  version = {1.2.0},\n"
        "  year    = {2024},\n"
        "  doi     = {10.1/x},\n"
        "  url     = {https://example.org/repo}\n"
        "}"
    )
    assert citation.bibtex({"title": "Plain", "authors": [{"name": "X"}]}) == "@misc{xplain,\n  author = {X},\n  title  = {Plain}\n}"


@pytest.mark.parametrize(("text", "words"), [
    ("title: [a, b\n", ["cannot be read", "Citation File Format"]),
    ("- title\n", ["holds list", "YAML mapping"]),
    ("message: hi\n", ["has no title", "add `title:"]),
    ("title: T\nauthors:\n  - alias: x\n", ["author {'alias': 'x'}", "family-names"]),
])
def test_a_bad_citation_file_names_the_file_the_problem_and_the_fix(tmp_path, text, words):
    path = tmp_path / "CITATION.cff"
    path.write_text(text)
    with pytest.raises(ReleaseError) as err:
        citation.bibtex(citation.read_cff(path), str(path))
    assert all(w in str(err.value) for w in words), err.value
    with pytest.raises(ReleaseError, match="cannot be read"):
        citation.read_cff(tmp_path / "absent.cff")


def test_dvc_exp_show_csv_gives_one_line_per_experiment_with_equal_columns(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, repo / name)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"],
                    ["git", "commit", "-q", "-m", "params"]):
        subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--csv"], cwd=repo, env=env,
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    rows = list(csv.reader(io.StringIO(shown.stdout)))
    assert len(rows) >= 3 and len({len(r) for r in rows}) == 1  # the header, the workspace, the commit
    assert any(c.startswith("package.") for c in rows[0])
    # a spreadsheet or `cut` reads a line as a row: no value spans lines
    assert len(shown.stdout.splitlines()) == len(rows), [c for r in rows for c in r if "\n" in c]

