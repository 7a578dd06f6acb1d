"""A transfer's plan: the splits, the k-shot episodes per target, the seed, the metric and
where the stages write; and the progress bar over every stage."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from ...data.collate import RowView
from ...data.loading import k_shot, k_shot_indices, label_column, load_dataset, select_domains
from ...data.spec import DatasetSpec
from ...data.split import Split
from ...engine import TrainConfig, evaluate
from ...engine.evaluate import model_view
from ...modeling.pool import EncoderPool
from ..config import DISTILL_DEFAULTS, RunConfig, TransferConfig, student_config
from .select import SELECTORS, select_rows

# The process's frozen encoders, shared by the transfers that keep every encoder frozen.
ENCODERS = EncoderPool()


@dataclass(frozen=True)
class Episode:
    """One labelled draw from a target's train split: ``rows`` index that split (None for
    a stream, whose draw is ``sample``). ``seed`` depends only on (run seed, target, index),
    so episode e holds the same rows for every fusion, adaptation and encoder set."""

    target: str
    index: int
    seed: int
    rows: tuple[int, ...] | None
    sample: datasets.Dataset | None = field(default=None, compare=False)

    def dataset(self, train: datasets.Dataset) -> datasets.Dataset:
        """The episode's rows as a dataset of their own."""
        return self.sample if self.rows is None else train.select(list(self.rows))


def episode_seed(seed: int, target: str, index: int) -> int:
    """The seed of episode ``index`` of ``target``: common random numbers across arms."""
    state = np.random.SeedSequence([seed, zlib.crc32(target.encode()), index]).generate_state(1)
    return int(state[0])


def draw_episode(
    train: datasets.Dataset, settings: TransferConfig, seed: int, target: str, index: int,
    label: str, labels: Callable[[], Sequence[Any]] | None = None,
) -> Episode:  # fmt: skip
    """k rows per class (``transfer.k_shot``), or ``transfer.target_fraction`` of the rows,
    drawn with the episode's seed. ``labels``: reads the split's label column (``_labels``,
    shared by a target's episodes); by default read here."""
    own = episode_seed(seed, target, index)
    if Split(train).streamed:
        if settings.target_fraction:
            raise ValueError(
                "transfer.target_fraction needs the size of the target split; with streaming use k_shot"
            )
        return Episode(target, index, own, None, k_shot(train, int(settings.k_shot), own, label))
    if settings.target_fraction:
        n = max(1, int(round(float(settings.target_fraction) * len(train))))
        rows = np.random.default_rng(own).permutation(len(train))[:n]
        return Episode(target, index, own, tuple(sorted(int(r) for r in rows)))
    column = (labels or _labels(train, label))()
    return Episode(target, index, own, tuple(k_shot_indices(column, int(settings.k_shot), own)))


def _labels(train: datasets.Dataset, label: str) -> Callable[[], Sequence[Any]]:
    """A held split's label column, read on the first call only."""
    return functools.cache(lambda: Split(train).column(label_column(train, label)))


def fit_summary(result: Any) -> dict[str, Any]:
    """A fit's throughput: steps, batch, rows/s, training-loop seconds and the share of them
    spent waiting for batches (near 1: the loader, not the device, sets the pace)."""
    seconds = sum(result.epoch_seconds)
    return {"steps": result.steps, "batch_size": result.batch_size, "grad_accum": result.grad_accum,
            "train_samples_per_s": result.train_samples_per_s, "train_seconds": seconds,
            "data_wait_s": result.data_wait_s, "data_wait_share": result.data_wait_s / seconds if seconds else 0.0,
            "first_step_s": result.first_step_s}  # fmt: skip


def source_and_targets(
    train: datasets.Dataset, settings: TransferConfig
) -> tuple[list[str], list[str]]:
    """The source and target domains: as configured, else the first domain and the rest
    (a stream is read once, its domain column only, to find them)."""
    if settings.source and settings.target:
        return list(settings.source), list(settings.target)
    domains = Split(train).domains()
    sources = list(settings.source or domains[:1])
    targets = list(settings.target or [d for d in domains if d not in sources])
    if not targets:
        raise ValueError(f"no target domain: the data has {domains}, the source is {sources}")
    return sources, targets


def split_size(ds: datasets.Dataset) -> int:
    return Split(ds).size()


def fitting_rows(ds: datasets.Dataset, spec: DatasetSpec) -> list[dict[str, Any]]:
    """The rows processors are fitted on: all of them, or a stream's first rows."""
    view = RowView(Split(ds).first(), spec, "train")
    return [view[i] for i in range(len(view))]


def _draw_episodes(
    target: Mapping[str, Any], settings: TransferConfig, seed: int, label: str
) -> dict[str, list[Episode]]:
    """Each target's episodes for ``seed``: its k-shot draws from the target's train split."""
    out = {}
    for t, splits in target.items():
        labels = _labels(splits["train"], label)  # read once for the target's episodes
        out[t] = [draw_episode(splits["train"], settings, seed, t, e, label, labels)
                  for e in range(int(settings.episodes))]  # fmt: skip
    return out


@dataclass
class TransferPlan:
    """Everything the stages share: the run config, its seed (from the typed config), the
    source and target splits, each target's episodes, the output folder and the metric
    (known once the source model has trained)."""

    run: RunConfig
    seed: int
    sources: list[str]
    targets: list[str]
    source: dict[str, datasets.Dataset]  # split -> the source domains' rows
    target: dict[str, dict[str, datasets.Dataset]]  # target -> split -> rows
    episodes: dict[str, list[Episode]]
    out: Path | None
    progress: Progress
    metric: str = ""
    source_privacy: dict[str, Any] | None = None  # train.dp: the source fit's budget spent
    source_fit: dict[str, Any] = field(default_factory=dict)  # its throughput (fit_summary)
    oracle: dict[str, float] = field(default_factory=dict)  # leave_one_out (transfer.oracle)
    # The scratch stage's untrained model, when building it does not depend on the rows
    # (False: it does, and each episode builds its own).
    scratch_template: Any = field(default=None, repr=False)
    # A student's plan: transfer.student's temperature, alpha and unlabelled_targets.
    distillation: dict[str, Any] = field(default_factory=dict)
    # Where the stages take their encoders from when every stage keeps them frozen (the
    # process's ENCODERS, shared by a benchmark's units), else None: each builds its own.
    pool: EncoderPool | None = field(default=None, repr=False)

    @classmethod
    def build(cls, run: RunConfig) -> TransferPlan:
        settings, spec = run.transfer, run.data
        if int(settings.episodes) < 1:
            raise ValueError(f"transfer.episodes must be 1 or more, got {settings.episodes}")
        if settings.select not in SELECTORS:
            raise ValueError(f"transfer.select must be one of {SELECTORS}, got {settings.select!r}")
        seed = run.run_seed
        dsd = load_dataset(spec)
        sources, targets = source_and_targets(dsd["train"], settings)
        source = {s: select_domains(dsd[s], sources) for s in dsd}
        target = {t: {s: select_domains(dsd[s], t) for s in dsd} for t in targets}
        episodes = _draw_episodes(target, settings, seed, spec.label)
        out = Path(run.output_dir) if run.output_dir else None
        return cls(run, seed, sources, targets, source, target, episodes, out,
                   Progress(run, enabled=stage_bars_enabled()))  # fmt: skip

    def with_seed(self, run: RunConfig) -> TransferPlan:
        """The plan of ``run``, which differs from this plan's run only in its seed: the same
        loaded splits and progress bar, its own seed and episodes (a group of seeds loads
        its data once)."""
        seed, settings = run.run_seed, run.transfer
        # The data spec as loading resolved it (a synthetic set's columns), not as written.
        run = dataclasses.replace(run, data=self.spec)
        episodes = _draw_episodes(self.target, settings, seed, run.data.label)
        return dataclasses.replace(self, run=run, seed=seed, episodes=episodes, metric="",
                                   source_privacy=None, source_fit={}, scratch_template=None)  # fmt: skip

    def student(self) -> TransferPlan | None:
        """The plan of ``transfer.student``'s model (None without one): this plan's data,
        episodes and progress bar; its own run config, metric and run folders (``student/``)."""
        settings = self.run.transfer.student
        if not settings:
            return None
        # The data spec as loading resolved it (a synthetic set's columns), not as written.
        run = dataclasses.replace(RunConfig.from_dict(student_config(self.run.raw)), data=self.spec)
        return dataclasses.replace(
            self, run=run,
            out=self.out / "student" if self.out is not None else None, metric="",
            source_privacy=None, source_fit={}, scratch_template=None, pool=None,
            distillation={k: settings.get(k, v) for k, v in DISTILL_DEFAULTS.items()},
        )  # fmt: skip

    @property
    def spec(self) -> DatasetSpec:
        return self.run.data

    def reselect(self, model: Any) -> None:
        """Redraw every episode with ``transfer.select`` (not random), from ``model``'s class
        probabilities and fused features on each target's train split; each episode keeps
        its seed and its budget of k rows per class."""
        settings = self.run.transfer
        if settings.target_fraction:
            raise ValueError(
                "transfer.select picks k rows per class: use k_shot, not target_fraction"
            )
        for t in self.targets:
            train = Split(self.target[t]["train"]).require_held(
                f"transfer.select={settings.select}"
            )
            probs, fused = model_view(model, train, self.spec, self.run.train)
            labels = train[label_column(train, self.spec.label)]
            self.episodes[t] = [
                Episode(t, e.index, e.seed, tuple(select_rows(settings.select, labels, int(settings.k_shot), e.seed,
                                                              probs, fused, settings.select_pool)))
                for e in self.episodes[t]
            ]  # fmt: skip

    @property
    def eval_batch(self) -> int:
        return self.run.train.eval_batch_size or self.run.train.nominal_batch_size

    def folder(self, name: str, episode: int = 0) -> str | None:
        """A stage's run folder: episode 0's runs keep theirs; later episodes write none."""
        return str(self.out / name) if self.out is not None and episode == 0 else None

    def stage(self, overrides: Mapping[str, Any], folder: str | None, seed: int) -> TrainConfig:
        return self.run.stage(**overrides, output_dir=folder, seed=seed, progress=False)

    def score(self, model: Any, ds: datasets.Dataset, cached: bool = True) -> float:
        """The metric of ``model`` on ``ds``; ``cached``: its encoder outputs read from (and
        kept in) the feature store, for encoders that later stages share."""
        return self.metrics(model, ds, cached)[self.metric]

    def metrics(self, model: Any, ds: datasets.Dataset, cached: bool = True) -> dict[str, float]:
        """Every metric of ``model`` on ``ds`` (``score``'s, and ECE for a classifier)."""
        return evaluate(model, ds, self.spec, self.eval_batch, cached=cached, ranking=self.ranking)

    @property
    def ranking(self) -> bool:
        """Whether evaluations compute AUROC: only when it is the metric (it sorts every
        class's scores, most of a small split's evaluation time, and no table reads it)."""
        from ...modeling.tasks import RANKING_METRICS

        return self.metric in RANKING_METRICS

    def all_metrics(
        self, models: list[Any], ds: datasets.Dataset, cached: bool = True
    ) -> list[dict[str, float]]:
        """``metrics`` of each model; in one pass when they share frozen encoders (``cached``)."""
        from ...engine.episodes import evaluate_episodes

        if not cached:
            return [self.metrics(m, ds, cached=False) for m in models]
        return evaluate_episodes(models, ds, self.spec, self.eval_batch, self.ranking)

    def scores(self, models: list[Any], ds: datasets.Dataset, cached: bool = True) -> list[float]:
        """``score`` of each model (``all_metrics``)."""
        return [m[self.metric] for m in self.all_metrics(models, ds, cached)]


# "0" turns the bar of a transfer's stages off (``multimodal bench --quiet``), "inner" shows
# it only while it runs (under a benchmark's bar); it travels to Ray workers and
# subprocesses with the environment.
# What a transfer writes into its output folder, beside anything else there: its report(s)
# and its stages' run folders (``TransferPlan.folder``, ``TransferPlan.student``).
OUTPUT_NAMES = ("report.json", "source", "student")
OUTPUT_PREFIXES = ("report-", "adapt-", "scratch-")


def earlier_outputs(out: Path) -> list[Path]:
    """What an earlier transfer left in ``out``."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir()
                  if p.name in OUTPUT_NAMES or p.name.startswith(OUTPUT_PREFIXES))  # fmt: skip


PROGRESS_ENV = "TRANSFERFUSE_PROGRESS"


def stage_bars_enabled() -> bool:
    """Whether a transfer shows its stages' bar: yes unless ``PROGRESS_ENV`` is "0".
    ``train.progress: false`` silences only each fit's own per-step bar."""
    return os.environ.get(PROGRESS_ENV, "1") != "0"


class Progress:
    """One bar over the optimizer steps of every stage of a transfer, the running stage
    named beside it, so its ETA covers the whole command (the stages' own bars stay off)."""

    def __init__(self, run: RunConfig, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.run, self.known = run, True
        # under a benchmark's bar of units, each unit's bar goes when the unit is done
        # (and only on a terminal: a log file gets the units' bar and status.json, not a
        # redraw of this one every tenth of a second)
        inner = os.environ.get(PROGRESS_ENV) == "inner"
        self.bar = tqdm(total=0, desc="transfer", unit="step", leave=not inner, mininterval=0.5,
                        disable=(None if inner else False) if enabled else True)  # fmt: skip

    def plan(self, overrides: Mapping[str, Any], rows: int | None, times: int = 1) -> None:
        """Add ``times`` stages of ``rows`` training rows (None: a stream, of unknown length)."""
        if rows is None:
            self.known, self.bar.total = False, None
        if not self.known:
            return
        self.bar.total += self._steps(overrides, rows) * times
        self.bar.refresh()

    def skip(self, overrides: Mapping[str, Any], rows: int | None) -> None:
        """A planned stage that will not train (its score was reused): out of the total."""
        if self.known and rows is not None:
            self.bar.total -= self._steps(overrides, rows)
            self.bar.refresh()

    def _steps(self, overrides: Mapping[str, Any], rows: int) -> int:
        cfg = self.run.stage(**overrides)
        return cfg.max_steps or cfg.epochs * math.ceil(
            math.ceil(rows / cfg.nominal_batch_size) / cfg.grad_accum
        )

    def stage(self, name: str) -> list[Any]:
        """The ``on_step`` callbacks of a stage's fit."""
        self.bar.set_postfix_str(name)
        return [lambda state: self.bar.update(1)]

    def close(self) -> None:
        self.bar.close()
