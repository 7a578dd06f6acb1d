"""Cross-modal attention: each modality's tokens attend to every other modality's tokens."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ._base import Fusion, FusionOutput, PooledConcat, masked_mean, presence
from ._registry import register_fusion


class CrossAttentionLayer(nn.Module):
    """Pre-norm cross-attention + feed-forward, both residual.

    x: [B, T, D] queries; context: [B, S, D]; context_mask: [B, S] bool (True = attend).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, int(dim * mlp_ratio)),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(int(dim * mlp_ratio), dim),
        )

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (x [B, T, D], attention weights averaged over heads [B, T, S] or None)."""
        kv = self.norm_kv(context)
        attended, weights = self.attn(
            self.norm_q(x), kv, kv, key_padding_mask=~context_mask, need_weights=need_weights
        )
        x = x + attended
        return x + self.ff(self.norm_ff(x)), weights


@register_fusion("cross_attention")
class CrossAttentionFusion(Fusion):
    """Stacked cross-modal attention in the spirit of MulT (Tsai et al., ACL 2019).

    tokens {m: [B, T_m, D_m]} -> Linear + modality embedding [B, T_m, dim] -> ``depth``
    layers in which each modality queries the concatenated tokens of all the others
    [B, sum_{n != m} T_n + 1, dim] -> masked mean per modality -> concat -> MLP -> [B, dim].

    A learned null key is always present, so a sample with every other modality absent
    attends to it instead of producing NaN from an all-masked softmax.

    With ``record_attention = True``, info["attention"] holds per layer and query modality
    the head-averaged weights [B, T_m, S] and info["attention_keys"] per query modality the
    key layout [("null", 1), (n, T_n), ...].
    """

    record_attention: bool = False

    def __init__(
        self,
        modality_dims: Mapping[str, int],
        dim: int,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(modality_dims, dim)
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.project = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.modality_dims.items()})
        self.modality_embedding = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(dim)) for m in self.modalities}
        )
        self.null_key = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    m: CrossAttentionLayer(dim, num_heads, mlp_ratio, dropout)
                    for m in self.modalities
                }
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.combine = PooledConcat(self.modalities, dim, dim, 2 * dim, dropout)

    def forward(
        self, tokens: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
    ) -> FusionOutput:
        batch = self.check_inputs(tokens, masks)
        x = {
            m: self.project[m](tokens[m]) + self.modality_embedding[m] for m in self.modalities
        }  # B x T_m x dim
        null = self.null_key.expand(batch, 1, self.dim)
        null_mask = torch.ones(batch, 1, dtype=torch.bool, device=null.device)
        info: dict = {}
        if self.record_attention:
            info["attention"] = []
            info["attention_keys"] = {
                m: [("null", 1), *((n, x[n].shape[1]) for n in self.modalities if n != m)]
                for m in self.modalities
            }
        for layer in self.layers:
            updated, weights = {}, {}
            for m in self.modalities:
                others = [n for n in self.modalities if n != m]
                context = torch.cat([null, *(x[n] for n in others)], dim=1)  # B x S x dim
                context_mask = torch.cat([null_mask, *(masks[n] for n in others)], dim=1)  # B x S
                updated[m], weights[m] = layer[m](
                    x[m], context, context_mask, need_weights=self.record_attention
                )
            x = updated
            if self.record_attention:
                info["attention"].append({m: w.detach() for m, w in weights.items()})
        pooled = {m: masked_mean(self.norm(x[m]), masks[m]) for m in self.modalities}
        return FusionOutput(self.combine(pooled, presence(masks)), None, info)
