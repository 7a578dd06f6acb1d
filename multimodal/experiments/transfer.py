"""The transfer protocol: source training, zero-shot, k-shot adaptation, scratch, forgetting."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from ..analysis.imbalance import modality_imbalance
from ..analysis.robustness import missing_modality_table
from ..core.config import config_hash
from ..core.io import write_json_atomic
from ..data.collate import RowView
from ..data.loading import k_shot, load_dataset, select_domains
from ..data.spec import DatasetSpec
from ..data.streaming import head, is_streaming, scan
from ..engine import FitData, TrainConfig, evaluate, fit
from ..modeling.model import MultimodalModel, build_model
from .config import RunConfig, TransferConfig

# Modality balancing (train.balance) is a source-training method: the later stages train
# without it unless their own section sets it, so every balancing arm shares one baseline.
UNBALANCED = {"balance": "none", "balance_kwargs": {}}
ADAPT_DEFAULTS = {"strategy": "head", "epochs": 20, "patience": None, **UNBALANCED}
SCRATCH_DEFAULTS = {"strategy": "full", "epochs": 20, "patience": None, **UNBALANCED}
# Adaptations that name an unsupervised objective train on source labels + unlabelled target rows.
UDA_METHODS = ("dann", "cdan", "coral", "mmd", "entropy")
# The control for them: the same extra training on source labels, with no target rows.
SOURCE_ONLY = "source_only"
UDA_DEFAULTS = {"strategy": "full", "epochs": 3, "patience": None, **UNBALANCED}


@dataclass
class TargetResult:
    zero_shot: float
    adapted: float
    scratch: float
    source_after: float
    forgetting: float  # source metric before adaptation minus after
    transfer_gain: float  # adapted minus scratch
    adapt_samples: int
    test_samples: int = 0  # rows of the target's test split behind each metric (0: not recorded)


@dataclass
class TransferReport:
    metric: str
    source_domains: list[str]
    target_domains: list[str]
    source: float  # source test metric after source training
    targets: dict[str, TargetResult]
    stage_seconds: dict[str, float]
    k_shot: int | None
    seed: int
    config_hash: str
    config: dict[str, Any] = field(default_factory=dict)
    # With transfer.robustness: missing-modality tables of the source model on the source
    # test split ("source") and of each adapted model on its target's test split.
    robustness: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    source_test_samples: int = 0
    # With transfer.imbalance: the source model's modality imbalance on the source test
    # split ("source") and on each target's test split.
    imbalance: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_json(cls, path: str | Path) -> TransferReport:
        data = json.loads(Path(path).read_text())
        data["targets"] = {k: TargetResult(**v) for k, v in data["targets"].items()}
        return cls(**data)

    def table(self) -> str:
        m = self.metric
        head = f"{'target':<12} {'source ' + m:>16} {'zero-shot':>10} {'adapted':>9} {'scratch':>9} {'gain':>7} {'forgetting':>11}"
        lines = [head, "-" * len(head)]
        for t, r in self.targets.items():
            lines.append(
                f"{t:<12} {self.source:>16.4f} {r.zero_shot:>10.4f} {r.adapted:>9.4f} {r.scratch:>9.4f} "
                f"{r.transfer_gain:>+7.4f} {r.forgetting:>+11.4f}"
            )
        return "\n".join(lines)


def _rows(ds: datasets.Dataset, spec: DatasetSpec) -> list[dict[str, Any]]:
    """The rows the processors are fitted on: all of them, or a stream's first rows."""
    view = RowView(head(ds) if is_streaming(ds) else ds, spec, "train")
    return [view[i] for i in range(len(view))]


def _adapt_sample(
    train: datasets.Dataset, settings: TransferConfig, seed: int, label: str
) -> datasets.Dataset:
    if settings.target_fraction and is_streaming(train):
        raise ValueError(
            "transfer.target_fraction needs the size of the target split; with streaming use k_shot"
        )
    if settings.target_fraction:
        n = max(1, int(round(float(settings.target_fraction) * len(train))))
        return train.shuffle(seed=seed).select(range(n))
    return k_shot(train, int(settings.k_shot), seed, label)


def transfer(config: Mapping[str, Any] | RunConfig) -> TransferReport:
    """Run the five stages on a run config (data, encoders, fusion, head, train, transfer).

    Adapted and scratch models train on the same target sample (same seed); their
    defaults are ``transfer.adapt`` = {strategy: head, epochs: 20} and
    ``transfer.scratch`` = {strategy: full, epochs: 20}, on top of ``train``. The arm is
    ``transfer.adaptation`` (a UDA method or source_only included), else ``adapt.strategy``.
    """
    run = RunConfig.from_dict(config)
    adaptation = run.transfer.adaptation or run.transfer.adapt.get(
        "strategy", ADAPT_DEFAULTS["strategy"]
    )
    return transfer_adaptations(run, [adaptation])[adaptation]


def transfer_adaptations(
    config: Mapping[str, Any] | RunConfig, adaptations: list[str]
) -> dict[str, TransferReport]:
    """``transfer`` for several adaptations at once: the source model, the zero-shot
    evaluation and the scratch baseline do not depend on the adaptation, so they are
    computed once and shared by the reports (keyed by adaptation)."""
    run = RunConfig.from_dict(config)
    settings, spec = run.transfer, run.data
    seed = int(run.seed if run.seed is not None else (run.raw.get("train") or {}).get("seed", 0))
    out = Path(run.output_dir) if run.output_dir else None
    times: dict[str, float] = {}

    tick = time.perf_counter()
    dsd = load_dataset(spec)
    sources, targets = source_and_targets(dsd["train"], settings)
    split = {s: {d: select_domains(dsd[s], d) for d in targets} for s in dsd}
    src = {s: select_domains(dsd[s], sources) for s in dsd}
    times["load"] = time.perf_counter() - tick

    shots = {t: _adapt_sample(split["train"][t], settings, seed, spec.label) for t in targets}
    progress = _plan(run, adaptations, src["train"], shots)
    tick = time.perf_counter()
    model, source_cfg, source_data, metric = _source_model(run, src, sources, out, seed, progress)
    times["source_train"] = time.perf_counter() - tick

    tick = time.perf_counter()
    batch = source_cfg.eval_batch_size or source_cfg.batch_size
    source_score = evaluate(model, src["test"], spec, batch)[metric]
    zero_shot = {t: evaluate(model, split["test"][t], spec, batch)[metric] for t in targets}
    times["zero_shot_eval"] = time.perf_counter() - tick
    robust = bool(settings.robustness)
    source_robustness = (
        missing_modality_table(model, src["test"], spec, batch, subsets="one") if robust else None
    )
    imbalance = _imbalance(model, settings, src["test"], split["test"], spec, batch, times)

    tick = time.perf_counter()
    scratch_scores = {t: _scratch(run, shots[t], split["test"][t], out / f"scratch-{t}" if out else None,
                                  seed, batch, metric, progress) for t in targets}  # fmt: skip
    times["scratch"] = time.perf_counter() - tick

    test_sizes = {t: _size(split["test"][t]) for t in targets}
    source_test_samples = _size(src["test"])
    reports: dict[str, TransferReport] = {}
    for adaptation in adaptations:
        results: dict[str, TargetResult] = {}
        robustness = {"source": source_robustness} if robust else {}
        tick = time.perf_counter()
        for t in targets:
            folder = str(out / f"adapt-{adaptation}-{t}") if out else None
            adapted, adapt_samples = _adapt(model, adaptation, run, dataclasses.replace(source_data, validation=None),
                                            split["train"][t], shots[t], folder, seed, progress)  # fmt: skip
            adapted_score = evaluate(adapted, split["test"][t], spec, batch)[metric]
            source_after = evaluate(adapted, src["test"], spec, batch)[metric]
            if robust:
                robustness[t] = missing_modality_table(
                    adapted, split["test"][t], spec, batch, subsets="one"
                )
            results[t] = TargetResult(
                zero_shot=zero_shot[t], adapted=adapted_score, scratch=scratch_scores[t], source_after=source_after,
                forgetting=source_score - source_after, transfer_gain=adapted_score - scratch_scores[t],
                adapt_samples=adapt_samples, test_samples=test_sizes[t],
            )  # fmt: skip
        stage_times = {**times, "adapt": time.perf_counter() - tick}
        run_config = run.to_dict()
        run_config.setdefault("transfer", {})["adaptation"] = adaptation
        reports[adaptation] = TransferReport(
            metric=metric, source_domains=sources, target_domains=targets, source=source_score, targets=results,
            stage_seconds=stage_times, k_shot=None if settings.target_fraction else int(settings.k_shot),
            seed=seed, config_hash=config_hash(run_config), config=run_config, robustness=robustness,
            source_test_samples=source_test_samples, imbalance=imbalance,
        )  # fmt: skip
        if out is not None:
            name = "report.json" if len(adaptations) == 1 else f"report-{adaptation}.json"
            reports[adaptation].to_json(out / name)
    progress.bar.close()
    return reports


def _source_model(
    run: RunConfig, src: Mapping[str, datasets.Dataset], sources: list[str], out: Path | None,
    seed: int, progress: _Progress,
) -> tuple[MultimodalModel, TrainConfig, FitData, str]:  # fmt: skip
    """The model trained on the source domains, its stage config, data and metric name."""
    spec = run.data
    model = build_model(run.model.to_dict(), _rows(src["train"], spec), seed=seed)
    cfg = run.stage(output_dir=str(out / "source") if out else None, seed=seed, progress=False)
    streamed = is_streaming(src["train"])
    data = FitData(spec, src["train"], src["validation"], domains=sources if streamed else None)
    metric = fit(model, data, cfg, on_step=progress.stage("source")).metric
    return model, cfg, data, metric


def _plan(run: RunConfig, adaptations: list[str], source_train: datasets.Dataset,
          shots: Mapping[str, datasets.Dataset]) -> _Progress:  # fmt: skip
    """The transfer's progress bar, its total the optimizer steps of every stage."""
    progress = _Progress(run, enabled=run.train.progress)
    source_rows = None if is_streaming(source_train) else len(source_train)
    progress.plan({}, source_rows)
    for shot in shots.values():
        progress.plan(stage_overrides(run, "scratch"), len(shot))
        for adaptation in adaptations:
            whole = adaptation in UDA_METHODS + (SOURCE_ONLY,)
            progress.plan(stage_overrides(run, adaptation), source_rows if whole else len(shot))
    return progress


# The former name, kept for callers written before the rename.
transfer_strategies = transfer_adaptations


def _imbalance(
    model: MultimodalModel, settings: TransferConfig, source_test: datasets.Dataset,
    target_tests: Mapping[str, datasets.Dataset], spec: DatasetSpec, batch: int,
    times: dict[str, float],
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """With ``transfer.imbalance``, the source model's modality imbalance per test split
    (nothing to measure for a model of one modality)."""
    if not settings.imbalance or len(model.modalities) < 2:
        return {}
    tick = time.perf_counter()
    tests = {"source": source_test, **target_tests}
    out = {d: modality_imbalance(model, ds, spec, batch) for d, ds in tests.items()}
    times["imbalance_eval"] = time.perf_counter() - tick
    return out


def source_and_targets(
    train: datasets.Dataset, settings: TransferConfig
) -> tuple[list[str], list[str]]:
    """The source and target domains: as configured, else the first domain and the rest
    (a stream is read once, its domain column only, to find them)."""
    if settings.source and settings.target:
        return list(settings.source), list(settings.target)
    domains = scan(train)[1] if is_streaming(train) else sorted(set(train["domain"]))
    sources = list(settings.source or domains[:1])
    targets = list(settings.target or [d for d in domains if d not in sources])
    if not targets:
        raise ValueError(f"no target domain: the data has {domains}, the source is {sources}")
    return sources, targets


def stage_overrides(run: RunConfig, stage: str) -> dict[str, Any]:
    """The train keys a stage sets over the run's train section: ``scratch``, an
    unsupervised method, ``source_only``, or a freezing strategy fine-tuned on the sample."""
    settings = run.transfer
    if stage == "scratch":
        return {**SCRATCH_DEFAULTS, **settings.scratch}
    if stage in UDA_METHODS:
        return {**UDA_DEFAULTS, **settings.uda, "uda": stage}
    if stage == SOURCE_ONLY:
        return {**UDA_DEFAULTS, **settings.uda}
    return {**ADAPT_DEFAULTS, **settings.adapt, "strategy": stage}


class _Progress:
    """One bar over the optimizer steps of every stage of a transfer, the running stage
    named beside it, so its ETA covers the whole command (the stages' own bars stay off)."""

    def __init__(self, run: RunConfig, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.run, self.known = run, True
        self.bar = tqdm(total=0, desc="transfer", unit="step", disable=not enabled)

    def plan(self, overrides: Mapping[str, Any], rows: int | None) -> None:
        """Add a stage of ``rows`` training rows (None: a stream, whose length is unknown)."""
        if rows is None:
            self.known, self.bar.total = False, None
        if not self.known:
            return
        cfg = self.run.stage(**overrides)
        self.bar.total += cfg.max_steps or cfg.epochs * math.ceil(
            math.ceil(rows / cfg.batch_size) / cfg.grad_accum
        )
        self.bar.refresh()

    def stage(self, name: str) -> list[Any]:
        """The ``on_step`` callbacks of a stage's fit."""
        self.bar.set_postfix_str(name)
        return [lambda state: self.bar.update(1)]


def _adapt(
    model: MultimodalModel, adaptation: str, run: RunConfig, source: FitData,
    target_train: datasets.Dataset, shots: datasets.Dataset, folder: str | None, seed: int,
    progress: _Progress,
) -> tuple[MultimodalModel, int]:  # fmt: skip
    """A copy of the source model adapted by ``adaptation``, and how many target rows it used.

    An unsupervised method trains on the source labels plus the whole unlabelled target
    train split; ``source_only`` is its control (the same extra source training, no target
    rows); a freezing strategy fine-tunes on the labelled target sample ``shots``.
    """
    adapted: MultimodalModel = copy.deepcopy(model)
    if adaptation in UDA_METHODS + (SOURCE_ONLY,) and is_streaming(source.train):
        raise ValueError(
            f"adaptation {adaptation!r} trains on whole splits; with streaming use a k-shot adaptation"
        )
    if adaptation in UDA_METHODS:
        data, used = dataclasses.replace(source, unlabelled=target_train), len(target_train)
    elif adaptation == SOURCE_ONLY:
        data, used = source, 0
    else:
        data, used = FitData(source.spec, shots), len(shots)
    cfg = run.stage(
        **stage_overrides(run, adaptation), output_dir=folder, seed=seed, progress=False
    )
    fit(adapted, data, cfg, on_step=progress.stage(f"adapt {adaptation}"))
    return adapted, used


def _size(ds: datasets.Dataset) -> int:
    return scan(ds)[0] if is_streaming(ds) else len(ds)


def _scratch(
    run: RunConfig, shots: datasets.Dataset, test: datasets.Dataset,
    folder: Path | None, seed: int, batch: int, metric: str, progress: _Progress,
) -> float:  # fmt: skip
    """The baseline: a fresh model trained on the same target sample, scored on the target test."""
    spec = run.data
    scratch = build_model(run.model.to_dict(), _rows(shots, spec), seed=seed)
    cfg = run.stage(**stage_overrides(run, "scratch"), output_dir=str(folder) if folder else None,
                    seed=seed, progress=False)  # fmt: skip
    fit(scratch, FitData(spec, shots), cfg, on_step=progress.stage("scratch"))
    return evaluate(scratch, test, spec, batch)[metric]
