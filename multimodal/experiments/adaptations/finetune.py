"""Fine-tuning on the k-shot episode under a freezing strategy (``train.strategy``)."""

from __future__ import annotations

from typing import Any, ClassVar

from ...engine.config import FitData
from ...modeling.freezing import STRATEGIES
from . import register_adaptation
from ._base import UNBALANCED, Adaptation, AdaptContext, stage_keys

ADAPT_DEFAULTS: dict[str, Any] = {"strategy": "head", "epochs": 20, "patience": None, **UNBALANCED}


class FineTune(Adaptation):
    """The source model fine-tuned on the episode's labelled target rows, its pretrained
    parts frozen as ``strategy`` says; ``transfer.adapt`` sets its other train keys."""

    strategy: ClassVar[str]

    def overrides(self, transfer: Any) -> dict[str, Any]:
        return stage_keys(ADAPT_DEFAULTS, transfer.adapt, strategy=self.strategy)

    def data(self, context: AdaptContext) -> tuple[FitData, int]:
        spec = context.source.spec
        if context.rows is None:  # a stream's episode, drawn from a reservoir
            assert context.sample is not None
            return FitData(spec, context.sample), len(context.sample)
        return FitData(spec, context.target_train, train_indices=context.rows), len(context.rows)


# One registered arm per freezing strategy (``modeling.freezing.STRATEGIES``).
for _strategy in STRATEGIES:
    register_adaptation(_strategy)(
        type(f"FineTune_{_strategy}", (FineTune,), {"strategy": _strategy, "__module__": __name__})
    )
