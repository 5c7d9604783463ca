"""Checking one value against the schema's type annotation, and the byte sizes of ``cache_ram``."""

from __future__ import annotations

import math
import types
import typing
from typing import Any

from regraft.errors import ConfigError

__all__ = ["coerce", "parse_bytes"]

_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20, "MIB": 2**20,
          "G": 2**30, "GB": 2**30, "GIB": 2**30, "T": 2**40, "TB": 2**40, "TIB": 2**40}


def parse_bytes(value: int | float | str, *, name: str = "cache_ram") -> int:
    """``"4G"``, ``"512M"``, ``"1.5GB"``, ``"0"`` or a number of bytes -> bytes (binary units).

    Raises:
        ConfigError: not a size.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number, unit = float(value), ""
    else:
        text = str(value).strip().upper().replace(" ", "")
        digits = text.rstrip("KMGTIB")
        number, unit = _to_float(digits), text[len(digits):]
    if number is None or unit not in _UNITS or not math.isfinite(number) or number < 0:
        raise ConfigError(f"{name} must be a size such as 4G, 512M or a number of bytes; got {value!r}")
    return int(number * _UNITS[unit])


def _to_float(text: str) -> float | None:
    try:
        return float(text)
    except (ValueError, OverflowError):
        return None

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def coerce(key: str, value: Any, tp: Any, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``, converting only lossless cases."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg, source)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    bad = ConfigError(f"{source}: '{key}' must be {_describe(tp)}; got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str) and item_tp is str:
            return [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad
        return [coerce(key, v, item_tp, source) for v in value]
    if origin is dict:
        if isinstance(value, list) and all(isinstance(v, str) and "=" in v for v in value):
            value = dict(v.split("=", 1) for v in value)
        if not isinstance(value, dict):
            raise bad
        args = typing.get_args(tp)
        value_tp = args[1] if len(args) == 2 else str
        return {str(k): coerce(key, v, value_tp, source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad
        try:
            number = float(value)  # YAML reads 1e-3 as a string
        except (ValueError, OverflowError):
            raise bad from None
        if not math.isfinite(number):
            raise ConfigError(f"{source}: '{key}' must be a finite number; got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if tp is dict or tp is typing.Any:
        _check_nesting(key, value, source)
        return value
    raise bad


_MAX_NESTING = 32


def _check_nesting(key: str, value: Any, source: str, depth: int = 0) -> None:
    """Refuse self-referencing or absurdly deep values (YAML anchors can build both) before they
    reach code that walks them (``dataclasses.asdict``, YAML and JSON dumps)."""
    if depth > _MAX_NESTING:
        raise ConfigError(f"{source}: '{key}' is nested more than {_MAX_NESTING} levels deep (or refers to itself); write it out plainly")
    children = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for child in children:
        _check_nesting(key, child, source, depth + 1)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        args = typing.get_args(tp)
        return f"a mapping of names to {_describe(args[1])}s" if len(args) == 2 and args[1] is not str else "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, _type_name(tp)
    )
