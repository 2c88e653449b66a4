"""The error convention: a user mistake reads `clipblind <command>: <message>` on stderr, exit 1, no
traceback (CLIPBLIND_DEBUG=1 shows it); a bug keeps its traceback; every project exception is a
ClipblindError."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core import errors
from pipeline.core.errors import ClipblindError, run_command
from tests.conftest import REPO, tiny_params


class _Mistake(ClipblindError, ValueError):
    pass


def _raising(err: BaseException):
    def main(argv=None):
        raise err

    return main


def test_a_clipblind_error_is_one_line_and_exit_1(capsys, monkeypatch):
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
    assert run_command(_raising(_Mistake("threshold 2 is above 1: change mine.clip in params.yaml")), "mine", []) == 1
    captured = capsys.readouterr()
    assert captured.err == "clipblind mine: threshold 2 is above 1: change mine.clip in params.yaml\n"
    assert captured.out == ""


def test_a_missing_input_names_its_path(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
    missing = tmp_path / "nope.parquet"

    def main(argv=None):
        return len(missing.read_text())

    assert run_command(main, "search", None) == 1
    assert capsys.readouterr().err == f"clipblind search: no such file or directory: {missing}\n"


@pytest.mark.parametrize("value", ["1", "yes"])
def test_debug_shows_the_traceback_too(capsys, monkeypatch, value):
    monkeypatch.setenv(errors.DEBUG_ENV, value)
    assert run_command(_raising(_Mistake("bad")), "ingest", []) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "_Mistake: bad" in err
    assert err.splitlines()[-1] == "clipblind ingest: bad"


@pytest.mark.parametrize("value", ["", "0"])
def test_debug_off_values(capsys, monkeypatch, value):
    monkeypatch.setenv(errors.DEBUG_ENV, value)
    assert run_command(_raising(_Mistake("bad")), "ingest", []) == 1
    assert capsys.readouterr().err == "clipblind ingest: bad\n"


def test_a_bug_keeps_its_traceback():
    with pytest.raises(KeyError):
        run_command(_raising(KeyError("image_id")), "mine", [])


def test_exit_codes_and_usage_errors_pass_through():
    assert run_command(lambda argv: 3, "verify", []) == 3
    assert run_command(lambda argv: None, "verify", []) == 0
    with pytest.raises(SystemExit) as exit_:
        run_command(_raising(SystemExit(2)), "verify", [])
    assert exit_.value.code == 2


def test_the_argv_reaches_main():
    seen = []
    assert run_command(lambda argv: seen.append(argv), "tag", ["a", "b"]) == 0
    assert seen == [["a", "b"]]


# --- the commands, run as `dvc repro` and people run them --------------------------------------


def _params_file(tmp_path: Path, **sections: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params(**sections)))
    return path


def _command(argv: list[str], cwd: Path, debug: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != errors.DEBUG_ENV}
    if debug:
        env[errors.DEBUG_ENV] = "1"
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)


def _ingest(tmp_path: Path, params: Path, *extra: str) -> list[str]:
    out = tmp_path / "out"
    return [sys.executable, "-m", "pipeline.ingest", "--params", str(params), "--images", str(out / "images.parquet"),
            "--rejects", str(out / "rejects.parquet"), "--metrics", str(out / "ingest.json"), *extra]


def _one_error_line(result: subprocess.CompletedProcess, command: str, code: int = 1) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"clipblind {command}: "), result.stderr
    return lines[0]


def test_a_stage_with_a_missing_corpus_folder_says_so_in_one_line(tmp_path):
    missing = tmp_path / "no-such-corpus"
    line = _one_error_line(_command(_ingest(tmp_path, _params_file(tmp_path), "--source", str(missing)), tmp_path),
                           "ingest")
    assert str(missing) in line
    assert not (tmp_path / "out").exists()


def test_a_stage_with_a_missing_input_file_names_it(tmp_path):
    blocklist = tmp_path / "blocklist.txt"
    argv = _ingest(tmp_path, _params_file(tmp_path), "--source", str(tmp_path), "--blocklist", str(blocklist))
    assert _one_error_line(_command(argv, tmp_path), "ingest") == \
        f"clipblind ingest: no such file or directory: {blocklist}"


def test_debug_shows_a_stage_s_traceback(tmp_path):
    missing = tmp_path / "no-such-corpus"
    result = _command(_ingest(tmp_path, _params_file(tmp_path), "--source", str(missing)), tmp_path, debug=True)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "SourceUnavailable" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("clipblind ingest: ")


def test_bad_params_exit_2_with_the_command_named(tmp_path):
    params = _params_file(tmp_path, ingest={"max_pixels": 0})
    result = _command(_ingest(tmp_path, params, "--source", str(tmp_path)), tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    first, *problems = result.stderr.splitlines()
    assert first == f"clipblind ingest: bad params in {params}:"
    assert any("'ingest.max_pixels' is 0" in problem for problem in problems)


@pytest.mark.parametrize("argv", [[str(REPO / ".venv/bin/clipblind"), "verify"],
                                  [sys.executable, "-m", "pipeline.commands.verify"]],
                         ids=["clipblind", "module"])
def test_verify_on_a_folder_that_is_not_a_release(tmp_path, argv):
    if not Path(argv[0]).exists():
        argv = [sys.executable, "-m", "pipeline.cli", *argv[1:]]
    line = _one_error_line(_command([*argv, str(tmp_path)], tmp_path), "verify")
    assert "has no SHA256SUMS" in line
    shown = _command([*argv, str(tmp_path)], tmp_path, debug=True)
    assert shown.returncode == 1 and "Traceback (most recent call last)" in shown.stderr and "ReleaseError" in shown.stderr


# --- every exception the project defines ------------------------------------------------------

# Run only inside Label Studio's own virtualenv (Django on import); they define no class with a base class, so
# no exception.
NOT_IMPORTABLE_HERE = {"annotation.labelstudio.accounts", "annotation.labelstudio.lockdown.clipblind_lockdown",
                       "annotation.labelstudio.lockdown.clipblind_settings"}
# Never reported by a clipblind command. decode.py's bytes are part of every embedding's
# fingerprint, and a DecodeError never leaves a stage: it becomes a reject row with its reason
# code. withheld.py runs on its own with only the standard library (every release ships it as
# fetch_images.py), which prints its FetchError itself.
NOT_A_COMMAND_ERROR = {"pipeline.images.decode.DecodeError", "pipeline.release.withheld.FetchError"}


def project_modules() -> list[str]:
    """Every module under pipeline/ and annotation/, by dotted name."""
    names = []
    for package in ("pipeline", "annotation"):
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def exception_classes(module_names: list[str]) -> dict[str, type]:
    """Every exception class defined (not imported) in those modules, by qualified name."""
    found = {}
    for name in module_names:
        if name in NOT_IMPORTABLE_HERE:
            source = (REPO / (name.replace(".", "/") + ".py")).read_text()
            assert not any(isinstance(n, ast.ClassDef) and n.bases for n in ast.walk(ast.parse(source))), name
            continue
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == name:
                found[f"{name}.{obj.__qualname__}"] = obj
    return found


def test_every_project_exception_is_a_clipblind_error():
    classes = exception_classes(project_modules())
    assert len(classes) >= 21 and set(NOT_A_COMMAND_ERROR) <= set(classes)
    strays = sorted(name for name, cls in classes.items()
                    if not issubclass(cls, ClipblindError) and name not in NOT_A_COMMAND_ERROR)
    assert not strays, f"derive these from pipeline.core.errors.ClipblindError (beside their builtin base): {strays}"


def test_the_walk_finds_an_exception_that_is_not_one(tmp_path, monkeypatch):
    package = tmp_path / "strayproject"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("class Stray(ValueError):\n    pass\n\n\nclass Fine(Exception):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    classes = exception_classes(["strayproject.mod"])
    assert set(classes) == {"strayproject.mod.Stray", "strayproject.mod.Fine"}
    assert not any(issubclass(cls, ClipblindError) for cls in classes.values())


@pytest.mark.parametrize("module, extra", [("torch", "pipeline"), ("open_clip.model", "pipeline"), ("httpx", "annotation")])
def test_a_missing_extra_says_which_to_install(capsys, module, extra):
    def main(argv):
        raise ModuleNotFoundError(f"No module named '{module}'", name=module)

    assert run_command(main, "evaluate", []) == 1
    err = capsys.readouterr().err
    assert err == f"clipblind evaluate: needs the '{extra}' extra ({module.split('.')[0]} is not installed): pip install 'clipblind[{extra}]'\n"


def test_a_missing_module_that_is_no_extra_is_a_bug_with_its_traceback():
    def main(argv):
        raise ModuleNotFoundError("No module named 'pipeline.nothing'", name="pipeline.nothing")

    with pytest.raises(ModuleNotFoundError):
        run_command(main, "evaluate", [])


def test_the_extras_table_matches_pyproject():
    """Every optional dependency pyproject.toml declares in an extra (but not the test tools) is in
    EXTRA_OF_MODULE under its import name, with that extra, and nothing else is."""
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    import_name = {"open_clip_torch": "open_clip", "faiss_cpu": "faiss", "label_studio_sdk": "label_studio_sdk"}
    declared = {}
    for extra, requirements in extras.items():
        if extra == "test":
            continue
        for requirement in requirements:
            dist = requirement.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip()
            dist = dist.replace("-", "_")
            declared[import_name.get(dist, dist)] = extra
    assert errors.EXTRA_OF_MODULE == declared


@pytest.mark.parametrize("argv", [["--help"], ["status", "--dvc-yaml", "dvc.yaml"]])
def test_a_closed_stdout_ends_quietly(argv):
    """`clipblind ... | head -1`: stdout is a pipe whose reader has gone before anything is written."""
    script = ("import os, sys\nread, write = os.pipe()\nos.close(read)\nos.dup2(write, 1)\n"
              f"from pipeline import cli\nsys.exit(cli.main({argv!r}))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1 and result.stderr == ""


def test_a_command_whose_extra_is_not_installed_says_so_through_the_cli():
    """The real command table and import graph: `clipblind pull` without the annotation extra."""
    script = ("import sys\nfor name in ('httpx', 'label_studio_sdk'):\n    sys.modules[name] = None  # not installed\n"
              "from pipeline import cli\nsys.exit(cli.main(['pull', '--help']))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("clipblind pull: needs the 'annotation' extra (")
    assert result.stderr.endswith("is not installed): pip install 'clipblind[annotation]'\n")
