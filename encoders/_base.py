"""The encoder contract: raw values -> processor -> tensors -> encoder -> tokens + mask."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn


class EncoderOutput(NamedTuple):
    """Token states of one modality.

    tokens: [B, T, D] float; mask: [B, T] bool, True where a token is real.
    """

    tokens: torch.Tensor
    mask: torch.Tensor


class AttackSurface(NamedTuple):
    """A continuous input an adversarial attack may perturb.

    ``inputs[key] = value + delta`` with ``|delta| <= budget * scale`` (elementwise, ``scale``
    broadcastable to ``value``), clamped to ``[low, high]`` and zero where ``mask`` is False.
    """

    key: str
    value: torch.Tensor
    scale: torch.Tensor
    mask: torch.Tensor
    low: torch.Tensor | None = None
    high: torch.Tensor | None = None


class Encoder(nn.Module):
    """Base class of every encoder.

    Subclasses set ``modality`` (the kind of data: text, image, audio, tabular) and
    ``out_dim``, and implement ``process`` (a list of raw values, ``None`` where a sample
    lacks the modality, to a dict of tensors) and ``forward``.
    """

    modality: str = ""
    out_dim: int

    def process(self, values: Sequence[Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @property
    def processor(self) -> Any:
        """Callable turning ``list[raw | None]`` into the tensors ``forward`` takes."""
        return self.process

    def is_missing(self, value: Any) -> bool:
        """Whether a raw value counts as an absent modality (None by default)."""
        return value is None

    def fit(self, values: Sequence[Any]) -> Encoder:
        """Fit data-dependent parts (tokenizer, feature statistics) on training values."""
        return self

    def to_config(self, save_dir: Path) -> dict[str, Any]:
        """Keyword arguments that rebuild this encoder offline, without pretrained weights.

        ``save_dir`` is this encoder's own folder for extra files (a tokenizer, say);
        the weights themselves are saved by the model's state dict.
        """
        raise NotImplementedError

    def layer_blocks(self) -> list[nn.Module]:
        """The encoder's repeated blocks, first to last; used by top-k freezing."""
        return []

    def attack_surface(self, inputs: dict[str, torch.Tensor]) -> AttackSurface | None:
        """The continuous input adversarial attacks perturb, in the unit of the budget; None
        when the encoder has none."""
        return None

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        raise NotImplementedError


def tokens_from_features(features: torch.Tensor) -> torch.Tensor:
    """A backbone's features as tokens: [B, C, H, W] -> [B, H*W, C]; [B, N, C] unchanged."""
    if features.ndim == 4:
        return features.flatten(2).transpose(1, 2)  # B x HW x C
    if features.ndim == 3:
        return features
    raise ValueError(
        f"expected features of shape [B,C,H,W] or [B,N,C], got {tuple(features.shape)}"
    )
