"""The fusion registry (same machinery as the encoders')."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from multimodal.core.registry import Registry

# The names this package's modules register, listed without importing them.
FUSIONS: Registry[Any] = Registry("fusion", {
    "bottleneck": "fusion.bottleneck", "transformer": "fusion.bottleneck", "concat": "fusion.concat",
    "cross_attention": "fusion.cross_attention", "gated": "fusion.gated", "film": "fusion.gated",
    "late": "fusion.late", "moe": "fusion.moe", "tensor": "fusion.tensor", "low_rank_tensor": "fusion.tensor",
})  # fmt: skip


def register_fusion(name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a fusion class or builder under ``name`` (default: its ``__name__``)."""
    return FUSIONS.register(name)


def list_fusions(pattern: str = "*") -> list[str]:
    """Registered fusion names matching an fnmatch ``pattern``."""
    return FUSIONS.list(pattern)


def create_fusion(name: str, modality_dims: Mapping[str, int], dim: int, **kwargs: Any) -> Any:
    """Build a registered fusion; kwargs that are None fall back to the fusion's defaults."""
    return FUSIONS.create(name, modality_dims=modality_dims, dim=dim, **kwargs)
