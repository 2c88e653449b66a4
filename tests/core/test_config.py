import dataclasses
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import pytest
import yaml

from pipeline.core.config import AT_LEAST_ONE, COSINE_ABOVE, ParamsError, Range, RangeError, build, load_section
from tests.conftest import tiny_params
from tests.helpers.params import repo_params, sections


@dataclass(frozen=True)
class Inner:
    size: int
    mode: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer:
    threshold: float
    inner: Inner
    name: str | None = None
    extra: dict = field(default_factory=dict)


def test_builds_nested_frozen_dataclasses():
    params = build(Outer, {"threshold": 1, "inner": {"size": 3, "mode": "b"}}, "s")
    assert params == Outer(threshold=1.0, inner=Inner(size=3, mode="b"))
    assert isinstance(params.threshold, float)
    with pytest.raises(AttributeError):
        params.threshold = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"threshold": 1.0, "inner": {"size": 3}, "typo": 1}, "unknown key"),
        ({"inner": {"size": 3}}, "missing key 's.threshold'"),
        ({"threshold": 1.0, "inner": {}}, "missing key 's.inner.size'"),
        ({"threshold": "high", "inner": {"size": 3}}, "must be a number"),
        ({"threshold": 1.0, "inner": {"size": 3.5}}, "must be an integer"),
        ({"threshold": 1.0, "inner": {"size": 3, "mode": "c"}}, "must be one of"),
        ({"threshold": True, "inner": {"size": 3}}, "must be a number"),
    ],
)
def test_rejects_bad_params_naming_the_key(data, message):
    with pytest.raises(ParamsError, match=message):
        build(Outer, data, "s")


def test_load_section_reports_missing_section(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("other: {}\n")
    with pytest.raises(ParamsError, match="no 'mine' section"):
        load_section(path, "mine", Outer)


# ---------------------------------------------------------------- ranges


@dataclass(frozen=True)
class Ranged:
    threshold: Annotated[float, COSINE_ABOVE] | None = None
    size: Annotated[int, AT_LEAST_ONE] = 1
    grid: tuple[Annotated[float, Range(0.0, 1.0)], ...] = ()

    def __post_init__(self) -> None:
        if self.size > 10 and self.threshold is None:
            raise ValueError("a size above 10 needs a threshold")


@pytest.mark.parametrize("data, key, value, valid", [
    ({"threshold": 1.5}, "s.threshold", "1.5", "[-1, 1)"),
    ({"threshold": 1.0}, "s.threshold", "1.0", "[-1, 1)"),  # nothing exceeds a cosine of 1
    ({"threshold": -1.01}, "s.threshold", "-1.01", "[-1, 1)"),
    ({"threshold": float("nan")}, "s.threshold", "nan", "[-1, 1)"),
    ({"size": 0}, "s.size", "0", "≥ 1"),
    ({"grid": [0.5, 2]}, "s.grid[1]", "2.0", "[0, 1]"),
])
def test_out_of_range_values_name_key_value_and_range(data, key, value, valid):
    with pytest.raises(RangeError) as err:
        build(Ranged, data, "s")
    assert f"'{key}' is {value}" in str(err.value) and valid in str(err.value)


def test_in_range_values_and_ends_load():
    assert build(Ranged, {"threshold": -1, "size": 3, "grid": [0, 1]}, "s") == Ranged(-1.0, 3, (0.0, 1.0))
    assert build(Ranged, {"threshold": 0.999999}, "s").threshold == 0.999999


def test_every_problem_of_a_section_is_reported_at_once():
    with pytest.raises(ParamsError) as err:
        build(Ranged, {"threshold": 2, "size": 0, "typo": 1}, "s")
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and any("'s.threshold'" in x for x in lines) and any("'s.size'" in x for x in lines)
    assert any("typo" in x for x in lines)


def test_a_union_says_what_shapes_it_takes_and_checks_across_keys():
    with pytest.raises(ParamsError, match=r"'s.threshold' must be a number in \[-1, 1\) or null, got 'high'"):
        build(Ranged, {"threshold": "high"}, "s")
    with pytest.raises(ParamsError, match=r"params 's': a size above 10 needs a threshold"):
        build(Ranged, {"size": 11}, "s")


def _numeric_fields(cls: type, prefix: str) -> Iterator[tuple[type, str, str, Any]]:
    """(dataclass, field name, dotted key, type hint) for every int/float field reachable from `cls`."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        yield from _walk(cls, f.name, f"{prefix}.{f.name}", hints[f.name])


def _walk(owner: type, name: str, key: str, hint: Any) -> Iterator[tuple[type, str, str, Any]]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated or hint in (int, float):
        yield owner, name, key, hint
    elif origin in (typing.Union, __import__("types").UnionType):
        for arg in args:
            yield from _walk(owner, name, key, arg)
    elif origin in (tuple, list) and args:
        yield from _walk(owner, name, f"{key}[0]", args[0])
    elif dataclasses.is_dataclass(hint):
        yield from _numeric_fields(hint, key)


# Fields whose range is not one Range: a Threshold's value is a CLIP or a DINOv2 cosine, with
# different open ends; MineParams checks it (see test_threshold_keys_at_load).
CHECKED_BY_THEIR_OWNER = {("Threshold", "value")}


def _ranged_fields() -> list[tuple[type, str, str, Range]]:
    found = []
    for section, cls in sections().items():
        for owner, name, key, hint in _numeric_fields(cls, section):
            ranges = [a for a in typing.get_args(hint)[1:] if isinstance(a, Range)]
            if ranges:
                found.append((owner, name, key, ranges[0]))
    return found


def test_every_numeric_param_declares_its_range():
    unranged = sorted({f"{key} ({owner.__name__}.{name})" for section, cls in sections().items()
                       for owner, name, key, hint in _numeric_fields(cls, section)
                       if typing.get_origin(hint) is not Annotated and (owner.__name__, name) not in CHECKED_BY_THEIR_OWNER})
    assert not unranged, f"numeric params without a Range: {unranged}"


# A whole, valid mapping for each params dataclass (from the repository's params.yaml), so each can be
# built around one bad value. No VLM is configured there: VlmParams gets one here.
VLM = {"backend": "openai", "model": "m", "max_new_tokens": 16, "url": "http://127.0.0.1:1/v1", "api_key_env": "KEY",
       "timeout": 1.0}


def _valid(owner: type) -> dict:
    """The first mapping in the repository's params.yaml that `owner` is built from ({} for none)."""
    if owner.__name__ == "VlmParams":
        return dict(VLM)
    found: list[dict] = []

    def visit(cls: type, data: Any) -> None:
        if not isinstance(data, dict) or found:
            return
        if cls is owner:
            found.append(data)
            return
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            for arg in _leaf_types(hints[f.name]):
                if dataclasses.is_dataclass(arg):
                    value = data.get(f.name)
                    for item in value if isinstance(value, list) else [value]:
                        visit(arg, item)

    params = repo_params()
    for section, cls in sections().items():
        visit(cls, params[section])
    return found[0] if found else {}


def _outside(valid: Range, integer: bool) -> list[float]:
    step = 1 if integer else 0.5
    values = []
    if valid.low is not None:
        values.append(valid.low if valid.low_open else valid.low - step)
    if valid.high is not None:
        values.append(valid.high if valid.high_open else valid.high + step)
    return values


@pytest.mark.parametrize("owner, name, key, valid", _ranged_fields(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_ranged_param_refuses_a_value_outside_its_range(owner, name, key, valid):
    listed = key.endswith("[0]")  # a list of values: the bad value is its first item
    where = f"{owner.__name__}"
    integer = int in _leaf_types(typing.get_type_hints(owner, include_extras=True)[name])
    for bad in _outside(valid, integer):
        value = int(bad) if integer else float(bad)
        with pytest.raises(RangeError) as err:
            build(owner, {**_valid(owner), name: [value] if listed else value}, where)
        shown = f"'{where}.{name}{'[0]' if listed else ''}' is {value!r}"
        assert shown in str(err.value) and str(valid) in str(err.value)


def _leaf_types(hint: Any) -> set[Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return _leaf_types(args[0])
    if args:
        return set().union(*(_leaf_types(a) for a in args))
    return {hint}


# Every threshold key, bad values and the range the message must state.
THRESHOLD_CASES = [
    ("mine", {"clip_threshold": 1.5}, "mine.clip_threshold", "1.5", "[-1, 1)"),
    ("mine", {"clip_threshold": 1.0}, "mine.clip_threshold", "1.0", "[-1, 1)"),
    ("mine", {"clip_threshold": {"value": 1.5}}, "mine.clip_threshold.value", "1.5", "[-1, 1)"),
    ("mine", {"clip_threshold": {"quantile": 1.0}}, "mine.clip_threshold.quantile", "1.0", "(0, 1)"),
    ("mine", {"dino_threshold": 1.5}, "mine.dino_threshold", "1.5", "(-1, 1]"),
    ("mine", {"dino_threshold": -1.0}, "mine.dino_threshold", "-1.0", "(-1, 1]"),
    ("mine", {"dino_threshold": {"value": -2}}, "mine.dino_threshold.value", "-2.0", "(-1, 1]"),
    ("mine", {"dino_threshold": {"quantile": 0}}, "mine.dino_threshold.quantile", "0.0", "(0, 1)"),
    ("search", {"recall_clip_threshold": 1.5}, "search.recall_clip_threshold", "1.5", "[-1, 1)"),
    ("search", {"recall_clip_threshold": 1.0}, "search.recall_clip_threshold", "1.0", "[-1, 1)"),
    ("search", {"near_duplicate": {"clip": 1.5, "dino": 0.98}}, "search.near_duplicate.clip", "1.5", "[-1, 1]"),
    ("search", {"near_duplicate": {"clip": 0.995, "dino": -1.5}}, "search.near_duplicate.dino", "-1.5", "[-1, 1]"),
    ("calibrate", {"clip_grid": [0.9, 1.5]}, "calibrate.clip_grid[1]", "1.5", "[-1, 1]"),
    ("calibrate", {"dino_grid": [-3]}, "calibrate.dino_grid[0]", "-3.0", "[-1, 1]"),
    ("gate", {"blind_min_right": 7}, "gate.blind_min_right", "7", "[1, 6]"),
    ("gate", {"blind_min_right": 0}, "gate.blind_min_right", "0", "[1, 6]"),
]


def _params_with(tmp_path, section: str, change: dict) -> Any:
    params = tiny_params()
    params[section] = {**params[section], **change}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize("section, change, key, value, valid", THRESHOLD_CASES)
def test_threshold_keys_at_load(tmp_path, section, change, key, value, valid):
    path = _params_with(tmp_path, section, change)
    with pytest.raises(ParamsError) as err:
        load_section(path, section, sections()[section])
    assert f"'{key}' is {value}" in str(err.value) and valid in str(err.value)


def _command(section: str, tmp_path) -> tuple[Any, list[str]]:
    """The main of the stage that loads `section`, and arguments that get it as far as loading params."""
    from pipeline import calibrate, gate, mine, search

    out = [str(tmp_path / name) for name in ("a", "b", "c", "d", "e")]
    return {
        "mine": (mine.main, ["--images", out[0], "--candidates", out[1], "--groups", out[2], "--pairs", out[3],
                             "--metrics", out[4]]),
        "search": (search.main, ["--images", out[0], "--clip", out[1], "--dino", out[2], "--candidates", out[3],
                                 "--groups", out[4], "--metrics", out[4]]),
        "calibrate": (calibrate.main, ["--images", out[0], "--candidates", out[1], "--report", out[2], "--plots", out[3]]),
        "gate": (gate.main, ["--accepted", out[0], "--images", out[1], "--source", out[2], "--out", out[3],
                             "--metrics", out[4]]),
    }[section]


@pytest.mark.parametrize("section, change, key, value, valid", THRESHOLD_CASES)
def test_threshold_keys_through_the_stage_command(tmp_path, capsys, section, change, key, value, valid):
    path = _params_with(tmp_path, section, change)
    main, argv = _command(section, tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["--params", str(path), *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"clipblind {section}: bad params in {path}:")
    assert f"'{key}' is {value}" in err and valid in err and "Traceback" not in err
    assert not any((tmp_path / name).exists() for name in "abcde")  # nothing written


def test_calibrate_refuses_bad_mine_thresholds_too(tmp_path, capsys):
    path = _params_with(tmp_path, "mine", {"clip_threshold": 1.5})
    main, argv = _command("calibrate", tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["--params", str(path), *argv])
    assert exit_.value.code == 2 and "'mine.clip_threshold' is 1.5" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["labelstudio", "push", "pull", "push-verification"])
def test_annotation_commands_report_bad_server_params(tmp_path, capsys, command):
    from pipeline import cli

    params = tiny_params()
    params["labelstudio"] = {"port": 70000}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    argv = [command, "--params", str(path), *(["status"] if command == "labelstudio" else [])]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"clipblind {command}: bad params in {path}:")
    assert "'labelstudio.port' is 70000, but it must be in [1, 65535]" in err


def test_a_missing_union_key_says_what_it_must_be_in_words(tmp_path):
    """A typo'd `mine.clip_threshold` leaves that key missing: the line says the shapes it takes, not Python's type."""
    from pipeline.params import MineParams

    params = repo_params()
    params["mine"]["clip_treshold"] = params["mine"].pop("clip_threshold")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError) as err:
        load_section(path, "mine", MineParams)
    missing = next(line for line in str(err.value).splitlines() if "missing key 'mine.clip_threshold'" in line)
    assert "a number in [-1, 1) or a mapping with keys ['value', 'quantile']" in missing
    assert "typing." not in str(err.value) and "Annotated" not in str(err.value)


def test_a_params_file_that_is_not_yaml_names_its_line_and_no_traceback(tmp_path, capsys):
    from pipeline import evaluate

    path = tmp_path / "params.yaml"
    path.write_text('evaluate:\n  clip: []\n  vlm: [] url: "http://x", model: m}]\n  diagnostics: false\n')
    with pytest.raises(ParamsError, match=r"is not valid YAML at line 3, column \d+"):
        load_section(path, "evaluate", dict)
    with pytest.raises(SystemExit) as stop:
        evaluate.main([str(tmp_path), "--params", str(path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("clipblind evaluate: bad params in") and "line 3" in err and "Traceback" not in err
