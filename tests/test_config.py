from dataclasses import dataclass, field
from typing import Literal

import pytest

from pipeline.config import ParamsError, build, load_section


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


def test_repo_params_file_loads_for_every_stage():
    from pipeline.embed import EmbedParams
    from pipeline.export import ExportParams
    from pipeline.ingest import IngestParams
    from pipeline.mine import MineParams
    from tests.conftest import REPO

    for section, cls in [("ingest", IngestParams), ("embed", EmbedParams), ("mine", MineParams), ("export", ExportParams)]:
        assert load_section(REPO / "params.yaml", section, cls)
