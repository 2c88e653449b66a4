"""What a dataset user runs on a release needs no torch: the fetch script needs only the standard
library, `verify` runs with torch, transformers, open_clip and faiss unimportable."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import package
from pipeline.release import citation, withheld
from pipeline.release import folder as release
from tests.conftest import REPO
from tests.helpers.release_world import build_inputs, package_args

HEAVY = ("torch", "torchvision", "transformers", "open_clip", "faiss")
# Run a module or script with the heavy libraries unimportable, then list the modules it imported.
BLOCKED_RUN = """
import json, runpy, sys
for name in {heavy!r}:
    sys.modules[name] = None  # `import name` now raises ImportError
sys.argv[1:] = {argv!r}
code = 0
try:
    runpy.{runner}({target!r}, run_name="__main__")
except SystemExit as exit:
    code = exit.code
print("IMPORTED", json.dumps(sorted({{m.split(".")[0] for m, module in sys.modules.items() if module is not None}})))
sys.exit(code)
"""


def run_blocked(runner: str, target: str, argv: list[str], *flags: str, env: dict[str, str] | None = None,
                ) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `target` (a module or a script path) in a fresh interpreter with HEAVY unimportable."""
    code = BLOCKED_RUN.format(heavy=HEAVY, argv=argv, runner=runner, target=target)
    done = subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    imported = [line for line in done.stdout.splitlines() if line.startswith("IMPORTED ")]
    return done, set(json.loads(imported[-1].split(" ", 1)[1])) if imported else set()


@pytest.fixture(scope="module")
def world(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("standalone")
    inputs = build_inputs(sample_corpus, root / "inputs")
    out = root / "release"
    assert package.main(package_args(inputs, out, root / "package.json")) == 0
    return {"release": out, "corpus": inputs["manifest"].parent, "citation": inputs["citation"]}


@pytest.fixture
def http_root(world: dict[str, Path]) -> Iterator[str]:
    """The corpus folder served over HTTP on 127.0.0.1."""
    handler = functools.partial(QuietHandler, directory=str(world["corpus"]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def test_the_fetch_script_is_the_withheld_module_byte_for_byte(world):
    assert (world["release"] / release.FETCH_SCRIPT).read_bytes() == Path(withheld.__file__).read_bytes()


@pytest.mark.parametrize("where", ["folder", "url"])
def test_the_fetch_script_fetches_with_the_standard_library_alone(world, tmp_path, where, request):
    copy = tmp_path / "copy"
    shutil.copytree(world["release"], copy)
    root = str(world["corpus"]) if where == "folder" else request.getfixturevalue("http_root")
    row = withheld.read_rows(copy)[0]
    script = str(copy / release.FETCH_SCRIPT)
    # -I: no PYTHONPATH, no user site, not the script's folder; -S: no site-packages at all (no clipblind, no Pillow)
    done, imported = run_blocked("run_path", script, ["--root", f"{row['source']}={root}"], "-I", "-S")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not imported & {"pipeline", "annotation", "PIL", "numpy", "pyarrow", *HEAVY}, imported
    original = (world["corpus"] / row["source_path"]).read_bytes()
    assert (copy / withheld.ORIGINALS / row["source_sha256"]).read_bytes() == original
    assert "install clipblind" in done.stdout  # the MMVP layouts wait for the release's own encoding
    assert not any((copy / t).exists() for t in row["targets"].split(withheld.TARGET_SEPARATOR))
    report = release.verify(copy)
    assert report.ok and report.fetched == (f"{withheld.ORIGINALS}/{row['source_sha256']}",)


def test_the_fetch_script_refuses_other_bytes_with_the_standard_library_alone(world, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(world["release"], copy)
    row = withheld.read_rows(copy)[0]
    fake = tmp_path / "fake" / row["source_path"]
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"other bytes")
    done, _ = run_blocked("run_path", str(copy / release.FETCH_SCRIPT),
                          ["--root", f"{row['source']}={tmp_path / 'fake'}"], "-I", "-S")
    assert done.returncode == 1 and "other bytes than the released sha256" in done.stdout
    assert not (copy / withheld.ORIGINALS).exists()


def test_with_clipblind_installed_but_no_torch_the_fetch_script_fills_the_mmvp_layouts(world, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(world["release"], copy)
    row = withheld.read_rows(copy)[0]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done, imported = run_blocked("run_path", str(copy / release.FETCH_SCRIPT),
                                 ["--root", f"{row['source']}={world['corpus']}"], env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not imported & set(HEAVY), imported
    assert all((copy / t).exists() for t in row["targets"].split(withheld.TARGET_SEPARATOR))
    assert release.verify(copy).ok


def test_verify_runs_without_torch_transformers_open_clip_or_faiss(world, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done, imported = run_blocked("run_module", "pipeline.commands.verify", [str(world["release"])], env=env)
    assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr
    assert not imported & set(HEAVY), imported
    damaged = tmp_path / "damaged"
    shutil.copytree(world["release"], damaged)
    (damaged / release.MANIFEST).write_text("{}\n")
    done, _ = run_blocked("run_module", "pipeline.commands.verify", [str(damaged)], env=env)
    assert done.returncode == 1 and f"changed: {release.MANIFEST}" in done.stdout


def test_the_release_cites_itself_as_its_citation_file_says(world):
    bibtex = citation.bibtex(citation.read_cff(world["citation"]))
    assert bibtex == "@misc{clipblind,\n  title = {clipblind test release},\n  note  = {A release of the test world}\n}"
    assert release.read_manifest(world["release"])["citation"] == bibtex
    assert bibtex in (world["release"] / release.CARD).read_text()
