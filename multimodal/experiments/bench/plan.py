"""A suite (the base run config and the axes to sweep) and its plan: the units, each one
transfer run, and the run config of each."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ...core.config import check_keys, read_yaml
from ..config import validate
from .stats import ONLY, unimodal

logger = logging.getLogger(__name__)
# The repository an editable install runs from (its benchmarks/ folder holds the suites).
CHECKOUT = Path(__file__).resolve().parents[3]

SUITE_KEYS = {
    "name",
    "description",
    "requires_hub",
    "base",
    "fusions",
    "fusion_kwargs",
    "adaptations",
    "strategies",  # the former name of adaptations
    "seeds",
    "pairs",
    "k_shot",
    "grid",
    "encoders",
    "unimodal",
    "builder",
    "builder_args",
    "versus",
}


@dataclass
class Suite:
    """A benchmark suite: a base run config and the axes to sweep.

    base: a run config (data, encoders, fusion, head, train, transfer); adaptations: the
    transfer arms to compare, each a freezing strategy fine-tuned on the k-shot target
    sample (head, top_k, full, lora), a UDA method (dann, ...) or source_only; pairs: source ->
    target domain lists; k_shot: sizes; grid: keys -> values to cross, where a plain key is a
    ``data.options`` key and a dotted one a config path (``train.modality_dropout``);
    encoders: named encoder sets crossed as a grid axis ``encoders`` (each replaces the
    base's entries for the modalities it names: pretrained against random-init weights,
    say); unimodal: also run each modality alone under the same protocol (``image-only``);
    builder: a script in ``benchmarks/`` whose ``build(path, **builder_args)`` writes
    ``base.data.path`` when that local folder does not exist yet; versus: grid axis ->
    reference value, each other value's adapted metric paired against it (``train.dg: erm``).
    With ``base.transfer.protocol: leave_one_out`` and no pairs, each domain of the data in
    turn is the target and every other one a source.
    """

    name: str
    base: dict[str, Any]
    fusions: list[str]
    adaptations: list[str] = field(default_factory=lambda: ["head", "full"])
    seeds: int = 3
    pairs: list[dict[str, list[str]]] = field(default_factory=list)
    k_shot: list[int] = field(default_factory=lambda: [5])
    grid: dict[str, list[Any]] = field(default_factory=dict)
    fusion_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    requires_hub: bool = False
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)
    unimodal: bool = True
    builder: str | None = None
    builder_args: dict[str, Any] = field(default_factory=dict)
    versus: dict[str, Any] = field(default_factory=dict)

    # The file the suite was read from: its builder script lies beside the suites folder.
    path: Path | None = field(default=None, compare=False, repr=False)

    def modalities(self) -> list[str]:
        return sorted(self.base.get("encoders") or {})

    def with_overrides(
        self,
        unimodal: bool | None = None,
        episodes: int | None = None,
        modality_dropout: Sequence[float] | None = None,
        balance: Sequence[str] | None = None,
        imbalance: bool = False,
        robustness: bool = False,
        rank: Sequence[str] | None = None,
    ) -> Suite:
        """A copy with a run's changes: no one-modality baselines (``unimodal=False``),
        ``transfer.episodes``, training modality dropout rates or balancing methods crossed
        as grid axes (balancing also measures imbalance), the imbalance and the
        missing-modality measurements switched on, and the rank stage's estimators
        (``transfer.rank``)."""
        base = copy.deepcopy(self.base)
        transfer = base.setdefault("transfer", {})
        grid = dict(self.grid)
        if modality_dropout:
            grid["train.modality_dropout"] = [float(p) for p in modality_dropout]
        if balance:
            grid["train.balance"] = list(balance)
        if balance or imbalance:
            transfer["imbalance"] = True
        if robustness:
            transfer["robustness"] = True
        if rank:
            transfer["rank"] = list(rank)
        if episodes:
            transfer["episodes"] = episodes
        keep = self.unimodal if unimodal is None else self.unimodal and unimodal
        return replace(self, base=base, grid=grid, unimodal=keep)

    @property
    def episodes(self) -> int:
        return int((self.base.get("transfer") or {}).get("episodes", 1))


def load_suite(path: str | Path) -> Suite:
    data = read_yaml(path)
    check_keys(data, SUITE_KEYS, "suite")
    if "strategies" in data:
        logger.warning("suite %s: 'strategies' is now 'adaptations'", path)
        data.setdefault("adaptations", data.pop("strategies"))
    suite = Suite(**data, path=Path(path))
    validate(suite.base)
    return suite


def find_suite(name: str | Path, folders: Sequence[Path] = ()) -> Path:
    """A suite's YAML: ``name`` as a path, else ``NAME.yaml`` in ``folders`` (by default
    ``benchmarks/suites`` under the working directory, then under this checkout)."""
    path = Path(name)
    if path.is_file():
        return path
    folders = list(folders) or [Path("benchmarks/suites"), CHECKOUT / "benchmarks" / "suites"]
    for folder in folders:
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    known = sorted({p.stem for f in folders if f.is_dir() for p in f.glob("*.yaml")})
    raise FileNotFoundError(
        f"unknown suite {str(name)!r}; suites: {', '.join(known) or 'none found'}"
    )


def prepare_data(suite: Suite) -> None:
    """Build the suite's local dataset with its builder script (``builder``, in the folder
    above the suite's, called with ``builder_args``) when the data folder does not exist yet."""
    path = Path(suite.base.get("data", {}).get("path", ""))
    if suite.builder is None or path.exists():
        return
    folder = suite.path.resolve().parent.parent if suite.path else Path("benchmarks")
    script = folder / suite.builder
    spec = importlib.util.spec_from_file_location(script.stem, script)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"suite {suite.name}: no builder script {script}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    logger.warning("building %s with %s (first run only)", path, script.name)
    module.build(path, **suite.builder_args)


@dataclass(frozen=True)
class Unit:
    """One transfer run: its adaptations share the source model and the scratch baseline."""

    fusion: str
    seed: int
    pair: int
    k_shot: int
    grid: tuple[tuple[str, Any], ...]


def plan(suite: Suite, fusions: Sequence[str], seeds: int) -> list[Unit]:
    """Every unit: grid point x pair x k x fusion (then each modality alone) x seed."""
    if not suite.pairs and suite.base.get("transfer", {}).get("protocol") == "leave_one_out":
        suite.pairs = held_out_pairs(suite)
    pairs = range(max(len(suite.pairs), 1))
    axes = {**suite.grid, **({"encoders": list(suite.encoders)} if suite.encoders else {})}
    grid_keys = sorted(axes)
    grid_points = [
        tuple(zip(grid_keys, values, strict=True))
        for values in itertools.product(*(axes[k] for k in grid_keys))
    ]
    arms = list(fusions)
    if suite.unimodal and len(suite.modalities()) > 1:
        arms += [f"{m}{ONLY}" for m in suite.modalities()]
    return [
        Unit(fusion, seed, pair, k, point)
        for point in grid_points
        for pair in pairs
        for k in suite.k_shot
        for fusion in arms
        for seed in range(seeds)
    ]


def held_out_pairs(suite: Suite) -> list[dict[str, list[str]]]:
    """Leave one out: each domain of the suite's data (its train split) the target, the
    others the sources."""
    from ...data.loading import load_dataset
    from ...data.spec import DatasetSpec
    from ...data.split import Split

    domains = Split(load_dataset(DatasetSpec.from_dict(suite.base["data"]))["train"]).domains()
    if len(domains) < 3:
        raise ValueError(
            f"suite {suite.name}: leave_one_out needs 3 domains or more (2 sources at least); "
            f"the data has {domains}"
        )
    return [{"source": [d for d in domains if d != held], "target": [held]} for held in domains]


def unit_config(suite: Suite, unit: Unit) -> dict[str, Any]:
    config = copy.deepcopy(suite.base)
    only = unimodal(unit.fusion)
    fusion_name = "concat" if only else unit.fusion
    config["fusion"] = {
        **(config.get("fusion") or {}),
        "name": fusion_name,
        **suite.fusion_kwargs.get(fusion_name, {}),
    }
    config["seed"] = unit.seed
    transfer = config.setdefault("transfer", {})
    transfer["k_shot"] = unit.k_shot
    if suite.pairs:
        transfer["source"] = list(suite.pairs[unit.pair]["source"])
        transfer["target"] = list(suite.pairs[unit.pair]["target"])
    options = config.setdefault("data", {}).setdefault("options", {})
    for key, value in unit.grid:
        if key == "encoders":
            config["encoders"] = {
                **config.get("encoders", {}),
                **copy.deepcopy(suite.encoders[value]),
            }
            continue
        *sections, leaf = key.split(".")
        node = config if sections else options
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    if only:
        _keep_modality(config, only)
    config.pop("output_dir", None)
    return config


def _keep_modality(config: dict[str, Any], modality: str) -> None:
    """Reduce a run config to one modality: its encoder, its column; no drop-one tables."""
    config["encoders"] = {modality: config["encoders"][modality]}
    columns = config["data"].get("columns")
    if columns:
        config["data"]["columns"] = {modality: columns[modality]}
    elif config["data"].get("path") == "synthetic":  # the same data, one column read
        from ...data.synthetic import synthetic_columns

        config["data"]["columns"] = synthetic_columns([modality])
    config["transfer"]["robustness"] = False
    config["transfer"]["imbalance"] = False  # needs two modalities
    train = config.get("train") or {}
    if train.get("modality_dropout"):
        train["modality_dropout"] = 0.0  # dropping the only modality leaves nothing to learn
    if train.get("balance", "none") != "none":  # one modality has nothing to balance
        train["balance"] = "none"
        train.pop("balance_kwargs", None)
        train.pop("balance_strength", None)
