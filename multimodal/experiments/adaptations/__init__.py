"""Adaptation arms of the transfer protocol, chosen by name (``transfer.adaptation``, a
suite's ``adaptations``, ``cross_domain.py --adaptation``).

An arm says which train keys its stage sets over the run's ``train`` section and what it
trains on. Built in: the freezing strategies fine-tuned on the k-shot episode (``head``,
``top_k``, ``full``, ``lora``), the unsupervised objectives on the unlabelled target rows
(``dann``, ``cdan``, ``coral``, ``mmd``, ``entropy``) and their control ``source_only``, and
fine-tuning that forgets less (``l2sp``, ``ewc``, ``lwf``) and test-time adaptation
(``tent``, ``bn_adapt``) and self-training on the unlabelled target rows (``pseudo_label``,
``fixmatch``), and ``auto``, which picks one of ``transfer.auto_arms`` per episode by
cross-validation inside its labelled rows, and ``zero_shot`` (the source model as it is,
the leave-one-out protocol's arm). A
new method is one ``Adaptation`` subclass in a file of this package, registered with
``@register_adaptation("name")`` and named in ``_LAZY`` below.
"""

from __future__ import annotations

from typing import Any

from ...core.registry import Registry
from ...modeling.freezing import STRATEGIES
from ._base import UNBALANCED, Adaptation, AdaptContext

# name -> module: listed without importing, imported on first use (as encoders and fusions).
_LAZY = {
    **{name: f"{__name__}.finetune" for name in STRATEGIES},
    **{name: f"{__name__}.unsupervised" for name in ("dann", "cdan", "coral", "mmd", "entropy", "source_only")},
    **{name: f"{__name__}.forgetting" for name in ("l2sp", "ewc", "lwf")},
    **{name: f"{__name__}.test_time" for name in ("tent", "bn_adapt")},
    **{name: f"{__name__}.semi_supervised" for name in ("pseudo_label", "fixmatch")},
    "auto": f"{__name__}.auto",
    "zero_shot": f"{__name__}.zero_shot",
}  # fmt: skip
ADAPTATIONS: Registry[Adaptation] = Registry("adaptation", lazy=_LAZY)
register_adaptation = ADAPTATIONS.register


def create_adaptation(name: str, **kwargs: Any) -> Adaptation:
    """The registered arm ``name``; an unknown name is a ValueError naming close matches."""
    return ADAPTATIONS.create(name, **kwargs)


def list_adaptations(pattern: str = "*") -> list[str]:
    return ADAPTATIONS.list(pattern)


__all__ = [
    "ADAPTATIONS",
    "UNBALANCED",
    "AdaptContext",
    "Adaptation",
    "create_adaptation",
    "list_adaptations",
    "register_adaptation",
]
