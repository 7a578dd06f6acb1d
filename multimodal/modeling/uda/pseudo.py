"""Self-training on the model's own confident target predictions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._base import UDAObjective, register_uda_objective


@register_uda_objective("pseudo_label")
class PseudoLabel(UDAObjective):
    """Pseudo-labelling (Lee 2013): cross-entropy of each unlabelled target row against the
    class the model itself predicts for it, counted only where that prediction's probability
    reaches ``threshold`` (0.95, FixMatch's); the mean is over every row of the batch, as in
    FixMatch's unlabelled loss (Sohn et al. 2020), of which this is the form without
    augmentation (the predictions and the loss see the same view)."""

    needs_classes = True

    def __init__(
        self, feature_dim: int, num_classes: int, weight: float = 1.0, threshold: float = 0.95
    ) -> None:
        super().__init__(feature_dim, num_classes, weight)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"pseudo_label threshold must be in [0, 1], got {threshold}")
        self.threshold = float(threshold)

    def mask(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows kept, their pseudo-labels): the predictions at or above the threshold."""
        confidence, labels = logits.detach().float().softmax(-1).max(-1)
        return confidence >= self.threshold, labels

    def forward(
        self, source_features, target_features, source_logits, target_logits, progress: float
    ) -> torch.Tensor:
        keep, labels = self.mask(target_logits)
        losses = F.cross_entropy(target_logits.float(), labels, reduction="none")
        return (losses * keep.float()).mean()


@register_uda_objective("fixmatch")
class FixMatch(PseudoLabel):
    """FixMatch (Sohn et al. 2020): the pseudo-label of each unlabelled row comes from its
    weakly augmented view, and the strongly augmented view is trained toward it where the
    weak prediction's probability reaches ``threshold`` (0.95). The loss is the mean over
    every row of the batch, kept or not, as in the paper's unlabelled loss."""

    views = True

    def forward(
        self, source_features, target_features, source_logits, target_logits, progress: float,
        weak_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        if weak_logits is None:
            raise ValueError("fixmatch needs the weak view's logits (the engine's target views)")
        keep, labels = self.mask(weak_logits)
        losses = F.cross_entropy(target_logits.float(), labels, reduction="none")
        return (losses * keep.float()).mean()
