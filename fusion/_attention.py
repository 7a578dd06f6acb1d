"""Attention building blocks on ``torch.nn.functional.scaled_dot_product_attention``.

Masks are boolean and True where a query may attend, shaped to broadcast against
[B, heads, T, S]: [B, 1, 1, S] for key padding, [B, 1, T, S] for per-query patterns.
SDPA then picks the fastest kernel the device has (flash, memory-efficient or the CPU
flash kernel), and the attention matrix is materialised only when weights are asked for.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from multimodal.core.randomness import Dropout, keyed
from multimodal.core.randomness import dropout as keyed_dropout

from ._base import static_shapes_active


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, T, D] -> [B, heads, T, D / heads]."""
    b, t, d = x.shape
    return x.view(b, t, num_heads, d // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, T, d] -> [B, T, heads * d]."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor,
    dropout: float = 0.0,
    need_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Masked attention on [B, heads, T|S, d] tensors -> ([B, heads, T, d], weights averaged
    over heads [B, T, S] when ``need_weights``, else None). Every query must be allowed at
    least one key: callers keep an always-visible key (a null key or a CLS token)."""
    # SDPA's own dropout draws from torch's generator: keyed dropout needs the weights.
    # Under vmap (static shapes) SDPA has no batching rule and would loop per model.
    if not need_weights and not (dropout > 0 and keyed()) and not static_shapes_active():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout), None
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    weights = _softmax(scores.masked_fill(~allowed, float("-inf")))
    return keyed_dropout(weights, dropout) @ v, (weights.mean(dim=1) if need_weights else None)


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.softmax(-1)`` up to rounding. On CPU torch's kernel is slow for rows as short
    as a few modalities' tokens (10 keys, [32, 50, 4, 9, 10]: 4.7 ms against 0.9 ms for
    these four ops), and the fusions' keys are that short; every row has a finite score."""
    if scores.device.type != "cpu" or scores.shape[-1] > 64:
        return scores.softmax(dim=-1)
    exp = (scores - scores.amax(dim=-1, keepdim=True)).exp()
    return exp / exp.sum(dim=-1, keepdim=True)


def feed_forward(dim: int, mlp_ratio: float, dropout: float) -> nn.Sequential:
    hidden = int(dim * mlp_ratio)
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.GELU(), Dropout(dropout), nn.Linear(hidden, dim), Dropout(dropout)
    )  # fmt: skip


class SelfAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + Drop(Proj(Attn(LN(x)))), then x + FF(LN(x)).

    x: [B, T, dim]; allowed: bool, broadcastable to [B, heads, T, T]. One fused QKV
    projection and one SDPA call; ``attn_dropout`` drops attention probabilities (0 by
    default, as in timm's ViT), ``dropout`` the projection and feed-forward outputs.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, dropout: float, attn_dropout: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads, self.attn_dropout = num_heads, attn_dropout
        self.norm_attn = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(dropout)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = feed_forward(dim, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(self.norm_attn(x)).chunk(3, -1))
        dropout = self.attn_dropout if self.training else 0.0
        attended, _ = attend(q, k, v, allowed, dropout)
        x = x + self.proj_drop(self.proj(merge_heads(attended)))
        return x + self.ff(self.norm_ff(x))


def key_padding(mask: torch.Tensor) -> torch.Tensor:
    """[B, S] bool (True = a real token) -> [B, 1, 1, S], the SDPA mask for self-attention."""
    return mask[:, None, None, :]
