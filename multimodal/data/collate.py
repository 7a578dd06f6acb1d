"""Rows to batches: a lazy row view, the collator with its error policy, and the loader."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from .loading import raw_media
from .spec import DatasetSpec
from .streaming import is_streaming, rows_with_index

logger = logging.getLogger(__name__)


def modality_mapper(spec: DatasetSpec, has_label: bool) -> Any:
    """A batched function from dataset columns to {modality: raw values, "label", "domain"}."""
    columns = spec.column_of()
    label = spec.label

    def to_modalities(batch: dict[str, list]) -> dict[str, list]:
        n = len(next(iter(batch.values())))
        out: dict[str, list] = {}
        for m, cols in columns.items():
            if len(cols) == 1 and m != "tabular":
                out[m] = batch[cols[0]]
            else:  # several columns: one mapping per row, None when every value is None
                rows = [{c: batch[c][i] for c in cols} for i in range(n)]
                out[m] = [r if any(v is not None for v in r.values()) else None for r in rows]
        if has_label:
            out["label"] = batch[label]
        out["domain"] = batch["domain"]
        return out

    return to_modalities


class RowView(torch.utils.data.Dataset):
    """Rows of a split as {modality: raw value, "label", "domain", "__row__"}; lazily mapped.

    The column -> modality mapping runs through ``with_transform`` at access time.
    """

    def __init__(self, ds: datasets.Dataset, spec: DatasetSpec, split: str) -> None:
        self.split = split
        mapper = modality_mapper(spec, spec.label in ds.column_names)
        self.ds = raw_media(ds).with_transform(mapper)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.ds[int(index)], "__row__": int(index)}


class MultimodalCollator:
    """Raw rows -> Batch through a multimodal processor (``MultimodalModel.processor``), with
    modality dropout and an error policy. It holds the processor, never the network.

    on_error="raise": a bad value raises, naming the split, row, column and expectation.
    on_error="missing": the modality becomes absent for that sample; ``events`` counts them.
    Labels out of range or of the wrong type always raise.
    """

    def __init__(
        self,
        processor: Any,
        spec: DatasetSpec,
        split: str = "train",
        on_error: str = "raise",
        modality_dropout: Mapping[str, float] | float | None = None,
        domains: Sequence[str] | None = None,
        seed: int = 0,
        corruption: tuple[str, str, int] | None = None,
    ) -> None:
        if on_error not in ("raise", "missing"):
            raise ValueError(f"on_error must be 'raise' or 'missing', got {on_error!r}")
        # A model passed here stands for its processor.
        self.processor = getattr(processor, "processor", processor)
        self.spec, self.split, self.on_error = spec, split, on_error
        columns = spec.column_of()
        self.columns = {m: ", ".join(c) for m, c in columns.items()}
        p = modality_dropout or 0.0
        self.dropout = {
            m: float(p if isinstance(p, (int, float)) else p.get(m, 0.0)) for m in columns
        }
        self.domain_ids = {d: i for i, d in enumerate(domains or [])}
        self.media_roots = spec.media_roots()
        self.seed = seed
        self.corruption = corruption  # (modality, corruption name, severity), applied to raw values
        self.events: Counter[str] = Counter()

    def dropped(
        self, rows: Sequence[int], rng: np.random.Generator | None = None
    ) -> dict[str, np.ndarray]:
        """{modality: [B] bool}: which samples modality dropout removes from this batch.
        Seeded by the row ids, not by history, so a resumed run drops the same modalities."""
        rng = rng if rng is not None else np.random.default_rng([self.seed, *rows])
        return {m: rng.random(len(rows)) < p for m, p in self.dropout.items() if p > 0}

    def _where(self, row: Mapping[str, Any], modality: str) -> str:
        return f"split {self.split!r}, row {row['__row__']}, column {self.columns.get(modality, modality)!r}"

    def _isolate_errors(
        self, rows: Sequence[Mapping[str, Any]], samples: list[dict[str, Any]]
    ) -> None:
        for m, processor in self.processor.processors.items():
            for i, sample in enumerate(samples):
                if processor.is_missing(sample[m]):
                    continue
                try:
                    processor([sample[m]])
                except (ValueError, TypeError) as err:
                    if self.on_error == "raise":
                        raise ValueError(f"{self._where(rows[i], m)}: {err}") from err
                    self.events[m] += 1
                    logger.warning("%s: treated as missing (%s)", self._where(rows[i], m), err)
                    sample[m] = None

    def _contain_paths(
        self, rows: Sequence[Mapping[str, Any]], samples: list[dict[str, Any]]
    ) -> None:
        """Resolve file paths in media columns against the dataset folder; a path that
        leads outside it (``..``, an absolute path, a symlink) is a bad value."""
        for m in self.processor.modalities:
            if self.processor.kind(m) not in ("image", "audio"):
                continue
            for i, sample in enumerate(samples):
                value = sample[m]
                if isinstance(value, dict) and not value.get("bytes") and value.get("path"):
                    path = value["path"]
                elif isinstance(value, (str, os.PathLike)):
                    path = value
                else:
                    continue
                resolved = _inside(Path(path), self.media_roots)
                if resolved is not None and resolved.exists():
                    sample[m] = str(resolved)
                    continue
                err = _bad_path(Path(path), resolved, self.media_roots)
                if self.on_error == "raise":
                    raise ValueError(f"{self._where(rows[i], m)}: {err}")
                self.events[m] += 1
                logger.warning("%s: treated as missing (%s)", self._where(rows[i], m), err)
                sample[m] = None

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        samples = [{m: row.get(m) for m in self.processor.modalities} for row in rows]
        if self.media_roots:
            self._contain_paths(rows, samples)
        # Seeded by the rows, not by history, so a resumed run drops the same modalities.
        rng = np.random.default_rng([self.seed, *[int(r["__row__"]) for r in rows]])
        if self.corruption is not None:
            from .corruptions import corrupt

            m, name, severity = self.corruption
            kind = self.processor.kind(m)
            for s in samples:
                if not self.processor.is_missing(m, s[m]):
                    s[m] = corrupt(kind, s[m], name, severity, rng)
        for m, drop in self.dropped([int(r["__row__"]) for r in rows], rng).items():
            for s, d in zip(samples, drop, strict=True):
                if d:
                    s[m] = None
        if "label" in rows[0]:
            try:
                labels = self.processor.check_labels([r.get("label") for r in rows])
            except (ValueError, TypeError) as err:
                raise type(err)(
                    f"split {self.split!r}, column {self.spec.label!r}: {err}; rows {[r['__row__'] for r in rows]}"
                ) from err
        try:
            batch = self.processor(samples)
        except (ValueError, TypeError):
            # Slow path, only when the batch fails: find the bad values one by one.
            self._isolate_errors(rows, samples)
            batch = self.processor(samples)
        if "label" in rows[0]:
            batch["labels"] = labels
        batch["domain"] = torch.tensor(
            [self.domain_ids.get(r.get("domain"), -1) for r in rows], dtype=torch.long
        )
        batch["row"] = torch.tensor([r["__row__"] for r in rows], dtype=torch.long)
        return batch


def _bad_path(path: Path, resolved: Path | None, roots: Sequence[Path]) -> str:
    """Why a media path was refused, with the folders it was looked for in and the key
    that sets them."""
    folders = [str(r) for r in roots]
    if resolved is None:
        return f"path {str(path)!r} is outside the dataset folder {folders} (data.media_root)"
    hint = ""
    if not path.is_absolute() and path.exists():
        hint = f"; it exists from the working folder: set data.media_root: {Path.cwd()}"
    return (f"no file {str(path)!r} in {folders} (relative paths are read from "
            f"data.media_root, by default the dataset's folder){hint}")  # fmt: skip


def _inside(path: Path, roots: Sequence[Path]) -> Path | None:
    """``path`` (relative ones taken from each root) resolved, if it lies inside a root."""
    for root in roots:
        resolved = (root / path).resolve()  # an absolute path stays absolute; symlinks followed
        if resolved.is_relative_to(root):
            return resolved
    return None


class EpochSampler(torch.utils.data.Sampler[int]):
    """A shuffle whose order depends only on (seed, epoch), so a resumed run sees the same batches."""

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True) -> None:
        self.length, self.seed, self.shuffle, self.epoch = length, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.length))
        return iter(self.orders(self.length, [self.seed], self.epoch)[0].tolist())

    @staticmethod
    def orders(length: int, seeds: Sequence[int], epoch: int) -> torch.Tensor:
        """[len(seeds), length]: the shuffle of each seed's sampler at ``epoch``, at once."""
        g = torch.Generator()
        return torch.stack(
            [torch.randperm(length, generator=g.manual_seed(s * 100_003 + epoch)) for s in seeds]
        )


def make_loader(
    ds: datasets.Dataset,
    model: Any,
    spec: DatasetSpec,
    split: str,
    batch_size: int = 32,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
    sampler: torch.utils.data.Sampler | None = None,
    **collator_kwargs: Any,
) -> torch.utils.data.DataLoader:
    """A DataLoader over ``ds`` that decodes and processes lazily, in the workers.

    Its order comes from an ``EpochSampler`` (``loader.sampler.set_epoch(e)``). A streamed
    ``ds`` is read shard by shard instead: the workers split its shards between them, and a
    shuffle draws from a buffer of ``spec.shuffle_buffer`` rows, reseeded per epoch
    (``set_epoch``). ``pin_memory``: batches in page-locked memory, for fast copies to a GPU.
    ``drop_last``: leave out an incomplete last batch. ``sampler``: another order of the
    rows than the shuffle (it needs ``set_epoch`` too); not for a stream.
    """
    if is_streaming(ds):
        return _stream_loader(ds, model, spec, split, batch_size, shuffle, num_workers, seed,
                              pin_memory, drop_last, collator_kwargs)  # fmt: skip
    view = RowView(ds, spec, split)
    collator = MultimodalCollator(model, spec, split, seed=seed, **collator_kwargs)
    # Raw values are corrupted before processing, so corrupted rows are never cached.
    if spec.cache_processed and len(view) and collator.corruption is None:
        from .processed import processed_loader

        sampler = sampler or EpochSampler(len(view), seed, shuffle)
        return processed_loader(view, collator, batch_size, sampler, num_workers, seed, pin_memory,
                                drop_last)  # fmt: skip
    # A private generator: creating an iterator must not consume the global RNG.
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        view,
        batch_size=batch_size,
        sampler=sampler or EpochSampler(len(view), seed, shuffle),
        num_workers=num_workers,
        collate_fn=collator,
        generator=generator,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        drop_last=drop_last,
    )


def _stream_loader(ds: datasets.IterableDataset, model: Any, spec: DatasetSpec, split: str, batch_size: int,
                   shuffle: bool, num_workers: int, seed: int, pin_memory: bool, drop_last: bool,
                   collator_kwargs: Mapping[str, Any]) -> Any:  # fmt: skip
    ds = raw_media(ds)
    if shuffle:
        ds = ds.shuffle(seed=seed, buffer_size=spec.shuffle_buffer)
    has_label = spec.label in (ds.column_names or [spec.label])
    rows = rows_with_index(ds, modality_mapper(spec, has_label), ds.column_names)
    if num_workers > rows.num_shards:
        logger.warning("%s: %d DataLoader workers for %d shards; %d of them stay idle",
                       split, num_workers, rows.num_shards, num_workers - rows.num_shards)  # fmt: skip
    return torch.utils.data.DataLoader(
        rows, batch_size=batch_size, num_workers=num_workers, persistent_workers=num_workers > 0,
        pin_memory=pin_memory, collate_fn=MultimodalCollator(model, spec, split, seed=seed, **collator_kwargs),
        drop_last=drop_last,
    )  # fmt: skip
