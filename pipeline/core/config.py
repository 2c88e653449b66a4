"""params.yaml → frozen dataclasses, strictly: an unknown or missing key, a value of the wrong
type or outside its range is an error naming the key, the value and what it must be.

Each stage declares its params as a frozen dataclass (nested dataclasses for sub-sections)
and loads its own section with `load_section(path, "mine", MineParams)`; a command line loads
it with `command_params(parser, ...)`, which turns every problem into one message and exit code 2.

A numeric param declares its valid values with `typing.Annotated[float, Range(...)]`; the
aliases below (`Cosine`, `Quantile`, `Count`, ...) name the ranges that recur. Every problem of
a section is reported at once, one line per key.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml

from pipeline.core.errors import USAGE_EXIT, ClipblindError, command_of, error_line

T = TypeVar("T")


class ParamsError(ClipblindError, ValueError):
    """params.yaml does not match what a stage expects."""


class RangeError(ParamsError):
    """A numeric param lies outside its valid range."""


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric param: `low`..`high` (None: unbounded), each end open or closed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    meaning: str = ""  # what the param is, said in the error message

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def phrase(self) -> str:
        """The range as words follow "must be": "in [-1, 1)", "≥ 0"."""
        bounded = self.low is not None and self.high is not None
        return f"in {self}" if bounded else str(self)

    def __str__(self) -> str:
        if self.high is None:
            return "any number" if self.low is None else f"{'>' if self.low_open else '≥'} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '≤'} {self.high:g}"
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def check_range(valid: Range, value: float, key: str) -> None:
    """Raise RangeError naming `key`, `value` and the valid range unless `value` lies in `valid`."""
    if value not in valid:
        what = f" ({valid.meaning})" if valid.meaning else ""
        raise RangeError(f"params '{key}' is {value!r}, but it must be {valid.phrase()}{what}: change it in the params file")


class KeysNeeded(ParamsError):
    """Optional keys that the value of a dataclass's kind key needs, left out (`require_by_kind`)."""

    def __init__(self, selector: str, value: Any, names: list[str]) -> None:
        self.selector, self.value, self.names = selector, value, names
        super().__init__("; ".join(self.lines("")))

    def lines(self, where: str) -> list[str]:
        """One line per missing key, each named under `where`."""
        prefix = f"{where}." if where else ""
        return [f"missing key '{prefix}{name}' in params: {self.selector} {self.value!r} needs it" for name in self.names]


def require_by_kind(obj: Any, selector: str, needs: Mapping[str, tuple[str, ...]]) -> None:
    """Raise KeysNeeded unless every field that `needs` lists for `obj`'s `selector` value is set (not None)."""
    value = getattr(obj, selector)
    missing = [name for name in needs.get(value, ()) if getattr(obj, name) is None]
    if missing:
        raise KeysNeeded(selector, value, missing)


def check_fields(obj: Any, where: str) -> None:
    """Check each Range-annotated field of the dataclass `obj`: for params built in Python rather than loaded."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):
        hint = hints[f.name]
        if typing.get_origin(hint) is Annotated:
            for valid in typing.get_args(hint)[1:]:
                if isinstance(valid, Range):
                    check_range(valid, getattr(obj, f.name), f"{where}.{f.name}")


# The ranges that recur. A cosine threshold that pairs must exceed excludes 1 (nothing exceeds
# it: the stage would find no pair at all); one that pairs must stay below excludes -1.
COSINE = Range(-1.0, 1.0, meaning="a cosine similarity")
COSINE_ABOVE = Range(-1.0, 1.0, high_open=True, meaning="a cosine that pairs must exceed; none exceeds 1")
COSINE_BELOW = Range(-1.0, 1.0, low_open=True, meaning="a cosine that pairs must stay below; none is below -1")
QUANTILE = Range(0.0, 1.0, low_open=True, high_open=True, meaning="a quantile of the similarity over all pairs")
COUNT = Range(0, meaning="a count")
AT_LEAST_ONE = Range(1, meaning="a size or count of at least 1")
POSITIVE = Range(0.0, low_open=True, meaning="a positive amount")
SEED = Range(0, meaning="a random seed (numpy takes none below 0)")
PORT = Range(1, 65535, meaning="a TCP port")
JPEG_QUALITY = Range(1, 100, meaning="a JPEG quality")

Cosine = Annotated[float, COSINE]
CosineAbove = Annotated[float, COSINE_ABOVE]
CosineBelow = Annotated[float, COSINE_BELOW]
Quantile = Annotated[float, QUANTILE]
Count = Annotated[int, COUNT]
AtLeastOne = Annotated[int, AT_LEAST_ONE]
Positive = Annotated[float, POSITIVE]
Seed = Annotated[int, SEED]
Port = Annotated[int, PORT]
JpegQuality = Annotated[int, JPEG_QUALITY]


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a params file into a dict (a missing or non-mapping file is an error)."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"params file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ParamsError(f"{path} is not valid YAML{where}: {problem}; fix that line (a flow list or mapping must "
                          "close its brackets on the same value)") from err
    if not isinstance(data, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_section(path: str | Path, section: str, cls: type[T]) -> T:
    """Build `cls` from the `section` of the params file at `path`."""
    data = load_yaml(path)
    if section not in data:
        raise ParamsError(f"{path} has no '{section}' section; sections found: {sorted(data)}")
    return build(cls, data[section], where=section)


def command_params(parser: argparse.ArgumentParser, path: str | Path, section: str, cls: type[T]) -> T:
    """`load_section` for a command line: a params problem exits with code 2 and
    "clipblind <command>: bad params in <path>:" then one line per problem."""
    try:
        return load_section(path, section, cls)
    except ParamsError as err:
        parser.exit(USAGE_EXIT, error_line(command_of(parser.prog), f"bad params in {path}:\n{err}") + "\n")


def build(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, checking keys, value types and ranges (every problem at once)."""
    if not isinstance(data, Mapping):
        raise ParamsError(f"params '{where}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls, include_extras=True)
    problems: list[ParamsError] = []
    for name in sorted(set(data) - set(fields), key=str):
        close = difflib.get_close_matches(str(name), list(fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        problems.append(ParamsError(f"unknown key '{where}.{name}' ({data[name]!r}) in params{hint}; allowed: {sorted(fields)}"))
    values: dict[str, Any] = {}
    for name, field in fields.items():
        key = f"{where}.{name}"
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                problems.append(ParamsError(f"missing key '{key}' in params: it must be {_shape(hints[name])}"))
            continue
        try:
            values[name] = _coerce(hints[name], data[name], key)
        except ParamsError as err:
            problems.append(err)
    if problems:
        kind = RangeError if all(isinstance(p, RangeError) for p in problems) else ParamsError
        raise kind("\n".join(map(str, problems)))
    try:
        return cls(**values)
    except KeysNeeded as err:
        raise ParamsError("\n".join(err.lines(where))) from None
    except ParamsError:
        raise
    except ValueError as err:  # a check across keys in the dataclass itself
        raise ParamsError(f"params '{where}': {err}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        coerced = _coerce(args[0], value, where)
        for valid in args[1:]:
            if isinstance(valid, Range):
                check_range(valid, coerced, where)
        return coerced
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        shapes_given = [arg for arg in args if arg is not type(None)]
        if len(shapes_given) == 1 and dataclasses.is_dataclass(shapes_given[0]) and isinstance(value, Mapping):
            return _coerce(shapes_given[0], value, where)  # a sub-section or null: its own errors, one line per key
        refusals = []
        for arg in shapes_given:
            try:
                return _coerce(arg, value, where)
            except RangeError:
                raise  # the value has this arm's type: its range is the problem
            except ParamsError as err:
                refusals.append(f"{_shape(arg)}: {_reason(err, where)}")
        shapes = " or ".join(_shape(arg) for arg in args)
        raise ParamsError(f"params '{where}' must be {shapes}, got {value!r}; it is none of: {'; '.join(refusals)}")
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


def _reason(err: ParamsError, where: str) -> str:
    """Why one shape of a union refused a value: `err`'s lines on one line."""
    return "; ".join(line.replace(f"params '{where}' ", "") for line in str(err).splitlines())


def _shape(hint: Any) -> str:
    """How a value of type `hint` is written in params.yaml, for error messages."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        valid = [a for a in typing.get_args(hint)[1:] if isinstance(a, Range)]
        return _shape(typing.get_args(hint)[0]) + "".join(f" {v.phrase()}" for v in valid)
    if hint is type(None):
        return "null"
    if dataclasses.is_dataclass(hint):
        return f"a mapping with keys {[f.name for f in dataclasses.fields(hint)]}"
    if origin is typing.Literal:
        return f"one of {list(typing.get_args(hint))}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_shape(arg) for arg in typing.get_args(hint))
    names = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}
    return names.get(hint, "a list" if origin in (tuple, list) else str(hint))
