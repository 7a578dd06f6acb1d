"""Datasets mapped to modalities: specs, loading (hub, local, synthetic), splits, k-shot
samples, the collator with its error policy, and test-time corruptions of raw values."""

from .collate import EpochSampler, MultimodalCollator, RowView, make_loader
from .loading import (
    export_dataset,
    k_shot,
    k_shot_indices,
    load_dataset,
    raw_media,
    select_domains,
    unlabelled,
)
from .spec import DatasetSpec
from .split import Split

__all__ = [
    "DatasetSpec",
    "EpochSampler",
    "MultimodalCollator",
    "RowView",
    "Split",
    "export_dataset",
    "k_shot",
    "k_shot_indices",
    "load_dataset",
    "make_loader",
    "raw_media",
    "select_domains",
    "unlabelled",
]
