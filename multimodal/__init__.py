"""Multimodal fusion toolkit: compose encoders and a fusion module, train, transfer, compare.

Names are imported on first use (PEP 562), as in ``transformers``: ``import multimodal`` stays
cheap, so ``multimodal --help`` and ``multimodal list`` load no model code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "DatasetSpec": "multimodal.data.spec",
    "MultimodalCollator": "multimodal.data.collate",
    "RowView": "multimodal.data.collate",
    "make_loader": "multimodal.data.collate",
    "export_dataset": "multimodal.data.loading",
    "k_shot": "multimodal.data.loading",
    "k_shot_indices": "multimodal.data.loading",
    "load_dataset": "multimodal.data.loading",
    "select_domains": "multimodal.data.loading",
    "unlabelled": "multimodal.data.loading",
    "make_synthetic": "multimodal.data.synthetic",
    "Head": "multimodal.modeling.heads",
    "Batch": "multimodal.modeling.model",
    "ModelOutput": "multimodal.modeling.model",
    "MultimodalModel": "multimodal.modeling.model",
    "build_model": "multimodal.modeling.model",
    "load_config": "multimodal.modeling.model",
    "move_to": "multimodal.modeling.model",
    "FitData": "multimodal.engine.config",
    "TrainConfig": "multimodal.engine.config",
    "evaluate": "multimodal.engine.evaluate",
    "fit": "multimodal.engine.training",
    "load_run_config": "multimodal.experiments.config",
    "transfer": "multimodal.experiments.transfer",
    "federate": "multimodal.experiments.federated",
}
# the layers, importable as attributes too (``multimodal.data.RowView``)
_SUBPACKAGES = ("analysis", "cli", "core", "data", "deploy", "engine", "experiments", "modeling")

__all__ = [
    "Batch",
    "DatasetSpec",
    "FitData",
    "Head",
    "ModelOutput",
    "MultimodalCollator",
    "MultimodalModel",
    "RowView",
    "TrainConfig",
    "build_model",
    "evaluate",
    "export_dataset",
    "federate",
    "fit",
    "k_shot",
    "k_shot_indices",
    "load_config",
    "load_dataset",
    "load_run_config",
    "make_loader",
    "make_synthetic",
    "move_to",
    "select_domains",
    "transfer",
    "unlabelled",
]

if TYPE_CHECKING:
    from .data.collate import MultimodalCollator, RowView, make_loader
    from .data.loading import (
        export_dataset,
        k_shot,
        k_shot_indices,
        load_dataset,
        select_domains,
        unlabelled,
    )
    from .data.spec import DatasetSpec
    from .data.synthetic import make_synthetic
    from .engine.config import FitData, TrainConfig
    from .engine.evaluate import evaluate
    from .engine.training import fit
    from .experiments.config import load_run_config
    from .experiments.federated import federate
    from .experiments.transfer import transfer
    from .modeling.heads import Head
    from .modeling.model import (
        Batch,
        ModelOutput,
        MultimodalModel,
        build_model,
        load_config,
        move_to,
    )


# The flat modules of the first release (multimodal.config, .model, .training, .heads)
# still import, with a DeprecationWarning naming where each name lives now.
importlib.import_module("multimodal.core.moved").install()


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"multimodal.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'multimodal' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
