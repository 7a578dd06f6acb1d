"""The encoder registry: ``@register_encoder`` fills it, ``create_encoder`` builds by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from multimodal.core.registry import Registry

# The names this package's modules register, listed without importing them.
ENCODERS: Registry[Any] = Registry("encoder", {
    "hf_text": "encoders.text", "timm_image": "encoders.image", "audio_cnn": "encoders.audio",
    "audio_timm": "encoders.audio", "tabular_mlp": "encoders.tabular",
})  # fmt: skip


def register_encoder(name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register an encoder class or builder under ``name`` (default: its ``__name__``)."""
    return ENCODERS.register(name)


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered encoder names matching an fnmatch ``pattern``."""
    return ENCODERS.list(pattern)


def create_encoder(name: str, **kwargs: Any) -> Any:
    """Build a registered encoder; kwargs that are None fall back to the encoder's defaults."""
    return ENCODERS.create(name, **kwargs)


_PROCESSORS: Registry[Any] = Registry("processor", {
    "text": "encoders.text", "image": "encoders.image", "audio": "encoders.audio", "tabular": "encoders.tabular",
})  # fmt: skip


def register_processor(
    name: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a processor class under ``name``; saved processors name it in their JSON."""
    return _PROCESSORS.register(name)


def processor_from_config(config: dict[str, Any], save_dir: Any) -> Any:
    """Rebuild a saved processor: ``config`` holds its registered ``name`` and its JSON."""
    config = dict(config)
    return _PROCESSORS.get(config.pop("name")).from_config(config, save_dir)
