"""Multimodal fusion toolkit: compose encoders and a fusion module, train, transfer, compare."""

from .heads import Head
from .model import Batch, ModelOutput, MultimodalModel, build_model, load_config, move_to

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "Head",
    "ModelOutput",
    "MultimodalModel",
    "build_model",
    "load_config",
    "move_to",
]
