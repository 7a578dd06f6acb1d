"""Streaming datasets (``streaming: true``): rows read lazily, shard by shard, never held
whole. Splits the data lacks come from a seeded hash of each row, domains are filtered
lazily, and k-shot samples come from a bounded reservoir per class; only such small
samples are materialised."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import datasets
import numpy as np

# Rows read to fit the processors (vocabularies, tabular statistics) of a streamed dataset.
PROCESSOR_ROWS = 2048


def is_streaming(ds: Any) -> bool:
    return isinstance(ds, (datasets.IterableDataset, datasets.IterableDatasetDict))


def _payload(value: Any) -> bytes:
    if isinstance(value, Mapping):  # undecoded media: its path when it has one, else its bytes
        if value.get("path"):
            return str(value["path"]).encode()
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        return repr(sorted(value.items())).encode()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return repr(value).encode()


def row_bucket(row: Mapping[str, Any], seed: int, key: str | None = None) -> float:
    """A number in [0, 1) fixed by the row (its ``key`` column, or all its values) and the
    seed: the same row lands in the same split wherever and whenever it is read."""
    digest = hashlib.blake2b(f"{seed}\0".encode(), digest_size=8)
    for column in [key] if key else sorted(row):
        digest.update(column.encode() + b"\0" + _payload(row[column]) + b"\0")
    return int.from_bytes(digest.digest(), "big") / 2**64


def hash_splits(ds: datasets.IterableDataset, seed: int, validation_fraction: float,
                test_fraction: float, key: str | None = None) -> dict[str, datasets.IterableDataset]:  # fmt: skip
    """train/validation/test of a stream by ``row_bucket``: validation below
    ``validation_fraction``, test in the next ``test_fraction``, train above."""
    bounds = {"validation": (0.0, validation_fraction),
              "test": (validation_fraction, validation_fraction + test_fraction),
              "train": (validation_fraction + test_fraction, 1.0)}  # fmt: skip

    def keep(low: float, high: float) -> Any:
        return lambda row: low <= row_bucket(row, seed, key) < high

    return {split: ds.filter(keep(*bound)) for split, bound in bounds.items()}


def filter_domains(
    ds: datasets.IterableDataset, domains: Iterable[str]
) -> datasets.IterableDataset:
    wanted = set(domains)
    return ds.filter(lambda row: row["domain"] in wanted)


def scan(ds: datasets.IterableDataset) -> tuple[int, list[str]]:
    """Rows and domains of a stream, from one pass over its ``domain`` column."""
    count, domains = 0, set()
    for row in ds.select_columns(["domain"]):
        count += 1
        domains.add(row["domain"])
    return count, sorted(domains)


def head(ds: datasets.IterableDataset, n: int = PROCESSOR_ROWS) -> datasets.Dataset:
    """The first ``n`` rows of a stream as a small in-memory dataset."""
    return datasets.Dataset.from_list(list(ds.take(n)), features=ds.features)


def reservoir_k_shot(
    ds: datasets.IterableDataset, k: int, seed: int, label: str
) -> datasets.Dataset:
    """k rows per class drawn uniformly from one pass over the stream (Algorithm R per
    class, seeded): memory holds k rows per class, never the stream."""
    rng = np.random.default_rng(seed)
    reservoirs: dict[Any, list[dict[str, Any]]] = {}
    seen: dict[Any, int] = {}
    for row in ds:
        c = row[label]
        seen[c] = seen.get(c, 0) + 1
        pool = reservoirs.setdefault(c, [])
        if len(pool) < k:
            pool.append(row)
        else:
            j = int(rng.integers(seen[c]))
            if j < k:
                pool[j] = row
    rows = [r for c in sorted(reservoirs) for r in reservoirs[c]]
    return datasets.Dataset.from_list(rows, features=ds.features)


def with_column(ds: datasets.IterableDataset, name: str, value: Any,
                feature: datasets.features.FeatureType) -> datasets.IterableDataset:  # fmt: skip
    """``ds`` with a constant column, keeping its features known."""
    features = datasets.Features({**(ds.features or {}), name: feature}) if ds.features else None
    return ds.map(lambda _: {name: value}, features=features)


def rows_with_index(ds: datasets.IterableDataset, to_modalities: Any,
                    columns: Sequence[str] | None) -> datasets.IterableDataset:  # fmt: skip
    """A stream of {modality: raw value, "label", "domain", "__row__"} rows; ``__row__``
    counts rows within the part of the stream one reader gets."""

    def convert(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        return {**to_modalities(batch), "__row__": list(indices)}

    return ds.map(convert, batched=True, with_indices=True, remove_columns=list(columns or []))
