"""Typed settings: dataclasses are the source of truth, dicts (YAML, JSON) are checked against
them.

:func:`from_dict` builds a (nested) dataclass from a dict: an unknown key or a wrong type is a
:class:`ConfigError` naming the valid choices; ints widen to floats; YAML 1.1's ``1e-3`` (read as
a string) is a float. A dataclass may list renamed keys in ``ALIASES`` (old name → new name) so
that files written by an earlier textdiff still load. Standard library only.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from .errors import ConfigError

__all__ = ["ConfigError", "from_dict", "check_positive", "section_name"]


def section_name(obj: Any) -> str:
    """``ModelConfig`` -> ``model``: the YAML section a settings dataclass is read from."""
    cls = obj if isinstance(obj, type) else type(obj)
    return cls.__name__.removesuffix("Config").lower()


def check_positive(obj: Any, *names: str) -> None:
    """Refuse any of the fields ``names`` of ``obj`` that is not > 0."""
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ConfigError(f"{section_name(obj)}.{name} must be positive, got {value}")


def check_type(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked (and int→float widened) against the annotation ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not valid; choose one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return check_type(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {str(k): check_type(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(
            f"{where}: expected {tp.__name__}, got {type(value).__name__} ({value!r})"
        )
    return value


def from_dict(cls: type, data: dict[str, Any] | None, where: str = "") -> Any:
    """Build the dataclass ``cls`` from a (nested) dict, refusing unknown keys and wrong types."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    aliases = getattr(cls, "ALIASES", {})
    kwargs = {}
    for key, value in data.items():
        key = aliases.get(key, key)
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise ConfigError(f"unknown config key {path!r}; valid keys: {sorted(fields)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, path)
        else:
            kwargs[key] = check_type(value, tp, path)
    return cls(**kwargs)
