"""Fine-tuning on the k-shot episode that forgets less: the freezing strategy of
``transfer.adapt`` (head by default) with a pull toward the source model
(``modeling.regularize``): ``l2sp``, ``ewc`` (its Fisher on the source training split) and
``lwf``.

Default weights follow the references, not a search on these benchmarks: L2-SP's 0.01
(TLlib's trade-off), LwF's 1 at temperature 2 (Li and Hoiem), and EWC's 100 (on
real-digits' concat fusion and head its Fisher diagonal has mean 2.7e-6 and largest 1.9e-3,
so 100 pulls the most important weights ten times harder than L2-SP does, the mean
weight 40 times less).
``transfer.adapt.regularize_weight`` and ``regularize_kwargs`` override them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from ...engine.config import FitData
from . import register_adaptation
from ._base import AdaptContext, stage_keys
from .finetune import ADAPT_DEFAULTS, FineTune

DEFAULT_WEIGHTS = {"l2sp": 0.01, "ewc": 100.0, "lwf": 1.0}


class Regularized(FineTune):
    """``FineTune`` with ``train.regularize`` set to ``method``."""

    method: ClassVar[str]

    def overrides(self, transfer: Any) -> dict[str, Any]:
        defaults = {**ADAPT_DEFAULTS, "regularize_weight": DEFAULT_WEIGHTS[self.method]}
        return stage_keys(defaults, transfer.adapt, regularize=self.method)

    def data(self, context: AdaptContext) -> tuple[FitData, int]:
        data, used = super().data(context)
        if self.method == "ewc":
            data = dataclasses.replace(data, reference=context.source.train)
        return data, used


for _method in DEFAULT_WEIGHTS:
    register_adaptation(_method)(
        type(f"Regularized_{_method}", (Regularized,), {"method": _method, "__module__": __name__})
    )
