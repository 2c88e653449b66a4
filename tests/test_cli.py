import ast
import subprocess
import sys
import types
from pathlib import Path

from pipeline import cli
from pipeline.commands import bench
from pipeline.core.errors import ClipblindError
from pipeline.sample_corpus import generate
from tests.conftest import REPO


def test_every_subcommand_has_help(capsys):
    for name in cli.COMMANDS:
        try:
            cli.main([name, "--help"])
        except SystemExit as exit_:
            assert exit_.code == 0
        assert "usage: clipblind" in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["nope"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_an_unknown_command_near_a_known_one_is_named_in_one_line(capsys):
    assert cli.main(["sample_corpus"]) == 2  # the dvc.yaml stage name, spelled with its underscore
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'sample-corpus'?" in err


def test_stage_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "pipeline.mine", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--pairs" in result.stdout


def test_sample_corpus_is_deterministic(tmp_path):
    generate(tmp_path / "a", scenes=2, seed=7)
    generate(tmp_path / "b", scenes=2, seed=7)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 2 * 9 + 4
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files_a)


def test_verify_subcommand_checks_a_release_folder(tmp_path, capsys):
    # `clipblind verify <release>` is the release checker; the verification push is `push-verification`
    assert cli.main(["verify", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "has no SHA256SUMS" in captured.out + captured.err


def _main_block_command(path: Path) -> str | None:
    """The command name a module's `if __name__ == "__main__":` block hands to errors.run_command, if it does."""
    tree = ast.parse(path.read_text())
    # the block imports run_command into the module's globals: a top-level name of its own would be replaced
    top_level = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    top_level |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    assert "run_command" not in top_level, f"{path} defines run_command, which its __main__ block replaces"
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'":
            for call in ast.walk(node):
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "run_command":
                    return call.args[1].value
    return None


def _module_path(module: str) -> Path:
    return REPO / (module.replace(".", "/") + ".py")


def test_every_command_module_runs_through_the_error_wrapper_under_its_subcommand_name():
    # `python -m <module>` (what dvc repro runs) reports errors as `clipblind <subcommand>: ...`
    expected = {_module_path(module): name for name, (module, _) in cli.COMMANDS.items()}
    expected |= {_module_path(f"pipeline.commands.benchmarks.{b}"): f"bench {b}" for b in bench.available()}
    assert {path: _main_block_command(path) for path in expected} == expected
    # and no other module runs a command without it: accounts.py runs inside Label Studio's virtualenv,
    # withheld.py as every release's standalone fetch_images.py
    runnable = {p for pkg in ("pipeline", "annotation") for p in (REPO / pkg).rglob("*.py")
                if "\nif __name__ == \"__main__\":" in p.read_text()}
    assert runnable - set(expected) == {_module_path(m) for m in ("pipeline.cli", "annotation.labelstudio.accounts",
                                                            "pipeline.release.withheld")}


def test_a_benchmark_s_error_names_the_benchmark(capsys, monkeypatch):
    def main(argv):
        raise ClipblindError("no GPU here: run it where one is")

    monkeypatch.setattr(bench, "available", lambda: ["fake"])
    monkeypatch.setitem(sys.modules, "pipeline.commands.benchmarks.fake", types.SimpleNamespace(main=main))
    assert cli.main(["bench", "fake"]) == 1
    assert capsys.readouterr().err == "clipblind bench fake: no GPU here: run it where one is\n"
    assert cli.main(["bench", "nope"]) == 2
    assert capsys.readouterr().err == "clipblind bench: unknown benchmark 'nope'; available: fake\n"
