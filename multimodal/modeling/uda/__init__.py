"""Unsupervised domain adaptation objectives (``train.uda``): dann, cdan, coral, mmd, entropy,
and pseudo_label (self-training on confident target predictions)."""

from . import cdan, dann, pseudo, statistics  # noqa: F401  (registers the methods)
from ._base import (
    UDAObjective,
    create_uda_objective,
    dann_schedule,
    grad_reverse,
    list_uda_objectives,
    register_uda_objective,
)

__all__ = [
    "UDAObjective",
    "create_uda_objective",
    "dann_schedule",
    "grad_reverse",
    "list_uda_objectives",
    "register_uda_objective",
]
