"""Run configs: YAML files with dotted ``key=value`` overrides, checked against what exists."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from encoders._registry import _ENCODERS
from fusion._registry import _FUSIONS

from .data import DatasetSpec
from .heads import Head
from .training import TrainConfig

SECTIONS = ("data", "encoders", "fusion", "head", "train", "transfer", "output_dir", "seed")
TRANSFER_KEYS = (
    "source", "target", "k_shot", "target_fraction", "adapt", "scratch", "uda", "robustness",
)  # fmt: skip


def _close(key: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=3)
    return f"close matches: {close}" if close else f"known: {sorted(options)}"


def _check_kwargs(path: str, key: str, builder: Any, extra: Sequence[str] = ()) -> None:
    params = inspect.signature(builder).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()) and builder is not Head:
        # Encoders that forward **kwargs: check against the base class too.
        names = set(params) | {
            n for base in inspect.getmro(builder) for n in inspect.signature(base).parameters
        }
    else:
        names = set(params)
    names |= set(extra)
    names -= {"self", "modality_dims", "kwargs", "audio_kwargs"}
    if key not in names:
        raise ValueError(f"unknown key {path!r}; {_close(key, sorted(names))}")


def validate(config: Mapping[str, Any]) -> None:
    """Raise a ValueError naming any key that nothing reads, with the close matches."""
    for key in config:
        if key not in SECTIONS:
            raise ValueError(f"unknown key {key!r}; {_close(key, SECTIONS)}")
    fields = {f.name for f in dataclasses.fields(DatasetSpec)}
    for key in config.get("data") or {}:
        if key not in fields:
            raise ValueError(f"unknown key 'data.{key}'; {_close(key, fields)}")
    for key in config.get("train") or {}:
        if key not in TrainConfig.__dataclass_fields__:
            raise ValueError(
                f"unknown key 'train.{key}'; {_close(key, list(TrainConfig.__dataclass_fields__))}"
            )
    for key in config.get("transfer") or {}:
        if key not in TRANSFER_KEYS:
            raise ValueError(f"unknown key 'transfer.{key}'; {_close(key, TRANSFER_KEYS)}")
    for section in ("adapt", "scratch", "uda"):
        for key in (config.get("transfer") or {}).get(section) or {}:
            if key not in TrainConfig.__dataclass_fields__:
                raise ValueError(
                    f"unknown key 'transfer.{section}.{key}'; {_close(key, list(TrainConfig.__dataclass_fields__))}"
                )
    fusion = config.get("fusion") or {}
    if "name" in fusion:
        for key in fusion:
            if key != "name":
                _check_kwargs(f"fusion.{key}", key, _FUSIONS.get(fusion["name"]))
    for key in config.get("head") or {}:
        _check_kwargs(f"head.{key}", key, Head, extra=())
    for modality, enc in (config.get("encoders") or {}).items():
        if "name" not in enc:
            raise ValueError(f"encoders.{modality}: needs a 'name'")
        for key in enc:
            if key != "name":
                _check_kwargs(f"encoders.{modality}.{key}", key, _ENCODERS.get(enc["name"]))


def parse_value(raw: str) -> Any:
    """YAML scalars, plus the floats YAML 1.1 leaves as strings (``3e-4``)."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(config: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings (values parsed as YAML) to a copy of ``config``."""
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        path, _, raw = item.partition("=")
        keys = path.split(".")
        node = config
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {path!r}: {key!r} is not a section")
        node[keys[-1]] = parse_value(raw)
    validate(config)
    return config


def load_run_config(path: str | Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if path is not None:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
    return apply_overrides(config, overrides)


def model_config(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(config[k]) for k in ("encoders", "fusion", "head") if k in config}


def train_config(config: Mapping[str, Any], **overrides: Any) -> TrainConfig:
    train = dict(config.get("train") or {})
    if "seed" in config:
        train.setdefault("seed", config["seed"])
    train.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(train)


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of a resolved config (output paths left out)."""
    keep = {k: v for k, v in config.items() if k != "output_dir"}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:12]
