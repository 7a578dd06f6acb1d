"""Mixture-of-experts fusion: the fused vector is routed to top-k of many expert MLPs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ._base import Fusion, FusionOutput, PooledConcat, masked_mean, presence
from ._registry import register_fusion


class MoEOutput(NamedTuple):
    out: torch.Tensor  # N x D
    balance_loss: torch.Tensor  # scalar
    z_loss: torch.Tensor  # scalar
    dispatch: torch.Tensor  # N x E, 1 where a token was processed by an expert
    probs: torch.Tensor  # N x E router probabilities
    dropped: torch.Tensor  # scalar, fraction of assignments over capacity


class SparseMoE(nn.Module):
    """Top-k routed expert MLPs with a capacity limit.

    Noisy top-k gating (Shazeer et al., 2017) in training; capacity and top-1-first
    priority as in GShard (Lepikhin et al., 2021); load-balancing loss as in Switch
    (Fedus et al., 2022) and router z-loss as in ST-MoE (Zoph et al., 2022).

    Dispatch is sparse: tokens are scattered into an [E, capacity, D] buffer with
    capacity = ceil(capacity_factor * k * N / E), so expert compute is about
    capacity_factor * k * N token-MLPs whatever the number of experts E. Assignments
    over capacity are dropped (their token passes through the residual only).
    x: [N, D] -> out: [N, D].
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        num_experts: int,
        top_k: int = 2,
        capacity_factor: float = 1.25,
        eval_capacity_factor: float = 2.0,
        noisy_gating: bool = True,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        self.num_experts, self.top_k = num_experts, top_k
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.noise = nn.Linear(dim, num_experts, bias=False) if noisy_gating else None
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))
        self.b1 = nn.Parameter(torch.zeros(num_experts, 1, hidden_dim))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        self.b2 = nn.Parameter(torch.zeros(num_experts, 1, dim))
        nn.init.normal_(self.w1, std=dim**-0.5)
        nn.init.normal_(self.w2, std=hidden_dim**-0.5)
        nn.init.zeros_(self.router.weight)  # uniform routing at start
        if self.noise is not None:
            nn.init.zeros_(self.noise.weight)

    def forward(self, x: torch.Tensor) -> MoEOutput:
        n, d = x.shape
        e, k = self.num_experts, self.top_k
        logits = self.router(x).float()  # N x E; routing in float32 for stability
        if self.training and self.noise is not None:
            logits = logits + torch.randn_like(logits) * F.softplus(self.noise(x).float())
        probs = logits.softmax(dim=-1)
        gates, experts = probs.topk(k, dim=-1)  # N x k
        gates = gates / gates.sum(dim=-1, keepdim=True)

        # Rank-major order gives every token's first choice priority over second choices.
        expert_flat = experts.t().reshape(-1)  # kN
        token_flat = torch.arange(n, device=x.device).repeat(k)
        gate_flat = gates.t().reshape(-1)
        order = torch.argsort(expert_flat, stable=True)
        counts = torch.bincount(expert_flat, minlength=e)
        starts = counts.cumsum(0) - counts
        position = torch.empty_like(expert_flat)
        position[order] = torch.arange(k * n, device=x.device) - starts[expert_flat[order]]
        factor = self.capacity_factor if self.training else self.eval_capacity_factor
        capacity = max(1, math.ceil(factor * k * n / e))
        keep = position < capacity
        ex, pos, tok, gate = expert_flat[keep], position[keep], token_flat[keep], gate_flat[keep]

        buffer = x.new_zeros(e, capacity, d)
        buffer[ex, pos] = x[tok]  # E x C x D
        hidden = F.gelu(torch.baddbmm(self.b1, buffer, self.w1))  # E x C x H
        expert_out = torch.baddbmm(self.b2, hidden, self.w2)  # E x C x D
        out = x.new_zeros(n, d).index_add(0, tok, expert_out[ex, pos] * gate[:, None].to(x.dtype))

        top1_fraction = torch.bincount(experts[:, 0], minlength=e).float() / n
        balance_loss = e * (top1_fraction * probs.mean(dim=0)).sum()
        z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean()
        dispatch = torch.zeros(n, e, device=x.device)
        dispatch[tok, ex] = 1.0
        dropped = 1.0 - keep.float().mean()
        return MoEOutput(out, balance_loss, z_loss, dispatch, probs, dropped)


@register_fusion("moe")
class MoEFusion(Fusion):
    """Concatenation fusion followed by a residual sparse mixture-of-experts layer.

    tokens {m: [B, T_m, D_m]} -> masked mean + Linear -> concat -> MLP -> h [B, dim]
    -> fused = h + MoE(LayerNorm(h)) [B, dim]. aux_loss = balance_coef * load-balancing
    loss + z_loss_coef * router z-loss.

    info: ``expert_load`` [E], the share of routed samples each expert processed;
    ``expert_load_per_modality`` {m: [E]}, the same over the samples where m is present;
    ``dropped_fraction``, the share of assignments over capacity.
    """

    def __init__(
        self,
        modality_dims: Mapping[str, int],
        dim: int,
        num_experts: int = 8,
        top_k: int = 2,
        expert_hidden_dim: int | None = None,
        capacity_factor: float = 1.25,
        eval_capacity_factor: float = 2.0,
        noisy_gating: bool = True,
        balance_coef: float = 1e-2,
        z_loss_coef: float = 1e-3,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(modality_dims, dim)
        self.balance_coef, self.z_loss_coef = balance_coef, z_loss_coef
        self.project = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.modality_dims.items()})
        self.combine = PooledConcat(self.modalities, dim, dim, 2 * dim, dropout)
        self.norm = nn.LayerNorm(dim)
        self.moe = SparseMoE(
            dim, expert_hidden_dim or 2 * dim, num_experts, top_k,
            capacity_factor, eval_capacity_factor, noisy_gating,
        )  # fmt: skip

    def forward(
        self, tokens: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
    ) -> FusionOutput:
        self.check_inputs(tokens, masks)
        present = presence(masks)
        pooled = {m: self.project[m](masked_mean(tokens[m], masks[m])) for m in self.modalities}
        h = self.combine(pooled, present)  # B x dim
        routed = self.moe(self.norm(h))
        aux = self.balance_coef * routed.balance_loss + self.z_loss_coef * routed.z_loss
        load = routed.dispatch.detach()
        info = {
            "expert_load": load.sum(0) / load.sum().clamp(min=1.0),
            "expert_load_per_modality": {
                m: load[present[m]].sum(0) / load[present[m]].sum().clamp(min=1.0)
                for m in self.modalities
            },
            "dropped_fraction": routed.dropped.detach(),
            "balance_loss": routed.balance_loss.detach(),
            "z_loss": routed.z_loss.detach(),
        }
        return FusionOutput(h + routed.out, aux, info)
