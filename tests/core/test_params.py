"""params.yaml is the only source of param values: the dataclasses carry types, the file carries values."""

import dataclasses
import inspect
import types
import typing

import pytest
import yaml

from pipeline import params as params_module
from pipeline.core.config import ParamsError, load_section
from tests.conftest import REPO
from tests.helpers.params import KIND_KEYS, merged, repo_params, sections


def _params_dataclasses() -> list[type]:
    return [cls for _, cls in inspect.getmembers(params_module, inspect.isclass)
            if dataclasses.is_dataclass(cls) and cls.__module__ == params_module.__name__]


def _takes_none(hint: typing.Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def test_no_params_field_has_a_code_default_but_an_optional_none():
    found = _params_dataclasses()
    assert len(found) >= 15  # every section and sub-section of pipeline/params.py
    defaults = []
    for cls in found:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            optional_none = f.default is None and _takes_none(hints[f.name])
            if f.default_factory is not dataclasses.MISSING or (f.default is not dataclasses.MISSING and not optional_none):
                value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
                defaults.append(f"{cls.__name__}.{f.name} = {value!r}")
    assert not defaults, f"params with a code default (give the value in params.yaml instead): {defaults}"


def test_every_optional_key_is_documented_in_params_yaml():
    text = (REPO / "params.yaml").read_text()
    undocumented = [f"{cls.__name__}.{f.name}" for cls in _params_dataclasses() for f in dataclasses.fields(cls)
                    if f.default is None and f.name not in text]
    assert not undocumented, f"optional keys params.yaml does not mention: {undocumented}"


def test_the_repository_params_file_loads_fully():
    found = sections()
    assert set(found) == set(yaml.safe_load((REPO / "params.yaml").read_text()))
    for section, cls in found.items():
        assert isinstance(load_section(REPO / "params.yaml", section, cls), cls)


def _write(folder, params: dict, name: str = "params.yaml"):
    path = folder / name
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize("section, remove", [
    ("embed", ("engine", "prefetch_batches")),
    ("embed", ("engine", "loader_threads")),
    ("embed", ("engine", "actor_threads")),
    ("embed", ("threads",)),
    ("embed", ("clip", "image_size")),
    ("ingest", ("source", "max_bytes")),
    ("mine", ("select",)),
    ("search", ("partition", "balance")),
    ("calibrate", ("dino_grid",)),
    ("package", ("exclude",)),
    ("gate", ("blind_min_right",)),
])
def test_a_missing_key_is_an_error_naming_it(tmp_path, section, remove):
    params = repo_params()
    parent = params[section]
    for key in remove[:-1]:
        parent = parent[key]
    del parent[remove[-1]]
    with pytest.raises(ParamsError, match=rf"missing key '{section}.{'.'.join(remove)}' in params: it must be "):
        load_section(_write(tmp_path, params), section, sections()[section])


def test_every_missing_and_unknown_key_of_a_section_is_one_line(tmp_path):
    params = repo_params()
    for key in ("prefetch_batches", "loader_threads"):
        del params["embed"]["engine"][key]
    params["embed"]["engine"]["actor"] = 3
    with pytest.raises(ParamsError) as err:
        load_section(_write(tmp_path, params), "embed", sections()["embed"])
    lines = str(err.value).splitlines()
    assert len(lines) == 3
    assert any("missing key 'embed.engine.prefetch_batches'" in line for line in lines)
    assert any("missing key 'embed.engine.loader_threads'" in line for line in lines)
    assert any("unknown key 'embed.engine.actor' (3)" in line and "did you mean 'actors'?" in line for line in lines)


@pytest.mark.parametrize("kind, key", [(kind, key) for kind, keys in KIND_KEYS.items() for key in keys])
def test_a_key_the_source_kind_needs_is_an_error_when_missing(tmp_path, kind, key):
    params = repo_params()
    params["ingest"]["source"] = {**params["ingest"]["source"], "kind": kind,
                                  **{k: v for k, v in KIND_KEYS[kind].items() if k != key}}
    with pytest.raises(ParamsError, match=rf"missing key 'ingest.source.{key}' in params: kind '{kind}' needs it"):
        load_section(_write(tmp_path, params), "ingest", sections()["ingest"])


def test_keys_the_openai_backend_and_dinov2_need(tmp_path):
    vlm = {"backend": "openai", "model": "m", "max_new_tokens": 8}
    params = merged(repo_params(), {"gate": {"vlm": vlm}, "embed": {"dino": {"pooling": None}}})
    path = _write(tmp_path, params)
    with pytest.raises(ParamsError) as err:
        load_section(path, "gate", sections()["gate"])
    assert str(err.value).splitlines() == [f"missing key 'gate.vlm.{key}' in params: backend 'openai' needs it"
                                           for key in ("url", "api_key_env", "timeout")]
    with pytest.raises(ParamsError, match="missing key 'embed.dino.pooling' in params: kind 'dinov2' needs it"):
        load_section(path, "embed", sections()["embed"])
    transformers = merged(params, {"gate": {"vlm": {"backend": "transformers"}}})
    assert load_section(_write(tmp_path, transformers, "transformers.yaml"), "gate", sections()["gate"]).vlm.url is None


VALU = ("params 'mine.clip_threshold' must be a number in [-1, 1) or a mapping with keys ['value', 'quantile'], "
        "got {'valu': 0.9}; it is none of: a number in [-1, 1): must be a number, got {'valu': 0.9}; "
        "a mapping with keys ['value', 'quantile']: unknown key 'mine.clip_threshold.valu' (0.9) in params "
        "(did you mean 'value'?); "
        "allowed: ['quantile', 'value']")


def _valu() -> dict:
    params = repo_params()
    params["mine"]["clip_threshold"] = {"valu": 0.9}
    return params


def test_a_union_says_why_each_of_its_shapes_refused_the_value(tmp_path):
    params = _valu()
    with pytest.raises(ParamsError) as err:
        load_section(_write(tmp_path, params), "mine", sections()["mine"])
    assert str(err.value) == VALU


def test_the_stage_command_prints_the_union_refusals_and_exits_2(tmp_path, capsys):
    from pipeline import mine

    path = _write(tmp_path, _valu())
    out = [str(tmp_path / name) for name in "abcde"]
    with pytest.raises(SystemExit) as exit_:
        mine.main(["--params", str(path), "--images", out[0], "--candidates", out[1], "--groups", out[2],
                   "--pairs", out[3], "--metrics", out[4]])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"clipblind mine: bad params in {path}:\n{VALU}\n"
