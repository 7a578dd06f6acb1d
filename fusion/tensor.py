"""Tensor fusion (TFN) and its low-rank factorisation (LMF)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from multimodal.core.randomness import Dropout

from ._base import Fusion, FusionOutput
from ._pooled import PooledProjection
from ._registry import register_fusion


def _with_one(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # B x (d + 1)


@register_fusion("tensor")
class TensorFusion(Fusion):
    """Tensor Fusion Network (Zadeh et al., EMNLP 2017).

    Each modality is pooled and projected to ``modality_dim`` (h_m [B, d]), extended to
    [h_m; 1], and the outer product over all modalities [B, (d+1)^M] keeps every
    unimodal, bimodal, ... M-modal interaction; an MLP maps it to [B, dim]. The product
    grows exponentially with M: above ``max_product`` it raises and points to
    ``low_rank_tensor``.
    """

    pools_first = True

    def __init__(
        self,
        modality_dims: Mapping[str, int],
        dim: int,
        modality_dim: int = 8,
        hidden_dim: int | None = None,
        dropout: float = 0.1,
        max_product: int = 1_000_000,
    ) -> None:
        super().__init__(modality_dims, dim)
        product = (modality_dim + 1) ** len(self.modalities)
        if product > max_product:
            raise ValueError(
                f"tensor fusion of {len(self.modalities)} modalities at modality_dim={modality_dim} has "
                f"{product:,} product features (max_product={max_product:,}); lower modality_dim or use "
                "'low_rank_tensor', which never forms the product"
            )
        self.pool = PooledProjection(self.modality_dims, modality_dim)
        self.mlp = nn.Sequential(
            nn.LayerNorm(product), Dropout(dropout), nn.Linear(product, hidden_dim or 2 * dim), nn.GELU(),
            nn.Linear(hidden_dim or 2 * dim, dim),
        )  # fmt: skip

    def forward(
        self, tokens: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
    ) -> FusionOutput:
        batch = self.check_inputs(tokens, masks)
        pooled = self.pool(tokens, masks)
        product = torch.ones(
            batch,
            1,
            device=next(iter(pooled.values())).device,
            dtype=next(iter(pooled.values())).dtype,
        )
        for m in self.modalities:
            product = torch.einsum("bi,bj->bij", product, _with_one(pooled[m])).flatten(
                1
            )  # B x prod(d+1)
        return FusionOutput(self.mlp(product), None, {})


@register_fusion("low_rank_tensor")
class LowRankTensorFusion(Fusion):
    """Low-rank Multimodal Fusion (Liu et al., ACL 2018).

    The TFN weight tensor is factorised into ``rank`` modality-specific factors
    W_m [rank, d+1, dim]: fused = sum_r prod_m ([h_m; 1] W_m[r]) [B, dim], linear in the
    number of modalities instead of exponential.
    """

    pools_first = True

    def __init__(
        self,
        modality_dims: Mapping[str, int],
        dim: int,
        modality_dim: int = 32,
        rank: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(modality_dims, dim)
        self.pool = PooledProjection(self.modality_dims, modality_dim)
        self.factors = nn.ParameterDict({
            m: nn.Parameter(torch.randn(rank, modality_dim + 1, dim) / math.sqrt(modality_dim + 1)) for m in self.modalities
        })  # fmt: skip
        self.rank_weights = nn.Parameter(torch.full((rank,), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.out = nn.Sequential(nn.LayerNorm(dim), Dropout(dropout), nn.Linear(dim, dim))

    def forward(
        self, tokens: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
    ) -> FusionOutput:
        self.check_inputs(tokens, masks)
        pooled = self.pool(tokens, masks)
        fused = None
        for m in self.modalities:
            factor = torch.einsum(
                "bi,rio->bro", _with_one(pooled[m]), self.factors[m]
            )  # B x rank x dim
            fused = factor if fused is None else fused * factor
        fused = torch.einsum("r,bro->bo", self.rank_weights, fused) + self.bias  # B x dim
        return FusionOutput(self.out(fused), None, {})
