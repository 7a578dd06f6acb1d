"""Input augmentation of a batch (``train.augment``; FixMatch's weak and strong views): each
modality's encoder augments its own inputs (``Encoder.augment``, policies in
``encoders._augment``)."""

from __future__ import annotations

import logging
from typing import Any

from .model import Batch

logger = logging.getLogger(__name__)

STRENGTHS = ("none", "weak", "strong")


class Augmenter:
    """``batch`` -> a copy with every modality's inputs augmented at ``strength`` by its
    encoder; a modality whose encoder has no augmentation passes as it is (said once)."""

    def __init__(self, model: Any, strength: str) -> None:
        if strength not in STRENGTHS[1:]:
            raise ValueError(f"train.augment must be one of {STRENGTHS}, got {strength!r}")
        self.model, self.strength = model, strength
        self._noted: set[str] = set()

    def __call__(self, batch: Batch) -> Batch:
        out = dict(batch)
        for modality, encoder in self.model.encoders.items():
            if modality not in batch:
                continue
            augmented = encoder.augment(batch[modality], self.strength)
            if augmented is None:
                self._note(modality, type(encoder).__name__)
            else:
                out[modality] = augmented
        return out

    def _note(self, modality: str, encoder: str) -> None:
        if modality not in self._noted:
            self._noted.add(modality)
            logger.warning("train.augment: %s (%s) has no augmentation; its inputs pass as "
                           "they are", modality, encoder)  # fmt: skip


def augmenter(model: Any, strength: str) -> Augmenter | None:
    """The augmenter ``train.augment`` asks for; None for "none"."""
    return None if strength == "none" else Augmenter(model, strength)
