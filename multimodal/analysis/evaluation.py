"""An evaluation report: metrics overall, per domain and, for a classifier, per class, with
the confusion matrix (rows: true class, columns: predicted)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import torch

from ..core.io import write_json_atomic
from ..data.spec import DatasetSpec
from ..data.split import Split
from ..engine.evaluate import predict


def predictions(model: Any, ds: datasets.Dataset, spec: DatasetSpec,
                 batch_size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:  # fmt: skip
    """Logits, labels and each row's domain (empty for a stream), in row order, through
    the engine's evaluation loop."""
    logits, labels = predict(model, ds, spec, batch_size)
    if labels is None:
        raise ValueError(f"column {spec.label!r}: the split has no labels to evaluate against")
    return logits, labels, Split(ds).row_domains()


def evaluation_report(
    model: Any, ds: datasets.Dataset, spec: DatasetSpec, batch_size: int = 64,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """{"overall": metrics, "domains": {domain: metrics and n}, "classes": {name: precision,
    recall, f1, support}, "confusion": {"labels": names, "matrix": counts}}; the last two
    for a classifier only."""
    logits, labels, domains = predictions(model, ds, spec, batch_size)
    task = model.head.task
    if labels.numel() == 0:
        raise ValueError("the split has no rows to evaluate")

    def metrics(keep: torch.Tensor) -> dict[str, float]:
        return {"n": int(keep.sum()), "loss": task.loss(logits[keep], labels[keep]).item(),
                **task.metrics(logits[keep], labels[keep])}  # fmt: skip

    report: dict[str, Any] = {
        "overall": metrics(torch.ones(len(labels), dtype=torch.bool)),
        "domains": {
            d: metrics(torch.tensor([x == d for x in domains])) for d in sorted(set(domains))
        },
    }
    if task.exclusive_classes:
        from .calibration import reliability_bins, selective_accuracy

        probs = task.probabilities(logits)
        report["overall"].update(selective_accuracy(probs, labels))
        for d, m in report["domains"].items():  # each row of the table has every column
            keep = torch.tensor([x == d for x in domains])
            m.update(selective_accuracy(probs[keep], labels[keep]))
        report["reliability"] = reliability_bins(probs, labels)
        report["temperature"] = task.temperature
        report.update(_per_class(logits.argmax(-1), labels, model.head.num_classes, class_names))
    return report


def _per_class(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int,
               class_names: Sequence[str] | None) -> dict[str, Any]:  # fmt: skip
    names = [str(n) for n in class_names] if class_names else [str(c) for c in range(num_classes)]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_(
        (labels.long(), predicted.long()),
        torch.ones_like(labels, dtype=torch.long),
        accumulate=True,
    )
    classes = {}
    for c, name in enumerate(names):
        tp, support, predicted_c = (
            int(confusion[c, c]),
            int(confusion[c].sum()),
            int(confusion[:, c].sum()),
        )
        precision = tp / predicted_c if predicted_c else math.nan
        recall = tp / support if support else math.nan
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else math.nan
        classes[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return {"classes": classes, "confusion": {"labels": names, "matrix": confusion.tolist()}}


def format_report(report: dict[str, Any], in_domain: Sequence[str] = ()) -> str:
    """The report as text tables: overall and per domain, then per class."""
    keys = [k for k in report["overall"] if k != "n"]
    rows = [("overall", report["overall"])] + [
        (f"{d} (in-domain)" if d in in_domain else d, m) for d, m in report["domains"].items()
    ]
    width = max(14, *(len(name) for name, _ in rows))
    head = f"{'rows':<{width}} {'n':>6} " + " ".join(f"{k:>10}" for k in keys)
    lines = [head, "-" * len(head)]
    for name, m in rows:
        lines.append(
            f"{name:<{width}} {m['n']:>6} " + " ".join(f"{m.get(k, math.nan):>10.4f}" for k in keys)
        )
    if "classes" in report:
        lines += ["", f"{'class':<14} {'support':>8} {'precision':>10} {'recall':>10} {'f1':>10}"]
        for name, c in report["classes"].items():
            lines.append(
                f"{name:<14} {c['support']:>8} {c['precision']:>10.4f} {c['recall']:>10.4f} {c['f1']:>10.4f}"
            )
    return "\n".join(lines)


# What ``write_report`` may write into its folder.
REPORT_FILES = ("evaluation.json", "confusion.json", "confusion.png", "reliability.png")


def write_report(report: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """evaluation.json and, for a classifier, confusion.json, confusion.png and
    reliability.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "evaluation.json", report)
    paths = {"json": out / "evaluation.json"}
    if "confusion" in report:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        write_json_atomic(out / "confusion.json", report["confusion"])
        names, matrix = report["confusion"]["labels"], report["confusion"]["matrix"]
        size = 1.0 + 0.45 * len(names)
        fig, ax = plt.subplots(figsize=(size + 1, size))
        image = ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        top = max(max(row) for row in matrix) or 1
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                        color="white" if v > top / 2 else "black")  # fmt: skip
        fig.colorbar(image, ax=ax, shrink=0.8)
        fig.tight_layout()
        fig.savefig(out / "confusion.png", dpi=120)
        plt.close(fig)
        paths.update(confusion_json=out / "confusion.json", confusion_png=out / "confusion.png")
    if "reliability" in report:
        from .calibration import plot_reliability

        title = f"ECE {report['overall'].get('ece', math.nan):.3f}, temperature {report.get('temperature', 1.0):.2f}"
        paths["reliability_png"] = plot_reliability(
            report["reliability"], out / "reliability.png", title
        )
    return paths
