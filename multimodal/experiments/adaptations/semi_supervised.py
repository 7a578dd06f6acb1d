"""Fewer labels: the episode's labelled rows plus the target train split's unlabelled rows.

``pseudo_label`` fine-tunes on the k-shot rows (the strategy of ``transfer.adapt``, head by
default) while each step also trains on a batch of unlabelled target rows against the
model's own confident predictions (``modeling.uda.pseudo``, threshold 0.95, weight 1: the
FixMatch settings, without its augmentations). ``fixmatch`` is the same with FixMatch's
augmentations: the labelled rows weakly augmented, and each unlabelled row's strong view
trained toward its weak view's confident prediction. One unlabelled batch per labelled
batch, of the same size (FixMatch uses seven times as many unlabelled rows per step).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ...engine.config import FitData
from . import register_adaptation
from ._base import AdaptContext, stage_keys
from .finetune import ADAPT_DEFAULTS, FineTune


@register_adaptation("pseudo_label")
class PseudoLabelArm(FineTune):
    """The episode's rows, labelled, and the whole target train split, unlabelled."""

    whole_splits = True

    def overrides(self, transfer: Any) -> dict[str, Any]:
        defaults = {**ADAPT_DEFAULTS, "uda_weight": 1.0, "uda_kwargs": {"threshold": 0.95}}
        return stage_keys(defaults, transfer.adapt, uda="pseudo_label")

    def data(self, context: AdaptContext) -> tuple[FitData, int]:
        labelled, used = super().data(context)
        return dataclasses.replace(labelled, unlabelled=context.target_train), used


@register_adaptation("fixmatch")
class FixMatchArm(PseudoLabelArm):
    """``pseudo_label`` across a weak and a strong augmentation (``train.augment``)."""

    def overrides(self, transfer: Any) -> dict[str, Any]:
        defaults = {**ADAPT_DEFAULTS, "uda_weight": 1.0, "uda_kwargs": {"threshold": 0.95},
                    "augment": "weak"}  # fmt: skip
        return stage_keys(defaults, transfer.adapt, uda="fixmatch")
