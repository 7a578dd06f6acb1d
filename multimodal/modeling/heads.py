"""Task heads: fused [B, D] -> logits; the head's ``task`` scores them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..core.randomness import Dropout
from .tasks import TASKS, Task, create_task

__all__ = ["TASKS", "Head"]


class Head(nn.Module):
    """An MLP (or linear, with ``hidden_dim=0``) from the fused vector to the outputs.

    classification: logits [B, num_classes], cross-entropy (optional label smoothing);
    multilabel: logits [B, num_classes], BCE-with-logits on {0,1} targets [B, num_classes];
    regression: predictions [B, num_outputs], MSE. ``head.task`` is the ``Task`` object.
    """

    def __init__(
        self,
        in_dim: int,
        task: str = "classification",
        num_classes: int = 2,
        hidden_dim: int = 0,
        dropout: float = 0.1,
        label_smoothing: float = 0.0,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.task: Task = create_task(task, num_classes, label_smoothing, temperature)
        self.num_classes = num_classes
        self.hidden_dim, self.dropout_p, self.label_smoothing = hidden_dim, dropout, label_smoothing
        layers: list[nn.Module] = [Dropout(dropout)]
        if hidden_dim:
            layers += [nn.Linear(in_dim, hidden_dim), nn.GELU(), Dropout(dropout)]
            in_dim = hidden_dim
        layers.append(nn.Linear(in_dim, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.net(fused)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.task.loss(logits, labels)

    def check_labels(self, labels: Sequence[Any]) -> torch.Tensor:
        """Labels as a tensor; a wrong type or an out-of-range class raises, naming the sample."""
        return self.task.check_labels(labels)

    def config(self) -> dict[str, Any]:
        return {
            "task": self.task.name,
            "num_classes": self.num_classes,
            "hidden_dim": self.hidden_dim,
            "dropout": self.dropout_p,
            "label_smoothing": self.label_smoothing,
            "temperature": self.task.temperature,
        }
