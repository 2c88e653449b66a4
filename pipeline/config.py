"""params.yaml → frozen dataclasses, strictly: an unknown or missing key is an error.

Each stage declares its params as a frozen dataclass (nested dataclasses for sub-sections)
and loads its own section with `load_section(path, "mine", MineParams)`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")


class ParamsError(ValueError):
    """params.yaml does not match what a stage expects."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a params file into a dict (a missing or non-mapping file is an error)."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"params file not found: {path}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_section(path: str | Path, section: str, cls: type[T]) -> T:
    """Build `cls` from the `section` of the params file at `path`."""
    data = load_yaml(path)
    if section not in data:
        raise ParamsError(f"{path} has no '{section}' section; sections found: {sorted(data)}")
    return build(cls, data[section], where=section)


def build(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, checking keys and value types."""
    if not isinstance(data, Mapping):
        raise ParamsError(f"params '{where}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ParamsError(f"unknown key(s) {unknown} in params '{where}'; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, field in fields.items():
        key = f"{where}.{name}"
        if name not in data:
            has_default = field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
            if has_default:
                continue
            raise ParamsError(f"missing key '{key}' in params")
        values[name] = _coerce(hints[name], data[name], key)
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ParamsError as err:
                errors.append(str(err))
        raise ParamsError(f"params '{where}': {value!r} matches none of {args}")
    if origin is typing.Literal:
        if value not in args:
            raise ParamsError(f"params '{where}' must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"params '{where}' must be a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ParamsError(f"params '{where}' must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)  # type: ignore[arg-type]
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"params '{where}' must be a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"params '{where}' must be an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"params '{where}' must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ParamsError(f"params '{where}' must be a string, got {value!r}")
        return value
    raise ParamsError(f"params '{where}': unsupported type {hint!r}")
