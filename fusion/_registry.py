"""The fusion registry (same machinery as the encoders')."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from multimodal.core.registry import Registry

_FUSIONS: Registry[Any] = Registry("fusion")


def register_fusion(name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a fusion class or builder under ``name`` (default: its ``__name__``)."""
    return _FUSIONS.register(name)


def list_fusions(pattern: str = "*") -> list[str]:
    """Registered fusion names matching an fnmatch ``pattern``."""
    return _FUSIONS.list(pattern)


def create_fusion(name: str, modality_dims: Mapping[str, int], dim: int, **kwargs: Any) -> Any:
    """Build a registered fusion; kwargs that are None fall back to the fusion's defaults."""
    return _FUSIONS.create(name, modality_dims=modality_dims, dim=dim, **kwargs)
