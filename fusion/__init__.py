"""Fusion modules behind one contract. The registry lists every built-in fusion without
importing it; a module is imported when one of its names is first used."""

from __future__ import annotations

import importlib
from typing import Any

from ._registry import create_fusion as create_fusion
from ._registry import list_fusions as list_fusions
from ._registry import register_fusion as register_fusion

# Public name -> the module that defines it.
_LAZY = {
    **dict.fromkeys(("Fusion", "FusionOutput", "masked_mean"), "._base"),
    **dict.fromkeys(("BottleneckFusion", "TransformerFusion"), ".bottleneck"),
    "ConcatFusion": ".concat",
    "CrossAttentionFusion": ".cross_attention",
    **dict.fromkeys(("FiLMFusion", "GatedFusion"), ".gated"),
    "LateFusion": ".late",
    **dict.fromkeys(("MoEFusion", "SparseMoE"), ".moe"),
    **dict.fromkeys(("LowRankTensorFusion", "TensorFusion"), ".tensor"),
}

__all__ = sorted([*_LAZY, "create_fusion", "list_fusions", "register_fusion"])


def __getattr__(name: str) -> Any:
    """Public names resolve on first use, so importing the package (to list its registry,
    say) loads no torch model code."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
