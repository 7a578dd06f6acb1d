"""``auto``: the arm chosen per episode from its labelled rows alone.

Each arm of ``transfer.auto_arms`` (default head, l2sp, lwf: arms that fine-tune on the
episode's rows) is scored by stratified ``transfer.auto_folds``-fold cross-validation inside
those rows: trained on the other folds from the source model, scored on the held-out fold
(the task's metric), averaged over the folds. The best wins (ties: the first listed);
it then trains on every row of the episode, as that arm alone would. ``choices`` records,
per target and episode, the arm chosen and every arm's cross-validated score, and the report
carries them (``TransferReport.auto``). Cross-validation, not an estimator: the estimators
rank features (``multimodal rank``), and these arms share the source model's features.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...data.split import Split
from ...engine.config import FitData, TrainConfig
from ...engine.evaluate import evaluate
from ...engine.training import fit
from . import create_adaptation, register_adaptation
from ._base import Adaptation, AdaptContext, stage_keys
from .finetune import ADAPT_DEFAULTS


def stratified_folds(labels: Sequence[int], folds: int, seed: int) -> list[list[int]]:
    """Positions 0..n-1 in ``folds`` folds, each class dealt round-robin after a seeded
    shuffle, so every fold holds each class about equally."""
    rng = np.random.default_rng(seed)
    out: list[list[int]] = [[] for _ in range(folds)]
    labels = np.asarray(labels)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        for i, position in enumerate(members):
            out[i % folds].append(int(position))
    return [sorted(f) for f in out if f]


@register_adaptation("auto")
class Auto(Adaptation):
    """Cross-validation inside the episode's labelled rows picks the arm."""

    def __init__(self) -> None:
        self.transfer: Any = None
        self.choices: list[dict[str, Any]] = []

    def overrides(self, transfer: Any) -> dict[str, Any]:
        self.transfer = transfer
        arms = [create_adaptation(a) for a in transfer.auto_arms]
        if not arms or any(
            not a.trains_with_fit or not a.episodic or a.name == "auto" for a in arms
        ):
            raise ValueError(f"transfer.auto_arms must name arms that fine-tune on the episode's rows "
                             f"(head, top_k, full, lora, l2sp, ewc, lwf), got {transfer.auto_arms}")  # fmt: skip
        # the plain fine-tuning base: each candidate's own keys (a regularizer, a strategy)
        # go over it in _config, so none of them leaks into another
        return stage_keys(ADAPT_DEFAULTS, transfer.adapt, regularize="none")

    def data(self, context: AdaptContext) -> tuple[FitData, int]:
        if context.rows is None:
            raise ValueError(
                "transfer.adaptation: auto needs the episode's rows by index (not a stream)"
            )
        self.context = context
        return FitData(context.source.spec, context.target_train, train_indices=context.rows), len(
            context.rows
        )

    def train(
        self, model: Any, data: FitData, cfg: TrainConfig, on_step: Sequence[Any] = ()
    ) -> None:
        rows = list(data.train_indices or [])
        labels = Split(data.train).column(data.spec.label)
        folds = stratified_folds([labels[r] for r in rows], int(self.transfer.auto_folds), cfg.seed)
        scores = {
            arm: self._cross_validate(model, data, cfg, arm, rows, folds)
            for arm in self.transfer.auto_arms
        }
        from ...modeling.tasks import METRIC_MODES

        sign = (
            -1.0
            if METRIC_MODES.get(cfg.metric or model.head.task.default_metric, "max") == "min"
            else 1.0
        )
        chosen = max(self.transfer.auto_arms, key=lambda a: sign * scores[a])  # the first of ties
        self.choices.append({"seed": cfg.seed, "rows": len(rows), "folds": len(folds), "chosen": chosen,
                             "cross_validated": scores})  # fmt: skip
        arm = create_adaptation(chosen)
        own, _ = arm.data(self.context)
        fit(model, own, self._config(cfg, arm), on_step=on_step)

    def _config(self, cfg: TrainConfig, arm: Adaptation) -> TrainConfig:
        return dataclasses.replace(
            cfg, **TrainConfig.coerce({"max_steps": cfg.max_steps, **arm.overrides(self.transfer)})
        )

    def _cross_validate(self, model: Any, data: FitData, cfg: TrainConfig, name: str,
                        rows: list[int], folds: list[list[int]]) -> float:  # fmt: skip
        """The arm's mean held-out metric over the folds, each fold's model trained from a
        copy of the source model on the other folds' rows."""
        arm = create_adaptation(name)
        config = dataclasses.replace(self._config(cfg, arm), output_dir=None, progress=False)
        shared = {id(model.encoders): model.encoders} if config.strategy == "head" else {}
        values = []
        for held in folds:
            train = [rows[i] for i in range(len(rows)) if i not in set(held)]
            context = dataclasses.replace(self.context, rows=train)
            fold_data, _ = arm.data(context)
            trial = copy.deepcopy(model, shared)
            fit(trial, fold_data, config)
            values.append(self._held_out(trial, data, config, [rows[i] for i in held]))
        return float(np.mean(values))

    def _held_out(self, model: Any, data: FitData, cfg: TrainConfig, held: list[int]) -> float:
        """The metric on the held-out rows: accuracy from the split's cached features (one
        pass of fusion and head over them), any other metric by ``evaluate``."""
        metric = cfg.metric or model.head.task.default_metric
        if metric != "accuracy":
            return float(evaluate(model, data.train.select(held), data.spec, cached=True)[metric])
        from ...engine.evaluate import model_view

        probs, _ = model_view(model, data.train, data.spec, cfg)
        labels = np.asarray(Split(data.train).column(data.spec.label))[held]
        return float((probs[held].argmax(1) == labels).mean())
