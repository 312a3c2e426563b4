"""Typed settings: dataclasses are the source of truth, dicts (YAML, JSON) are checked against
them.

:func:`from_dict` builds a (nested) dataclass from a dict: an unknown key or a wrong type is a
:class:`ConfigError` naming the valid choices; ints widen to floats; YAML 1.1's ``1e-3`` (read as
a string) is a float; a float must be finite (no NaN or infinity) and a mapping holds at most
:data:`MAX_ENTRIES` entries. A dataclass may list renamed keys in ``ALIASES`` (old name → new
name) so that files written by an earlier textdiff still load, and removed keys in ``RETIRED``
(key → the value that behaves as today): saved with that value they are skipped, with another
they are refused. Standard library only.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from typing import Any, Literal

from .errors import ConfigError

__all__ = ["ConfigError", "from_dict", "check_positive", "section_name", "short_repr"]

MAX_INT = 10**18 - 1  # beyond, torch / numpy / the tokenizers library overflow
MAX_ENTRIES = 1000  # entries of a mapping-valued setting (data.data_files, sample.options)
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 5
_REPR.maxlevel = 3


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters, in time and memory bounded whatever
    ``value`` holds (an error message never expands a huge or deeply nested value)."""
    return _REPR.repr(value)


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
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value}")
    if origin is Literal:
        if not isinstance(value, (str, int, float, bool, type(None))) or value not in args:
            raise ConfigError(
                f"{where}: {short_repr(value)} is not valid; choose one of {list(args)}"
            )
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
        if len(value) > MAX_ENTRIES:
            raise ConfigError(f"{where}: {len(value)} entries, more than {MAX_ENTRIES}")
        return {str(k): check_type(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        value = _to_float(value)  # ints widen; YAML 1.1 reads 1e-3 (no dot) as a string
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(
            f"{where}: expected {tp.__name__}, got {type(value).__name__} ({short_repr(value)})"
        )
    if tp is float and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value}")
    if tp is int and not -MAX_INT <= value <= MAX_INT:
        raise ConfigError(f"{where} must be an integer of at most 18 digits, got {value}")
    return value


def _to_float(value: int | str) -> float | int | str:
    """``value`` as a float if it reads as one (an int too large for a float stays an int and
    is refused as not finite), else unchanged (refused as the wrong type)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf
    except ValueError:
        return value


def from_dict(cls: type, data: dict[str, Any] | None, where: str = "") -> Any:
    """Build the dataclass ``cls`` from a (nested) dict, refusing unknown keys and wrong types."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    aliases = getattr(cls, "ALIASES", {})
    retired = getattr(cls, "RETIRED", {})
    kwargs = {}
    for key, value in data.items():
        key = aliases.get(key, key)
        path = f"{where}.{key}" if where else key
        if key in retired:
            if value == retired[key]:
                continue
            raise ConfigError(
                f"{path}: {value!r} is no longer available (the setting was removed; "
                f"{retired[key]!r} is what textdiff does now)"
            )
        if key not in fields:
            raise ConfigError(
                f"unknown config key {short_repr(path)}; valid keys: {sorted(fields)}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, path)
        else:
            kwargs[key] = check_type(value, tp, path)
    return cls(**kwargs)
