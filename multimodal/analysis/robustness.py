"""Robustness evaluation: metrics with modalities missing at test time, and under corruptions."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets

from ..data.spec import DatasetSpec
from ..engine import evaluate


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
                "metric": model.head.task.default_metric,
                **metrics,
            }
        )
    main = model.head.task.default_metric
    full = rows[0][main]
    for row in rows:
        row["relative"] = row[main] / full if full else float("nan")
    return rows


def format_missing_table(rows: Sequence[dict[str, Any]]) -> str:
    main = rows[0]["metric"]
    lines = [f"{'dropped':<32} {main:>9} {'loss':>8} {'relative':>9}", "-" * 61]
    for r in rows:
        lines.append(
            f"{', '.join(r['dropped']) or '(none)':<32} {r[main]:>9.4f} {r['loss']:>8.4f} {r['relative']:>9.3f}"
        )
    return "\n".join(lines)


def corruption_curves(
    model: Any,
    ds: datasets.Dataset,
    spec: DatasetSpec,
    batch_size: int = 64,
    severities: Sequence[int] = (0, 1, 2, 3, 4, 5),
) -> list[dict[str, Any]]:
    """Accuracy (or RMSE) against severity for every corruption of every modality of the model,
    with MultiBench's relative robustness (area under the curve over severities scaled to [0, 1])."""
    from ..data.corruptions import CORRUPTIONS

    main = model.head.task.default_metric
    clean = evaluate(model, ds, spec, batch_size)[main]
    rows = []
    for m, enc in model.encoders.items():
        for name in CORRUPTIONS.get(enc.modality, []):
            curve = [
                clean
                if s == 0
                else evaluate(model, ds, spec, batch_size, corruption=(m, name, s))[main]
                for s in severities
            ]
            rows.append({"modality": m, "corruption": name, "severities": list(severities),
                         "metric": main, main: curve,
                         "relative_robustness": relative_robustness(curve)})  # fmt: skip
    return rows


def relative_robustness(curve: Sequence[float]) -> float:
    """Area under the metric-vs-severity curve, severities spread evenly over [0, 1]
    (trapezoids, as MultiBench's relative robustness before its min-max normalisation)."""
    if len(curve) < 2:
        return float(curve[0]) if curve else float("nan")
    step = 1.0 / (len(curve) - 1)
    return float(sum((a + b) * step / 2 for a, b in zip(curve[:-1], curve[1:], strict=True)))


def effective_robustness(curve: Sequence[float], reference: Sequence[float]) -> float:
    """MultiBench's effective robustness: the summed gap to a reference curve shifted to the
    same clean performance (late fusion in MultiBench; any baseline model here)."""
    if len(curve) != len(reference):
        raise ValueError(f"curves differ in length: {len(curve)} and {len(reference)}")
    shift = curve[0] - reference[0]
    return float(sum(f - (r + shift) for f, r in zip(curve, reference, strict=True)))


def format_corruption_table(rows: Sequence[dict[str, Any]]) -> str:
    main = rows[0]["metric"]
    severities = rows[0]["severities"]
    head = (
        f"{'modality':<10} {'corruption':<13} "
        + " ".join(f"{'s' + str(s):>6}" for s in severities)
        + f" {'rel. rob.':>10}"
        + (f" {'eff. rob.':>10}" if "effective_robustness" in rows[0] else "")
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        extra = f" {r['effective_robustness']:>+10.3f}" if "effective_robustness" in r else ""
        lines.append(
            f"{r['modality']:<10} {r['corruption']:<13} "
            + " ".join(f"{v:>6.3f}" for v in r[main])
            + f" {r['relative_robustness']:>10.3f}"
            + extra
        )
    return "\n".join(lines)


def plot_corruption_curves(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """One panel per modality: the metric against severity, one line per corruption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = rows[0]["metric"]
    modalities = sorted({r["modality"] for r in rows})
    fig, axes = plt.subplots(
        1, len(modalities), figsize=(3.6 * len(modalities), 3.4), squeeze=False, sharey=True
    )
    for ax, m in zip(axes[0], modalities, strict=True):
        for r in (r for r in rows if r["modality"] == m):
            label = f"{r['corruption']} (rel. {r['relative_robustness']:.2f})"
            ax.plot(r["severities"], r[main], marker="o", label=label)
        ax.set_title(m)
        ax.set_xlabel("severity")
        ax.set_xticks(rows[0]["severities"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(main)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
