"""Mixture-of-experts fusion: fused vectors (or modality tokens) routed to a few of many expert MLPs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from multimodal.core.randomness import normal_like

from ._base import Fusion, FusionOutput, PooledConcat, pool_input, presence, static_shapes_active
from ._registry import register_fusion


class MoEOutput(NamedTuple):
    out: torch.Tensor  # N x D
    balance_loss: torch.Tensor  # scalar
    z_loss: torch.Tensor  # scalar
    dispatch: torch.Tensor  # N x E, 1 where a token was processed by an expert
    probs: torch.Tensor  # N x E router probabilities
    dropped: torch.Tensor  # scalar: assignments over capacity, or tokens no expert chose


class SparseMoE(nn.Module):
    """Routed expert MLPs with a capacity limit.

    Noisy gating (Shazeer et al., 2017) in training; load-balancing loss as in Switch
    (Fedus et al., 2022) and router z-loss as in ST-MoE (Zoph et al., 2022). Routing:
    ``token_choice``, each token picks its top-k experts and first choices take the
    capacity first (GShard, Lepikhin et al., 2021); or ``expert_choice``, each expert picks
    its top tokens (Zhou et al., 2022), which balances load exactly.

    Dispatch is sparse: tokens are scattered into an [E, capacity, D] buffer with
    capacity = ceil(capacity_factor * k * N / E), so expert compute is about
    capacity_factor * k * N token-MLPs whatever the number of experts E. Assignments
    over capacity are dropped (their token passes through the residual only) while
    training; in eval mode routing is dropless top-k, so a row's output never depends on
    the rest of its batch (``eval_capacity_factor`` is accepted, for models saved before,
    and unused). x: [N, D] -> out: [N, D].
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
        routing: str = "token_choice",
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        if routing not in ("token_choice", "expert_choice"):
            raise ValueError(f"routing must be 'token_choice' or 'expert_choice', got {routing!r}")
        self.num_experts, self.top_k, self.routing = num_experts, top_k, routing
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

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> MoEOutput:
        """x: [N, D]; token_mask: [N] bool, False for tokens that must not be dispatched.

        In eval mode routing is dropless top-k (token choice, whatever ``routing`` trained):
        a row's experts and gates are its own, so its output does not depend on the other
        rows of the batch. With ``static_shapes`` (ONNX export, ``torch.func.vmap``) the
        same routing runs densely, in shapes that do not depend on the data.
        """
        n, d = x.shape
        valid = (
            token_mask
            if token_mask is not None
            else torch.ones(n, dtype=torch.bool, device=x.device)
        )
        static = torch.compiler.is_exporting() or static_shapes_active()
        if not self.training:
            return self._dense(x, valid) if static else self._dropless(x, valid)
        logits = self.router(x).float()  # N x E; routing in float32 for stability
        if self.noise is not None:
            logits = logits + normal_like(logits) * F.softplus(self.noise(x).float())
        probs = logits.softmax(dim=-1)
        if static:
            return self._dense_capacity(x, valid, logits, probs)
        n_valid = max(int(valid.sum()), 1)
        capacity = max(1, math.ceil(self.capacity_factor * self.top_k * n_valid / self.num_experts))
        choose = self._token_choice if self.routing == "token_choice" else self._expert_choice
        return self._dispatch(x, valid, logits, probs, *choose(probs, valid, capacity))

    def _dispatch(
        self, x: torch.Tensor, valid: torch.Tensor, logits: torch.Tensor, probs: torch.Tensor,
        ex: torch.Tensor, pos: torch.Tensor, tok: torch.Tensor, gate: torch.Tensor,
        dropped: torch.Tensor,
    ) -> MoEOutput:  # fmt: skip
        """Kept assignments (expert, slot, token, gate) through the experts, sparsely."""
        n, d = x.shape
        e = self.num_experts
        capacity = int(pos.max()) + 1 if len(pos) else 1
        buffer = x.new_zeros(e, capacity, d)
        buffer[ex, pos] = x[tok]  # E x C x D
        hidden = F.gelu(torch.baddbmm(self.b1, buffer, self.w1))  # E x C x H
        expert_out = torch.baddbmm(self.b2, hidden, self.w2)  # E x C x D
        out = x.new_zeros(n, d).index_add(0, tok, expert_out[ex, pos] * gate[:, None].to(x.dtype))
        dispatch = torch.zeros(n, e, device=x.device)
        dispatch[tok, ex] = 1.0
        return MoEOutput(out, *self._aux_losses(logits, probs, valid), dispatch, probs, dropped)

    def _aux_losses(
        self, logits: torch.Tensor, probs: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Load-balancing loss (Switch) and router z-loss over the valid tokens, in fixed
        shapes: top-1 fraction times mean probability per expert; mean squared logsumexp."""
        e = self.num_experts
        weight = valid.to(probs.dtype)[:, None]  # N x 1
        count = weight.sum()
        top1 = F.one_hot(probs.argmax(-1), e).to(probs.dtype) * weight  # N x E
        fraction = top1.sum(0) / count.clamp(min=1.0)
        mean_prob = (probs * weight).sum(0) / count.clamp(min=1.0)
        balance_loss = e * (fraction * mean_prob).sum()
        z = torch.logsumexp(logits, dim=-1).pow(2)[:, None] * weight
        return balance_loss, z.sum() / count.clamp(min=1.0)

    def _dropless(self, x: torch.Tensor, valid: torch.Tensor) -> MoEOutput:
        """Top-k token choice with room for every assignment: nothing is dropped."""
        logits = self.router(x).float()
        probs = logits.softmax(dim=-1)
        need = torch.bincount(probs.topk(self.top_k, dim=-1).indices[valid].reshape(-1),
                              minlength=self.num_experts)  # fmt: skip
        capacity = max(int(need.max()) if len(need) else 1, 1)
        routing = self._token_choice(probs, valid, capacity)
        return self._dispatch(x, valid, logits, probs, *routing)

    def _dense_capacity(
        self, x: torch.Tensor, valid: torch.Tensor, logits: torch.Tensor, probs: torch.Tensor
    ) -> MoEOutput:
        """``_token_choice`` with the same capacity and the same kept assignments, computed
        densely (every token through every expert, weighted by its kept gates): shapes do
        not depend on the data. Expert-choice routing cannot be written so (its capacity is
        a count of tokens); it raises, and callers that batch models fall back."""
        if self.routing != "token_choice":
            raise NotImplementedError("expert_choice routing has no fixed-shape training path")
        n, e, k = probs.shape[0], self.num_experts, self.top_k
        n_valid = valid.to(torch.float64).sum().clamp(min=1.0)
        capacity = torch.ceil(self.capacity_factor * k * n_valid / e).clamp(min=1.0)
        gates, experts = probs.topk(k, dim=-1)  # N x k
        gates = gates / gates.sum(dim=-1, keepdim=True)
        # Rank-major, as _token_choice: first choices take the capacity first.
        chosen = F.one_hot(experts.t(), e) * valid[None, :, None]  # k x N x E
        flat = chosen.reshape(k * n, e)
        position = flat.cumsum(0) - 1  # each assignment's slot in its expert's queue
        kept = (flat.bool() & (position < capacity)).reshape(k, n, e)
        weight = (kept * gates.t()[:, :, None]).sum(0)  # N x E
        hidden = F.gelu(torch.einsum("nd,edh->enh", x, self.w1) + self.b1)  # E x N x H
        expert_out = torch.einsum("enh,ehd->end", hidden, self.w2) + self.b2  # E x N x D
        out = _combine(weight.to(x.dtype), expert_out)
        wanted = valid.to(torch.float32).sum().clamp(min=1.0) * k
        dropped = 1.0 - kept.sum().to(torch.float32) / wanted
        dispatch = kept.any(0).to(torch.float32)
        return MoEOutput(out, *self._aux_losses(logits, probs, valid), dispatch, probs, dropped)

    def _dense(self, x: torch.Tensor, valid: torch.Tensor) -> MoEOutput:
        """Dropless top-k routing (eval) in shapes that do not depend on the data: every
        token through every expert, weighted by its top-k gates. Expert-choice routing is
        routed as token choice, as ``_dropless`` routes it."""
        logits = self.router(x).float()
        probs = logits.softmax(dim=-1)  # N x E
        gates, experts = probs.topk(self.top_k, dim=-1)
        gates = gates / gates.sum(dim=-1, keepdim=True)
        weight = torch.zeros_like(probs).scatter(1, experts, gates) * valid[:, None]  # N x E
        hidden = F.gelu(torch.einsum("nd,edh->enh", x, self.w1) + self.b1)  # E x N x H
        expert_out = torch.einsum("enh,ehd->end", hidden, self.w2) + self.b2  # E x N x D
        out = _combine(weight.to(x.dtype), expert_out)
        return MoEOutput(out, *self._aux_losses(logits, probs, valid), (weight > 0).float(),
                         probs, probs.sum() * 0)  # fmt: skip

    def _token_choice(
        self, probs: torch.Tensor, valid: torch.Tensor, capacity: int
    ) -> tuple[torch.Tensor, ...]:
        n, e, k = probs.shape[0], self.num_experts, self.top_k
        gates, experts = probs.topk(k, dim=-1)  # N x k
        gates = gates / gates.sum(dim=-1, keepdim=True)
        # Rank-major order gives every token's first choice priority over second choices.
        expert_flat = experts.t().reshape(-1)  # kN
        token_flat = torch.arange(n, device=probs.device).repeat(k)
        gate_flat = gates.t().reshape(-1)
        wanted = valid.repeat(k)
        expert_flat = torch.where(
            wanted, expert_flat, torch.full_like(expert_flat, e)
        )  # masked -> virtual expert e
        order = torch.argsort(expert_flat, stable=True)
        counts = torch.bincount(expert_flat, minlength=e + 1)
        starts = counts.cumsum(0) - counts
        position = torch.empty_like(expert_flat)
        position[order] = torch.arange(k * n, device=probs.device) - starts[expert_flat[order]]
        keep = wanted & (position < capacity)
        dropped = 1.0 - keep.float().sum() / wanted.float().sum().clamp(min=1.0)
        return expert_flat[keep], position[keep], token_flat[keep], gate_flat[keep], dropped

    def _expert_choice(
        self, probs: torch.Tensor, valid: torch.Tensor, capacity: int
    ) -> tuple[torch.Tensor, ...]:
        capacity = min(capacity, max(int(valid.sum()), 1))
        scores = probs.masked_fill(
            ~valid[:, None], -1.0
        ).t()  # E x N; masked tokens are never picked
        gate, tok = scores.topk(capacity, dim=-1)  # E x C
        ex = torch.arange(self.num_experts, device=probs.device)[:, None].expand_as(tok)
        pos = torch.arange(capacity, device=probs.device)[None, :].expand_as(tok)
        keep = (gate >= 0).reshape(-1)
        chosen = torch.zeros_like(valid)
        chosen[tok.reshape(-1)[keep]] = True
        dropped = 1.0 - (chosen & valid).float().sum() / valid.float().sum().clamp(min=1.0)
        return (
            ex.reshape(-1)[keep],
            pos.reshape(-1)[keep],
            tok.reshape(-1)[keep],
            gate.reshape(-1)[keep],
            dropped,
        )


def _combine(weight: torch.Tensor, expert_out: torch.Tensor) -> torch.Tensor:
    """sum_e weight[n, e] * expert_out[e, n] -> [N, D]: elementwise, as ``einsum("ne,end->nd")``
    would run (under vmap) one [E] x [E, D] product per row and, backward, an outer product
    per row."""
    return (weight.t()[:, :, None] * expert_out).sum(0)


@register_fusion("moe")
class MoEFusion(Fusion):
    """Concatenation fusion with a residual sparse mixture-of-experts layer.

    route="fused" (default): tokens {m: [B, T_m, D_m]} -> masked mean + Linear -> concat ->
    MLP -> h [B, dim] -> fused = h + MoE(LayerNorm(h)) [B, dim].
    route="modality": one token per modality and sample (its pooled vector + a modality
    embedding) goes through the shared experts ([B*M, dim], absent ones not dispatched),
    then the modality tokens are concatenated and mapped to [B, dim].
    routing: "token_choice" (top-k experts per token) or "expert_choice" (top tokens per expert).
    aux_loss = balance_coef * load-balancing loss + z_loss_coef * router z-loss.

    info: ``expert_load`` [E], the share of routed tokens each expert processed;
    ``expert_load_per_modality`` {m: [E]}: over the samples where m is present (fused) or
    over m's own tokens (modality); ``sample_load`` [B, E]: the tokens of each sample each
    expert processed; ``dropped_fraction``.
    """

    pools_first = True

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
        route: str = "fused",
        routing: str = "token_choice",
    ) -> None:
        super().__init__(modality_dims, dim)
        if route not in ("fused", "modality"):
            raise ValueError(f"route must be 'fused' or 'modality', got {route!r}")
        self.route = route
        self.balance_coef, self.z_loss_coef = balance_coef, z_loss_coef
        self.project = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.modality_dims.items()})
        self.combine = PooledConcat(self.modalities, dim, dim, 2 * dim, dropout)
        self.norm = nn.LayerNorm(dim)
        self.moe = SparseMoE(
            dim, expert_hidden_dim or 2 * dim, num_experts, top_k,
            capacity_factor, eval_capacity_factor, noisy_gating, routing,
        )  # fmt: skip
        self.modality_embedding = (
            nn.ParameterDict({m: nn.Parameter(torch.randn(dim) * 0.02) for m in self.modalities})
            if route == "modality"
            else None
        )

    def forward(
        self, tokens: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
    ) -> FusionOutput:
        batch = self.check_inputs(tokens, masks)
        present = presence(masks)
        pooled = {m: self.project[m](pool_input(tokens[m], masks[m])) for m in self.modalities}
        if self.route == "fused":
            h = self.combine(pooled, present)  # B x dim
            routed = self.moe(self.norm(h))
            fused = h + routed.out
            load_rows = {m: routed.dispatch.detach() * present[m][:, None] for m in self.modalities}
        else:
            x = torch.stack(
                [pooled[m] + self.modality_embedding[m] for m in self.modalities], dim=1
            )  # B x M x dim
            flat_present = torch.stack([present[m] for m in self.modalities], dim=1).reshape(
                -1
            )  # BM
            routed = self.moe(self.norm(x.reshape(-1, self.dim)), token_mask=flat_present)
            x = (x.reshape(-1, self.dim) + routed.out).reshape(
                batch, len(self.modalities), self.dim
            )
            fused = self.combine({m: x[:, i] for i, m in enumerate(self.modalities)}, present)
            dispatch = routed.dispatch.detach().reshape(
                batch, len(self.modalities), -1
            )  # B x M x E
            load_rows = {
                m: dispatch[:, i] * present[m][:, None] for i, m in enumerate(self.modalities)
            }
        aux = self.balance_coef * routed.balance_loss + self.z_loss_coef * routed.z_loss
        load = routed.dispatch.detach()
        sample_load = load if self.route == "fused" else dispatch.sum(1)  # B x E
        info = {
            "expert_load": load.sum(0) / load.sum().clamp(min=1.0),
            "sample_load": sample_load,
            "expert_load_per_modality": {
                m: rows.sum(0) / rows.sum().clamp(min=1.0) for m, rows in load_rows.items()
            },
            "dropped_fraction": routed.dropped.detach(),
            "balance_loss": routed.balance_loss.detach(),
            "z_loss": routed.z_loss.detach(),
        }
        return FusionOutput(fused, aux, info)
