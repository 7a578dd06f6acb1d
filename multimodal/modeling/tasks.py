"""Tasks: what a head's outputs mean. Each task owns its loss, per-sample loss, the turn
from logits to probabilities and predictions, its metrics and its default metric.

``Head`` owns one; nothing else branches on the kind of task.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..core.registry import Registry


def tmf() -> Any:
    """``torchmetrics.functional``, imported when first scored with: importing it takes
    seconds (torchvision, dynamo and scipy.signal come with it), and most imports of the
    engine (a CLI's --help, a worker that only trains) never score."""
    import torchmetrics.functional

    return torchmetrics.functional


# metric -> whether larger is better
METRIC_MODES = {
    "accuracy": "max", "macro_f1": "max", "auroc": "max", "loss": "min", "mae": "min", "rmse": "min",
}  # fmt: skip
# Metrics that sort each class's scores: Task.metrics(ranking=False) leaves them out.
RANKING_METRICS = ("auroc",)


def headline_metric(metrics: Mapping[str, Any]) -> str:
    """The metric a table leads with: accuracy where there is one, else rmse."""
    return "accuracy" if "accuracy" in metrics else "rmse"


class Task:
    """Base class. ``num_classes`` is the number of outputs (classes, labels or targets)."""

    name: ClassVar[str] = ""
    default_metric: ClassVar[str] = "accuracy"
    min_classes: ClassVar[int] = 1
    # One class per row, its probabilities a softmax over the outputs: what calibration,
    # per-class reports, class names, entropy and distillation of class probabilities need.
    exclusive_classes: ClassVar[bool] = False

    def __init__(
        self, num_classes: int, label_smoothing: float = 0.0, temperature: float = 1.0
    ) -> None:
        if num_classes < self.min_classes:
            raise ValueError(
                f"{self.name} needs num_classes >= {self.min_classes}, got {num_classes}"
            )
        if not temperature > 0:
            raise ValueError(f"head temperature must be positive, got {temperature}")
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        # Probabilities are softmax(logits / temperature): 1 until a calibration sets it
        # (analysis.calibration); training and the loss always see the raw logits.
        self.temperature = float(temperature)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_classes={self.num_classes})"

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mean training loss: logits [B, C], labels as ``check_labels`` returns them."""
        raise NotImplementedError

    def per_sample_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[B] loss of each sample, without label smoothing (what an attack maximises)."""
        raise NotImplementedError

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """[B, C] what ensembles average: probabilities, or the outputs themselves."""
        return logits

    def require_classes(self, what: str) -> None:
        """Raise, naming ``what``, unless this task has one class per row (``exclusive_classes``)."""
        if not self.exclusive_classes:
            raise ValueError(
                f"{what} needs one class per row (a classification head); the task is {self.name!r}"
            )

    def class_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """[B, C] softmax(logits) at temperature 1: what a training objective or an
        attribution reads; only for ``exclusive_classes`` tasks."""
        self.require_classes("class probabilities")
        return logits.float().softmax(-1)

    def outputs(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions for people: logits plus probs/labels, or predictions."""
        return {"logits": logits, "predictions": logits}

    def metrics(
        self, logits: torch.Tensor, labels: torch.Tensor, ranking: bool = True
    ) -> dict[str, float]:
        """The task's metrics; ``ranking=False`` leaves out those that sort each class's
        scores (AUROC), most of a small evaluation's time (``fit``'s per-epoch ones)."""
        raise NotImplementedError

    def averaged_metrics(self, averaged: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Loss and metrics of averaged ``probabilities`` (an ensemble's prediction)."""
        raise NotImplementedError

    def check_label(self, label: Any, index: int) -> Any:
        raise NotImplementedError

    def check_labels(self, labels: Sequence[Any]) -> torch.Tensor:
        """Labels as a tensor; a wrong type or an out-of-range value raises, naming the sample."""
        checked = []
        for i, label in enumerate(labels):
            if label is None:
                raise ValueError(f"sample {i}: label is missing")
            checked.append(self.check_label(label, i))
        return self._stack(checked)

    def _stack(self, checked: list[Any]) -> torch.Tensor:
        return torch.stack(checked) if checked else torch.zeros(0, self.num_classes)

    def _vector(self, label: Any, index: int) -> torch.Tensor:
        vector = torch.as_tensor(label, dtype=torch.float32).reshape(-1)
        if vector.numel() != self.num_classes:
            raise ValueError(
                f"sample {index}: expected {self.num_classes} target values, got {vector.numel()}"
            )
        if not torch.isfinite(vector).all():
            raise ValueError(f"sample {index}: target {label!r} is not finite")
        return vector


class ClassificationTask(Task):
    """One class per sample: logits [B, C], integer labels [B], cross-entropy."""

    name = "classification"
    min_classes = 2
    exclusive_classes = True

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels.long(), label_smoothing=self.label_smoothing)

    def per_sample_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, reduction="none")

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits / self.temperature).softmax(-1)

    def outputs(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        probs = self.probabilities(logits)
        return {"logits": logits, "probs": probs, "labels": probs.argmax(-1)}

    def metrics(
        self, logits: torch.Tensor, labels: torch.Tensor, ranking: bool = True
    ) -> dict[str, float]:
        logits, labels = logits.float().cpu(), labels.cpu()
        if len(labels) == 0:
            return {}
        probs = self.probabilities(logits)
        kwargs = {"task": "multiclass", "num_classes": logits.shape[-1]}
        out = {
            "accuracy": tmf().accuracy(probs, labels, **kwargs).item(),
            "macro_f1": tmf().f1_score(probs, labels, average="macro", **kwargs).item(),
            # calibration: 15-bin expected calibration error and the Brier score
            "ece": tmf().calibration_error(probs, labels, n_bins=15, norm="l1", **kwargs).item(),
            "brier": (probs - F.one_hot(labels.long(), probs.shape[-1]))
            .pow(2)
            .sum(-1)
            .mean()
            .item(),
        }
        if ranking and len(torch.unique(labels)) > 1:  # AUROC: undefined with a single class
            out["auroc"] = tmf().auroc(probs, labels, average="macro", **kwargs).item()
        return out

    def averaged_metrics(self, averaged: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        log_probs = averaged.clamp(min=1e-12).log()
        loss = F.nll_loss(log_probs, labels).item()
        return {"loss": loss, **self.metrics(log_probs, labels)}

    def check_label(self, label: Any, index: int) -> int:
        if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.is_floating_point():
            label = label.item()
        if isinstance(label, bool) or not isinstance(label, numbers.Integral):
            raise TypeError(f"sample {index}: expected an integer class label, got {label!r}")
        value = int(label)
        if not 0 <= value < self.num_classes:
            raise ValueError(
                f"sample {index}: label {value} is out of range [0, {self.num_classes})"
            )
        return value

    def _stack(self, checked: list[Any]) -> torch.Tensor:
        return torch.tensor(checked, dtype=torch.long)


class SoftClassificationTask(ClassificationTask):
    """Classification trained on class probabilities (a teacher's soft labels, distillation):
    a label is a vector of C probabilities, or a class index (one-hot); the loss is the
    cross-entropy against it, the metrics those of its most probable class. A model is not
    saved with it: distillation sets it for the fit and puts classification back."""

    name = "soft_classification"

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.per_sample_loss(logits, labels).mean()

    def per_sample_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return -(labels.float() * logits.float().log_softmax(-1)).sum(-1)

    def metrics(
        self, logits: torch.Tensor, labels: torch.Tensor, ranking: bool = True
    ) -> dict[str, float]:
        return super().metrics(logits, labels.argmax(-1) if labels.dim() == 2 else labels, ranking)

    def check_label(self, label: Any, index: int) -> torch.Tensor:  # type: ignore[override]
        if isinstance(label, numbers.Integral) and not isinstance(label, bool):
            return F.one_hot(
                torch.tensor(super().check_label(label, index)), self.num_classes
            ).float()
        vector = self._vector(label, index)
        if (vector < 0).any() or abs(float(vector.sum()) - 1.0) > 1e-3:
            raise ValueError(
                f"sample {index}: soft labels must be probabilities summing to 1, got {label!r}"
            )
        return vector

    def _stack(self, checked: list[Any]) -> torch.Tensor:
        return torch.stack(checked) if checked else torch.zeros(0, self.num_classes)


class MultilabelTask(Task):
    """Any number of labels per sample: logits [B, C], {0, 1} targets [B, C], BCE."""

    name = "multilabel"

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())

    def per_sample_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            logits.float(), labels.float(), reduction="none"
        ).mean(-1)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def outputs(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        probs = logits.sigmoid()
        return {"logits": logits, "probs": probs, "labels": (probs > 0.5).long()}

    def metrics(
        self, logits: torch.Tensor, labels: torch.Tensor, ranking: bool = True
    ) -> dict[str, float]:
        logits, labels = logits.float().cpu(), labels.cpu()
        if len(labels) == 0:
            return {}
        kwargs = {"task": "multilabel", "num_labels": logits.shape[-1]}
        probs, target = logits.sigmoid(), labels.long()
        out = {
            "accuracy": tmf().accuracy(probs, target, **kwargs).item(),
            "macro_f1": tmf().f1_score(probs, target, average="macro", **kwargs).item(),
        }
        if ranking:
            out["auroc"] = tmf().auroc(probs, target, average="macro", **kwargs).item()
        return out

    def averaged_metrics(self, averaged: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        p = averaged.clamp(1e-7, 1 - 1e-7)
        loss = F.binary_cross_entropy(p, labels.float()).item()
        return {"loss": loss, **self.metrics(p.log() - (1 - p).log(), labels)}

    def check_label(self, label: Any, index: int) -> torch.Tensor:
        vector = self._vector(label, index)
        if not ((vector == 0) | (vector == 1)).all():
            raise ValueError(f"sample {index}: multilabel targets must be 0 or 1, got {label!r}")
        return vector


class RegressionTask(Task):
    """Real-valued targets: predictions [B, C] (C = num_classes outputs), MSE."""

    name = "regression"
    default_metric = "rmse"

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits.float(), labels.float().view_as(logits))

    def per_sample_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (logits.float().view_as(labels) - labels.float()) ** 2

    def metrics(
        self, logits: torch.Tensor, labels: torch.Tensor, ranking: bool = True
    ) -> dict[str, float]:
        logits, labels = logits.float().cpu(), labels.cpu()
        if len(labels) == 0:
            return {}
        preds, target = logits.view_as(labels.float()), labels.float()
        return {
            "mae": tmf().mean_absolute_error(preds, target).item(),
            "rmse": tmf().mean_squared_error(preds, target, squared=False).item(),
        }

    def averaged_metrics(self, averaged: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        loss = F.mse_loss(averaged.view_as(labels.float()), labels.float()).item()
        return {"loss": loss, **self.metrics(averaged, labels)}

    def check_label(self, label: Any, index: int) -> torch.Tensor:
        return self._vector(label, index)


# name -> Task subclass; a new task registers here (``TASKS.register(name)(cls)``).
TASKS: Registry[Task] = Registry("head task")
for _task in (ClassificationTask, SoftClassificationTask, MultilabelTask, RegressionTask):
    TASKS.register(_task.name)(_task)


def create_task(
    name: str, num_classes: int, label_smoothing: float = 0.0, temperature: float = 1.0
) -> Task:
    if name not in TASKS:
        raise ValueError(f"head task must be one of {tuple(TASKS.names())}, got {name!r}")
    return TASKS.get(name)(num_classes, label_smoothing, temperature)


def compute_metrics(task: str, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, macro-F1 and AUROC for classification/multilabel; MAE and RMSE for regression."""
    return create_task(task, max(logits.shape[-1], TASKS.get(task).min_classes)).metrics(
        logits, labels
    )
