"""The loaders ``fit`` iterates: raw inputs through the collator, or cached encoder outputs
when every encoder is frozen. This is the one place that decides between them."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch

from ..data.collate import EpochSampler, make_loader
from ..data.spec import DatasetSpec
from ..data.split import Split
from ..modeling.model import Batch, Encoded, ModelOutput, eval_mode
from ..modeling.uda import uda_views
from .cache import FEATURES, CachedCollator, CachedFeatures
from .config import FitData, TrainConfig
from .domains import needs_domains, row_domain_ids, train_sampler

logger = logging.getLogger(__name__)


def _loader(
    model: Any,
    ds: datasets.Dataset,
    spec: DatasetSpec,
    split: str,
    cfg: TrainConfig,
    train: bool,
    domains: list[str],
    pin_memory: bool = False,
    drop_last: bool = False,
    sampler: Any = None,
) -> Any:
    return make_loader(
        ds, model, spec, split,
        batch_size=cfg.batch_size if train else (cfg.eval_batch_size or cfg.batch_size),
        shuffle=train, num_workers=cfg.num_workers, seed=cfg.seed, on_error=cfg.on_error,
        modality_dropout=cfg.modality_dropout if train else None, domains=domains,
        pin_memory=pin_memory, drop_last=drop_last, sampler=sampler,
    )  # fmt: skip


def cached_loader(
    model: Any, dataset: CachedFeatures, cfg: TrainConfig, train: bool,
    pin_memory: bool = False, drop_last: bool = False, domain_ids: torch.Tensor | None = None,
) -> Any:  # fmt: skip
    """Batches of cached encoder outputs, in the order the raw loader would give them;
    ``domain_ids``: each row's domain in the fit (training on several domains)."""
    dims = {m: e.out_dim for m, e in model.encoders.items()}
    dropout = cfg.modality_dropout if train else None
    if isinstance(dropout, (int, float)):
        dropout = {m: float(dropout) for m in model.modalities}
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size if train else (cfg.eval_batch_size or cfg.batch_size),
        sampler=train_sampler(cfg, domain_ids, len(dataset))
        if train
        else EpochSampler(len(dataset), cfg.seed, False),
        collate_fn=CachedCollator(dataset, dims, dropout, cfg.seed, domain_ids),
        generator=torch.Generator().manual_seed(cfg.seed),
        pin_memory=pin_memory,
        drop_last=drop_last,
    )


def split_features(
    model: Any, ds: datasets.Dataset, spec: DatasetSpec, cfg: TrainConfig,
    disk_dir: Path | None = None,
) -> CachedFeatures:  # fmt: skip
    """``FEATURES``' encoder outputs of every row of ``ds`` (computed now if not stored).
    Their batches carry domain id -1: the features serve every stage, whatever domains it
    trains on, and no objective reads the ids (UDA tells source from target by loader)."""
    eval_mode(model)
    return FEATURES.get(
        model, ds, spec, cfg.on_error,
        lambda processor, columns: _loader(processor, ds, columns, "features", cfg, False, []),
        disk_dir if cfg.feature_cache == "disk" else None,
    )  # fmt: skip


@dataclass
class Loaders:
    """train: shuffled source batches; evaluation: validation batches (or None); target:
    unlabelled target batches for a domain-adaptation objective (or None)."""

    train: Any
    evaluation: Any | None
    target: Any | None
    use_cache: bool
    train_batches: int  # per epoch, before sharding over processes
    domains: list[str] = dataclasses.field(default_factory=list)  # train's and validation's

    def forward(self, model: Any, batch: Batch) -> ModelOutput:
        """``model`` on a batch of these loaders; a cached batch hands in its encoder outputs."""
        return cached_forward(model, batch) if self.use_cache else model(batch)


def cached_forward(model: Any, batch: Batch) -> ModelOutput:
    """``model`` on a batch of cached encoder outputs (``cached_loader``)."""
    return model(batch, Encoded(**batch["encoded"]))


def use_feature_cache(cfg: TrainConfig, frozen: list[str], num_encoders: int) -> bool:
    """Cached encoder outputs serve only when every encoder is frozen and nothing perturbs
    the raw inputs (adversarial training attacks them; augmentation, ``train.augment`` or an
    objective's views, changes them every step)."""
    perturbed = bool(cfg.adversarial) or cfg.augment != "none" or uda_views(cfg.uda)
    return cfg.feature_cache != "off" and len(frozen) == num_encoders and not perturbed


def build_loaders(
    model: Any, data: FitData, cfg: TrainConfig, use_cache: bool, run_dir: Path | None,
    main_process_first: Any, pin_memory: bool = False, frozen: Sequence[str] = (),
) -> Loaders:  # fmt: skip
    """Raw or cached loaders for the train, validation and unlabelled target rows.

    ``main_process_first`` is accelerate's context manager: the main process writes a disk
    cache before the others read it. ``pin_memory``: batches in page-locked memory.
    ``frozen``: the encoders that stay in eval mode (their BatchNorm does not train).
    """
    train_rows, domains = _rows_and_domains(data)
    cache_dir = run_dir / "feature_cache" if (use_cache and run_dir) else None

    def loader(ds: datasets.Dataset, split: str, train: bool) -> Any:
        indices = data.train_indices if split == "train" else None
        if indices is not None and not use_cache:
            ds = ds.select(indices)
        rows = Split(ds).known_size if indices is None else len(indices)
        drop = train and drop_last(cfg, model, split, rows, frozen)
        ids = None
        if split == "train" and needs_domains(cfg):
            ids = row_domain_ids(ds, domains)  # the raw path's ds holds only the indices' rows
            ids = ids[torch.as_tensor(indices)] if use_cache and indices is not None else ids
        if not use_cache:
            sampler = train_sampler(cfg, ids, len(ds)) if ids is not None else None
            return _loader(
                model, ds, data.spec, split, cfg, train, domains, pin_memory, drop, sampler
            )
        features = split_features(model, ds, data.spec, cfg, cache_dir)
        if indices is not None:
            features = features.subset(indices)
        return cached_loader(model, features, cfg, train, pin_memory, drop, ids)

    if use_cache:
        eval_mode(model)
    with main_process_first() if use_cache else contextlib.nullcontext():
        train = loader(data.train, "train", True)
        evaluation = (
            loader(data.validation, "validation", False) if data.validation is not None else None
        )
    target = None
    if cfg.uda != "none":
        if data.unlabelled is None:
            raise ValueError(
                f"uda={cfg.uda!r} needs FitData.unlabelled: the target rows to adapt to"
            )
        unlabelled = data.unlabelled
        if data.spec.label in unlabelled.column_names:
            unlabelled = unlabelled.remove_columns([data.spec.label])  # never seen by the objective
        target = loader(unlabelled, "unlabelled", True)
    batches = (train_rows // cfg.batch_size if train.drop_last else math.ceil(train_rows / cfg.batch_size))  # fmt: skip
    return Loaders(train, evaluation, target, use_cache, batches, domains)


def drop_last(
    cfg: TrainConfig, model: Any, split: str, rows: int | None, frozen: Sequence[str] = ()
) -> bool:
    """Whether the ``split`` training loader leaves out its incomplete last batch:
    ``cfg.drop_last`` when set, else only a last batch of one row (of ``rows``, when
    known: a stream's batches split over workers and processes) when BatchNorm trains
    outside the ``frozen`` encoders: it cannot normalise a single row."""
    if cfg.drop_last is not None:
        return cfg.drop_last
    if rows is None or rows <= cfg.batch_size or rows % cfg.batch_size != 1:
        return False
    in_eval = {id(m) for name in frozen for m in model.encoders[name].modules()}
    batchnorm = torch.nn.modules.batchnorm._BatchNorm
    if not any(isinstance(m, batchnorm) and id(m) not in in_eval for m in model.modules()):
        return False
    logger.info(
        "%s: %d rows in batches of %d leave one row in the last batch, which BatchNorm cannot "
        "train on; it is left out of each epoch (a different row each shuffle). "
        "train.drop_last sets this.", split, rows, cfg.batch_size,
    )  # fmt: skip
    return True


def _rows_and_domains(data: FitData) -> tuple[int, list[str]]:
    """Training rows and the domains of train and validation; a stream is scanned once
    for what ``data`` does not say."""
    train = Split(data.train)
    if not train.streamed:
        if data.train_indices is not None:
            train = Split(data.train.select(data.train_indices))
        domains = set(train.domains())
        domains |= set(Split(data.validation).domains()) if data.validation is not None else set()
        return train.size(), sorted(domains)
    rows, domains = data.train_rows, data.domains
    if rows is None or domains is None:
        counted, seen = train.size_and_domains()
        if data.validation is not None and domains is None:
            seen = sorted(set(seen) | set(Split(data.validation).domains()))
        rows, domains = rows if rows is not None else counted, domains or seen
    if rows == 0:
        raise ValueError(
            "the streamed training split has no rows (check the domains and split fractions)"
        )
    return rows, list(domains)


def reference_batches(
    model: Any, data: FitData, cfg: TrainConfig, use_cache: bool, rows: int = 256
) -> Any:
    """Single-row batches of up to ``rows`` rows of ``data.reference`` (a seeded sample), as
    the training loaders give them: what a regularizer measures importance on."""
    ds = data.reference
    if ds is None:
        return None
    picked = sorted(
        torch.randperm(len(ds), generator=torch.Generator().manual_seed(cfg.seed))[:rows].tolist()
    )
    one = dataclasses.replace(cfg, batch_size=1, eval_batch_size=1, modality_dropout=None)
    if use_cache:
        return cached_loader(
            model, split_features(model, ds, data.spec, one).subset(picked), one, False
        )
    return _loader(model, ds.select(picked), data.spec, "reference", one, False, [])


def lockstep(loader: Any, batches: int) -> Any:
    """Exactly ``batches`` batches of a streamed loader, starting it over if it runs out:
    processes that read different shards of a stream take the same number of steps, so
    none waits forever in a gradient all-reduce the others never join."""
    given = 0
    while given < batches:
        before = given
        for batch in loader:
            yield batch
            given += 1
            if given == batches:
                return
        if given == before:
            raise ValueError("the streamed training split gave this process no rows")


def target_stream(loader: Any, sampler: Any, start_step: int) -> Any:
    """Unlabelled target batches forever, one per source batch, in an order fixed by the
    batch count, so a resumed run draws the same target batches."""
    n = len(loader)
    epoch, skip = divmod(start_step, n)
    while True:
        for each in (loader, sampler):
            if hasattr(each, "set_epoch"):
                each.set_epoch(epoch)
        batches = iter(loader)
        for _ in range(skip):
            next(batches)
        yield from batches
        epoch, skip = epoch + 1, 0
