"""Config helpers shared by every layer: reading YAML, checking keys with close-match
suggestions, YAML scalars from the command line, stable hashes."""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml


def close_matches(key: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=3)
    return f"close matches: {close}" if close else f"known: {sorted(options)}"


def check_keys(keys: Iterable[str], known: Iterable[str], where: str = "") -> None:
    """Raise a ValueError naming each key of ``keys`` that is not in ``known`` (as
    ``where.key``), with its close matches. Every config section is checked through here."""
    known = sorted(known)
    unknown = [k for k in keys if k not in known]
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(
            "; ".join(f"unknown key '{prefix}{k}'; {close_matches(k, known)}" for k in unknown)
        )


class ConfigError(ValueError):
    """A config value of the wrong type or out of range; the message names the key."""


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints``, once per class: it compiles every annotation's string."""
    return typing.get_type_hints(cls)


def checked_fields(
    cls: type, values: Mapping[str, Any], where: str, minimum: Mapping[str, float] = {}
) -> dict[str, Any]:
    """``values`` for dataclass ``cls``, each checked against its field's annotation (and
    ``minimum``, where one is given): a wrong type or range is a ``ConfigError`` naming
    ``where.key``, the value and what was expected. Ints are taken as floats, and strings
    that parse as floats (YAML 1.1 reads ``3e-4`` as a string) become floats."""
    hints = _type_hints(cls)
    out = {}
    for key, value in values.items():
        value = _as_type(value, hints[key], f"{where}.{key}" if where else key)
        low = minimum.get(key)
        if low is not None and isinstance(value, (int, float)) and value < low:
            raise ConfigError(f"{where}.{key}: expected at least {low:g}, got {value!r}")
        out[key] = value
    return out


def _as_type(value: Any, hint: Any, key: str) -> Any:
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    for option in options:
        ok, converted = _matches(value, option)
        if ok:
            return converted
    names = " or ".join(_type_name(o) for o in options)
    raise ConfigError(f"{key}: expected {names}, got {value!r} ({type(value).__name__})")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _matches(value: Any, hint: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(hint) or hint
    if hint is Any:
        return True, value
    if origin is typing.Literal:
        return value in typing.get_args(hint), value
    if hint is type(None):
        return value is None, value
    if origin is bool:
        return isinstance(value, bool), value
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if origin is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if origin is str:
        return isinstance(value, str), value
    if origin in (dict, Mapping):
        return isinstance(value, Mapping), value
    if origin in (list, Sequence):
        return isinstance(value, (list, tuple)), value
    return isinstance(value, origin) if isinstance(origin, type) else True, value


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint) or hint
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             dict: "a mapping", list: "a list", type(None): "null"}  # fmt: skip
    return names.get(origin, getattr(origin, "__name__", str(origin)))


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML (or JSON) file holding a mapping; an empty file is an empty mapping. Broken
    YAML, and tags that would build Python objects, are a ``ConfigError`` naming the line."""
    with open(path) as f:
        try:
            loaded = yaml.safe_load(f)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(
            f"{path}: expected a mapping at the top level, got {type(loaded).__name__}"
        )
    return loaded


def parse_value(raw: str) -> Any:
    """YAML scalars, plus the floats YAML 1.1 leaves as strings (``3e-4``)."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"{raw!r} is not a YAML value: {getattr(err, 'problem', err)}") from None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of a resolved config (output paths left out)."""
    keep = {k: v for k, v in config.items() if k != "output_dir"}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:12]
