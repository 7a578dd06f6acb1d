"""Fusion modules behind one contract; import registers them all."""

from ._base import Fusion, FusionOutput, masked_mean
from ._registry import create_fusion, list_fusions, register_fusion
from .concat import ConcatFusion
from .cross_attention import CrossAttentionFusion
from .moe import MoEFusion, SparseMoE

__all__ = [
    "ConcatFusion",
    "CrossAttentionFusion",
    "Fusion",
    "FusionOutput",
    "MoEFusion",
    "SparseMoE",
    "create_fusion",
    "list_fusions",
    "masked_mean",
    "register_fusion",
]
