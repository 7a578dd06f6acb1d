"""CDAN: adversarial alignment conditioned on the classifier's predictions (Long et al., NeurIPS 2018)."""

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


@register_uda_objective("cdan")
class CDAN(UDAObjective):
    """The domain classifier sees the multilinear map f ⊗ softmax(g) [B, D*C] (or its
    randomised version [B, random_dim] when D*C is larger), through gradient reversal.
    With ``entropy_weighting`` (CDAN+E) confident samples count more."""

    needs_classes = True

    def __init__(
        self, feature_dim: int, num_classes: int, weight: float = 1.0, hidden_dim: int = 256,
        random_dim: int = 1024, entropy_weighting: bool = True,
    ) -> None:  # fmt: skip
        super().__init__(feature_dim, num_classes, weight)
        self.entropy_weighting = entropy_weighting
        self.randomised = feature_dim * num_classes > random_dim
        in_dim = random_dim if self.randomised else feature_dim * num_classes
        if self.randomised:  # fixed random projections (not trained), as in the paper
            self.register_buffer("rf", torch.randn(feature_dim, random_dim))
            self.register_buffer("rg", torch.randn(num_classes, random_dim))
        self.classifier = domain_classifier(in_dim, hidden_dim)

    def _map(self, features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        if self.randomised:
            return (
                (features @ self.rf) * (probs @ self.rg) / self.rf.shape[1] ** 0.5
            )  # B x random_dim
        return torch.einsum("bd,bc->bdc", features, probs).flatten(1)  # B x D*C

    def forward(
        self, source_features, target_features, source_logits, target_logits, progress: float
    ) -> torch.Tensor:
        features = torch.cat([source_features, target_features]).float()
        probs = torch.cat([source_logits, target_logits]).float().softmax(-1).detach()
        joint = grad_reverse(self._map(features, probs), dann_schedule(progress))
        labels = torch.cat(
            [torch.zeros(len(source_features)), torch.ones(len(target_features))]
        ).to(features.device)
        losses = F.binary_cross_entropy_with_logits(
            self.classifier(joint).squeeze(-1), labels, reduction="none"
        )
        if not self.entropy_weighting:
            return losses.mean()
        entropy = -(probs * probs.clamp(min=1e-8).log()).sum(-1)
        w = 1.0 + torch.exp(-entropy)
        w = torch.cat(
            [
                w[: len(source_features)] / w[: len(source_features)].sum(),
                w[len(source_features) :] / w[len(source_features) :].sum(),
            ]
        )
        return (w * losses).sum() / 2
