"""Multimodal fusion toolkit: compose encoders and a fusion module, train, transfer, compare."""

from .data import (
    DatasetSpec,
    MultimodalCollator,
    export_dataset,
    k_shot,
    k_shot_indices,
    load_dataset,
    make_loader,
    select_domains,
    unlabelled,
)
from .heads import Head
from .model import Batch, ModelOutput, MultimodalModel, build_model, load_config, move_to
from .synthetic import make_synthetic

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "DatasetSpec",
    "Head",
    "ModelOutput",
    "MultimodalCollator",
    "MultimodalModel",
    "build_model",
    "export_dataset",
    "k_shot",
    "k_shot_indices",
    "load_config",
    "load_dataset",
    "make_loader",
    "make_synthetic",
    "move_to",
    "select_domains",
    "unlabelled",
]
