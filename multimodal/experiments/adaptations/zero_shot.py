"""The source model as it is: no target row, no training. The arm of the leave-one-out
protocol (``transfer.protocol: leave_one_out``), where the target is never seen."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...engine.config import FitData, TrainConfig
from . import register_adaptation
from ._base import Adaptation, AdaptContext


@register_adaptation("zero_shot")
class ZeroShot(Adaptation):
    """Adapted = the source model: its score on the target is the zero-shot score."""

    episodic = False

    def overrides(self, transfer: Any) -> dict[str, Any]:
        return {"strategy": "head"}  # the stage's copy shares the frozen encoders

    def data(self, context: AdaptContext) -> tuple[FitData, int]:
        return context.source, 0

    def train(
        self, model: Any, data: FitData, cfg: TrainConfig, on_step: Sequence[Any] = ()
    ) -> None:
        return None
