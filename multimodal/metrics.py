"""Evaluation metrics from torchmetrics, computed on whole gathered splits."""

from __future__ import annotations

import torch
import torchmetrics.functional as tmf

# metric -> whether larger is better
METRIC_MODES = {
    "accuracy": "max", "macro_f1": "max", "auroc": "max", "loss": "min", "mae": "min", "rmse": "min",
}  # fmt: skip


def compute_metrics(task: str, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, macro-F1 and AUROC for classification/multilabel; MAE and RMSE for regression."""
    logits, labels = logits.float().cpu(), labels.cpu()
    if len(labels) == 0:
        return {}
    if task == "classification":
        c = logits.shape[-1]
        probs = logits.softmax(-1)
        kwargs = {"task": "multiclass", "num_classes": c}
        out = {
            "accuracy": tmf.accuracy(probs, labels, **kwargs).item(),
            "macro_f1": tmf.f1_score(probs, labels, average="macro", **kwargs).item(),
        }
        if len(torch.unique(labels)) > 1:  # AUROC is undefined with a single class present
            out["auroc"] = tmf.auroc(probs, labels, average="macro", **kwargs).item()
        return out
    if task == "multilabel":
        kwargs = {"task": "multilabel", "num_labels": logits.shape[-1]}
        probs, target = logits.sigmoid(), labels.long()
        return {
            "accuracy": tmf.accuracy(probs, target, **kwargs).item(),
            "macro_f1": tmf.f1_score(probs, target, average="macro", **kwargs).item(),
            "auroc": tmf.auroc(probs, target, average="macro", **kwargs).item(),
        }
    preds, target = logits.view_as(labels.float()), labels.float()
    return {
        "mae": tmf.mean_absolute_error(preds, target).item(),
        "rmse": tmf.mean_squared_error(preds, target, squared=False).item(),
    }
