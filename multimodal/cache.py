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
    from .model import move_to

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
    """Cached encoder outputs, in memory or in an arrow dataset on disk."""

    def __init__(
        self,
        rows: list[dict[str, Any]],
        modalities: Sequence[str],
        disk_dir: str | Path | None = None,
    ) -> None:
        self.modalities = list(modalities)
        self.rows: list[dict[str, Any]] | None = rows
        self.table: datasets.Dataset | None = None
        if disk_dir is not None:
            self.table = self._to_arrow(rows, Path(disk_dir))
            self.rows = None

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
        return len(self.rows) if self.rows is not None else len(self.table)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.rows is not None:
            return self.rows[index]
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
    """Pads cached tokens per modality into a Batch with "features"; modality dropout on masks."""

    def __init__(
        self,
        modalities: Sequence[str],
        dims: Mapping[str, int],
        modality_dropout: Mapping[str, float] | None = None,
        seed: int = 0,
    ) -> None:
        self.modalities, self.dims = list(modalities), dict(dims)
        self.dropout = dict(modality_dropout or {})
        self.seed = seed

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        b = len(samples)
        rng = np.random.default_rng([self.seed, *[s["row"] for s in samples]])
        tokens, masks = {}, {}
        for m in self.modalities:
            width = max([s[m][0].shape[0] for s in samples] + [1])
            t = torch.zeros(b, width, self.dims[m])
            k = torch.zeros(b, width, dtype=torch.bool)
            drop = rng.random(b) < self.dropout.get(m, 0.0)
            for i, s in enumerate(samples):
                n = s[m][0].shape[0]
                t[i, :n], k[i, :n] = s[m][0], s[m][1] & (not drop[i])
            tokens[m], masks[m] = t, k
        batch: dict[str, Any] = {
            "features": {"tokens": tokens, "masks": masks},
            "domain": torch.tensor([s["domain"] for s in samples]),
            "row": torch.tensor([s["row"] for s in samples]),
        }
        if "label" in samples[0]:
            batch["labels"] = torch.stack([torch.as_tensor(s["label"]) for s in samples])
        return batch
