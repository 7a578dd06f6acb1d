"""Fusion modules behind one contract. The registry lists every built-in fusion without
importing it; a module is imported when one of its names is first used."""

from __future__ import annotations

from multimodal.core.registry import lazy_attributes

from ._registry import FUSIONS as FUSIONS
from ._registry import create_fusion as create_fusion
from ._registry import list_fusions as list_fusions
from ._registry import register_fusion as register_fusion

# Public name -> the module that defines it.
_LAZY = {
    **dict.fromkeys(
        (
            "Fusion",
            "FusionOutput",
            "masked_mean",
            "pool_input",
            "pool_tokens",
            "pooled_inputs",
            "static_shapes",
        ),
        "._base",
    ),
    **dict.fromkeys(("BottleneckFusion", "TransformerFusion"), ".bottleneck"),
    "ConcatFusion": ".concat",
    "CrossAttentionFusion": ".cross_attention",
    **dict.fromkeys(("FiLMFusion", "GatedFusion"), ".gated"),
    "LateFusion": ".late",
    **dict.fromkeys(("MoEFusion", "SparseMoE"), ".moe"),
    **dict.fromkeys(("LowRankTensorFusion", "TensorFusion"), ".tensor"),
}

__all__ = sorted([*_LAZY, "FUSIONS", "create_fusion", "list_fusions", "register_fusion"])


# Public names resolve on first use: importing the package loads no torch model code.
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
