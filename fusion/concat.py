"""Concatenation fusion: pool each modality, project, concatenate, MLP."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ._base import Fusion, FusionOutput, PooledConcat, pool_input, presence
from ._registry import register_fusion


@register_fusion("concat")
class ConcatFusion(Fusion):
    """Late concatenation, the usual baseline (e.g. TorchMultimodal's ``ConcatFusionModule``).

    tokens {m: [B, T_m, D_m]} -> masked mean [B, D_m] -> Linear [B, dim] -> concat
    [B, M*dim] -> MLP -> fused [B, dim]. Absent modalities use a learned missing vector.
    """

    pools_first = True

    def __init__(
        self,
        modality_dims: Mapping[str, int],
        dim: int,
        hidden_dim: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(modality_dims, dim)
        self.project = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.modality_dims.items()})
        self.combine = PooledConcat(self.modalities, dim, dim, hidden_dim or 2 * dim, dropout)

    def forward(
        self, tokens: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
    ) -> FusionOutput:
        self.check_inputs(tokens, masks)
        pooled = {m: self.project[m](pool_input(tokens[m], masks[m])) for m in self.modalities}
        return FusionOutput(self.combine(pooled, presence(masks)), None, {})
