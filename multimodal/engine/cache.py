"""Feature cache: with every encoder frozen, encoder outputs are computed once per split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch


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

    def __getitem__(self, index: int) -> Any:
        if self.padded is not None:
            return int(index)
        item = self.table[int(index)]
        out = {"row": int(item["row"]), "domain": int(item["domain"])}
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
