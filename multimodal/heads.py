"""Task heads: fused [B, D] -> logits, plus the task loss."""

from __future__ import annotations

import numbers
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

TASKS = ("classification", "multilabel", "regression")


class Head(nn.Module):
    """An MLP (or linear, with ``hidden_dim=0``) from the fused vector to the outputs.

    classification: logits [B, num_classes], cross-entropy (optional label smoothing);
    multilabel: logits [B, num_classes], BCE-with-logits on {0,1} targets [B, num_classes];
    regression: predictions [B, num_outputs], MSE.
    """

    def __init__(
        self,
        in_dim: int,
        task: str = "classification",
        num_classes: int = 2,
        hidden_dim: int = 0,
        dropout: float = 0.1,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"head task must be one of {TASKS}, got {task!r}")
        if num_classes < 1 or (task == "classification" and num_classes < 2):
            raise ValueError(
                f"{task} needs num_classes >= {2 if task == 'classification' else 1}, got {num_classes}"
            )
        self.task, self.num_classes = task, num_classes
        self.hidden_dim, self.dropout_p, self.label_smoothing = hidden_dim, dropout, label_smoothing
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden_dim:
            layers += [nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout)]
            in_dim = hidden_dim
        layers.append(nn.Linear(in_dim, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.net(fused)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.task == "classification":
            return F.cross_entropy(
                logits.float(), labels.long(), label_smoothing=self.label_smoothing
            )
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return F.mse_loss(logits.float(), labels.float().view_as(logits))

    def check_labels(self, labels: list[Any]) -> torch.Tensor:
        """Labels as a tensor; a wrong type or an out-of-range class raises, naming the sample."""
        out = []
        for i, label in enumerate(labels):
            if label is None:
                raise ValueError(f"sample {i}: label is missing")
            if self.task == "classification":
                if (
                    isinstance(label, torch.Tensor)
                    and label.numel() == 1
                    and not label.is_floating_point()
                ):
                    label = label.item()
                if isinstance(label, bool) or not isinstance(label, numbers.Integral):
                    raise TypeError(f"sample {i}: expected an integer class label, got {label!r}")
                value = int(label)
                if not 0 <= value < self.num_classes:
                    raise ValueError(
                        f"sample {i}: label {value} is out of range [0, {self.num_classes})"
                    )
                out.append(value)
            else:
                vector = torch.as_tensor(label, dtype=torch.float32).reshape(-1)
                if vector.numel() != self.num_classes:
                    raise ValueError(
                        f"sample {i}: expected {self.num_classes} target values, got {vector.numel()}"
                    )
                if not torch.isfinite(vector).all():
                    raise ValueError(f"sample {i}: target {label!r} is not finite")
                if self.task == "multilabel" and not ((vector == 0) | (vector == 1)).all():
                    raise ValueError(
                        f"sample {i}: multilabel targets must be 0 or 1, got {label!r}"
                    )
                out.append(vector)
        if self.task == "classification":
            return torch.tensor(out, dtype=torch.long)
        return torch.stack(out) if out else torch.zeros(0, self.num_classes)

    def config(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "num_classes": self.num_classes,
            "hidden_dim": self.hidden_dim,
            "dropout": self.dropout_p,
            "label_smoothing": self.label_smoothing,
        }
