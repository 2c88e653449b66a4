"""The error convention: a user mistake reads `clipblind <command>: <message>` on stderr, exit 1, no
traceback (CLIPBLIND_DEBUG=1 shows it); a bug keeps its traceback; every project exception is a
ClipblindError."""

from __future__ import annotations

import pytest

from pipeline.core import errors
from pipeline.core.errors import ClipblindError, run


class _Mistake(ClipblindError, ValueError):
    pass


def _raising(err: BaseException):
    def main(argv=None):
        raise err

    return main


def test_a_clipblind_error_is_one_line_and_exit_1(capsys, monkeypatch):
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
    assert run(_raising(_Mistake("threshold 2 is above 1: change mine.clip in params.yaml")), "mine", []) == 1
    captured = capsys.readouterr()
    assert captured.err == "clipblind mine: threshold 2 is above 1: change mine.clip in params.yaml\n"
    assert captured.out == ""


def test_a_missing_input_names_its_path(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
    missing = tmp_path / "nope.parquet"

    def main(argv=None):
        return len(missing.read_text())

    assert run(main, "search", None) == 1
    assert capsys.readouterr().err == f"clipblind search: no such file or directory: {missing}\n"


@pytest.mark.parametrize("value", ["1", "yes"])
def test_debug_shows_the_traceback_too(capsys, monkeypatch, value):
    monkeypatch.setenv(errors.DEBUG_ENV, value)
    assert run(_raising(_Mistake("bad")), "ingest", []) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "_Mistake: bad" in err
    assert err.splitlines()[-1] == "clipblind ingest: bad"


@pytest.mark.parametrize("value", ["", "0"])
def test_debug_off_values(capsys, monkeypatch, value):
    monkeypatch.setenv(errors.DEBUG_ENV, value)
    assert run(_raising(_Mistake("bad")), "ingest", []) == 1
    assert capsys.readouterr().err == "clipblind ingest: bad\n"


def test_a_bug_keeps_its_traceback():
    with pytest.raises(KeyError):
        run(_raising(KeyError("image_id")), "mine", [])


def test_exit_codes_and_usage_errors_pass_through():
    assert run(lambda argv: 3, "verify", []) == 3
    assert run(lambda argv: None, "verify", []) == 0
    with pytest.raises(SystemExit) as exit_:
        run(_raising(SystemExit(2)), "verify", [])
    assert exit_.value.code == 2


def test_the_argv_reaches_main():
    seen = []
    assert run(lambda argv: seen.append(argv), "tag", ["a", "b"]) == 0
    assert seen == [["a", "b"]]
