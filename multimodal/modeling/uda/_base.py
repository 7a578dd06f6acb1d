"""Unsupervised domain-adaptation objectives: labelled source and unlabelled target batches."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ...core.registry import Registry

_UDA_OBJECTIVES: Registry[Any] = Registry("domain-adaptation objective")


def register_uda_objective(name: str):  # noqa: ANN201 - a decorator
    return _UDA_OBJECTIVES.register(name)


def list_uda_objectives(pattern: str = "*") -> list[str]:
    return _UDA_OBJECTIVES.list(pattern)


def _declares(name: str, trait: str) -> bool:
    """Whether registered objective ``name`` (not "none") sets the class flag ``trait``."""
    return name != "none" and bool(getattr(_UDA_OBJECTIVES.get(name), trait, False))


def uda_views(name: str) -> bool:
    """Whether objective ``name`` trains on two augmented views of the target rows."""
    return _declares(name, "views")


def uda_needs_classes(name: str) -> bool:
    """Whether objective ``name`` reads class probabilities (a classification head only)."""
    return _declares(name, "needs_classes")


def create_uda_objective(
    name: str, feature_dim: int, num_classes: int, **kwargs: Any
) -> UDAObjective:
    """An adaptation objective by name: dann, cdan, coral, mmd or entropy."""
    return _UDA_OBJECTIVES.create(name, feature_dim=feature_dim, num_classes=num_classes, **kwargs)


class UDAObjective(nn.Module):
    """forward(source_features [B_s, D], target_features [B_t, D], source_logits, target_logits,
    progress in [0, 1]) -> a scalar loss added to the task loss (times ``weight``).

    ``views``: the objective compares two augmentations of each target batch (FixMatch);
    the target features and logits are then the strong view's, and ``forward`` also gets
    the weak view's logits, computed without gradient.
    """

    views: ClassVar[bool] = False
    # It reads class probabilities (softmax over the logits): a classification head only.
    needs_classes: ClassVar[bool] = False

    def __init__(self, feature_dim: int, num_classes: int, weight: float = 1.0) -> None:
        super().__init__()
        self.feature_dim, self.num_classes, self.weight = feature_dim, num_classes, weight

    def forward(
        self,
        source_features: torch.Tensor,
        target_features: torch.Tensor,
        source_logits: torch.Tensor,
        target_logits: torch.Tensor,
        progress: float,
    ) -> torch.Tensor:
        raise NotImplementedError


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float) -> torch.Tensor:
    """Identity forward, gradient times -coeff backward (Ganin & Lempitsky, 2015)."""
    return _GradReverse.apply(x, coeff)


def dann_schedule(progress: float, gamma: float = 10.0) -> float:
    """The DANN coefficient 2 / (1 + exp(-gamma p)) - 1: 0 at the start, towards 1 at the end."""
    return float(2.0 / (1.0 + torch.exp(torch.tensor(-gamma * progress))) - 1.0)


def domain_classifier(in_dim: int, hidden_dim: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden_dim, 1)
    )
