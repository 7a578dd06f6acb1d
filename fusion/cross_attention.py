"""Cross-modal attention: each modality's tokens attend to every other modality's tokens."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from multimodal.core.randomness import Dropout

from ._attention import attend, feed_forward, merge_heads, split_heads
from ._base import Fusion, FusionOutput, PooledConcat, masked_mean, presence
from ._registry import register_fusion


class CrossModalLayer(nn.Module):
    """One layer for every modality at once, pre-norm and residual.

    Each modality m has its own LayerNorm and Q/K/V projection, applied once to its
    tokens: its queries, and the keys and values that every other modality reads. One SDPA
    call then runs all queries [B, T, dim] against [null; all tokens] [B, 1 + T, dim] under
    ``allowed`` [B, 1, T, 1 + T], which hides a query's own modality and padding. Output
    projection and feed-forward are per modality again.
    """

    def __init__(
        self, modalities: list[str], dim: int, num_heads: int, mlp_ratio: float,
        dropout: float, attn_dropout: float,
    ) -> None:  # fmt: skip
        super().__init__()
        self.modalities, self.num_heads, self.attn_dropout = modalities, num_heads, attn_dropout
        self.norm = nn.ModuleDict({m: nn.LayerNorm(dim) for m in modalities})
        self.qkv = nn.ModuleDict({m: nn.Linear(dim, 3 * dim) for m in modalities})
        # The learned null key and value: always visible, so no softmax row is all-masked.
        self.null_kv = nn.Parameter(torch.randn(2, 1, num_heads, 1, dim // num_heads) * 0.02)
        self.proj = nn.ModuleDict({m: nn.Linear(dim, dim) for m in modalities})
        self.proj_drop = Dropout(dropout)
        self.norm_ff = nn.ModuleDict({m: nn.LayerNorm(dim) for m in modalities})
        self.ff = nn.ModuleDict({m: feed_forward(dim, mlp_ratio, dropout) for m in modalities})

    def forward(
        self, x: Mapping[str, torch.Tensor], allowed: torch.Tensor, need_weights: bool = False
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """-> ({m: [B, T_m, dim]}, head-averaged weights [B, T, 1 + T] or None)."""
        qkv = torch.cat([self.qkv[m](self.norm[m](x[m])) for m in self.modalities], dim=1)
        q, k, v = (split_heads(t, self.num_heads) for t in qkv.chunk(3, dim=-1))
        null_k, null_v = self.null_kv.expand(-1, q.shape[0], -1, -1, -1)
        k, v = torch.cat([null_k, k], dim=2), torch.cat([null_v, v], dim=2)
        dropout = self.attn_dropout if self.training else 0.0
        attended, weights = attend(q, k, v, allowed, dropout, need_weights)
        parts = merge_heads(attended).split([x[m].shape[1] for m in self.modalities], dim=1)
        out = {}
        for m, part in zip(self.modalities, parts, strict=True):
            # contiguous: a slice of the tokens would make a vmapped Linear (engine.stacked)
            # broadcast its weight to every row, one tiny product per row.
            h = x[m] + self.proj_drop(self.proj[m](part.contiguous()))
            out[m] = h + self.ff[m](self.norm_ff[m](h))
        return out, weights


@register_fusion("cross_attention")
class CrossAttentionFusion(Fusion):
    """Stacked cross-modal attention in the spirit of MulT (Tsai et al., ACL 2019).

    tokens {m: [B, T_m, D_m]} -> Linear + modality embedding [B, T_m, dim] -> ``depth``
    layers in which each modality's tokens query the tokens of all the others and a
    learned null key (``CrossModalLayer``) -> masked mean per modality -> concat -> MLP
    -> [B, dim]. Keys and values are projected once per layer and source modality, and
    one masked SDPA call per layer serves every query modality.

    The null key is always visible, so a sample with every other modality absent attends
    to it instead of producing NaN from an all-masked softmax.

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
        attn_dropout: float = 0.0,
    ) -> None:
        super().__init__(modality_dims, dim)
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.project = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.modality_dims.items()})
        self.modality_embedding = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(dim)) for m in self.modalities}
        )
        self.layers = nn.ModuleList(
            CrossModalLayer(self.modalities, dim, num_heads, mlp_ratio, dropout, attn_dropout)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.combine = PooledConcat(self.modalities, dim, dim, 2 * dim, dropout)

    def allowed(
        self, x: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """[B, 1, T, 1 + T] bool: a query sees the null key and the real tokens of the
        other modalities."""
        source = torch.cat(
            [torch.full((x[m].shape[1],), i, device=masks[m].device) for i, m in enumerate(self.modalities)]
        )  # fmt: skip
        other = source[:, None] != source[None, :]  # T x T
        real = torch.cat([masks[m] for m in self.modalities], dim=1)  # B x T
        keys = other[None] & real[:, None, :]  # B x T x T
        null = torch.ones_like(keys[..., :1])
        return torch.cat([null, keys], dim=-1)[:, None]

    def forward(
        self, tokens: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
    ) -> FusionOutput:
        self.check_inputs(tokens, masks)
        x = {
            m: self.project[m](tokens[m]) + self.modality_embedding[m] for m in self.modalities
        }  # B x T_m x dim
        allowed = self.allowed(x, masks)
        info: dict = {}
        if self.record_attention:
            info["attention"] = []
            info["attention_keys"] = {
                m: [("null", 1), *((n, x[n].shape[1]) for n in self.modalities if n != m)]
                for m in self.modalities
            }
        for layer in self.layers:
            x, weights = layer(x, allowed, need_weights=self.record_attention)
            if weights is not None:
                info["attention"].append(self._per_modality(weights.detach(), x))
        pooled = {m: masked_mean(self.norm(x[m]), masks[m]) for m in self.modalities}
        return FusionOutput(self.combine(pooled, presence(masks)), None, info)

    def _per_modality(
        self, weights: torch.Tensor, x: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """[B, T, 1 + T] -> {m: [B, T_m, 1 + sum_{n != m} T_n]}: m's rows, and the columns of
        the keys it may see, in the ``attention_keys`` layout."""
        lengths = [x[m].shape[1] for m in self.modalities]
        rows = weights.split(lengths, dim=1)
        out = {}
        for i, m in enumerate(self.modalities):
            null, *blocks = rows[i].split([1, *lengths], dim=-1)
            out[m] = torch.cat([null, *(b for j, b in enumerate(blocks) if j != i)], dim=-1)
        return out
