"""Robustness evaluation: metrics with modalities missing at test time."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import datasets

from .data import DatasetSpec
from .training import evaluate


def missing_modality_table(
    model: Any, ds: datasets.Dataset, spec: DatasetSpec, batch_size: int = 64, subsets: str = "all"
) -> list[dict[str, Any]]:
    """The model's metrics with each subset of its modalities removed at test time.

    subsets: ``"all"`` (every proper subset, from none to all but one) or ``"one"`` (none,
    then each modality alone removed). Each row: the dropped and kept modalities and the
    metrics, with ``relative`` = metric / metric with nothing dropped for the main metric.
    """
    modalities = model.modalities
    if subsets == "one":
        dropped_sets: Sequence[tuple[str, ...]] = [(), *[(m,) for m in modalities]]
    elif subsets == "all":
        dropped_sets = [
            c for r in range(len(modalities)) for c in itertools.combinations(modalities, r)
        ]
    else:
        raise ValueError(f"subsets must be 'all' or 'one', got {subsets!r}")
    rows = []
    for dropped in dropped_sets:
        metrics = evaluate(model, ds, spec, batch_size, drop_modalities=dropped)
        rows.append(
            {
                "dropped": list(dropped),
                "kept": [m for m in modalities if m not in dropped],
                **metrics,
            }
        )
    main = "rmse" if model.head.task == "regression" else "accuracy"
    full = rows[0][main]
    for row in rows:
        row["relative"] = row[main] / full if full else float("nan")
    return rows


def format_missing_table(rows: Sequence[dict[str, Any]]) -> str:
    main = "accuracy" if "accuracy" in rows[0] else "rmse"
    lines = [f"{'dropped':<32} {main:>9} {'loss':>8} {'relative':>9}", "-" * 61]
    for r in rows:
        lines.append(
            f"{', '.join(r['dropped']) or '(none)':<32} {r[main]:>9.4f} {r['loss']:>8.4f} {r['relative']:>9.3f}"
        )
    return "\n".join(lines)
