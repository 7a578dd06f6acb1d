"""Whether a classifier's probabilities can be trusted, and a fix that keeps its
predictions: temperature scaling (Guo et al. 2017; the reference is gpleiss/
temperature_scaling), reliability diagrams and selective prediction.

A temperature fitted on one split (the source validation split) and measured on another
domain says how calibration survives the shift: ECE usually grows on a shifted target,
and a temperature fitted on the source may fix only part of that.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

COVERAGES = (0.5, 0.8, 1.0)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature T > 0 that minimises the NLL of softmax(logits / T) on ``labels``
    (LBFGS on log T, so T stays positive; the predictions do not change)."""
    if len(labels) == 0:
        raise ValueError("temperature scaling needs labelled rows")
    logits, labels = logits.detach().float(), labels.long()
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def calibration_metrics(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> dict[str, float]:
    """NLL, ECE (15 bins) and the Brier score of softmax(logits / temperature); ECE and
    Brier as every classification evaluation computes them (``ClassificationTask``)."""
    from ..modeling.tasks import create_task

    task = create_task("classification", logits.shape[-1], temperature=temperature)
    metrics = task.metrics(logits, labels)
    nll = F.cross_entropy(logits.float() / temperature, labels.long()).item()
    return {"nll": nll, "ece": metrics["ece"], "brier": metrics["brier"]}


def selective_accuracy(
    probs: torch.Tensor, labels: torch.Tensor, coverages: Sequence[float] = COVERAGES
) -> dict[str, float]:
    """Accuracy on the most confident ``coverage`` share of rows, for each coverage: what a
    model that may abstain on the rest would score (``accuracy_at_80`` for 0.8)."""
    confidence, predicted = probs.max(-1)
    order = torch.argsort(confidence, descending=True, stable=True)
    correct = (predicted == labels)[order].float()
    out = {}
    for coverage in coverages:
        kept = max(1, round(coverage * len(labels)))
        out[f"accuracy_at_{round(coverage * 100)}"] = correct[:kept].mean().item()
    return out


def reliability_bins(
    probs: torch.Tensor, labels: torch.Tensor, bins: int = 15
) -> dict[str, list[float]]:
    """Per equal-width confidence bin: the mean confidence, the accuracy (NaN when empty)
    and the share of rows; what a reliability diagram draws."""
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    index = torch.clamp(torch.bucketize(confidence, edges[1:-1]), 0, bins - 1)
    out: dict[str, list[float]] = {
        "edges": edges.tolist(),
        "confidence": [],
        "accuracy": [],
        "share": [],
    }
    for b in range(bins):
        inside = index == b
        out["share"].append(inside.float().mean().item())
        out["accuracy"].append(correct[inside].mean().item() if inside.any() else float("nan"))
        out["confidence"].append(confidence[inside].mean().item() if inside.any() else float("nan"))
    return out


def plot_reliability(bins: dict[str, list[float]], path: str | Path, title: str = "") -> Path:
    """A PNG of ``reliability_bins``: accuracy against confidence, the diagonal of perfect
    calibration and each bin's share of rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = bins["edges"]
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    width = edges[1] - edges[0]
    accuracy = [0.0 if a != a else a for a in bins["accuracy"]]  # NaN (empty bin) as 0
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.bar(centers, accuracy, width=width, edgecolor="black", label="accuracy")
    ax.bar(centers, bins["share"], width=width, alpha=0.3, color="grey", label="share of rows")
    ax.plot([0, 1], [0, 1], "k--", label="calibrated")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
