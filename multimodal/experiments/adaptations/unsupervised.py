"""Unsupervised domain adaptation: source labels plus the unlabelled target train split
(``train.uda``), and its control ``source_only``."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from ...engine.config import FitData
from . import register_adaptation
from ._base import UNBALANCED, Adaptation, AdaptContext, stage_keys

UDA_DEFAULTS: dict[str, Any] = {"strategy": "full", "epochs": 3, "patience": None, **UNBALANCED}


class Unsupervised(Adaptation):
    """The source model trained further on the source labels with the objective ``method``
    on the whole unlabelled target train split; ``transfer.uda`` sets its train keys. It
    uses no labelled target rows, so one training serves every episode."""

    method: ClassVar[str]
    episodic = False
    whole_splits = True

    def overrides(self, transfer: Any) -> dict[str, Any]:
        return stage_keys(UDA_DEFAULTS, transfer.uda, uda=self.method)

    def data(self, context: AdaptContext) -> tuple[FitData, int]:
        train = context.target_train
        return dataclasses.replace(context.source, unlabelled=train), len(train)


# One registered arm per objective of ``modeling.uda``.
for _method in ("dann", "cdan", "coral", "mmd", "entropy"):
    register_adaptation(_method)(
        type(f"UDA_{_method}", (Unsupervised,), {"method": _method, "__module__": __name__})
    )


@register_adaptation("source_only")
class SourceOnly(Unsupervised):
    """The control of the unsupervised methods: the same extra source training, no
    target rows."""

    method = "none"

    def data(self, context: AdaptContext) -> tuple[FitData, int]:
        return context.source, 0
