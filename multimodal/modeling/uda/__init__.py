"""Unsupervised domain adaptation objectives (``train.adapt_method``): dann, cdan, coral, mmd, entropy."""

from . import cdan, dann, statistics  # noqa: F401  (registers the methods)
from ._base import (
    Adapter,
    create_adapter,
    dann_schedule,
    grad_reverse,
    list_adapters,
    register_adapter,
)

__all__ = [
    "Adapter",
    "create_adapter",
    "dann_schedule",
    "grad_reverse",
    "list_adapters",
    "register_adapter",
]
