"""Run configs: a YAML file read once, dotted ``key=value`` overrides applied, then parsed
into typed sections (data spec, model, train, transfer). Every key is checked against
what reads it; stage configs derive from the train section with ``TrainConfig.replace``."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encoders import ENCODERS
from fusion import FUSIONS

from ..core.config import check_keys, checked_fields, parse_value, read_yaml
from ..core.registry import accepted_kwargs
from ..data.spec import RETIRED_KEYS, DatasetSpec
from ..engine import TrainConfig
from ..modeling.heads import Head

SECTIONS = (
    "data",
    "encoders",
    "fusion",
    "head",
    "train",
    "transfer",
    "federate",
    "output_dir",
    "seed",
)
STAGES = ("adapt", "scratch", "uda")  # transfer sections that override train keys
STUDENT_MODEL = ("encoders", "fusion", "head")  # transfer.student sections that replace the run's
DISTILL_DEFAULTS: dict[str, Any] = {"temperature": 2.0, "alpha": 0.5, "unlabelled_targets": False}


@dataclass
class ModelConfig:
    """encoders: modality -> {name, ...}; fusion: {name, dim, ...}; head: Head kwargs."""

    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)
    fusion: dict[str, Any] = field(default_factory=dict)
    head: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """What ``build_model`` takes (a copy: building never changes the run config)."""
        return copy.deepcopy({"encoders": self.encoders, "fusion": self.fusion, "head": self.head})


@dataclass
class TransferConfig:
    """The transfer protocol's settings.

    source/target: domain names (default: the first domain, and every other one);
    k_shot: labelled target rows per class for adaptation and scratch (or target_fraction of
    the target train split); episodes: independent k-shot draws per target, each trained on
    by every adapt and scratch arm and evaluated on the whole target test split (episode e
    draws the same rows for every fusion, adaptation and encoder set); adaptation: the arm ``transfer`` runs: a freezing strategy
    fine-tuned on the k-shot sample (default: ``adapt.strategy``, else head), a UDA method
    (dann, cdan, coral, mmd, entropy) or source_only; adapt/scratch/uda: train keys each
    stage overrides; robustness: also evaluate with each modality missing; imbalance: the
    source model's per-modality utilisation and imbalance degree on the source and each
    target's test split (``analysis.imbalance``).
    """

    source: list[str] | None = None
    target: list[str] | None = None
    k_shot: int = 10
    target_fraction: float | None = None
    episodes: int = 1
    # Which rows an episode labels: random | entropy | margin | kcenter (transfer.select)
    # from the source model's view of the target train split, within a seeded pool of
    # select_pool of each class's rows.
    select: str = "random"
    select_pool: float = 0.5
    adaptation: str | None = None
    adapt: dict[str, Any] = field(default_factory=dict)
    scratch: dict[str, Any] = field(default_factory=dict)
    uda: dict[str, Any] = field(default_factory=dict)
    robustness: bool = False
    imbalance: bool = False
    # A student distilled from the source model and put through the same stages, reported
    # beside it: encoders/fusion/head replace the run's, train keys go over the run's, and
    # temperature, alpha and unlabelled_targets set the distillation (``student_config``).
    student: dict[str, Any] = field(default_factory=dict)
    # Train the episodes of each scratch and adaptation stage together, stacked on a
    # leading dimension (engine.episodes); false: one fit after another. The results are
    # the same up to floating-point rounding; the report says which ran (episode_fits).
    batch_episodes: bool = True
    # transfer.adaptation: auto picks, per episode, the arm of auto_arms whose
    # auto_folds-fold cross-validation inside the episode's labelled rows scores best.
    auto_arms: list[str] = field(default_factory=lambda: ["head", "l2sp", "lwf"])
    auto_folds: int = 5
    # transfer: the five stages. leave_one_out: the targets are never seen (domain
    # generalisation): the source model on their test splits (the zero_shot arm), no
    # scratch baseline, no target row read by any fit or model selection.
    protocol: str = "transfer"
    # The rank stage: these transferability estimators (analysis.transferability; "all":
    # every one) scored on each episode's labelled rows from the source model, before any
    # adaptation, into each episode's result (``transferability``). Empty: no rank stage.
    rank: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    """A parsed run config. ``raw`` is the mapping it came from: what ``run_config.json``
    records and what the config hash is computed on."""

    data: DatasetSpec
    model: ModelConfig
    train: TrainConfig
    transfer: TransferConfig
    output_dir: str | None = None
    seed: int | None = None  # the top-level seed, as given
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | RunConfig) -> RunConfig:
        if isinstance(config, RunConfig):
            return config
        validate(config)
        raw = copy.deepcopy(dict(config))
        train = dict(raw.get("train") or {})
        if "seed" in raw:
            train.setdefault("seed", raw["seed"])
        transfer = dict(raw.get("transfer") or {})
        for stage in STAGES:
            transfer[stage] = TrainConfig.coerce(transfer.get(stage) or {}, f"transfer.{stage}")
        return cls(
            data=DatasetSpec.from_dict(raw.get("data") or {}, "data"),
            model=ModelConfig(**{k: copy.deepcopy(raw.get(k) or {}) for k in ("encoders", "fusion", "head")}),
            train=TrainConfig.from_dict(train),
            transfer=TransferConfig(**checked_fields(TransferConfig, transfer, "transfer",
                                                     {"k_shot": 1, "episodes": 1})),
            output_dir=raw.get("output_dir"), seed=raw.get("seed"), raw=raw,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.raw)

    @property
    def run_seed(self) -> int:
        """The run's seed: the top-level ``seed``, else ``train.seed``."""
        return int(self.seed if self.seed is not None else self.train.seed)

    def stage(self, **overrides: Any) -> TrainConfig:
        """The train config of one stage: the train section with ``overrides`` (None keeps)."""
        return self.train.replace(**overrides)


# Sections that hold keys: a scalar there (``encoders=5``) is a mistake, named at once.
MAPPING_SECTIONS = ("data", "encoders", "fusion", "head", "train", "transfer", "federate")


def validate(config: Mapping[str, Any]) -> None:
    """Raise a ValueError naming any key that nothing reads, with the close matches, and
    any section that is not a mapping."""
    if not isinstance(config, Mapping):
        raise ValueError(f"a run config is a mapping of sections, got {type(config).__name__}")
    check_keys(config, SECTIONS)
    _check_mappings(config)
    data_keys = [*(f.name for f in dataclasses.fields(DatasetSpec)), *RETIRED_KEYS]
    check_keys(config.get("data") or {}, data_keys, "data")
    check_keys(config.get("train") or {}, TrainConfig.__dataclass_fields__, "train")
    transfer = config.get("transfer") or {}
    check_keys(transfer, (f.name for f in dataclasses.fields(TransferConfig)), "transfer")
    for stage in STAGES:
        check_keys(transfer.get(stage) or {}, TrainConfig.__dataclass_fields__, f"transfer.{stage}")
    student = transfer.get("student") or {}
    check_keys(student, [*STUDENT_MODEL, "train", *DISTILL_DEFAULTS], "transfer.student")
    if student:
        validate(student_config(config))
    fusion = config.get("fusion") or {}
    if "name" in fusion:
        known = FUSIONS.accepted_kwargs(fusion["name"], ignore={"modality_dims"}) | {"name"}
        check_keys(fusion, known, "fusion")
    check_keys(config.get("head") or {}, accepted_kwargs(Head, follow_bases=False), "head")
    for modality, enc in (config.get("encoders") or {}).items():
        if not isinstance(enc, Mapping):
            raise ValueError(
                f"encoders.{modality} is {_shown(enc)}, not an encoder: give a mapping with a 'name' "
                f"(e.g. encoders.{modality}.name=...), or delete the key to leave {modality} out"
            )
        if "name" not in enc:
            raise ValueError(f"encoders.{modality}: needs a 'name'")
        check_keys(enc, ENCODERS.accepted_kwargs(enc["name"]) | {"name"}, f"encoders.{modality}")
    _check_column_sources(config)


def _check_column_sources(config: Mapping[str, Any]) -> None:
    """Each encoder of named columns (``tabular_mlp``) names its own, or ``data.columns``
    maps some to its modality (the synthetic data maps its own): checked before data loads."""
    from ..modeling.model import reads_data_columns

    data = config.get("data") or {}
    if data.get("path", "synthetic") == "synthetic" and not data.get("columns"):
        return
    columns = data.get("columns") or {}
    for modality, enc in (config.get("encoders") or {}).items():
        if reads_data_columns(enc) and not columns.get(modality):
            raise ValueError(
                f"encoders.{modality} ({enc['name']}) names no columns and data.columns.{modality} "
                f"is not set: list the columns under data.columns.{modality} (the encoder reads "
                f"them), or under encoders.{modality}.numerical / .categorical"
            )


def _check_mappings(config: Mapping[str, Any]) -> None:
    sections = [(s, config.get(s)) for s in MAPPING_SECTIONS]
    transfer = config.get("transfer")
    if isinstance(transfer, Mapping):
        sections += [(f"transfer.{s}", transfer.get(s)) for s in (*STAGES, "student")]
    for key, value in sections:
        if value is not None and not isinstance(value, Mapping):
            raise ValueError(
                f"{key} is {_shown(value)}, but it is a section of keys: give a mapping (e.g. "
                f"{key}.<key>=<value>), or delete it for the defaults"
            )


def _shown(value: Any) -> str:
    return "null" if value is None else repr(value)


def student_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The run config of ``transfer.student``'s model: the run's, with the student's
    encoders, fusion and head in place of the run's, its train keys over the run's, and no
    student of its own (the distillation keys stay in ``transfer.student``)."""
    raw = copy.deepcopy(dict(config))
    transfer = dict(raw.get("transfer") or {})
    student = dict(transfer.pop("student", None) or {})
    raw["transfer"] = transfer
    for section in STUDENT_MODEL:
        if section in student:
            raw[section] = copy.deepcopy(student[section])
    raw["train"] = {**(raw.get("train") or {}), **(student.get("train") or {})}
    return raw


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
    """The run config of a YAML file (or none) with ``overrides`` applied, checked; the
    mapping, as recorded. ``RunConfig.from_dict`` parses it into typed sections."""
    return apply_overrides(read_yaml(path) if path is not None else {}, overrides)


def model_config(config: Mapping[str, Any] | RunConfig) -> dict[str, Any]:
    return RunConfig.from_dict(config).model.to_dict()


def train_config(config: Mapping[str, Any] | RunConfig, **overrides: Any) -> TrainConfig:
    return RunConfig.from_dict(config).stage(**overrides)
