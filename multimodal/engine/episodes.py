"""Episodes as a batch dimension: the k-shot fits of a transfer's episodes, trained together.

With every encoder frozen and its outputs cached, each episode's fit (an adaptation arm's,
or the scratch baseline's) trains a fusion and head on a few dozen rows: an independent
small problem whose arithmetic takes far less time than the Python around each step.
``fit_episodes`` stacks the E models' trainable parameters on a leading dimension and runs
the E models as one through ``torch.func.functional_call`` under ``torch.func.vmap``: one
forward, backward and optimizer step per batch for all of them. Each episode keeps what a
``fit`` of its own does (its shuffle, ``EpochSampler`` with its seed; its dropout masks and
router noise, keyed by its seed, ``core.randomness``; its own gradient clipping; AdamW or
SGD on its own parameters, elementwise), so its model is the sequential fit's up to
floating-point rounding. Fusions run under ``fusion.static_shapes``, which vmap needs.

A fit this cannot express (a run folder to write, an objective beyond the task's loss and
the fusion's auxiliary loss, encoders that train, early stopping, BatchNorm in the fusion
or head) is done by ``fit``, one episode after another, and ``EpisodeFits.reason`` says why.
``evaluate_episodes`` scores the E models on a split in one pass the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.split import Split
from .config import FitData, FitResult, TrainConfig
from .loaders import split_features
from .performance import fit_device, precision
from .stacked import (
    NotBatchable,
    fit_rows,
    fit_stacked,
    fusion_and_head,
    model_inputs,
    stacked_logits,
    stacked_metrics,
)
from .training import fit

logger = logging.getLogger(__name__)
# Keys that may differ between the episodes' configs: each fit's own seed.
_PER_EPISODE = ("seed",)


@dataclass
class EpisodeFits:
    """What ``fit_episodes`` did: ``batched`` (how many of the fits ran together) or, with
    ``reason``, one after another; each model's ``FitResult``."""

    batched: int
    total: int
    reason: str | None
    results: list[FitResult] = field(default_factory=list)

    @property
    def mode(self) -> str:
        """``batched``, ``sequential: <why>``, or ``batched N of M: <why the rest were not>``."""
        if self.batched and self.batched == self.total:
            return "batched"
        if not self.batched:
            return f"sequential: {self.reason}"
        return f"batched {self.batched} of {self.total}: {self.reason}"


def fit_episodes(
    models: Sequence[Any], datas: Sequence[FitData], configs: Sequence[TrainConfig | dict],
    on_step: Sequence[Callable[[Any], None]] = (),
    on_evaluate: Sequence[Sequence[Callable[..., bool]]] | None = None,
) -> EpisodeFits:  # fmt: skip
    """Train each model on its data under its config, as ``fit`` would, batched where it
    can be: models that hold the same encoders (a seed's episodes, when the encoders depend
    on the seed) run together. Models whose config writes a run folder are fitted alone
    (``fit`` writes it), and so are models with ``on_evaluate`` callbacks (each model's)."""
    configs = [TrainConfig.from_dict(c) for c in configs]
    calls = [list(c) for c in on_evaluate] if on_evaluate else [[] for _ in models]
    results: dict[int, FitResult] = {}
    reasons: list[str] = []
    groups = _same_encoders(models, [i for i, c in enumerate(configs) if not c.output_dir])
    for group in groups:
        reason = why_not_batched([models[i] for i in group], [datas[i] for i in group],
                                 [configs[i] for i in group])  # fmt: skip
        if len(group) == 1 and len(groups) > 1:
            reason = "the encoders differ between the models (fitted on rows, or seeded per seed)"
        if any(calls[i] for i in group):
            reason = "a callback on every evaluation"
        if reason is None:
            try:
                batch = fit_stacked([models[i] for i in group], [datas[i] for i in group],
                                    [configs[i] for i in group], on_step)  # fmt: skip
                results.update(zip(group, batch, strict=True))
                continue
            except NotBatchable as err:
                reason = str(err)
                logger.info("episode fits run one after another: %s", reason)
        reasons.append(reason)
    batched = len(results)
    reason = reasons[0] if reasons else None
    if batched and batched < len(models) and not reasons:
        reason = "the others write a run folder"
    for i in range(len(models)):
        if i not in results:
            results[i] = fit(models[i], datas[i], configs[i], calls[i], on_step=on_step)
    return EpisodeFits(batched, len(models), reason, [results[i] for i in range(len(models))])


def _same_encoders(models: Sequence[Any], indices: list[int]) -> list[list[int]]:
    """``indices`` grouped by the encoders their models hold (the same weights)."""
    from ..modeling.fingerprint import encoder_fingerprint

    groups: dict[tuple[str, ...], list[int]] = {}
    for i in indices:  # fingerprints reuse each tensor's digest (and a pooled encoder's)
        encoders = getattr(models[i], "encoders", {})
        key = tuple(encoder_fingerprint(encoders[m]) for m in sorted(encoders))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def why_not_batched(
    models: Sequence[Any], datas: Sequence[FitData], configs: Sequence[TrainConfig]
) -> str | None:
    """None when the fits can run together, else why not, in a few words."""
    if len(models) < 2:
        return "one episode"
    cfg = configs[0]
    strip = {k: None for k in _PER_EPISODE}
    if any(dataclasses.replace(c, **strip) != dataclasses.replace(cfg, **strip) for c in configs):
        return "the episodes' train configs differ"
    checks = [
        (cfg.feature_cache != "memory", "the feature cache is not in memory"),
        (cfg.uda != "none" or cfg.balance != "none" or cfg.regularize != "none" or cfg.dg != "none",
         "an objective beyond the task's loss"),
        (cfg.domain_balanced, "domain-balanced batches (train.domain_balanced)"),
        (bool(cfg.adversarial) or cfg.augment != "none", "inputs are perturbed"),
        (cfg.private, "private training (train.dp)"),
        (cfg.grad_accum != 1 or cfg.batch_size == "auto", "gradient accumulation or a probed batch size"),
        (cfg.patience is not None or cfg.eval_every is not None, "early stopping or mid-epoch evaluation"),
        (bool(cfg.compile), "train.compile"),
        (cfg.weight_average != "none", "weight averaging (train.weight_average)"),
        (precision(cfg, fit_device()) == "fp16", "fp16 (a grad scaler)"),
        (int(os.environ.get("WORLD_SIZE", "1")) > 1, "several processes"),
    ]  # fmt: skip
    for failed, why in checks:
        if failed:
            return why
    return _data_reason(datas) or _model_reason(models)


def _same_rows(a: Any, b: Any) -> bool:
    """The same split: the same object, or equal content fingerprints (each run of a group
    loads its own copy of the data)."""
    if a is None or b is None:
        return a is b
    return a is b or (
        getattr(a, "_fingerprint", None) == getattr(b, "_fingerprint", 0) and len(a) == len(b)
    )


def _data_reason(datas: Sequence[FitData]) -> str | None:
    first = datas[0]
    if any(Split(d.train).streamed for d in datas):
        return "a streamed split"
    if any(not _same_rows(d.train, first.train) or not _same_rows(d.validation, first.validation)
           for d in datas):  # fmt: skip
        return "the fits read different splits"
    if any(d.unlabelled is not None or d.reference is not None for d in datas):
        return "an objective beyond the task's loss"
    if len({len(fit_rows(d)) for d in datas}) != 1:
        return "the fits train on different numbers of rows"
    return None


def _model_reason(models: Sequence[Any]) -> str | None:
    template = models[0]
    if any(type(m) is not type(template) or m.modalities != template.modalities for m in models):
        return "the models differ in architecture"
    from ..modeling.fingerprint import encoder_fingerprint

    for name, encoder in template.encoders.items():
        if (
            any(m.encoders[name] is not encoder for m in models)
            and len({encoder_fingerprint(m.encoders[name]) for m in models}) > 1
        ):
            return f"the {name} encoders differ between the models"
    batchnorm = torch.nn.modules.batchnorm._BatchNorm
    if any(
        isinstance(x, batchnorm) for x in (*template.fusion.modules(), *template.head.modules())
    ):
        return "BatchNorm in the fusion or head"
    return None


def evaluate_episodes(
    models: Sequence[Any], ds: Any, spec: Any, batch_size: int = 64, ranking: bool = True
) -> list[dict[str, float]]:
    """``evaluate(model, ds, spec, batch_size, cached=True)`` for each model: in one pass
    over the split's cached features for the models that share their encoders (their
    fusions and heads stacked under vmap), else one after another."""
    from .evaluate import evaluate

    if Split(ds).streamed:
        return [evaluate(m, ds, spec, batch_size, cached=True, ranking=ranking) for m in models]
    out: dict[int, dict[str, float]] = {}
    for group in _same_encoders(models, list(range(len(models)))):
        chosen = [models[i] for i in group]
        if len(chosen) < 2 or _model_reason(chosen) is not None:
            out.update(
                (i, evaluate(models[i], ds, spec, batch_size, cached=True, ranking=ranking))
                for i in group
            )
        else:
            out.update(
                zip(group, _evaluate_stacked(chosen, ds, spec, batch_size, ranking), strict=True)
            )
    return [out[i] for i in range(len(models))]


def _evaluate_stacked(
    models: Sequence[Any], ds: Any, spec: Any, batch_size: int, ranking: bool
) -> list[dict[str, float]]:
    from .evaluate import evaluate

    template = models[0]
    cfg = TrainConfig(batch_size=batch_size)
    features = split_features(template, ds, spec, cfg)
    if features.on_disk:
        return [evaluate(m, ds, spec, batch_size, cached=True, ranking=ranking) for m in models]
    states = [fusion_and_head(m) for m in models]
    state = {n: torch.stack([s[n].detach() for s in states]) for n in states[0]}
    inputs = model_inputs(template, features)
    return stacked_metrics(models, stacked_logits(template, state, inputs, cfg), inputs, ranking)
