"""Evaluation: predictions over a loader, gathered across processes, and their metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import datasets
import torch
from accelerate import Accelerator, DataLoaderConfiguration

from ..data.collate import make_loader
from ..data.spec import DatasetSpec
from ..data.split import Split
from ..modeling.model import eval_mode, move_to

Forward = Callable[[Any, Any], Any]


# Each process reads its own batches, a stream included (accelerate would otherwise have
# the main process read a stream and send every batch to the others).
# With pinned loader memory, batches go to the device without blocking.
def loader_config(non_blocking: bool = False) -> DataLoaderConfiguration:
    return DataLoaderConfiguration(dispatch_batches=False, non_blocking=non_blocking)


def _call(model: Any, batch: Any) -> Any:
    return model(batch)


@torch.no_grad()
def predict_loader(
    model: Any, loader: Any, accelerator: Accelerator, forward: Forward | None = None,
    bare: Any = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """Logits and labels over a whole (prepared) loader, gathered across processes.

    ``forward(model, batch)`` runs the model on a batch (default ``model(batch)``);
    ``bare``: the unwrapped model, when the caller has it.
    """
    forward = forward or _call
    model.training = False  # a wrapper (DDP), if any
    eval_mode(bare if bare is not None else accelerator.unwrap_model(model))
    logits, labels = [], []
    for batch in loader:
        logits.append(accelerator.gather_for_metrics(forward(model, batch).logits.float()))
        if "labels" in batch:
            labels.append(accelerator.gather_for_metrics(batch["labels"]))
    return torch.cat(logits), (torch.cat(labels) if labels else None)


def eval_metrics(
    model: Any, loader: Any, accelerator: Accelerator, forward: Forward | None = None,
    bare: Any = None, ranking: bool = True,
) -> dict[str, float]:  # fmt: skip
    """Task loss (without auxiliary losses) and metrics on the gathered predictions.
    ``bare``: the unwrapped model, when the caller has it; ``ranking``: ``Task.metrics``'."""
    bare = bare if bare is not None else accelerator.unwrap_model(model)
    logits, labels = predict_loader(model, loader, accelerator, forward, bare)
    if labels is None:
        return {}
    task = bare.head.task
    return {"loss": task.loss(logits, labels).item(), **task.metrics(logits, labels, ranking)}


def evaluate(
    model: Any,
    ds: datasets.Dataset,
    spec: DatasetSpec,
    batch_size: int = 64,
    num_workers: int = 0,
    on_error: str = "raise",
    drop_modalities: Sequence[str] = (),
    corruption: tuple[str, str, int] | None = None,
    cached: bool = False,
    ranking: bool = True,
) -> dict[str, float]:
    """Loss and metrics of ``model`` on ``ds`` (every process gathers; all get the same numbers).

    ``drop_modalities`` are made absent for every sample (missing-modality evaluation);
    ``corruption`` = (modality, name, severity) corrupts that modality's raw values.
    ``cached``: read the encoder outputs from the feature store (``engine.cache.FEATURES``),
    computing and keeping them if no model with the same encoder weights has yet, so later
    models that share those encoders (frozen during training) skip them. ``ranking``:
    ``Task.metrics``' (False leaves out AUROC, most of a small split's evaluation time).
    """
    accelerator = Accelerator(dataloader_config=loader_config())
    unknown = sorted(set(drop_modalities) - set(model.modalities))
    if unknown:
        raise ValueError(f"cannot drop {unknown}: the model's modalities are {model.modalities}")
    if cached and not drop_modalities and corruption is None and not Split(ds).streamed:
        from .config import TrainConfig
        from .loaders import cached_forward, cached_loader, split_features

        cfg = TrainConfig(batch_size=batch_size, num_workers=num_workers, on_error=on_error)
        model.to(accelerator.device)
        loader = cached_loader(model, split_features(model, ds, spec, cfg), cfg, train=False)
        return eval_metrics(model, accelerator.prepare(loader), accelerator, cached_forward,
                            ranking=ranking)  # fmt: skip
    loader = make_loader(
        ds, model, spec, "eval", batch_size=batch_size, num_workers=num_workers, on_error=on_error,
        modality_dropout={m: 1.0 for m in drop_modalities}, corruption=corruption,
    )  # fmt: skip
    model.to(accelerator.device)
    loader = accelerator.prepare(loader)
    return eval_metrics(model, loader, accelerator, ranking=ranking)


@torch.no_grad()
def predict(
    model: Any, ds: datasets.Dataset, spec: DatasetSpec, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits [N, C] and labels (None without a label column) of every row of ``ds``, in row
    order, on the CPU: ``predict_loader`` over the split's loader."""
    accelerator = Accelerator(dataloader_config=loader_config())
    model.to(accelerator.device)
    loader = accelerator.prepare(make_loader(ds, model, spec, "eval", batch_size=batch_size))
    logits, labels = predict_loader(model, loader, accelerator)
    return logits.cpu(), (labels.cpu() if labels is not None else None)


def eval_batches(
    model: Any, ds: datasets.Dataset, spec: DatasetSpec, batch_size: int = 64
) -> Iterator[Any]:
    """Every batch of ``ds`` on the model's device, with the model in eval mode while they
    are read (its mode comes back after): the loop an analysis that needs more than the
    logits (encoder outputs, input gradients) runs its own steps in."""
    loader = make_loader(ds, model, spec, "eval", batch_size=batch_size)
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            yield move_to(batch, model.device)
    finally:
        model.train(was_training)


def model_view(model: Any, ds: datasets.Dataset, spec: DatasetSpec, cfg: Any) -> tuple[Any, Any]:
    """``model``'s class probabilities and fused features on every row of ``ds``, in row
    order, in eval mode; the encoder outputs come from (and stay in) the feature store
    (``cfg``: the ``TrainConfig`` whose batch size and cache settings the pass uses)."""
    from .loaders import cached_forward, cached_loader, split_features

    loader = cached_loader(model, split_features(model, ds, spec, cfg), cfg, train=False)
    eval_mode(model)
    probs, fused = [], []
    with torch.no_grad():
        for batch in loader:
            out = cached_forward(model, move_to(batch, model.device))
            probs.append(model.head.task.probabilities(out.logits.float()).cpu())
            fused.append(out.fused.float().cpu())
    return torch.cat(probs).numpy(), torch.cat(fused).numpy()
