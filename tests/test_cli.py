import subprocess
import sys

from pipeline import cli
from pipeline.sample_corpus import generate


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
