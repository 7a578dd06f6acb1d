"""Attention bottlenecks (MBT) and the joint early-fusion transformer."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ._attention import SelfAttentionBlock, key_padding
from ._base import Fusion, FusionOutput, presence
from ._registry import register_fusion


@register_fusion("bottleneck")
class BottleneckFusion(Fusion):
    """Multimodal bottleneck transformer (Nagrani et al., NeurIPS 2021).

    Each modality has its own transformer layers over [its tokens; B_n shared bottleneck
    tokens] [B, T_m + n, dim]; modalities exchange information only through the
    bottleneck, which after every layer is the mean of the modalities' updated copies
    (over the modalities present). fused = LayerNorm(mean of the final bottleneck) [B, dim].
    """

    def __init__(
        self,
        modality_dims: Mapping[str, int],
        dim: int,
        depth: int = 2,
        num_bottlenecks: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
    ) -> None:
        super().__init__(modality_dims, dim)
        self.project = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.modality_dims.items()})
        self.bottleneck = nn.Parameter(torch.randn(1, num_bottlenecks, dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    m: SelfAttentionBlock(dim, num_heads, mlp_ratio, dropout, attn_dropout)
                    for m in self.modalities
                }
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, tokens: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
    ) -> FusionOutput:
        batch = self.check_inputs(tokens, masks)
        n = self.bottleneck.shape[1]
        x = {m: self.project[m](tokens[m]) for m in self.modalities}
        shared = self.bottleneck.expand(batch, -1, -1)  # B x n x dim
        present = torch.stack([presence(masks)[m] for m in self.modalities], dim=1).to(
            shared.dtype
        )  # B x M
        weights = present / present.sum(1, keepdim=True).clamp(min=1.0)
        # The bottleneck tokens are always visible, so no softmax row is all-masked.
        ones = torch.ones(batch, n, dtype=torch.bool, device=shared.device)
        allowed = {m: key_padding(torch.cat([masks[m], ones], dim=1)) for m in self.modalities}
        for layer in self.layers:
            copies = []
            for m in self.modalities:
                out = layer[m](torch.cat([x[m], shared], dim=1), allowed[m])  # B x (T_m + n) x dim
                x[m], copy = out[:, :-n], out[:, -n:]
                copies.append(copy)
            stacked = torch.stack(copies, dim=1)  # B x M x n x dim
            # Absent modalities do not write to the bottleneck; with none present it is kept.
            averaged = torch.einsum("bm,bmnd->bnd", weights, stacked)
            shared = torch.where(present.any(1)[:, None, None] > 0, averaged, shared)
        return FusionOutput(self.norm(shared.mean(dim=1)), None, {})


@register_fusion("transformer")
class TransformerFusion(Fusion):
    """Joint self-attention over the tokens of every modality (early fusion, as in
    VisualBERT-style single-stream models and AutoGluon's fusion transformer).

    tokens -> Linear + modality-type embedding -> [CLS; all tokens] [B, 1 + sum T_m, dim]
    -> ``depth`` pre-norm SDPA transformer blocks with key padding masks -> CLS [B, dim].
    """

    def __init__(
        self,
        modality_dims: Mapping[str, int],
        dim: int,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
    ) -> None:
        super().__init__(modality_dims, dim)
        self.project = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.modality_dims.items()})
        self.type_embedding = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(dim) * 0.02) for m in self.modalities}
        )
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.layers = nn.ModuleList(
            SelfAttentionBlock(dim, num_heads, mlp_ratio, dropout, attn_dropout)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, tokens: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
    ) -> FusionOutput:
        batch = self.check_inputs(tokens, masks)
        parts = [self.cls.expand(batch, -1, -1)]
        keep = [torch.ones(batch, 1, dtype=torch.bool, device=self.cls.device)]
        for m in self.modalities:
            parts.append(self.project[m](tokens[m]) + self.type_embedding[m])
            keep.append(masks[m])
        x, allowed = torch.cat(parts, dim=1), key_padding(torch.cat(keep, dim=1))
        for layer in self.layers:
            x = layer(x, allowed)  # B x (1 + sum T) x dim
        return FusionOutput(self.norm(x[:, 0]), None, {})
