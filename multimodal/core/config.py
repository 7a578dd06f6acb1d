"""Config helpers shared by every layer: reading YAML, checking keys with close-match
suggestions, YAML scalars from the command line, stable hashes."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
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


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML (or JSON) file holding a mapping; an empty file is an empty mapping."""
    with open(path) as f:
        loaded = yaml.safe_load(f)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(
            f"{path}: expected a mapping at the top level, got {type(loaded).__name__}"
        )
    return loaded


def parse_value(raw: str) -> Any:
    """YAML scalars, plus the floats YAML 1.1 leaves as strings (``3e-4``)."""
    value = yaml.safe_load(raw)
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
