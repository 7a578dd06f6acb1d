"""Moment matching: CORAL and multi-kernel MMD on the fused features, and target entropy."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._base import UDAObjective, register_uda_objective


@register_uda_objective("coral")
class CORAL(UDAObjective):
    """Deep CORAL (Sun & Saenko, ECCV 2016 workshops): ||C_s - C_t||_F^2 / (4 D^2)."""

    def forward(
        self, source_features, target_features, source_logits, target_logits, progress: float
    ) -> torch.Tensor:
        def cov(x: torch.Tensor) -> torch.Tensor:
            x = x.float() - x.float().mean(0, keepdim=True)
            return x.T @ x / max(len(x) - 1, 1)

        d = source_features.shape[1]
        return (cov(source_features) - cov(target_features)).pow(2).sum() / (4 * d * d)


@register_uda_objective("mmd")
class MKMMD(UDAObjective):
    """Multi-kernel MMD (Long et al., ICML 2015): Gaussian kernels at bandwidths
    ``scales`` x the mean pairwise squared distance, biased estimate."""

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        weight: float = 1.0,
        scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0),
    ) -> None:
        super().__init__(feature_dim, num_classes, weight)
        self.scales = tuple(scales)

    def forward(
        self, source_features, target_features, source_logits, target_logits, progress: float
    ) -> torch.Tensor:
        x = torch.cat([source_features, target_features]).float()
        d2 = torch.cdist(x, x).pow(2)
        bandwidth = d2.detach().sum() / max(len(x) ** 2 - len(x), 1)
        kernel = sum(torch.exp(-d2 / (bandwidth * s + 1e-8)) for s in self.scales)
        n = len(source_features)
        return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


@register_uda_objective("entropy")
class EntropyMinimisation(UDAObjective):
    """Entropy minimisation on the target predictions (Grandvalet & Bengio, NeurIPS 2004)."""

    needs_classes = True

    def forward(
        self, source_features, target_features, source_logits, target_logits, progress: float
    ) -> torch.Tensor:
        log_p = target_logits.float().log_softmax(-1)
        return -(log_p.exp() * log_p).sum(-1).mean()
