"""Feature cache: each encoder's outputs computed once per set of its weights and split.

``FEATURES`` (a ``FeatureStore``) keeps, per encoder, the outputs on every split a
frozen-encoder fit or a cached evaluation has seen, keyed by a hash of that encoder's
weights, its processor's saved config and the split's rows. Later fits and evaluations
that hold the same encoder (the stages and episodes of a transfer, the units of a
benchmark, the trials of a search) read them instead of running it, whatever else in the
model is new: a scratch model rebuilt per episode around a tabular network fitted on its
rows recomputes that network's outputs only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from ..modeling.fingerprint import encoder_fingerprint

logger = logging.getLogger(__name__)


def _trim(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing padding: keep positions up to the last valid token (none if absent)."""
    valid = torch.nonzero(mask).flatten()
    length = int(valid[-1]) + 1 if len(valid) else 0
    return tokens[:length], mask[:length]


@torch.no_grad()
def compute_features(
    model: Any, loader: Any, modalities: Sequence[str]
) -> tuple[dict[str, torch.Tensor], dict[str, list[tuple[torch.Tensor, torch.Tensor]]]]:
    """The ``modalities``' encoder outputs on every batch of ``loader``, per sample (tokens
    [T_i, D], mask [T_i]), and the rows' labels: (meta, {modality: [(tokens, mask)]})."""
    from ..modeling.model import move_to

    rows: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in modalities}
    for batch in loader:
        batch = move_to(batch, model.device)
        rows.append(batch["row"].cpu())
        if "labels" in batch:
            labels.append(batch["labels"].cpu())
        for m in modalities:
            out = model.encoders[m](batch[m])
            mask = out.mask & batch["present"][m].to(out.mask.device)[:, None]
            tokens, mask = out.tokens.float().cpu(), mask.cpu()
            parts[m] += [
                tuple(t.clone() for t in _trim(tokens[i], mask[i])) for i in range(len(mask))
            ]
    row = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
    meta = {"row": row, "domain": torch.full_like(row, -1)}
    if labels:
        meta["label"] = torch.cat(labels)
    return meta, parts


@dataclasses.dataclass
class ModalityFeatures:
    """One encoder's outputs on every row of a split: padded tokens [N, T, D], mask [N, T]
    and each row's length [N] in memory, or an Arrow table of per-row tokens and masks."""

    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    lengths: torch.Tensor | None = None
    table: datasets.Dataset | None = None

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[torch.Tensor, torch.Tensor]],
                  folder: Path | None = None) -> ModalityFeatures:  # fmt: skip
        if folder is not None:

            def gen():
                for tokens, mask in rows:
                    yield {"tokens": tokens.numpy(), "mask": mask.numpy()}

            table = datasets.Dataset.from_generator(
                gen, cache_dir=str(folder), keep_in_memory=False
            )
            return cls(table=table.with_format("numpy"))
        lengths = torch.tensor([t.shape[0] for t, _ in rows], dtype=torch.long)
        width = max(int(lengths.max()) if len(rows) else 0, 1)
        dim = next((t.shape[1] for t, _ in rows if t.ndim == 2), 0)
        tokens = torch.zeros(len(rows), width, dim)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, (t, k) in enumerate(rows):
            tokens[i, : t.shape[0]], mask[i, : t.shape[0]] = t, k
        return cls(tokens, mask, lengths)

    @property
    def nbytes(self) -> int:
        """Memory held (0 for a table on disk)."""
        if self.tokens is None:
            return 0
        return sum(t.element_size() * t.nelement() for t in (self.tokens, self.mask, self.lengths))

    def select(self, idx: torch.Tensor) -> ModalityFeatures:
        """The rows at ``idx``, padded only to the longest of them."""
        if self.table is not None:
            return ModalityFeatures(table=self.table.select(idx.tolist()))
        width = max(int(self.lengths[idx].max()) if len(idx) else 0, 1)
        return ModalityFeatures(self.tokens[idx, :width], self.mask[idx, :width], self.lengths[idx])

    def row(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row ``index`` of a table: tokens [T_i, D], mask [T_i]."""
        assert self.table is not None
        item = self.table[int(index)]
        mask = np.asarray(item["mask"], dtype=bool)
        tokens = np.asarray(item["tokens"], dtype=np.float32).reshape(len(mask), -1)
        return torch.from_numpy(tokens), torch.as_tensor(mask)


class CachedFeatures(torch.utils.data.Dataset):
    """Cached encoder outputs of a split: ``meta`` (row, domain and, with labels, label
    tensors [N]) and ``parts`` (``ModalityFeatures`` per modality).

    In memory, items are row positions and ``CachedCollator`` slices whole batches out of
    [N, T_max, D] tensors (``padded``); on disk, items are per-sample tensors read from Arrow.
    """

    def __init__(self, meta: Mapping[str, torch.Tensor], parts: Mapping[str, ModalityFeatures],
                 renumbered: bool = False) -> None:  # fmt: skip
        self.meta = dict(meta)
        self.parts = {m: parts[m] for m in sorted(parts)}
        self.modalities = list(self.parts)
        self.length = len(self.meta["row"])
        self.renumbered = renumbered  # a subset: rows are positions in it
        self.on_disk = any(p.table is not None for p in self.parts.values())
        self.padded: dict[str, Any] | None = None
        if not self.on_disk:
            self.padded = {
                **self.meta,
                **{m: (p.tokens, p.mask, p.lengths) for m, p in self.parts.items()},
            }

    def __len__(self) -> int:
        return self.length

    @property
    def nbytes(self) -> int:
        """Memory the encoder outputs hold (0 for tables on disk)."""
        return sum(p.nbytes for p in self.parts.values())

    def subset(self, indices: Sequence[int]) -> CachedFeatures:
        """The rows at ``indices``, numbered 0..len-1 as ``Dataset.select`` numbers them."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        meta = {k: v[idx] for k, v in self.meta.items()}
        meta["row"] = torch.arange(len(idx))
        return CachedFeatures(meta, {m: p.select(idx) for m, p in self.parts.items()}, True)

    def __getitem__(self, index: int) -> Any:
        if not self.on_disk:
            return int(index)
        out: dict[str, Any] = {
            "row": int(index) if self.renumbered else int(self.meta["row"][index]),
            "domain": int(self.meta["domain"][index]),
        }
        if "label" in self.meta:
            out["label"] = self.meta["label"][index]
        for m, part in self.parts.items():
            out[m] = part.row(index)
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
        domain_ids: torch.Tensor | None = None,
    ) -> None:
        self.dataset, self.modalities, self.dims = dataset, dataset.modalities, dict(dims)
        self.dropout = dict(modality_dropout or {})
        self.seed = seed
        # Each row's domain in the fit (the stored features serve every fit: they hold -1).
        self.domain_ids = domain_ids

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
        if any(self.dropout.get(m, 0.0) > 0 for m in self.modalities):
            # Seeded by the rows, like the raw collator, so resumed runs drop the same modalities.
            rng = np.random.default_rng([self.seed, *rows.tolist()])
            for m in self.modalities:
                p = self.dropout.get(m, 0.0)
                if p > 0:
                    keep = torch.as_tensor(rng.random(len(rows)) >= p)
                    masks[m] = masks[m] & keep[:, None]
        if self.domain_ids is not None:
            domain = self.domain_ids[rows]
        batch: dict[str, Any] = {
            "encoded": {"tokens": tokens, "masks": masks},
            "domain": domain,
            "row": rows,
        }
        if labels is not None:
            batch["labels"] = labels
        return batch


class _OneProcessor:
    """One encoder's processor, saved as ``processor_hash`` reads a processor: its config
    and its own files (a tokenizer), without the task, which no encoder output depends on."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def save_pretrained(self, folder: Path) -> Path:
        folder.mkdir(parents=True)
        config = {"name": self.processor.registry_name, **self.processor.to_config(folder)}
        (folder / "processor.json").write_text(json.dumps(config, sort_keys=True, default=str))
        return folder


# processor_fingerprint by the identity of a processor and of the objects it holds (a
# processor refitted with a new tokenizer holds a new object). Cleared when a processor is
# collected, so no id is reused.
_PROCESSOR_HASHES: dict[tuple, str] = {}


def processor_fingerprint(processor: Any) -> str:
    """``data.processed.processor_hash`` of one encoder's processor, saved and hashed once
    per processor object (models that share an encoder share its processor)."""
    from ..data.processed import processor_hash

    key = (id(processor), tuple(sorted((k, id(v)) for k, v in vars(processor).items())))
    if key not in _PROCESSOR_HASHES:
        weakref.finalize(processor, _PROCESSOR_HASHES.clear)
        _PROCESSOR_HASHES[key] = processor_hash(_OneProcessor(processor))
    return _PROCESSOR_HASHES[key]


def data_fingerprint(ds: datasets.Dataset, spec: Any, on_error: str, modality: str | None) -> str:
    """The rows a split's features come from: the dataset's content fingerprint, the
    ``modality``'s columns (None: the label column, for the rows' labels) and the error
    policy (a bad value raises or goes missing)."""
    columns = spec.column_of().get(modality) if modality is not None else spec.label
    return hashlib.blake2b(
        f"{ds._fingerprint}|{modality}|{columns}|{spec.media_roots()}|{on_error}".encode(),
        digest_size=16,
    ).hexdigest()


# How a split's features are computed: (a processor of some modalities, a spec mapping only
# their columns) -> an unshuffled loader without modality dropout.
RawLoader = Callable[[Any, Any], Any]


class FeatureStore:
    """Encoder outputs of whole splits, per encoder, in memory, most recently used last, up
    to ``max_bytes`` (older entries are dropped past it; 0 keeps nothing).

    An encoder's key is (``encoder_fingerprint``, ``processor_fingerprint``,
    ``data_fingerprint`` of its columns, where they are kept: memory or a folder on disk):
    the same encoder on the same rows through the same processor gives the same outputs,
    whichever model, stage or episode asks. A split's rows and labels are kept beside them
    (keyed by the label column and the task). ``hits`` and ``misses`` count split lookups
    (a miss ran at least one encoder); ``passes`` counts, per modality, the splits an
    encoder ran on.
    """

    def __init__(self, max_bytes: int = 4 << 30) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self._computed: set[tuple[str, ...]] = set()  # every key ever computed
        self._warned = False
        self.hits = 0
        self.misses = 0
        self.passes: Counter[str] = Counter()

    def keys(self, model: Any, ds: datasets.Dataset, spec: Any, on_error: str,
             where: str) -> dict[str | None, tuple[str, ...]]:  # fmt: skip
        """The store key of each modality's outputs on ``ds``, and (under None) of its rows."""
        task = model.head.task
        out: dict[str | None, tuple[str, ...]] = {
            None: (
                "rows",
                data_fingerprint(ds, spec, on_error, None),
                type(task).__qualname__,
                repr(sorted(vars(task).items())),
            )  # fmt: skip
        }
        for m, encoder in model.encoders.items():
            out[m] = (encoder_fingerprint(encoder), processor_fingerprint(encoder.processor),
                      data_fingerprint(ds, spec, on_error, m), where)  # fmt: skip
        return out

    def get(
        self, model: Any, ds: datasets.Dataset, spec: Any, on_error: str,
        raw_loader: RawLoader, disk_dir: Path | None = None,
    ) -> CachedFeatures:  # fmt: skip
        """The encoder outputs of every row of ``ds`` in row order; an encoder whose outputs
        are not stored runs now (``raw_loader``, on its columns only). With ``disk_dir`` they
        are written there as Arrow instead, and kept only by handle."""
        keys = self.keys(model, ds, spec, on_error, "disk" if disk_dir is not None else "memory")
        missing = [m for m in model.modalities if keys[m] not in self._entries]
        if not missing and keys[None] in self._entries:
            self.hits += 1
            for key in keys.values():
                self._entries.move_to_end(key)
            return self._assemble(model, keys)
        self.misses += 1
        self._warn_recomputed(missing, keys, len(ds))
        parts = {m: self._entries[keys[m]] for m in model.modalities if m not in missing}
        meta, rows = self._compute(model, spec, missing, raw_loader)
        for m in missing:
            folder = disk_dir / keys[m][0][:12] / keys[m][2][:12] if disk_dir is not None else None
            parts[m] = ModalityFeatures.from_rows(rows[m], folder)
            self._computed.add(keys[m])
            self.passes[m] += 1
        for key, value in [(keys[None], meta), *((keys[m], parts[m]) for m in missing)]:
            self._put(key, value)
        return CachedFeatures(meta, parts)

    def _assemble(self, model: Any, keys: Mapping[str | None, tuple[str, ...]]) -> CachedFeatures:
        return CachedFeatures(
            self._entries[keys[None]], {m: self._entries[keys[m]] for m in model.modalities}
        )

    @staticmethod
    def _compute(
        model: Any, spec: Any, modalities: list[str], raw_loader: RawLoader
    ) -> tuple[Any, Any]:
        """Run ``modalities``' encoders (none: only the rows' labels are read) on a split."""
        from ..modeling.processing import MultimodalProcessor

        processor = MultimodalProcessor({m: model.encoders[m].processor for m in modalities},
                                        model.head.task)  # fmt: skip
        columns = {m: c for m, c in spec.columns.items() if m in modalities}
        return compute_features(model, raw_loader(processor, dataclasses.replace(spec, columns=columns)),
                                modalities)  # fmt: skip

    def _warn_recomputed(self, missing: list[str], keys: Mapping[str | None, tuple[str, ...]],
                         rows: int) -> None:  # fmt: skip
        again = [m for m in missing if keys[m] in self._computed]
        if again and not self._warned:
            self._warned = True
            logger.warning(
                "the feature store computes %s's outputs on %d rows again: they were dropped to "
                "stay under its %.0f MB (engine.cache.FEATURES.max_bytes); raise it to keep them",
                ", ".join(again), rows, self.max_bytes / 2**20,
            )  # fmt: skip

    def _put(self, key: tuple[str, ...], value: Any) -> None:
        nbytes = value.nbytes if isinstance(value, ModalityFeatures) else 0
        if nbytes > self.max_bytes:
            logger.info("encoder outputs (%.0f MB) exceed the feature store's %.0f MB; not kept",
                        nbytes / 2**20, self.max_bytes / 2**20)  # fmt: skip
            return
        self._entries[key] = value
        while self.nbytes > self.max_bytes:
            self._entries.popitem(last=False)

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self._entries.values() if isinstance(v, ModalityFeatures))

    def clear(self) -> None:
        self._entries.clear()
        self._computed.clear()
        self._warned = False
        self.hits = self.misses = 0
        self.passes.clear()

    def __len__(self) -> int:
        return len(self._entries)


# The process's store: every fit with frozen encoders and every cached evaluation use it.
FEATURES = FeatureStore()
