"""Dataset specs: where a dataset comes from and how its columns map to modalities."""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import check_keys, checked_fields, read_yaml

logger = logging.getLogger(__name__)


# Keys a dataset spec once had: still accepted, with a warning saying what decides now.
RETIRED_KEYS = {"task": "the head's task (head.task) decides what the labels mean"}


@dataclass
class DatasetSpec:
    """Where a dataset comes from and how its columns map to modalities.

    path: a hub id, a local folder in the hub layout, a data file (parquet/csv/json/jsonl),
        or the built-in name ``synthetic`` (its knobs go in ``options``).
    columns: modality -> column, or a list of columns for tabular data.
    domain: the column that names each row's domain; or ``domains``, domain -> {name/
        split/path/data_files} when domains are separate configs, splits or datasets.
    split: our split name (train/validation/test) -> the dataset's own split name.
    keep_domains: only these domains' rows are loaded (the source domain of a run, say).
    streaming: read rows lazily (``datasets`` streaming) instead of loading the dataset;
        see ``multimodal.data.streaming``.
    media_root: the folder that file paths in image and audio columns must lie in (relative
        paths are taken from it); by default the local dataset's folder (or data file's).
    """

    path: str = "synthetic"
    name: str | None = None
    revision: str | None = None
    data_files: Any = None
    split: dict[str, str] = field(default_factory=dict)
    streaming: bool = False
    columns: dict[str, str | list[str]] = field(default_factory=dict)
    label: str = "label"
    label_names: list[str] | None = None  # string labels -> ids by position
    other_labels: str = "raise"  # raise | drop: rows whose label is not in label_names
    domain: str | None = "domain"
    domains: dict[str, dict[str, Any]] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False
    seed: int = 0
    validation_fraction: float = 0.15
    test_fraction: float = 0.15
    media_root: str | None = None
    keep_domains: list[str] | None = None  # load only these domains' rows
    # Streaming: the column that identifies a row (splits are carved by its hash; default:
    # the whole row) and the rows a training shuffle buffer holds.
    row_key: str | None = None
    shuffle_buffer: int = 1000
    # Decode once: each split's processed tensors are kept (Arrow, keyed by the processors'
    # config and the data) and later epochs and stages read them; see data.processed.
    cache_processed: bool = True

    def media_roots(self) -> list[Path]:
        """Folders a media path in a row may point into; empty for hub and synthetic data."""
        if self.media_root is not None:
            return [Path(self.media_root).resolve()]
        paths = [self.path] + [w["path"] for w in (self.domains or {}).values() if "path" in w]
        roots = []
        for p in map(Path, paths):
            if p.is_dir():
                roots.append(p.resolve())
            elif p.is_file():
                roots.append(p.parent.resolve())
        return roots

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> DatasetSpec:
        data = dict(data)
        for key in RETIRED_KEYS.keys() & data.keys():
            warnings.warn(f"{where or 'data'}.{key} is not read: {RETIRED_KEYS[key]}",
                          FutureWarning, stacklevel=2)  # fmt: skip
            data.pop(key)
        check_keys(data, (f.name for f in dataclasses.fields(cls)), where)
        return cls(
            **checked_fields(
                cls, data, where or "data", {"validation_fraction": 0, "test_fraction": 0}
            )
        )

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> DatasetSpec:
        return cls.from_dict(read_yaml(path))

    def column_of(self) -> dict[str, list[str]]:
        """modality -> list of source columns."""
        return {m: [c] if isinstance(c, str) else list(c) for m, c in sorted(self.columns.items())}
