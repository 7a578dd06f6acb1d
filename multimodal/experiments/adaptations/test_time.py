"""Test-time adaptation, no labels: the source model adapted on the unlabelled target
train split (``modeling.tta``), once per target (it uses no labelled rows, so every episode
shares it). ``transfer.adapt`` gives its batch size and, for ``tent``, its learning rate
(1e-3 by default, the reference's); ``bn_adapt`` trains nothing.

The adapted parts (normalisation layers per encoder, fusion and head; 0 where a network
has none, as the tabular MLP) are logged.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from ...data.collate import make_loader
from ...engine.config import FitData, TrainConfig
from ...modeling.model import move_to
from ...modeling.tta import bn_adapt, tent
from . import register_adaptation
from ._base import UNBALANCED, Adaptation, AdaptContext, stage_keys

logger = logging.getLogger(__name__)
TTA_DEFAULTS: dict[str, Any] = {"strategy": "full", "lr": 1e-3, "epochs": 1, **UNBALANCED}


class TestTime(Adaptation):
    """One pass of ``method`` over the unlabelled target train split."""

    method: ClassVar[str]
    episodic = False
    whole_splits = True

    def overrides(self, transfer: Any) -> dict[str, Any]:
        # strategy full: the stage copies the encoders, which this arm changes
        return stage_keys(TTA_DEFAULTS, transfer.adapt, strategy="full")

    def data(self, context: AdaptContext) -> tuple[FitData, int]:
        rows = context.target_train
        return dataclasses.replace(context.source, unlabelled=rows), len(rows)

    def train(
        self, model: Any, data: FitData, cfg: TrainConfig, on_step: Sequence[Any] = ()
    ) -> None:
        rows = data.unlabelled
        if data.spec.label in rows.column_names:
            rows = rows.remove_columns([data.spec.label])  # never seen
        loader = make_loader(rows, model, data.spec, "tta", batch_size=cfg.nominal_batch_size,
                             shuffle=True, seed=cfg.seed, on_error=cfg.on_error)  # fmt: skip
        device = model.device
        batches = (move_to(b, device) for b in loader)
        forward = lambda m, b: m(b)  # noqa: E731
        if self.method == "bn_adapt":
            parts = bn_adapt(model, batches, forward)
        else:
            parts = tent(model, batches, forward, lr=cfg.lr)
        logger.info("%s adapted normalisation layers per part: %s", self.method, parts)


for _method in ("tent", "bn_adapt"):
    register_adaptation(_method)(
        type(f"TestTime_{_method}", (TestTime,), {"method": _method, "__module__": __name__})
    )
