"""Datasets from the hub, local folders or the built-in generator, mapped to modalities."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import yaml

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
DATA_FILE_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}


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
    task: str = "classification"
    domain: str | None = "domain"
    domains: dict[str, dict[str, Any]] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False
    seed: int = 0
    validation_fraction: float = 0.15
    test_fraction: float = 0.15
    media_root: str | None = None
    keep_domains: list[str] | None = None  # load only these domains' rows

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
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            hints = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
            raise ValueError(f"unknown dataset spec keys {unknown}; close matches: {hints}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> DatasetSpec:
        with open(path) as f:
            return cls.from_dict(yaml.safe_load(f) or {})

    def column_of(self) -> dict[str, list[str]]:
        """modality -> list of source columns."""
        return {m: [c] if isinstance(c, str) else list(c) for m, c in sorted(self.columns.items())}


def _load_one(
    spec: DatasetSpec, path: str, name: str | None, data_files: Any
) -> datasets.DatasetDict:
    kwargs: dict[str, Any] = {"revision": spec.revision, "streaming": spec.streaming}
    local = Path(path)
    if local.is_file() and local.suffix in DATA_FILE_SUFFIXES:
        path, data_files = DATA_FILE_SUFFIXES[local.suffix], {"train": str(local)}
    if data_files is not None:
        kwargs["data_files"] = data_files
    if spec.trust_remote_code:
        kwargs["trust_remote_code"] = True  # only when the spec asks for it
        logger.warning(
            "loading %s with trust_remote_code=True: its code runs on this machine", path
        )
    loaded = datasets.load_dataset(path, name, **{k: v for k, v in kwargs.items() if v is not None})
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def load_dataset(spec: DatasetSpec | Mapping[str, Any] | str) -> datasets.DatasetDict:
    """Load ``spec`` as a DatasetDict with train/validation/test splits and a ``domain`` column.

    Every loader goes through ``datasets.load_dataset``; dataset scripts never run unless
    ``trust_remote_code`` is set. Splits the data lacks are carved out of train, per
    domain, with ``spec.seed``. Columns named in the spec are checked here.
    """
    if isinstance(spec, str):
        spec = DatasetSpec(path=spec)
    elif not isinstance(spec, DatasetSpec):
        spec = DatasetSpec.from_dict(spec)
    if spec.path == "synthetic":
        from .synthetic import make_synthetic, synthetic_columns

        dsd = make_synthetic(
            seed=spec.options.get("seed", spec.seed),
            **{k: v for k, v in spec.options.items() if k != "seed"},
        )
        if not spec.columns:
            spec.columns = synthetic_columns(
                spec.options.get("modalities", ("audio", "image", "tabular", "text"))
            )
    elif spec.domains:
        parts = {}
        for domain, where in spec.domains.items():
            one = _load_one(
                spec,
                where.get("path", spec.path),
                where.get("name", spec.name),
                where.get("data_files", spec.data_files),
            )
            if "split" in where:
                one = datasets.DatasetDict({"train": one[where["split"]]})
            parts[domain] = _rename_splits(one, spec.split)
        dsd = _concat_domains(parts)
    else:
        dsd = _rename_splits(_load_one(spec, spec.path, spec.name, spec.data_files), spec.split)
        if spec.domain is None:
            dsd = datasets.DatasetDict(
                {k: v.add_column("domain", ["default"] * len(v)) for k, v in dsd.items()}
            )
        elif spec.domain != "domain":
            _check_columns(dsd, [spec.domain], "domain")
            dsd = datasets.DatasetDict(
                {k: v.rename_column(spec.domain, "domain") for k, v in dsd.items()}
            )
    if spec.keep_domains:
        known = set(dsd["train"]["domain"])
        unknown = sorted(set(spec.keep_domains) - known)
        if unknown:
            raise ValueError(
                f"keep_domains names {unknown}, which the data lacks; domains: {sorted(known)}"
            )
        dsd = datasets.DatasetDict(
            {k: select_domains(v, spec.keep_domains) for k, v in dsd.items()}
        )
    if not spec.streaming:
        dsd = make_splits(dsd, spec.seed, spec.validation_fraction, spec.test_fraction)
    wanted = [c for cols in spec.column_of().values() for c in cols] + [spec.label, "domain"]
    _check_columns(dsd, wanted, "spec")
    if spec.label_names:
        dsd = _encode_labels(dsd, spec)
    return dsd


def _encode_labels(dsd: datasets.DatasetDict, spec: DatasetSpec) -> datasets.DatasetDict:
    """Map string labels to class ids in ``label_names`` order; others raise or are dropped."""
    names = list(spec.label_names or [])
    known = set(names)
    out = {}
    for split, ds in dsd.items():
        labels = ds[spec.label]
        bad = [i for i, v in enumerate(labels) if v not in known]
        if bad and spec.other_labels != "drop":
            raise ValueError(
                f"split {split!r}, row {bad[0]}, column {spec.label!r}: label {labels[bad[0]]!r} is not one of "
                f"{names} ({len(bad)} such rows; set other_labels: drop to skip them)"
            )
        if bad:
            logger.warning(
                "split %r: dropped %d rows whose %r is not in label_names",
                split,
                len(bad),
                spec.label,
            )
            bad_set = set(bad)
            ds = ds.select([i for i in range(len(ds)) if i not in bad_set])
        out[split] = ds.cast_column(spec.label, datasets.ClassLabel(names=names))
    return datasets.DatasetDict(out)


def _check_columns(dsd: datasets.DatasetDict, wanted: Sequence[str], what: str) -> None:
    for split, ds in dsd.items():
        have = list(ds.column_names or ds.features or [])
        for col in wanted:
            if col not in have:
                close = difflib.get_close_matches(col, have, n=3)
                hint = f" Did you mean {close}?" if close else ""
                raise ValueError(
                    f"{what} names column {col!r}, which split {split!r} lacks.{hint} Columns: {have}"
                )


def _rename_splits(dsd: datasets.DatasetDict, mapping: Mapping[str, str]) -> datasets.DatasetDict:
    out = {ours: dsd[theirs] for ours, theirs in mapping.items()}
    for name, ds in dsd.items():
        if name in SPLITS and name not in out and name not in mapping.values():
            out[name] = ds
    if "train" not in out:
        raise ValueError(
            f"no train split: the data has {list(dsd)}; map one with split: {{train: NAME}}"
        )
    return datasets.DatasetDict(out)


def _concat_domains(parts: Mapping[str, datasets.DatasetDict]) -> datasets.DatasetDict:
    out = {}
    for split in SPLITS:
        pieces = [
            ds[split].add_column("domain", [d] * len(ds[split]))
            for d, ds in parts.items()
            if split in ds
        ]
        if pieces:
            out[split] = datasets.concatenate_datasets(pieces)
    return datasets.DatasetDict(out)


def make_splits(
    dsd: datasets.DatasetDict,
    seed: int,
    validation_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> datasets.DatasetDict:
    """Carve the missing validation/test splits out of train, per domain, seeded."""
    missing = [s for s in ("validation", "test") if s not in dsd]
    if not missing:
        return dsd
    train = dsd["train"]
    fractions = {"validation": validation_fraction, "test": test_fraction}
    rng = np.random.default_rng(seed)
    domains = np.asarray(train["domain"])
    assigned: dict[str, list[int]] = {s: [] for s in ["train", *missing]}
    for domain in sorted(set(domains.tolist())):
        idx = rng.permutation(np.flatnonzero(domains == domain))
        start = 0
        for split in missing:
            count = int(round(fractions[split] * len(idx)))
            assigned[split] += idx[start : start + count].tolist()
            start += count
        assigned["train"] += idx[start:].tolist()
    out = dict(dsd)
    for split, idx in assigned.items():
        out[split] = train.select(sorted(idx))
    return datasets.DatasetDict({s: out[s] for s in SPLITS})


def select_domains(ds: datasets.Dataset, domains: str | Sequence[str]) -> datasets.Dataset:
    """The rows of ``ds`` whose domain is in ``domains``."""
    wanted = {domains} if isinstance(domains, str) else set(domains)
    have = set(ds.unique("domain"))
    if unknown := sorted(wanted - have):
        raise ValueError(f"unknown domains {unknown}; the data has {sorted(have)}")
    idx = [i for i, d in enumerate(ds["domain"]) if d in wanted]
    return ds.select(idx)


def k_shot_indices(labels: Sequence[int], k: int, seed: int) -> list[int]:
    """k indices per class, stratified; the same seed always gives the same indices."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        picked += rng.choice(idx, size=min(k, len(idx)), replace=False).tolist()
    return sorted(picked)


def k_shot(ds: datasets.Dataset, k: int, seed: int, label: str = "label") -> datasets.Dataset:
    """A stratified k-shot sample of ``ds`` (see ``k_shot_indices``)."""
    return ds.select(k_shot_indices(ds[label], k, seed))


def unlabelled(ds: datasets.Dataset, label: str = "label") -> datasets.Dataset:
    """A view of ``ds`` without its label column, for unsupervised domain adaptation."""
    return ds.remove_columns([label])


def raw_media(ds: datasets.Dataset) -> datasets.Dataset:
    """Turn off decoding of Image/Audio columns: the encoders' processors decode, per sample,
    in the DataLoader workers, where a bad file can be handled by the error policy."""
    for col, feature in ds.features.items():
        if isinstance(feature, (datasets.Image, datasets.Audio)) and feature.decode:
            ds = ds.cast_column(col, type(feature)(decode=False))
    return ds


class RowView(torch.utils.data.Dataset):
    """Rows of a split as {modality: raw value, "label", "domain", "__row__"}; lazily mapped.

    The column -> modality mapping runs through ``with_transform`` at access time.
    """

    def __init__(self, ds: datasets.Dataset, spec: DatasetSpec, split: str) -> None:
        self.split = split
        columns = spec.column_of()
        label, has_label = spec.label, spec.label in ds.column_names

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

        self.ds = raw_media(ds).with_transform(to_modalities)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.ds[int(index)], "__row__": int(index)}


class MultimodalCollator:
    """Raw rows -> Batch through ``MultimodalModel.preprocess``, with modality dropout and an
    error policy.

    on_error="raise": a bad value raises, naming the split, row, column and expectation.
    on_error="missing": the modality becomes absent for that sample; ``events`` counts them.
    Labels out of range or of the wrong type always raise.
    """

    def __init__(
        self,
        model: Any,
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
        self.model, self.spec, self.split, self.on_error = model, spec, split, on_error
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

    def _where(self, row: Mapping[str, Any], modality: str) -> str:
        return f"split {self.split!r}, row {row['__row__']}, column {self.columns.get(modality, modality)!r}"

    def _isolate_errors(
        self, rows: Sequence[Mapping[str, Any]], samples: list[dict[str, Any]]
    ) -> None:
        for m, enc in self.model.encoders.items():
            for i, sample in enumerate(samples):
                if enc.is_missing(sample[m]):
                    continue
                try:
                    enc.process([sample[m]])
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
        for m, enc in self.model.encoders.items():
            if enc.modality not in ("image", "audio"):
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
                if resolved is not None:
                    sample[m] = str(resolved)
                    continue
                err = f"path {str(path)!r} is outside the dataset folder {[str(r) for r in self.media_roots]}"
                if self.on_error == "raise":
                    raise ValueError(f"{self._where(rows[i], m)}: {err}")
                self.events[m] += 1
                logger.warning("%s: treated as missing (%s)", self._where(rows[i], m), err)
                sample[m] = None

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        samples = [{m: row.get(m) for m in self.model.modalities} for row in rows]
        if self.media_roots:
            self._contain_paths(rows, samples)
        # Seeded by the rows, not by history, so a resumed run drops the same modalities.
        rng = np.random.default_rng([self.seed, *[int(r["__row__"]) for r in rows]])
        if self.corruption is not None:
            from .corruptions import corrupt

            m, name, severity = self.corruption
            kind = self.model.encoders[m].modality
            for s in samples:
                if not self.model.encoders[m].is_missing(s[m]):
                    s[m] = corrupt(kind, s[m], name, severity, rng)
        for m, p in self.dropout.items():
            if p > 0:
                for s, drop in zip(samples, rng.random(len(samples)) < p, strict=True):
                    if drop:
                        s[m] = None
        if "label" in rows[0]:
            try:
                labels = self.model.head.check_labels([r.get("label") for r in rows])
            except (ValueError, TypeError) as err:
                raise type(err)(
                    f"split {self.split!r}, column {self.spec.label!r}: {err}; rows {[r['__row__'] for r in rows]}"
                ) from err
        try:
            batch = self.model.preprocess(samples)
        except (ValueError, TypeError):
            # Slow path, only when the batch fails: find the bad values one by one.
            self._isolate_errors(rows, samples)
            batch = self.model.preprocess(samples)
        if "label" in rows[0]:
            batch["labels"] = labels
        batch["domain"] = torch.tensor(
            [self.domain_ids.get(r.get("domain"), -1) for r in rows], dtype=torch.long
        )
        batch["row"] = torch.tensor([r["__row__"] for r in rows], dtype=torch.long)
        return batch


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
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=g).tolist())


def make_loader(
    ds: datasets.Dataset,
    model: Any,
    spec: DatasetSpec,
    split: str,
    batch_size: int = 32,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    **collator_kwargs: Any,
) -> torch.utils.data.DataLoader:
    """A DataLoader over ``ds`` that decodes and processes lazily, in the workers.

    Its order comes from an ``EpochSampler`` (``loader.sampler.set_epoch(e)``).
    """
    view = RowView(ds, spec, split)
    # A private generator: creating an iterator must not consume the global RNG.
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        view,
        batch_size=batch_size,
        sampler=EpochSampler(len(view), seed, shuffle),
        num_workers=num_workers,
        collate_fn=MultimodalCollator(model, spec, split, seed=seed, **collator_kwargs),
        generator=generator,
        persistent_workers=num_workers > 0,
    )


def export_dataset(dsd: datasets.DatasetDict, folder: str | os.PathLike[str]) -> Path:
    """Write ``dsd`` as a folder in the hub layout: parquet shards (media embedded) + README.md."""
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    configs = []
    for split, ds in dsd.items():
        ds = _embed(ds)
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
        configs.append({"split": split, "path": f"data/{split}-*"})
    card = {"configs": [{"config_name": "default", "data_files": configs}]}
    readme = (
        "---\n"
        + yaml.safe_dump(card, sort_keys=False)
        + "---\n\nExported with `multimodal export-dataset`.\n"
    )
    (folder / "README.md").write_text(readme)
    return folder


def _embed(ds: datasets.Dataset) -> datasets.Dataset:
    from datasets.table import embed_table_storage

    if not any(isinstance(f, (datasets.Image, datasets.Audio)) for f in ds.features.values()):
        return ds
    format_ = ds.format
    ds = ds.with_format("arrow")
    ds = ds.map(embed_table_storage, batched=True)
    return ds.with_format(**format_)
