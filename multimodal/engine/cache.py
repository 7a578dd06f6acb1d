"""Feature cache: encoder outputs computed once per set of encoder weights and split.

``FEATURES`` (a ``FeatureStore``) keeps the outputs of every split a frozen-encoder fit or
a cached evaluation has seen, keyed by a hash of the encoder weights, the processors' saved
config and the data, so later fits and evaluations with the same encoders (the stages and
episodes of a transfer, the trials of a search) read them instead of running the encoders.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

logger = logging.getLogger(__name__)


def _trim(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing padding: keep positions up to the last valid token (none if absent)."""
    valid = torch.nonzero(mask).flatten()
    length = int(valid[-1]) + 1 if len(valid) else 0
    return tokens[:length], mask[:length]


@torch.no_grad()
def compute_features(model: Any, loader: Any) -> list[dict[str, Any]]:
    """Per-sample encoder outputs for every batch of ``loader``: tokens [T_i, D], mask [T_i]."""
    from ..modeling.model import move_to

    rows: list[dict[str, Any]] = []
    for batch in loader:
        batch = move_to(batch, model.device)
        tokens, masks = model.encode(batch)
        for i in range(len(batch["row"])):
            sample: dict[str, Any] = {
                "row": int(batch["row"][i]),
                "domain": int(batch["domain"][i]),
            }
            if "labels" in batch:
                sample["label"] = batch["labels"][i].cpu()
            for m in tokens:
                t, k = _trim(tokens[m][i].float().cpu(), masks[m][i].cpu())
                sample[m] = (t.clone(), k.clone())
            rows.append(sample)
    return rows


class CachedFeatures(torch.utils.data.Dataset):
    """Cached encoder outputs: padded tensors in memory, or an arrow dataset on disk.

    In memory, items are row positions and ``CachedCollator`` slices whole batches out of
    [N, T_max, D] tensors; on disk, items are per-sample tensors read from arrow.
    """

    def __init__(
        self,
        rows: list[dict[str, Any]],
        modalities: Sequence[str],
        disk_dir: str | Path | None = None,
    ) -> None:
        self.modalities = list(modalities)
        self.length = len(rows)
        self.table: datasets.Dataset | None = None
        self.padded: dict[str, Any] | None = None
        self.renumbered = False  # a subset: rows are positions in it
        if disk_dir is not None:
            self.table = self._to_arrow(rows, Path(disk_dir))
        else:
            self.padded = self._pad(rows)

    def _pad(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "row": torch.tensor([r["row"] for r in rows]),
            "domain": torch.tensor([r["domain"] for r in rows]),
        }
        if rows and "label" in rows[0]:
            out["label"] = torch.stack([torch.as_tensor(r["label"]) for r in rows])
        for m in self.modalities:
            lengths = torch.tensor([r[m][0].shape[0] for r in rows])
            width = max(int(lengths.max()) if len(rows) else 0, 1)
            dim = next((r[m][0].shape[1] for r in rows if r[m][0].ndim == 2), 0)
            tokens = torch.zeros(len(rows), width, dim)
            mask = torch.zeros(len(rows), width, dtype=torch.bool)
            for i, r in enumerate(rows):
                n = r[m][0].shape[0]
                tokens[i, :n], mask[i, :n] = r[m][0], r[m][1]
            out[m] = (tokens, mask, lengths)
        return out

    def _to_arrow(self, rows: list[dict[str, Any]], folder: Path) -> datasets.Dataset:
        def gen():
            for r in rows:
                item = {
                    "row": r["row"],
                    "domain": r["domain"],
                    "label": r["label"].tolist() if "label" in r else None,
                }
                for m in self.modalities:
                    item[f"{m}.tokens"] = r[m][0].numpy()
                    item[f"{m}.mask"] = r[m][1].numpy()
                yield item

        ds = datasets.Dataset.from_generator(gen, cache_dir=str(folder), keep_in_memory=False)
        return ds.with_format("numpy")

    def __len__(self) -> int:
        return self.length

    @property
    def nbytes(self) -> int:
        """Memory held (0 for a table on disk)."""
        if self.padded is None:
            return 0
        tensors = [v for v in self.padded.values() if isinstance(v, torch.Tensor)]
        tensors += [t for v in self.padded.values() if isinstance(v, tuple) for t in v]
        return sum(t.element_size() * t.nelement() for t in tensors)

    def subset(self, indices: Sequence[int]) -> CachedFeatures:
        """The rows at ``indices``, numbered 0..len-1 as ``Dataset.select`` numbers them."""
        out = object.__new__(CachedFeatures)
        out.modalities, out.length = self.modalities, len(indices)
        out.table, out.padded, out.renumbered = None, None, True
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        if self.table is not None:
            out.table = self.table.select(idx.tolist())
            return out
        assert self.padded is not None
        padded: dict[str, Any] = {
            "row": torch.arange(len(idx)),
            "domain": self.padded["domain"][idx],
        }
        if "label" in self.padded:
            padded["label"] = self.padded["label"][idx]
        for m in self.modalities:
            tokens, mask, lengths = self.padded[m]
            width = max(int(lengths[idx].max()) if len(idx) else 0, 1)
            padded[m] = (tokens[idx, :width], mask[idx, :width], lengths[idx])
        out.padded = padded
        return out

    def __getitem__(self, index: int) -> Any:
        if self.padded is not None:
            return int(index)
        assert self.table is not None
        item = self.table[int(index)]
        row = int(index) if self.renumbered else int(item["row"])
        out = {"row": row, "domain": int(item["domain"])}
        if item["label"] is not None:
            out["label"] = torch.as_tensor(item["label"])
        for m in self.modalities:
            tokens = np.asarray(item[f"{m}.tokens"], dtype=np.float32).reshape(
                len(item[f"{m}.mask"]), -1
            )
            out[m] = (
                torch.from_numpy(tokens),
                torch.as_tensor(np.asarray(item[f"{m}.mask"], dtype=bool)),
            )
        return out


class CachedCollator:
    """Cached tokens -> a batch whose "encoded" holds {tokens, masks} (``Encoded``'s fields),
    with labels, domains and rows; modality dropout acts on the masks."""

    def __init__(
        self,
        dataset: CachedFeatures,
        dims: Mapping[str, int],
        modality_dropout: Mapping[str, float] | None = None,
        seed: int = 0,
    ) -> None:
        self.dataset, self.modalities, self.dims = dataset, dataset.modalities, dict(dims)
        self.dropout = dict(modality_dropout or {})
        self.seed = seed

    def __call__(self, items: Sequence[Any]) -> dict[str, Any]:
        padded = self.dataset.padded
        if padded is not None:
            idx = torch.as_tensor(items)
            rows, domain = padded["row"][idx], padded["domain"][idx]
            labels = padded["label"][idx] if "label" in padded else None
            tokens, masks = {}, {}
            for m in self.modalities:
                t, k, lengths = padded[m]
                width = max(int(lengths[idx].max()), 1)
                tokens[m], masks[m] = t[idx, :width], k[idx, :width]
        else:
            rows = torch.tensor([s["row"] for s in items])
            domain = torch.tensor([s["domain"] for s in items])
            labels = (
                torch.stack([torch.as_tensor(s["label"]) for s in items])
                if "label" in items[0]
                else None
            )
            tokens, masks = {}, {}
            for m in self.modalities:
                width = max([s[m][0].shape[0] for s in items] + [1])
                t = torch.zeros(len(items), width, self.dims[m])
                k = torch.zeros(len(items), width, dtype=torch.bool)
                for i, s in enumerate(items):
                    n = s[m][0].shape[0]
                    t[i, :n], k[i, :n] = s[m][0], s[m][1]
                tokens[m], masks[m] = t, k
        # Seeded by the rows, like the raw collator, so resumed runs drop the same modalities.
        rng = np.random.default_rng([self.seed, *rows.tolist()])
        for m in self.modalities:
            p = self.dropout.get(m, 0.0)
            if p > 0:
                keep = torch.as_tensor(rng.random(len(rows)) >= p)
                masks[m] = masks[m] & keep[:, None]
        batch: dict[str, Any] = {
            "encoded": {"tokens": tokens, "masks": masks},
            "domain": domain,
            "row": rows,
        }
        if labels is not None:
            batch["labels"] = labels
        return batch


# Each tensor's digest by id, dropped when the tensor dies and recomputed after an in-place
# change (its version counter moves) or a new storage: a frozen encoder is hashed once per copy.
_DIGESTS: dict[int, tuple[int, int, bytes]] = {}


def _tensor_digest(tensor: torch.Tensor) -> bytes:
    stamp = (tensor._version, tensor.data_ptr())
    known = _DIGESTS.get(id(tensor))
    if known is not None and known[:2] == stamp:
        return known[2]
    flat = tensor.detach().contiguous().reshape(-1).cpu()
    digest = hashlib.blake2b(flat.view(torch.uint8).numpy(), digest_size=16).digest()
    if known is None:
        weakref.finalize(tensor, _DIGESTS.pop, id(tensor), None)
    _DIGESTS[id(tensor)] = (*stamp, digest)
    return digest


def encoder_fingerprint(model: Any) -> str:
    """A hash of every encoder's class, parameters and buffers (BatchNorm statistics too):
    two models with this hash compute the same encoder outputs in eval mode."""
    digest = hashlib.blake2b(digest_size=16)
    for m in sorted(model.encoders):
        encoder = model.encoders[m]
        digest.update(f"{m}:{type(encoder).__module__}.{type(encoder).__qualname__}".encode())
        named = [*encoder.named_parameters(), *encoder.named_buffers()]
        for name, tensor in sorted(named, key=lambda kv: kv[0]):
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(_tensor_digest(tensor))
    return digest.hexdigest()


# processor_hash of a model's processors, by the identity of each processor and of the
# objects it holds (a processor refitted with a new tokenizer holds a new object), and the
# task's settings. Cleared when any processor is collected, so no id is reused.
_PROCESSOR_HASHES: dict[tuple, str] = {}


def processors_fingerprint(model: Any) -> str:
    """``data.processed.processor_hash`` of ``model.processor``, saved and hashed once per
    set of processor objects (models that share encoders share their processors)."""
    from ..data.processed import processor_hash

    parts = [model.encoders[m].processor for m in sorted(model.encoders)]
    key = tuple((id(o), tuple(sorted((k, id(v)) for k, v in vars(o).items()))) for o in parts)
    task = model.head.task  # small, and copied with every head: by value
    key += (type(task).__qualname__, repr(sorted(vars(task).items())))
    if key not in _PROCESSOR_HASHES:
        for part in parts:
            weakref.finalize(part, _PROCESSOR_HASHES.clear)
        _PROCESSOR_HASHES[key] = processor_hash(model.processor)
    return _PROCESSOR_HASHES[key]


def data_fingerprint(ds: datasets.Dataset, spec: Any, on_error: str) -> str:
    """The rows a split's features come from: the dataset's content fingerprint, how its
    columns map to modalities and the label, and the error policy (a bad value raises or
    goes missing)."""
    return hashlib.blake2b(
        f"{ds._fingerprint}|{spec.column_of()}|{spec.label}|{on_error}".encode(), digest_size=16
    ).hexdigest()


class FeatureStore:
    """Encoder outputs of whole splits, in memory, most recently used last, up to
    ``max_bytes`` (older entries are dropped past it; 0 keeps nothing).

    The key is (``encoder_fingerprint``, the processors' hash, ``data_fingerprint``, where
    they are kept: memory or a folder on disk): the same
    encoders on the same rows through the same processors give the same features, whichever
    model, stage or episode asks. ``hits`` and ``misses`` count lookups.
    """

    def __init__(self, max_bytes: int = 4 << 30) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, ...], CachedFeatures] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def key(
        self, model: Any, ds: datasets.Dataset, spec: Any, on_error: str
    ) -> tuple[str, str, str]:
        return (encoder_fingerprint(model), processors_fingerprint(model),
                data_fingerprint(ds, spec, on_error))  # fmt: skip

    def get(
        self, model: Any, ds: datasets.Dataset, spec: Any, on_error: str,
        raw_loader: Callable[[], Any], disk_dir: Path | None = None,
    ) -> CachedFeatures:  # fmt: skip
        """The encoder outputs of every row of ``ds`` in row order, computed with
        ``raw_loader()`` (unshuffled, without modality dropout) when not stored. With
        ``disk_dir`` they are written there as Arrow instead, and kept only by handle."""
        key = (*self.key(model, ds, spec, on_error), "disk" if disk_dir is not None else "memory")
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        folder = disk_dir / key[0][:12] / key[2][:12] if disk_dir is not None else None
        features = CachedFeatures(compute_features(model, raw_loader()), model.modalities, folder)
        self._put(key, features)
        return features

    def _put(self, key: tuple[str, ...], features: CachedFeatures) -> None:
        if features.nbytes > self.max_bytes:
            logger.info("encoder outputs of %d rows (%.0f MB) exceed the feature store's "
                        "%.0f MB; not kept", len(features), features.nbytes / 2**20,
                        self.max_bytes / 2**20)  # fmt: skip
            return
        self._entries[key] = features
        while sum(f.nbytes for f in self._entries.values()) > self.max_bytes:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)


# The process's store: every fit with frozen encoders and every cached evaluation use it.
FEATURES = FeatureStore()
