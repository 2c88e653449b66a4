"""Params for tests, taken from the repository's params.yaml (the only place param values live).

`demo_params("ingest.source", kind="manifest", path_column="path", part_size=2)` builds the dataclass of
a section (or of a sub-section, named by a dotted path) from params.yaml and replaces the given fields;
`merged(base, change)` overlays a params mapping for tests that write a params file.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.config import build

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def sections() -> dict[str, type]:
    """Every params.yaml section and the dataclass its stage or command loads it into."""
    from pipeline.params import (
        AcceptParams,
        CalibrateParams,
        DiagnoseParams,
        DraftParams,
        EmbedParams,
        EvaluateParams,
        ExportParams,
        GalleryParams,
        GateParams,
        IngestParams,
        LabelStudioParams,
        MineParams,
        PackageParams,
        SearchParams,
        ValidateParams,
    )

    return {"ingest": IngestParams, "embed": EmbedParams, "search": SearchParams, "mine": MineParams,
            "calibrate": CalibrateParams, "export": ExportParams, "gallery": GalleryParams, "labelstudio": LabelStudioParams,
            "validate": ValidateParams, "accept": AcceptParams, "package": PackageParams, "gate": GateParams,
            "evaluate": EvaluateParams, "draft": DraftParams, "diagnose": DiagnoseParams}


def repo_params() -> dict[str, Any]:
    """The repository's params.yaml as a fresh mapping (callers may change it)."""
    return yaml.safe_load(REPO_PARAMS.read_text())


def section(path: str) -> Any:
    """The raw value at dotted `path` of the repository's params.yaml ("mine", "embed.clip")."""
    value: Any = repo_params()
    for key in path.split("."):
        value = value[key]
    return value


def demo_params(path: str, **overrides: Any) -> Any:
    """The params dataclass at dotted `path`, built from the repository's params.yaml, with `overrides` replaced."""
    top, *rest = path.split(".")
    cls = sections()[top]
    for key in rest:
        cls = _dataclass_of(typing.get_type_hints(cls)[key], f"{cls.__name__}.{key}")
    built = build(cls, section(path), where=path)
    return dataclasses.replace(built, **overrides) if overrides else built


def merged(base: Any, change: Any) -> Any:
    """`change` laid over `base`: mappings merge key by key (recursively); anything else replaces."""
    if isinstance(base, dict) and isinstance(change, dict):
        out = copy.deepcopy(base)
        for key, value in change.items():
            out[key] = merged(out[key], value) if key in out else copy.deepcopy(value)
        return out
    return copy.deepcopy(change)


def _dataclass_of(hint: Any, where: str) -> type:
    """The dataclass a field's type names, also inside a union (`SourceParams | tuple[...]`)."""
    candidates = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for candidate in candidates:
        if dataclasses.is_dataclass(candidate):
            return typing.cast(type, candidate)
    raise KeyError(f"{where} is not a params sub-section")


# The keys a source of each kind needs beyond params.yaml's (folder) source, with the values tests use.
KIND_KEYS: dict[str, dict[str, Any]] = {
    "manifest": {"path_column": "path", "part_size": 10_000},
    "hf": {"image_column": "image", "split": "train", "part_size": 10_000},
    "webdataset": {"license_field": "license"},
}


def source_params(kind: str, **overrides: Any) -> Any:
    """A corpus source of `kind` named "corpus" with no default licence; params.yaml's max_bytes; `overrides` replaced."""
    fields = {"name": "corpus", "license": None, **KIND_KEYS.get(kind, {}), **overrides}
    return demo_params("ingest.source", kind=kind, **fields)
