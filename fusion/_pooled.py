"""Pooled per-modality vectors, the input of the fusions that work on one vector per modality."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ._base import missing_vectors, pool_input


class PooledProjection(nn.Module):
    """{m: [B, T_m, D_m]} -> masked mean -> Linear -> {m: [B, dim]}.

    Absent rows get a learned vector, or zeros with ``learn_missing=False`` (for fusions that
    give absent modalities no weight at all).
    """

    def __init__(
        self, modality_dims: Mapping[str, int], dim: int, learn_missing: bool = True
    ) -> None:
        super().__init__()
        self.project = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in modality_dims.items()})
        self.missing = missing_vectors(modality_dims, dim, learn_missing)

    def forward(
        self, tokens: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        out = {}
        for m, proj in self.project.items():
            present = masks[m].any(dim=1, keepdim=True)  # B x 1
            out[m] = torch.where(
                present, proj(pool_input(tokens[m], masks[m])), self.missing[m].to(tokens[m].dtype)
            )
        return out
