"""The parameter table: each parameter's facts declared once, on its dataclass field.

A parameter is a dataclass field made with :func:`param`: default, unit, range (``lo``/``hi``,
inclusive) or ``choices``, a one-line description, and whether it may change while the node runs
(``live``). The one validator (:func:`coerce_field` / :func:`from_dict` / :func:`check`) serves
the YAML file, the CLI ``--set`` overrides and ROS parameter updates alike; the node declares its
ROS parameters from :func:`walk` (docs/ARCHITECTURE.md §6).

Values are checked in the precision they are used in: floats must be finite and representable
as float32 (a double like 1e39 is refused rather than becoming inf later).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterator

FLOAT32_MAX = 3.4028234663852886e38


class ConfigError(ValueError):
    """Invalid parameter: the message names the dotted key and the reason."""


@dataclass(frozen=True)
class ParamSpec:
    """What is known about one parameter (stored in the field's metadata)."""

    doc: str
    unit: str = ""
    lo: float | None = None
    hi: float | None = None
    choices: tuple | None = None
    live: bool = False

    def describe(self) -> str:
        """One line for ROS parameter descriptors and the docs: description, unit, range."""
        extra = []
        if self.unit:
            extra.append(f"[{self.unit}]")
        if self.choices:
            extra.append("one of " + " | ".join(str(c) for c in self.choices))
        elif self.lo is not None or self.hi is not None:
            extra.append(f"range [{'-inf' if self.lo is None else self.lo}, {'inf' if self.hi is None else self.hi}]")
        if self.live:
            extra.append("(live)")
        return " ".join([self.doc] + extra)


def param(default: Any = dataclasses.MISSING, doc: str = "", *, unit: str = "", lo: float | None = None,
          hi: float | None = None, choices: tuple | None = None, live: bool = False,
          factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field carrying its :class:`ParamSpec` (use ``factory`` for list defaults)."""
    spec = ParamSpec(doc, unit, lo, hi, tuple(choices) if choices else None, live)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"param": spec})
    return dataclasses.field(default=default, metadata={"param": spec})


def spec_of(f: dataclasses.Field) -> ParamSpec | None:
    return f.metadata.get("param")


def _check_number(v: float, key: str) -> None:
    if not math.isfinite(v):
        raise ConfigError(f"{key}: {v} is not a finite number")
    if abs(v) > FLOAT32_MAX:
        raise ConfigError(f"{key}: {v} is too large (not representable as float32)")


def coerce_field(f: dataclasses.Field, tp: Any, value: Any, key: str) -> Any:
    """Type-check and coerce one value for field ``f`` (annotation ``tp``), then range/choices."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_scalar(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        out = []
        for i, x in enumerate(value):
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise ConfigError(f"{key}[{i}]: expected a number, got {x!r}")
            _check_number(float(x), f"{key}[{i}]")
            out.append(float(x))
        return out
    v = _scalar(value, tp, key)
    spec = spec_of(f)
    if spec is not None:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if (spec.lo is not None and v < spec.lo) or (spec.hi is not None and v > spec.hi):
                hi = spec.hi if spec.hi is not None else "inf"
                raise ConfigError(f"{key}: {v} is outside the valid range [{spec.lo}, {hi}]")
        if spec.choices is not None and v not in spec.choices:
            raise ConfigError(f"{key}: {v!r} is not one of {', '.join(str(c) for c in spec.choices)}")
    return v


def _scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if abs(value) > 2 ** 62:
            raise ConfigError(f"{key}: {value} is too large")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        _check_number(float(value), key)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from ``data`` (defaults for missing keys), validated; ConfigError names the key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in fields:
            raise ConfigError(f"{key}: unknown parameter (known: {', '.join(sorted(fields))})")
        kwargs[k] = coerce_field(fields[k], hints[k], v, key)
    obj = cls(**kwargs)
    check(obj, prefix)
    return obj


def check(obj, prefix: str = "") -> None:
    """Validate every field of ``obj`` (and nested dataclasses), then the class's own cross-field
    rule ``obj.check_consistency(prefix)`` when it has one."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            check(v, key)
        else:
            coerce_field(f, hints[f.name], list(v) if isinstance(v, tuple) and typing.get_origin(hints[f.name])
                         is not tuple else v, key)
    rule = getattr(obj, "check_consistency", None)
    if rule is not None:
        rule(prefix)


def walk(obj_or_cls, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted name, field, value or default) for every leaf parameter, in declaration order."""
    obj = obj_or_cls() if isinstance(obj_or_cls, type) else obj_or_cls
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            yield from walk(v, key)
        else:
            yield key, f, v


__all__ = ["ConfigError", "ParamSpec", "param", "spec_of", "coerce_field", "from_dict", "check", "walk",
           "FLOAT32_MAX"]
