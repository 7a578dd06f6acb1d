"""Decode once: every row's processed tensors (token ids, resized image tensors, resampled
waveforms), written as Arrow through ``datasets`` and keyed by a hash of the processors'
saved config and the dataset's fingerprint.

The first pass decodes and processes each row through the collator, with its path checks
and error policy. Epochs after it, and later stages that use the same processors on the
same rows, read tensors instead of files. A dataset backed by files keeps its processed
copy in ``datasets``' cache beside them; an in-memory one keeps it in memory. Modality
dropout, and augmentation inside the encoders (SpecAugment), still run on every batch.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch

# The RowView and MultimodalCollator of data.collate are passed in, never imported:
# collate.make_loader calls this module, and sibling modules import one way only.
RowView = Any
MultimodalCollator = Any

logger = logging.getLogger(__name__)
PRESENT, LABEL, DOMAIN, ROW = "present.", "labels", "domain", "__row__"


def processor_hash(processor: Any) -> str:
    """blake2b of every file ``processor.save_pretrained`` writes (configs and tokenizers).

    A fast tokenizer's ``tokenizer.json`` records the padding and truncation of its last
    call; the processors pass both on every call, so they are left out, and a processor
    hashes the same before and after it has tokenized anything."""
    digest = hashlib.blake2b(digest_size=16)
    with tempfile.TemporaryDirectory() as tmp:
        folder = processor.save_pretrained(Path(tmp) / "processor")
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(folder)).encode())
            content = path.read_bytes()
            if path.name == "tokenizer.json":
                saved = json.loads(content)
                saved.pop("padding", None)
                saved.pop("truncation", None)
                content = json.dumps(saved, sort_keys=True).encode()
            digest.update(content)
    return digest.hexdigest()


def _features(example: Mapping[str, np.ndarray]) -> datasets.Features:
    """Arrow types for one processed row: fixed-shape arrays for images, lists for token ids
    and waveforms, whose length varies from row to row."""

    def feature(key: str, value: np.ndarray) -> Any:
        dtype = "string" if value.dtype.kind == "U" else str(value.dtype)
        if value.ndim == 0:
            return datasets.Value(dtype)
        if value.ndim == 1:
            return datasets.List(datasets.Value(dtype))
        array = {2: datasets.Array2D, 3: datasets.Array3D, 4: datasets.Array4D}[value.ndim]
        return array(shape=value.shape, dtype=dtype)

    return datasets.Features({k: feature(k, v) for k, v in example.items()})


def _flatten(batch: Mapping[str, Any], view_row: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A batch of one row -> {"text.input_ids": [...], "present.text": bool, ...}."""
    row: dict[str, np.ndarray] = {}
    for m, present in batch["present"].items():
        row.update({f"{m}.{k}": v[0].numpy() for k, v in batch[m].items()})
        row[PRESENT + m] = present[0].numpy()
    if "labels" in batch:
        row[LABEL] = batch["labels"][0].numpy()
    row[DOMAIN] = np.asarray(view_row.get("domain") or "")
    row[ROW] = np.asarray(view_row[ROW], dtype=np.int64)
    return row


# In-memory datasets' processed copies, most recent last: later stages of a run reuse them.
_IN_MEMORY: OrderedDict[str, datasets.Dataset] = OrderedDict()
IN_MEMORY_KEPT = 4


def build_processed(
    view: RowView, collator: MultimodalCollator, num_proc: int | None = None
) -> datasets.Dataset:
    """Every row of ``view`` through ``collator`` (without modality dropout), one at a time,
    so a bad value raises or goes missing exactly as in a batch; cached by content."""
    source = view.ds
    key = hashlib.blake2b(
        f"{source._fingerprint}|{processor_hash(collator.processor)}|{view.split}|"
        f"{collator.spec.column_of()}|{collator.spec.label}|{collator.on_error}|"
        f"{collator.media_roots}".encode(),
        digest_size=16,
    ).hexdigest()
    in_memory = not source.cache_files
    if in_memory and key in _IN_MEMORY:
        _IN_MEMORY.move_to_end(key)
        return _IN_MEMORY[key]

    builder = copy.copy(collator)  # shares the error counts (events)
    builder.dropout = {}  # dropout is drawn per batch, after the cache

    def one(index: int) -> dict[str, np.ndarray]:
        row = view[index]
        return _flatten(builder([row]), row)

    def process(indices: list[int]) -> dict[str, list]:
        rows = [one(i) for i in indices]
        # Scalars as Python values: Arrow reads a 0-d array as a list.
        return {k: [r[k].item() if r[k].ndim == 0 else r[k] for r in rows] for k in rows[0]}

    first = one(0)
    logger.info("%s: decoding and processing %d rows once", view.split, len(view))
    with _quiet():
        processed = datasets.Dataset.from_dict({"index": list(range(len(view)))}).map(
            process, input_columns="index", batched=True, batch_size=64, remove_columns=["index"],
            features=_features(first), keep_in_memory=in_memory, new_fingerprint=key,
            cache_file_name=None if in_memory else _cache_file(source, key), num_proc=num_proc,
        )  # fmt: skip
    if in_memory:
        _IN_MEMORY[key] = processed
        while len(_IN_MEMORY) > IN_MEMORY_KEPT:
            _IN_MEMORY.popitem(last=False)
    return processed


def processed_loader(view: RowView, collator: MultimodalCollator, batch_size: int,
                     sampler: torch.utils.data.Sampler, num_workers: int, seed: int,
                     pin_memory: bool, drop_last: bool = False) -> torch.utils.data.DataLoader:  # fmt: skip
    """A DataLoader over the processed rows of ``view``, in ``sampler``'s order (the one
    the raw loader has)."""
    rows = ProcessedRows(build_processed(view, collator, num_proc=num_workers or None))
    return torch.utils.data.DataLoader(
        rows, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=ProcessedCollator(collator), generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0, pin_memory=pin_memory, drop_last=drop_last,
    )  # fmt: skip


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No ``datasets`` progress bar for the build: the run's own bar covers its stages."""
    from datasets.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _cache_file(source: datasets.Dataset, key: str) -> str:
    """Beside the dataset's own Arrow files, as ``datasets.map`` keeps its results."""
    return str(
        Path(source.cache_files[0]["filename"]).parent / f"transferfuse-processed-{key}.arrow"
    )


# A batch read from the cache, by column: [B, ...] tensors for fixed shapes and scalars,
# a list of B tensors where the length varies, a list of str for domains.
Columns = dict[str, Any]


def _column(array: pa.Array, feature: Any) -> Any:
    """One Arrow column -> torch, without the per-element walk of ``datasets``' formatter."""
    if isinstance(feature, datasets.Value):
        if feature.dtype == "string":
            return array.to_pylist()
        return torch.from_numpy(np.array(array.to_numpy(zero_copy_only=False)))
    if isinstance(feature, datasets.List):
        values = torch.from_numpy(np.array(array.flatten().to_numpy(zero_copy_only=False)))
        return list(values.split(np.diff(array.offsets.to_numpy()).tolist()))
    return torch.from_numpy(np.array(array.to_numpy(zero_copy_only=False)))  # ArrayND


class ProcessedRows(torch.utils.data.Dataset):
    """Rows of a processed split; ``__getitems__`` reads a batch's rows as one Arrow take."""

    def __init__(self, processed: datasets.Dataset) -> None:
        self.processed = processed.with_format("arrow")
        self.features = processed.features

    def __len__(self) -> int:
        return len(self.processed)

    def __getitem__(self, index: int) -> Columns:
        return self.__getitems__([index])

    def __getitems__(self, indices: Sequence[int]) -> Columns:
        table = self.processed[[int(i) for i in indices]]
        return {
            name: _column(table.column(name).combine_chunks(), self.features[name])
            for name in table.column_names
        }


class ProcessedCollator:
    """A batch of processed rows (``Columns``) -> Batch, equal to ``MultimodalCollator`` on
    the raw rows: the same modality dropout (same draws), and each processor's ``collate``
    pads and stacks."""

    def __init__(self, collator: MultimodalCollator) -> None:
        self.collator, self.processor = collator, collator.processor

    def __call__(self, columns: Columns) -> dict[str, Any]:
        row_ids = columns[ROW].tolist()
        dropped = self.collator.dropped(row_ids)
        samples: list[dict[str, Any]] = [{} for _ in row_ids]
        for m in self.processor.modalities:
            keep = columns[PRESENT + m].tolist()
            drop = dropped.get(m, np.zeros(len(row_ids), dtype=bool))
            values = {k: columns[f"{m}.{k}"] for k in self.processor.empty(m)}
            for i, sample in enumerate(samples):
                if keep[i] and not drop[i]:  # a dropped row gets the absent value, as raw
                    sample[m] = {k: v[i][None] for k, v in values.items()}
        batch = self.processor.collate(samples)
        if LABEL in columns:
            labels = columns[LABEL]
            batch["labels"] = torch.stack(labels) if isinstance(labels, list) else labels
        ids = self.collator.domain_ids
        batch["domain"] = torch.tensor([ids.get(d, -1) for d in columns[DOMAIN]], dtype=torch.long)
        batch["row"] = columns[ROW]
        return batch
