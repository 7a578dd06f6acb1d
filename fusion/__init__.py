"""Fusion modules behind one contract; import registers them all."""

from ._base import Fusion, FusionOutput, masked_mean
from ._registry import create_fusion, list_fusions, register_fusion
from .bottleneck import BottleneckFusion, TransformerFusion
from .concat import ConcatFusion
from .cross_attention import CrossAttentionFusion
from .gated import FiLMFusion, GatedFusion
from .late import LateFusion
from .moe import MoEFusion, SparseMoE
from .tensor import LowRankTensorFusion, TensorFusion

__all__ = [
    "BottleneckFusion",
    "ConcatFusion",
    "FiLMFusion",
    "GatedFusion",
    "LateFusion",
    "LowRankTensorFusion",
    "TensorFusion",
    "TransformerFusion",
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
