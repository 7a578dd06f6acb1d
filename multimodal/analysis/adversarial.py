"""Adversarial robustness tables: metrics clean and under FGSM and PGD (see ``modeling.attacks``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import torch

from ..data.spec import DatasetSpec
from ..engine.evaluate import eval_batches
from ..modeling.attacks import METHODS, perturb, resolve_budgets


def adversarial_table(
    model: Any,
    ds: datasets.Dataset,
    spec: DatasetSpec,
    budgets: Mapping[str, float] | None = None,
    methods: Sequence[str] = METHODS,
    steps: int = 10,
    batch_size: int = 64,
    per_modality: bool = True,
) -> list[dict[str, Any]]:
    """Metrics clean and under each attack, with every budgeted modality attacked together
    and (``per_modality``) each one attacked alone. Runs on the model's device, in eval mode."""
    radii = resolve_budgets(model, budgets)
    targets: list[tuple[str, dict[str, float]]] = [("all", radii)]
    if per_modality and len(radii) > 1:
        targets += [(m, {m: r}) for m, r in radii.items()]
    results: dict[tuple[str, str], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for batch in eval_batches(model, ds, spec, batch_size):
        with torch.no_grad():
            clean = model({k: v for k, v in batch.items() if k != "labels"}).logits
        results.setdefault(("clean", "-"), ([], []))[0].append(clean.float().cpu())
        results[("clean", "-")][1].append(batch["labels"].cpu())
        for method in methods:
            for name, radius in targets:
                adv = perturb(model, batch, method, radius, steps=steps)
                with torch.no_grad():
                    logits = model({k: v for k, v in adv.items() if k != "labels"}).logits
                logits_list, labels_list = results.setdefault((method, name), ([], []))
                logits_list.append(logits.float().cpu())
                labels_list.append(batch["labels"].cpu())
    rows = []
    for (method, name), (logits_list, labels_list) in results.items():
        logits, labels = torch.cat(logits_list), torch.cat(labels_list)
        attacked = {} if method == "clean" else (radii if name == "all" else {name: radii[name]})
        rows.append(
            {
                "attack": method,
                "attacked": name,
                "budgets": attacked,
                "metric": model.head.task.default_metric,
                "loss": model.head.loss(logits, labels).item(),
                **model.head.task.metrics(logits, labels),
            }
        )
    return rows


def format_adversarial_table(rows: Sequence[Mapping[str, Any]]) -> str:
    main = rows[0]["metric"]
    lines = [f"{'attack':<7} {'attacked':<12} {main:>9} {'loss':>8}  budget", "-" * 60]
    for r in rows:
        budget = ", ".join(f"{m} {v:.4g}" for m, v in r["budgets"].items()) or "-"
        lines.append(
            f"{r['attack']:<7} {r['attacked']:<12} {r[main]:>9.4f} {r['loss']:>8.4f}  {budget}"
        )
    return "\n".join(lines)
