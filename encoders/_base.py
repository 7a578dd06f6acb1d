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


class Processor:
    """Raw values of one modality -> the tensors its encoder's ``forward`` takes.

    A processor holds no weights: its state is the JSON of ``to_config`` plus the files it
    writes beside it (a tokenizer), so the collator, the server and the ONNX runtime can
    hold processors without the network. Subclasses set ``name`` and ``modality`` and are
    registered with ``@register_processor``.
    """

    name: str = ""
    modality: str = ""

    def __call__(self, values: Sequence[Any]) -> dict[str, torch.Tensor]:
        """``values``: raw values, ``None`` where a sample lacks the modality."""
        raise NotImplementedError

    def is_missing(self, value: Any) -> bool:
        """Whether a raw value counts as an absent modality (None by default)."""
        return value is None

    def fit(self, values: Sequence[Any]) -> Processor:
        """Fit data-dependent parts (a tokenizer) on training values."""
        return self

    def fits_on_data(self) -> bool:
        """Whether ``fit`` would change this processor (nothing to fit by default)."""
        return False

    def to_config(self, save_dir: Path) -> dict[str, Any]:
        """JSON that ``from_config`` rebuilds this processor from; extra files go in ``save_dir``."""
        raise NotImplementedError

    # Where ``collate`` pads sequences, and with what (0 unless a subclass says otherwise).
    padding_side: str = "right"

    def pad_value(self, key: str) -> float:
        return 0

    def collate(self, items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """One batch from the outputs of ``self([value])`` per sample (each [1, ...]): the
        tensors ``self(values)`` gives, sequences [1, L] padded to the longest."""
        out = {}
        for key in items[0]:
            parts = [item[key] for item in items]
            if parts[0].ndim == 2:
                width = max(p.shape[1] for p in parts)
                parts = [self._pad(p, width, self.pad_value(key)) for p in parts]
            out[key] = torch.cat(parts)
        return out

    def _pad(self, x: torch.Tensor, width: int, value: float) -> torch.Tensor:
        extra = width - x.shape[1]
        return torch.nn.functional.pad(
            x, (extra, 0) if self.padding_side == "left" else (0, extra), value=value
        )

    @classmethod
    def from_config(cls, config: dict[str, Any], save_dir: Path) -> Processor:
        return cls(**config)


class Encoder(nn.Module):
    """Base class of every encoder.

    Subclasses set ``modality`` (the kind of data: text, image, audio, tabular), ``out_dim``
    and ``processor`` (a ``Processor``: raw values -> tensors), and implement ``forward``.
    """

    modality: str = ""
    out_dim: int
    processor: Processor

    def process(self, values: Sequence[Any]) -> dict[str, torch.Tensor]:
        """The processor's tensors for a list of raw values (None where absent)."""
        return self.processor(values)

    def is_missing(self, value: Any) -> bool:
        """Whether a raw value counts as an absent modality."""
        return self.processor.is_missing(value)

    def fit(self, values: Sequence[Any]) -> Encoder:
        """Fit data-dependent parts (tokenizer, feature statistics) on training values."""
        self.processor.fit(values)
        return self

    def fits_on_data(self) -> bool:
        """Whether ``fit`` would change this encoder or its processor: if not, a model built
        from it is the same whatever rows it is built on."""
        return self.processor.fits_on_data()

    def use_channels_last(self) -> bool:
        """Switch convolutions over images to the NHWC memory layout (faster on tensor
        cores); returns whether this encoder has any. The default has none."""
        return False

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

    def augment(
        self, inputs: dict[str, torch.Tensor], strength: str
    ) -> dict[str, torch.Tensor] | None:
        """``inputs`` (a batch, as ``forward`` takes it) augmented at ``strength`` (weak or
        strong, ``encoders._augment``); None when the encoder has no augmentation."""
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
