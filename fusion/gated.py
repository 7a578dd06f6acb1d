"""Gated multimodal units (GMU) and FiLM conditioning."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from multimodal.core.randomness import Dropout

from ._base import Fusion, FusionOutput, PooledConcat, presence
from ._pooled import PooledProjection
from ._registry import register_fusion


@register_fusion("gated")
class GatedFusion(Fusion):
    """Gated Multimodal Unit (Arevalo et al., ICLR workshop 2017), for any number of modalities.

    h_m = tanh(W_m x_m); gates z = softmax_m(W_z [x_1; ...; x_M]) over the modalities present;
    fused = sum_m z_m h_m [B, dim]. ``info["gates"]`` [B, M] shows how much each modality counted.
    """

    pools_first = True

    def __init__(self, modality_dims: Mapping[str, int], dim: int, dropout: float = 0.1) -> None:
        super().__init__(modality_dims, dim)
        # Absent modalities get no gate at all, so they need no learned stand-in.
        self.pool = PooledProjection(self.modality_dims, dim, learn_missing=False)
        self.hidden = nn.ModuleDict({m: nn.Linear(dim, dim) for m in self.modalities})
        self.gate = nn.Linear(dim * len(self.modalities), len(self.modalities))
        self.out = nn.Sequential(Dropout(dropout), nn.Linear(dim, dim))

    def forward(
        self, tokens: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
    ) -> FusionOutput:
        self.check_inputs(tokens, masks)
        pooled = self.pool(tokens, masks)
        present = torch.stack([presence(masks)[m] for m in self.modalities], dim=1)  # B x M
        scores = self.gate(torch.cat([pooled[m] for m in self.modalities], dim=1))
        scores = torch.where(
            present.any(1, keepdim=True), scores.masked_fill(~present, float("-inf")), scores
        )
        gates = scores.softmax(dim=1)  # B x M
        hidden = torch.stack(
            [torch.tanh(self.hidden[m](pooled[m])) for m in self.modalities], dim=1
        )  # B x M x dim
        fused = (gates.unsqueeze(-1) * hidden).sum(dim=1)
        return FusionOutput(self.out(fused), None, {"gates": gates})


@register_fusion("film")
class FiLMFusion(Fusion):
    """Feature-wise linear modulation (Perez et al., AAAI 2018): one modality conditions the rest.

    The pooled vector of ``condition`` (default: the first modality in sorted order) gives
    gamma_m, beta_m for every other modality: h_m' = (1 + gamma_m) * h_m + beta_m; the
    modulated vectors and the conditioning one are concatenated and mapped to [B, dim] by an
    MLP. When the conditioning modality is absent for a sample, gamma = beta = 0 there.
    """

    pools_first = True

    def __init__(
        self,
        modality_dims: Mapping[str, int],
        dim: int,
        condition: str | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(modality_dims, dim)
        self.condition = condition or self.modalities[0]
        if self.condition not in self.modality_dims:
            raise ValueError(f"condition must be one of {self.modalities}, got {self.condition!r}")
        self.others = [m for m in self.modalities if m != self.condition]
        self.pool = PooledProjection(self.modality_dims, dim)
        self.film = nn.ModuleDict({m: nn.Linear(dim, 2 * dim) for m in self.others})
        for layer in self.film.values():  # start as the identity modulation
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        # Absent modalities already hold PooledProjection's learned vectors.
        self.combine = PooledConcat(
            self.modalities, dim, dim, 2 * dim, dropout, learn_missing=False
        )

    def forward(
        self, tokens: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
    ) -> FusionOutput:
        self.check_inputs(tokens, masks)
        pooled = self.pool(tokens, masks)
        present = presence(masks)
        cond = pooled[self.condition]
        modulated = {self.condition: cond}
        for m in self.others:
            gamma, beta = self.film[m](cond).chunk(2, dim=-1)  # B x dim each
            on = present[self.condition][:, None].to(cond.dtype)
            modulated[m] = (1 + on * gamma) * pooled[m] + on * beta
        return FusionOutput(
            self.combine(modulated, {m: torch.ones_like(present[m]) for m in self.modalities}),
            None,
            {},
        )
