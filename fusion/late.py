"""Late fusion: one decision per modality, combined by a learned or uniform weighting."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from multimodal.core.randomness import Dropout

from ._base import Fusion, FusionOutput, presence
from ._pooled import PooledProjection
from ._registry import register_fusion


@register_fusion("late")
class LateFusion(Fusion):
    """Decision-level fusion: the task head runs on each modality's vector and the logits
    are averaged with weights over the modalities present.

    Contract extension: ``combines_logits = True`` tells ``MultimodalModel`` to apply its head
    to every vector in ``info["modality_vectors"]`` ({m: [B, dim]}) and to combine the
    logits with ``info["modality_weights"]`` ([B, M], sorted modality order, rows summing to
    1 over present modalities). ``fused`` [B, dim] is the same weighting of the vectors, so
    any consumer of the plain contract still gets a fused representation.

    weighting: ``learned`` (a softmax over one learned score per modality) or ``uniform``.
    """

    pools_first = True

    combines_logits = True

    def __init__(
        self,
        modality_dims: Mapping[str, int],
        dim: int,
        weighting: str = "learned",
        dropout: float = 0.1,
    ) -> None:
        super().__init__(modality_dims, dim)
        if weighting not in ("learned", "uniform"):
            raise ValueError(f"weighting must be 'learned' or 'uniform', got {weighting!r}")
        self.pool = PooledProjection(self.modality_dims, dim, learn_missing=False)
        self.encode = nn.ModuleDict(
            {
                m: nn.Sequential(nn.LayerNorm(dim), nn.GELU(), Dropout(dropout))
                for m in self.modalities
            }
        )
        self.scores = (
            nn.Parameter(torch.zeros(len(self.modalities))) if weighting == "learned" else None
        )

    def forward(
        self, tokens: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
    ) -> FusionOutput:
        batch = self.check_inputs(tokens, masks)
        pooled = self.pool(tokens, masks)
        vectors = {m: self.encode[m](pooled[m]) for m in self.modalities}
        present = torch.stack([presence(masks)[m] for m in self.modalities], dim=1)  # B x M
        scores = (
            self.scores
            if self.scores is not None
            else torch.zeros(len(self.modalities), device=present.device)
        )
        scores = scores.expand(batch, -1).masked_fill(~present, float("-inf"))
        # A sample with no modality at all falls back to uniform weights over the learned missing vectors.
        scores = torch.where(present.any(dim=1, keepdim=True), scores, torch.zeros_like(scores))
        weights = scores.softmax(dim=1)  # B x M
        fused = torch.einsum(
            "bm,mbd->bd", weights, torch.stack([vectors[m] for m in self.modalities])
        )
        return FusionOutput(fused, None, {"modality_vectors": vectors, "modality_weights": weights})
