"""DANN: a domain classifier trained through gradient reversal (Ganin et al., JMLR 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._base import (
    UDAObjective,
    dann_schedule,
    domain_classifier,
    grad_reverse,
    register_uda_objective,
)


@register_uda_objective("dann")
class DANN(UDAObjective):
    """Binary domain classification on the fused features [B, D]; the reversed gradient
    (coefficient scheduled 0 -> 1 over training) pushes the fusion towards features the
    classifier cannot tell apart."""

    def __init__(
        self, feature_dim: int, num_classes: int, weight: float = 1.0, hidden_dim: int = 256
    ) -> None:
        super().__init__(feature_dim, num_classes, weight)
        self.classifier = domain_classifier(feature_dim, hidden_dim)

    def forward(
        self, source_features, target_features, source_logits, target_logits, progress: float
    ) -> torch.Tensor:
        coeff = dann_schedule(progress)
        features = grad_reverse(torch.cat([source_features, target_features]).float(), coeff)
        labels = torch.cat(
            [torch.zeros(len(source_features)), torch.ones(len(target_features))]
        ).to(features.device)
        return F.binary_cross_entropy_with_logits(self.classifier(features).squeeze(-1), labels)
