"""Unsupervised domain adaptation objectives (``train.uda``): dann, cdan, coral, mmd, entropy,
pseudo_label (self-training on confident target predictions) and fixmatch (the same
across a weak and a strong augmentation)."""

from . import cdan, dann, pseudo, statistics  # noqa: F401  (registers the methods)
from ._base import (
    UDAObjective,
    create_uda_objective,
    dann_schedule,
    grad_reverse,
    list_uda_objectives,
    register_uda_objective,
    uda_needs_classes,
    uda_views,
)

__all__ = [
    "UDAObjective",
    "create_uda_objective",
    "dann_schedule",
    "grad_reverse",
    "list_uda_objectives",
    "register_uda_objective",
    "uda_needs_classes",
    "uda_views",
]
