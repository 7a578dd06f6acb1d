"""Datasets from the hub, local folders or the built-in generator, mapped to modalities."""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import yaml

from ..core.hub_access import ensure_reachable_or_offline, unreachable
from ..core.resources import local_or_hub
from .spec import DatasetSpec
from .split import Split
from .streaming import filter_domains, hash_splits, is_streaming, with_column

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
DATA_FILE_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}


def _load_one(
    spec: DatasetSpec, path: str, name: str | None, data_files: Any, key: str = "data.path"
) -> datasets.DatasetDict:
    kwargs: dict[str, Any] = {"revision": spec.revision, "streaming": spec.streaming}
    path = local_or_hub(path, key)
    local = Path(path)
    if local.is_file() and local.suffix in DATA_FILE_SUFFIXES:
        path, data_files = DATA_FILE_SUFFIXES[local.suffix], {"train": str(local)}
    elif local.is_dir() and data_files is not None:
        _check_data_files(local, data_files, key.replace("path", "data_files"))
    if data_files is not None:
        kwargs["data_files"] = data_files
    if local.is_dir() and not spec.streaming:
        kwargs["cache_dir"] = str(local_cache_dir(local))
    if spec.trust_remote_code:
        kwargs["trust_remote_code"] = True  # only when the spec asks for it
        logger.warning(
            "loading %s with trust_remote_code=True: its code runs on this machine", path
        )
    why = None if local.exists() else ensure_reachable_or_offline()
    try:
        loaded = datasets.load_dataset(
            path, name, **{k: v for k, v in kwargs.items() if v is not None}
        )
    except ConnectionError as err:  # the hub cannot be asked and the cache lacks the dataset
        raise unreachable(key, path, why or str(err), "dataset") from err
    except ValueError as err:
        if "corresponds to no data" not in str(err):
            raise
        raise ValueError(f"{key}: {str(local)!r} has no rows (a header only?); give data "
                         "with rows") from err  # fmt: skip
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def _check_data_files(folder: Path, data_files: Any, key: str) -> None:
    """Each local data file (or pattern) must match something under ``folder``, which
    ``datasets`` reads them from; name the first that does not, and where it was looked for."""
    if isinstance(data_files, Mapping):
        patterns = [p for v in data_files.values() for p in ([v] if isinstance(v, str) else v)]
    else:
        patterns = [data_files] if isinstance(data_files, str) else list(data_files)
    for pattern in patterns:
        if (
            "://" in pattern
            or any(folder.glob(pattern))
            or Path(pattern).is_absolute()
            and Path(pattern).exists()
        ):
            continue
        hint = (f"; {pattern!r} exists from the working folder {Path.cwd()}: give it relative to "
                f"{folder} or as an absolute path" if Path(pattern).exists() else "")  # fmt: skip
        raise FileNotFoundError(
            f"{key}: {pattern!r} matches no file in {folder} (data_files are read relative to "
            f"the dataset folder){hint}"
        )


def local_cache_dir(folder: Path) -> Path:
    """Where ``datasets`` caches a local folder's Arrow tables: a folder per path and content.

    For a folder whose README declares its configs, ``datasets`` keys the cache by the
    folder's name and card alone, so two folders of one name, or a folder rewritten in
    place, would load each other's rows; the path, sizes and mtimes of its files key it here.
    """
    cache = Path(datasets.config.HF_DATASETS_CACHE)
    return cache / "transferfuse-local" / local_fingerprint(folder)[:16]


def local_fingerprint(path: Path) -> str:
    """A digest of a local folder or file: its resolved path, and each file's name (relative
    to the folder), size and mtime; huggingface_hub's download metadata (``.cache``) is not
    data and is left out. The same path with new rows is other data."""
    import hashlib

    path = path.resolve()
    digest = hashlib.sha256(str(path).encode())
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        relative = file.relative_to(path) if file != path else Path(file.name)
        if ".cache" in relative.parts:
            continue
        stat = file.stat()
        digest.update(f"{relative}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


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
                f"data.domains.{domain}.path" if "path" in where else "data.path",
            )
            if "split" in where:
                one = type(one)({"train": one[where["split"]]})
            parts[domain] = _rename_splits(one, spec.split)
        dsd = _concat_domains(parts)
    else:
        dsd = _rename_splits(_load_one(spec, spec.path, spec.name, spec.data_files), spec.split)
        if spec.domain is None:
            dsd = type(dsd)({k: _add_domain(v, "default") for k, v in dsd.items()})
        else:
            _check_domain_column(dsd, spec.domain)
            if spec.domain != "domain":
                dsd = type(dsd)({k: v.rename_column(spec.domain, "domain") for k, v in dsd.items()})
    if spec.keep_domains and spec.streaming:  # unknown names only show as an empty stream
        dsd = type(dsd)({k: filter_domains(v, spec.keep_domains) for k, v in dsd.items()})
    elif spec.keep_domains:
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
        _check_not_empty(dsd, spec)
    if not spec.streaming and spec.label in dsd["train"].column_names:
        dsd = _check_float_labels(dsd, spec)
    _say_carved(dsd, spec)
    if spec.streaming:
        dsd = stream_splits(dsd, spec)
    else:
        dsd = make_splits(dsd, spec.seed, spec.validation_fraction, spec.test_fraction)
    wanted = [c for cols in spec.column_of().values() for c in cols] + [spec.label, "domain"]
    _check_columns(dsd, wanted, "spec")
    if spec.label_names:
        dsd = _encode_labels(dsd, spec)
    return dsd


def _check_not_empty(dsd: Any, spec: DatasetSpec) -> None:
    """Data with no rows (a header-only CSV, a filter that kept nothing) is named here,
    before a split or a tokenizer fails on it in other words."""
    if "train" in dsd and len(dsd["train"]) == 0:
        where = spec.path if not spec.domains else ", ".join(map(str, spec.domains))
        raise ValueError(
            f"data.path: {where!r} has no rows in its train split (a header only, or every "
            f"row filtered out); give data with rows (splits: "
            f"{ {k: len(v) for k, v in dsd.items()} })"
        )


def split_of(dsd: Any, name: str, key: str = "--split") -> Any:
    """The split ``name`` of ``dsd``; a name it lacks is an error naming the splits it has."""
    if name not in dsd:
        raise ValueError(f"{key}: the data has no split {name!r}; its splits: {sorted(dsd)}")
    return dsd[name]


def _check_domain_column(dsd: Any, column: str) -> None:
    """The column ``data.domain`` names must exist; say what to set when it does not."""
    have = dsd["train"].column_names if "train" in dsd else next(iter(dsd.values())).column_names
    if have is not None and column not in have:
        raise ValueError(
            f"data.domain is {column!r}, but the data has no such column (columns: {have}); "
            "set data.domain to the column that names each row's domain, or data.domain: null "
            "if all rows come from one domain"
        )


def _add_domain(ds: Any, name: str) -> Any:
    if is_streaming(ds):
        return with_column(ds, "domain", name, datasets.Value("string"))
    return ds.add_column("domain", [name] * len(ds))


def _check_float_labels(dsd: datasets.DatasetDict, spec: DatasetSpec) -> datasets.DatasetDict:
    """A label column a reader made float: a missing or infinite label is an error naming
    its row and value; whole-number floats become integers again (a CSV
    reader turns 0/1 into 0.0/1.0 once one label is empty; a regression head reads them as
    floats all the same)."""
    out = {}
    for split, ds in dsd.items():
        feature = ds.features.get(spec.label)
        if not isinstance(feature, datasets.Value) or not feature.dtype.startswith("float"):
            out[split] = ds
            continue
        values = np.asarray(ds[spec.label], dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise ValueError(
                f"split {split!r}, row {int(bad[0])}, column {spec.label!r} (data.label): the "
                f"label is {float(values[bad[0]])}; {len(bad)} row(s) have no finite label "
                f"(first: {bad[:5].tolist()}): fill or drop them"
            )
        if np.all(values == np.round(values)):
            ds = ds.cast_column(spec.label, datasets.Value("int64"))
        out[split] = ds
    return datasets.DatasetDict(out)


def _say_carved(dsd: Any, spec: DatasetSpec) -> None:
    """A split carved from the data says so: which, how much, and the keys that set it."""
    missing = [s for s in ("validation", "test") if s not in dsd]
    if missing:
        fractions = {"validation": spec.validation_fraction, "test": spec.test_fraction}
        carved = ", ".join(f"{s} {fractions[s]:.0%}" for s in missing)
        logger.warning(
            "%s has no %s split: carved %s of train per domain with seed %d "
            "(data.validation_fraction, data.test_fraction, data.seed)",
            spec.path, " or ".join(missing), carved, spec.seed,
        )  # fmt: skip


def stream_splits(
    dsd: datasets.IterableDatasetDict, spec: DatasetSpec
) -> datasets.IterableDatasetDict:
    """A stream's own train/validation/test, or, when it lacks validation or test, all
    three carved from train by a seeded hash of each row (``spec.row_key``, else the whole
    row): the same row always lands in the same split, with no pass over the data."""
    if "validation" in dsd and "test" in dsd:
        return datasets.IterableDatasetDict({s: dsd[s] for s in SPLITS})
    validation = 0.0 if "validation" in dsd else spec.validation_fraction  # only what is missing
    test = 0.0 if "test" in dsd else spec.test_fraction
    carved = hash_splits(dsd["train"], spec.seed, validation, test, spec.row_key)
    return datasets.IterableDatasetDict(
        {s: dsd[s] if s in dsd and s != "train" else carved[s] for s in SPLITS}
    )


def _encode_labels(dsd: datasets.DatasetDict, spec: DatasetSpec) -> datasets.DatasetDict:
    """Map string labels to class ids in ``label_names`` order; others raise or are dropped."""
    if spec.streaming:
        return _encode_stream_labels(dsd, spec)
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


def _encode_stream_labels(
    dsd: datasets.IterableDatasetDict, spec: DatasetSpec
) -> datasets.IterableDatasetDict:
    """``_encode_labels`` row by row as a stream is read."""
    names = list(spec.label_names or [])
    ids = {n: i for i, n in enumerate(names)}
    features = None
    out = {}
    for split, ds in dsd.items():
        if spec.other_labels == "drop":
            ds = ds.filter(lambda row: row[spec.label] in ids)

        def encode(row: dict[str, Any], index: int, split: str = split) -> dict[str, Any]:
            if row[spec.label] not in ids:
                raise ValueError(f"split {split!r}, row {index} of the stream, column {spec.label!r}: label "
                                 f"{row[spec.label]!r} is not one of {names} (set other_labels: drop to skip such rows)")  # fmt: skip
            return {spec.label: ids[row[spec.label]]}

        if ds.features:
            features = datasets.Features(
                {**ds.features, spec.label: datasets.ClassLabel(names=names)}
            )
        out[split] = ds.map(encode, with_indices=True, features=features)
    return datasets.IterableDatasetDict(out)


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
    return type(dsd)(out)


def _concat_domains(parts: Mapping[str, datasets.DatasetDict]) -> datasets.DatasetDict:
    out = {}
    for split in SPLITS:
        pieces = [_add_domain(ds[split], d) for d, ds in parts.items() if split in ds]
        if pieces:
            out[split] = datasets.concatenate_datasets(pieces)
    return type(next(iter(parts.values())))(out)


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
    """The rows of ``ds`` whose domain is in ``domains`` (a lazy filter for a stream)."""
    wanted = {domains} if isinstance(domains, str) else set(domains)
    if is_streaming(ds):
        return filter_domains(ds, wanted)
    have = set(ds.unique("domain"))
    if unknown := sorted(wanted - have):
        raise ValueError(f"unknown domains {unknown}; the data has {sorted(have)}")
    idx = [i for i, d in enumerate(Split(ds).column("domain")) if d in wanted]
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


def label_column(ds: Any, label: str | DatasetSpec | None = None) -> str:
    """The label column of ``ds``: ``label`` (a column name, or a spec's ``label``), else
    the dataset's only ClassLabel column, else a column named ``label``."""
    if isinstance(label, DatasetSpec):
        return label.label
    if label is not None:
        return label
    features = ds.features or {}
    classes = [c for c, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if len(classes) == 1:
        return classes[0]
    if "label" in features:
        return "label"
    raise ValueError(
        f"which column is the label? the dataset has {sorted(features)}, "
        f"{'ClassLabel columns ' + str(classes) if classes else 'no ClassLabel column'}; pass label=spec "
        "(the DatasetSpec) or label='COLUMN'"
    )


def k_shot(
    ds: datasets.Dataset, k: int, seed: int, label: str | DatasetSpec | None = None
) -> datasets.Dataset:
    """A stratified k-shot sample of ``ds`` (see ``k_shot_indices``) by its label column
    (``label_column``); of a stream, k rows per class from a bounded reservoir
    (``streaming.reservoir_k_shot``)."""
    label = label_column(ds, label)
    if is_streaming(ds):
        from .streaming import reservoir_k_shot

        return reservoir_k_shot(ds, k, seed, label)
    return ds.select(k_shot_indices(ds[label], k, seed))


def unlabelled(ds: datasets.Dataset, label: str | DatasetSpec | None = None) -> datasets.Dataset:
    """A view of ``ds`` without its label column (``label_column``), for unsupervised
    domain adaptation."""
    return ds.remove_columns([label_column(ds, label)])


def raw_media(ds: datasets.Dataset) -> datasets.Dataset:
    """Turn off decoding of Image/Audio columns: the encoders' processors decode, per sample,
    in the DataLoader workers, where a bad file can be handled by the error policy."""
    for col, feature in (ds.features or {}).items():
        if isinstance(feature, (datasets.Image, datasets.Audio)) and feature.decode:
            ds = ds.cast_column(col, type(feature)(decode=False))
    return ds


def export_dataset(dsd: datasets.DatasetDict, folder: str | os.PathLike[str], num_shards: int = 1,
                   replace: bool = False) -> Path:  # fmt: skip
    """Write ``dsd`` as a folder in the hub layout: ``num_shards`` parquet files per split
    (media embedded; a stream reads them in parallel) + README.md. A folder that holds a
    dataset is refused; with ``replace`` its README.md and parquet files go first (an earlier
    export's shards would mix with the new rows)."""
    folder, data = Path(folder), Path(folder) / "data"
    earlier = [p for p in (folder / "README.md", *sorted(data.glob("*.parquet"))) if p.is_file()]
    if earlier and not replace:
        raise FileExistsError(f"{folder} holds a dataset already ({', '.join(p.name for p in earlier[:4])}); "
                              "export to a new folder, or replace it (--overwrite, replace=True)")  # fmt: skip
    for path in earlier:
        path.unlink()
    data.mkdir(parents=True, exist_ok=True)
    configs = []
    for split, ds in dsd.items():
        ds = _embed(ds)
        for i in range(num_shards):
            name = f"{split}-{i:05d}-of-{num_shards:05d}.parquet"
            ds.shard(num_shards, i, contiguous=True).to_parquet(str(data / name))
        configs.append({"split": split, "path": f"data/{split}-*"})
    card = {"configs": [{"config_name": "default", "data_files": configs}]}
    header = f"---\n{yaml.safe_dump(card, sort_keys=False)}---\n"
    (folder / "README.md").write_text(header + "\nExported with `multimodal export-dataset`.\n")
    return folder


def _embed(ds: datasets.Dataset) -> datasets.Dataset:
    from datasets.table import embed_table_storage

    if not any(isinstance(f, (datasets.Image, datasets.Audio)) for f in ds.features.values()):
        return ds
    format_ = ds.format
    return ds.with_format("arrow").map(embed_table_storage, batched=True).with_format(**format_)
