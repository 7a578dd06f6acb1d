"""Encoders built once and shared by every model built from the same config: for callers
that never train an encoder or change it in place (a transfer whose every stage keeps its
encoders frozen), so that a benchmark's units do not each load, build and hash the same
pretrained networks again."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .fingerprint import pin


@dataclass
class _Entry:
    fingerprint: str
    by_seed: dict[int | None, Any] = field(default_factory=dict)
    # The weights came out the same for two seeds (pretrained ones): any seed may take them.
    seed_free: bool = False


class EncoderPool:
    """Encoders keyed by modality and config and, until a second seed builds the same
    weights (a checkpoint's, say), by the seed of the model built. An encoder that fits
    on rows (a tokenizer trained on them, tabular statistics) is never pooled. At most
    ``max_configs`` configs are kept, the least recently used dropped first."""

    def __init__(self, max_configs: int = 8) -> None:
        self.max_configs = max_configs
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.built = 0  # encoders built through the pool

    def get(self, modality: str, config: Mapping[str, Any], seed: int | None,
            build: Callable[[], Any]) -> Any:  # fmt: skip
        """The pooled encoder for (``modality``, ``config``, ``seed``), else ``build()``'s."""
        key = json.dumps({"modality": modality, **config}, sort_keys=True, default=str)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            if entry.seed_free:
                return next(iter(entry.by_seed.values()))
            if seed in entry.by_seed:
                return entry.by_seed[seed]
        encoder = build()
        self.built += 1
        if encoder.fits_on_data():
            return encoder
        fingerprint = pin(encoder)
        if entry is None:
            self._entries[key] = _Entry(fingerprint, {seed: encoder})
            while len(self._entries) > self.max_configs:
                self._entries.popitem(last=False)
            return encoder
        if fingerprint == entry.fingerprint:
            entry.seed_free = True
            return next(iter(entry.by_seed.values()))
        entry.by_seed[seed] = encoder
        return encoder

    def clear(self) -> None:
        self._entries.clear()
        self.built = 0

    def __len__(self) -> int:
        return len(self._entries)
