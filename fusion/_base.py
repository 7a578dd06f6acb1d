"""The fusion contract and the pieces several fusion modules share."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from multimodal.core.context import thread_setting
from multimodal.core.randomness import Dropout


class FusionOutput(NamedTuple):
    """fused: [B, out_dim]; aux_loss: scalar to add to the task loss, or None; info: diagnostics."""

    fused: torch.Tensor
    aux_loss: torch.Tensor | None
    info: dict[str, Any]


class Fusion(nn.Module):
    """Base of every fusion module.

    forward(tokens: {modality: [B, T_m, D_m]}, masks: {modality: [B, T_m] bool}) -> FusionOutput.
    A row whose mask is all False is an absent modality for that sample. Modalities are
    always visited in sorted order, so the dict order of the inputs never matters.

    ``pools_first``: the fusion reads each modality only through ``pool_input`` (the
    ``masked_mean``) of its tokens, so one pooled token per row (``pool_tokens``) gives the
    same output; a caller that holds cached tokens may pool them once instead of every step.
    """

    pools_first: bool = False

    def __init__(self, modality_dims: Mapping[str, int], dim: int) -> None:
        super().__init__()
        if not modality_dims:
            raise ValueError("a fusion needs at least one modality")
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.modality_dims = {m: int(modality_dims[m]) for m in sorted(modality_dims)}
        self.modalities = list(self.modality_dims)
        self.dim = dim
        self.out_dim = dim

    def check_inputs(
        self, tokens: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
    ) -> int:
        """Validate the inputs against ``modality_dims``; returns the batch size."""
        missing = [m for m in self.modalities if m not in tokens or m not in masks]
        if missing:
            raise ValueError(
                f"{type(self).__name__} expects modalities {self.modalities}; missing {missing} "
                f"(got tokens for {sorted(tokens)}, masks for {sorted(masks)})"
            )
        extra = sorted(set(tokens) - set(self.modalities))
        if extra:
            raise ValueError(
                f"{type(self).__name__} was built for {self.modalities}; unexpected {extra}"
            )
        batch = tokens[self.modalities[0]].shape[0]
        if any(
            tokens[m].shape[0] != batch for m in self.modalities
        ):  # no set: sizes may be symbolic
            raise ValueError(
                f"modalities disagree on the batch size: { ({m: tokens[m].shape[0] for m in self.modalities}) }"
            )
        for m in self.modalities:
            t, k = tokens[m], masks[m]
            if t.ndim != 3 or t.shape[-1] != self.modality_dims[m]:
                raise ValueError(
                    f"tokens[{m!r}]: expected [B, T, {self.modality_dims[m]}], got {tuple(t.shape)}"
                )
            if k.shape != t.shape[:2] or k.dtype != torch.bool:
                raise ValueError(
                    f"masks[{m!r}]: expected bool {tuple(t.shape[:2])}, got {k.dtype} {tuple(k.shape)}"
                )
        return batch


_STATIC = threading.local()


@contextlib.contextmanager
def static_shapes() -> Iterator[None]:
    """Inside, fusions compute in shapes that do not depend on the data, as
    ``torch.func.vmap`` needs (moe routes densely, keeping the same capacity and drops); the
    results are the same up to floating-point rounding."""
    with thread_setting(_STATIC, "on", True, False):
        yield


def static_shapes_active() -> bool:
    return getattr(_STATIC, "on", False)


@contextlib.contextmanager
def pooled_inputs() -> Iterator[None]:
    """Inside, the caller promises that each modality a ``pools_first`` fusion gets is one
    token per row, zeros where masked (``pool_tokens``' output, rows dropped by modality
    dropout zeroed too): ``pool_input`` then takes the token as it is."""
    with thread_setting(_STATIC, "pooled", True, False):
        yield


def pool_input(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``masked_mean`` of a fusion's input tokens; under ``pooled_inputs`` the one token,
    which already is its mean (no [B, D] product by the mask per step)."""
    if tokens.shape[1] == 1 and getattr(_STATIC, "pooled", False):
        return tokens[:, 0]
    return masked_mean(tokens, mask)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the valid tokens: [B, T, D], [B, T] -> [B, D]; zeros where none is valid."""
    if tokens.shape[1] == 1:  # one token (pooled already): the same values, no tiny bmm per row
        return tokens[:, 0] * mask.to(tokens.dtype)
    weights = mask.to(tokens.dtype).unsqueeze(1)  # B x 1 x T
    # A [1, T] x [T, D] product per row reads the tokens once and makes no [B, T, D] copy.
    return (weights @ tokens).squeeze(1) / weights.sum(-1).clamp(min=1.0)


def pool_tokens(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, T, D], [N, T] -> one token per row, [N, 1, D] and [N, 1]: the masked mean, and
    whether any token was valid (the same absent rows, and zeros for them)."""
    return masked_mean(tokens, mask).unsqueeze(1), mask.any(dim=1, keepdim=True)


class PooledConcat(nn.Module):
    """Per-modality vectors -> concatenation -> MLP to ``dim``.

    An absent modality contributes a learned "missing" vector instead of zeros, so the
    MLP can tell absence from a real all-zero input.
    """

    def __init__(
        self,
        modalities: list[str],
        in_dim: int,
        dim: int,
        hidden_dim: int,
        dropout: float,
        learn_missing: bool = True,
    ) -> None:
        super().__init__()
        self.modalities = modalities
        # learn_missing=False: the inputs already stand in for absent modalities.
        self.missing = missing_vectors(modalities, in_dim, learn_missing)
        self.mlp = nn.Sequential(
            nn.LayerNorm(in_dim * len(modalities)),
            nn.Linear(in_dim * len(modalities), hidden_dim),
            nn.GELU(),
            Dropout(dropout),
            nn.Linear(hidden_dim, dim),
        )

    def forward(
        self, pooled: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        parts = [
            torch.where(present[m][:, None], pooled[m], self.missing[m].to(pooled[m].dtype))
            for m in self.modalities
        ]
        return self.mlp(torch.cat(parts, dim=-1))  # B x dim


def missing_vectors(modalities: Iterable[str], dim: int, learn: bool) -> nn.Module:
    """What stands in for each absent modality, ``[m]`` -> [dim]: learned vectors (an
    ``nn.ParameterDict``), or with ``learn=False`` zeros held as buffers, which nothing
    makes trainable (freezing strategies set every parameter of a fusion trainable)."""
    if learn:
        return nn.ParameterDict({m: nn.Parameter(torch.zeros(dim)) for m in modalities})
    return _Zeros(modalities, dim)


class _Zeros(nn.Module):
    """Zero vectors by name, as buffers (the keys an ``nn.ParameterDict`` would give them)."""

    def __init__(self, names: Iterable[str], dim: int) -> None:
        super().__init__()
        for name in names:
            self.register_buffer(name, torch.zeros(dim))

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._buffers[name]  # type: ignore[return-value]


def presence(masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{modality: [B] bool}: whether each sample has at least one valid token."""
    return {m: k.any(dim=1) for m, k in masks.items()}
