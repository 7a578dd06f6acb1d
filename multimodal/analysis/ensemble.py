"""Ensembles of trained models: averaged predictions (any mix of seeds and fusions) and a
uniform weight soup (Wortsman et al., 2022) of runs that share one architecture."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

import datasets
import torch

from ..data.spec import DatasetSpec
from ..engine.evaluate import predict
from ..modeling.model import MultimodalModel


def _predictions(
    model: Any, ds: datasets.Dataset, spec: DatasetSpec, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (classification, multilabel) or outputs (regression) [N, C] and labels
    [N], in row order, through the engine's evaluation loop."""
    logits, labels = predict(model, ds, spec, batch_size)
    if labels is None:
        raise ValueError(f"column {spec.label!r}: the split has no labels to evaluate against")
    return model.head.task.probabilities(logits), labels


def evaluate_ensemble(
    models: Sequence[Any],
    ds: datasets.Dataset,
    spec: DatasetSpec,
    batch_size: int = 64,
    names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per member, then ``ensemble``: the average of the members' probabilities
    (classification, multilabel) or outputs (regression). Each member preprocesses with its
    own processors, so members may differ in encoders and fusion; heads must agree."""
    if not models:
        raise ValueError("an ensemble needs at least one model")
    names = list(names or [f"model_{i}" for i in range(len(models))])
    task, classes = models[0].head.task, models[0].head.num_classes
    for name, model in zip(names, models, strict=True):
        if (model.head.task.name, model.head.num_classes) != (task.name, classes):
            raise ValueError(
                f"{name} has a {model.head.task.name} head with {model.head.num_classes} outputs; "
                f"the first member has a {task.name} head with {classes}"
            )
    results, total = [], None
    for name, model in zip(names, models, strict=True):
        outputs, labels = _predictions(model, ds, spec, batch_size)
        total = outputs if total is None else total + outputs
        results.append({"model": name, "metric": task.default_metric,
                        **task.averaged_metrics(outputs, labels)})  # fmt: skip
    results.append(
        {
            "model": "ensemble",
            "members": names,
            "metric": task.default_metric,
            **task.averaged_metrics(total / len(models), labels),
        }
    )
    return results


def uniform_soup(models: Sequence[MultimodalModel]) -> MultimodalModel:
    """A model whose floating-point weights and buffers are the mean of the members'.

    The members must be one architecture: equal configs, state-dict shapes and processors
    (a trained tokenizer must have the same vocabulary, or token ids would mean different
    things across members).
    """
    if not models:
        raise ValueError("a soup needs at least one model")
    first = models[0]
    first_cfg = _architecture(first)
    for i, model in enumerate(models[1:], start=1):
        if _architecture(model) != first_cfg:
            raise ValueError(
                f"model {i} is another architecture than model 0 (configs differ); "
                "a soup averages runs of one architecture: use an ensemble instead"
            )
        for m, enc in model.encoders.items():
            tokenizer = getattr(enc, "tokenizer", None)
            if (
                tokenizer is not None
                and tokenizer.get_vocab() != first.encoders[m].tokenizer.get_vocab()
            ):
                raise ValueError(
                    f"model {i}'s {m!r} tokenizer has another vocabulary than model 0's"
                )
    states = [m.state_dict() for m in models]
    soup = copy.deepcopy(first)
    averaged = {}
    for key, value in states[0].items():
        if any(s[key].shape != value.shape for s in states):
            raise ValueError(f"parameter {key!r} differs in shape across the models")
        if value.is_floating_point():
            averaged[key] = torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
        else:
            averaged[key] = value  # counters such as BatchNorm's num_batches_tracked
    soup.load_state_dict(averaged)
    return soup


def evaluate_soup(
    models: Sequence[MultimodalModel], ds: datasets.Dataset, spec: DatasetSpec, batch_size: int = 64
) -> tuple[MultimodalModel, dict[str, Any]]:
    """The uniform soup of ``models`` and its report row (same metrics as the ensemble's)."""
    soup = uniform_soup(models)
    outputs, labels = _predictions(soup, ds, spec, batch_size)
    return soup, {
        "model": "soup",
        "members": len(models),
        "metric": soup.head.task.default_metric,
        **soup.head.task.averaged_metrics(outputs, labels),
    }


def _architecture(model: MultimodalModel) -> str:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        return json.dumps(model.config(Path(tmp)), sort_keys=True, default=str)


def format_ensemble_table(rows: Sequence[dict[str, Any]]) -> str:
    main = rows[0]["metric"]
    width = max(12, *(len(r["model"]) for r in rows))
    lines = [f"{'model':<{width}} {main:>9} {'loss':>8}", "-" * (width + 19)]
    lines += [f"{r['model']:<{width}} {r[main]:>9.4f} {r['loss']:>8.4f}" for r in rows]
    return "\n".join(lines)
