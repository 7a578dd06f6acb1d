"""The multimodal processor: raw samples -> the Batch a model takes, with no network in it.

It is what the collator, the server and the ONNX runtime hold: each modality's processor
plus the head's task (to check labels). Saved as ``processor.json`` beside each processor's
own files; loading it needs no weights and runs no pickle.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from encoders import Processor, processor_from_config

from ..core.io import atomic_dir, write_json_atomic
from .tasks import Task, create_task

PROCESSOR_NAME = "processor.json"
FORMAT_VERSION = 1
Batch = dict[str, Any]


class MultimodalProcessor:
    """{modality key: Processor} in sorted key order, and the task whose labels it checks."""

    def __init__(self, processors: Mapping[str, Processor], task: Task) -> None:
        self.processors = {m: processors[m] for m in sorted(processors)}
        self.task = task

    @property
    def modalities(self) -> list[str]:
        return list(self.processors)

    def kind(self, modality: str) -> str:
        """The kind of data of a modality key: text, image, audio or tabular."""
        return self.processors[modality].modality

    def is_missing(self, modality: str, value: Any) -> bool:
        return self.processors[modality].is_missing(value)

    def check_labels(self, labels: Sequence[Any]) -> torch.Tensor:
        return self.task.check_labels(labels)

    def __call__(self, samples: Sequence[Mapping[str, Any]], label_key: str = "label") -> Batch:
        """Raw samples -> {modality: tensors, "present": {m: [B] bool}, "labels": [B]}.

        A missing key, None, or a value the processor counts as empty (blank text, a clip of
        zero samples) makes the modality absent for that sample.
        """
        batch: Batch = {"present": {}}
        for m, processor in self.processors.items():
            values = [s.get(m) for s in samples]
            present = [not processor.is_missing(v) for v in values]
            batch[m] = processor([v if p else None for v, p in zip(values, present, strict=True)])
            batch["present"][m] = torch.tensor(present, dtype=torch.bool)
        if any(label_key in s for s in samples):
            batch["labels"] = self.check_labels([s.get(label_key) for s in samples])
        return batch

    def empty(self, modality: str) -> dict[str, torch.Tensor]:
        """What a modality's processor makes of an absent value (a batch of one), kept."""
        cache = self.__dict__.setdefault("_empty", {})
        if modality not in cache:
            cache[modality] = self.processors[modality]([None])
        return cache[modality]

    def collate(self, samples: Sequence[Mapping[str, dict[str, torch.Tensor]]]) -> Batch:
        """Per-sample processor outputs ({modality: its tensors for the sample, as a batch of
        one}; absent modalities left out) -> the modality tensors and "present" flags that
        ``self`` gives on the raw samples, padded and stacked by each processor."""
        batch: Batch = {"present": {}}
        for m, processor in self.processors.items():
            batch[m] = processor.collate([s.get(m, self.empty(m)) for s in samples])
            batch["present"][m] = torch.tensor([m in s for s in samples], dtype=torch.bool)
        return batch

    def save_pretrained(self, save_dir: str | Path) -> Path:
        """``processor.json`` and each processor's files (``m/...``), atomically."""
        # An earlier processor save may be replaced; any other folder with files is refused.
        with atomic_dir(save_dir, lambda folder: (folder / PROCESSOR_NAME).is_file()) as tmp:
            processors = {}
            for m, processor in self.processors.items():
                (tmp / m).mkdir()
                processors[m] = {"name": processor.registry_name, **processor.to_config(tmp / m)}
            task = {"name": self.task.name, "num_classes": self.task.num_classes,
                    "label_smoothing": self.task.label_smoothing,
                    "temperature": self.task.temperature}  # fmt: skip
            write_json_atomic(tmp / PROCESSOR_NAME, {"format_version": FORMAT_VERSION,
                                                     "task": task, "processors": processors})  # fmt: skip
        return Path(save_dir)

    @classmethod
    def from_pretrained(cls, save_dir: str | Path) -> MultimodalProcessor:
        save_dir = Path(save_dir)
        path = save_dir / PROCESSOR_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{save_dir} has no {PROCESSOR_NAME}")
        config = json.loads(path.read_text())
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported format_version {config.get('format_version')!r}")
        processors = {
            m: processor_from_config(c, save_dir / m) for m, c in config["processors"].items()
        }
        return cls(processors, create_task(**config["task"]))
