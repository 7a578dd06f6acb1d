"""``train.batch_size: auto``: the largest batch whose training step fits in the device's
memory, found by a short probe before the fit, as accelerate's
``find_executable_batch_size`` does (it is what runs the search): one real step (forward,
backward and the optimizer's step, its state allocated) at ``max_batch_size`` rows, then
half as many after each out-of-memory error. With ``effective_batch_size`` the optimizer
still sees that many rows per update: the batch is the largest fitting divisor-friendly
share of it, and ``grad_accum`` makes up the rest."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import torch

from .config import AUTO, FitData, TrainConfig

logger = logging.getLogger(__name__)


def resolve_batch_size(model: Any, data: FitData, cfg: TrainConfig, device: torch.device,
                       precision: str) -> TrainConfig:  # fmt: skip
    """``cfg`` with a number for ``batch_size`` (and ``grad_accum``): as given, or probed on
    ``model`` (already on ``device``, its strategy applied) with the first training rows."""
    if cfg.batch_size != AUTO:
        if cfg.effective_batch_size is not None:
            raise ValueError(
                "train.effective_batch_size goes with batch_size: auto (else set grad_accum)"
            )
        return cfg
    from ..data.split import Split

    rows = Split(data.train).first(cfg.max_batch_size)
    start = min(cfg.max_batch_size, cfg.effective_batch_size or cfg.max_batch_size, len(rows))
    fits = probe_batch_size(lambda b: probe_step(model, rows, data, cfg, b, precision), start)
    batch, accum = fits, cfg.grad_accum
    if cfg.effective_batch_size is not None:
        accum = math.ceil(cfg.effective_batch_size / fits)
        batch = math.ceil(cfg.effective_batch_size / accum)
    logger.info("train.batch_size auto: %d rows fit on %s (probed from %d); batch %d x grad_accum %d",
                fits, device, start, batch, accum)  # fmt: skip
    return cfg.replace(batch_size=batch, grad_accum=accum)


def probe_batch_size(step: Any, start: int) -> int:
    """The largest of start, start/2, start/4 ... at which ``step(batch_size)`` runs without
    an out-of-memory error (accelerate's test of one)."""
    from accelerate.utils import find_executable_batch_size

    size = start

    def halve() -> int:
        nonlocal size
        size //= 2
        return size

    @find_executable_batch_size(starting_batch_size=start, reduce_batch_size_fn=halve)
    def search(batch_size: int) -> int:
        step(batch_size)
        return batch_size

    return search()


def probe_step(model: Any, rows: Any, data: FitData, cfg: TrainConfig, batch_size: int,
               precision: str) -> None:  # fmt: skip
    """One training step on ``batch_size`` rows that leaves the model as it was: the
    optimizer steps at learning rate 0 (its state is allocated, no weight moves), the
    buffers (BatchNorm statistics) are put back and the RNGs forked."""
    from ..data.collate import make_loader
    from ..modeling.model import move_to
    from .optim import build_optimizer
    from .performance import fused_optimizer

    device = next(model.parameters()).device
    loader = make_loader(rows.select(range(batch_size)), model, data.spec, "train",
                         batch_size=batch_size, shuffle=False, on_error=cfg.on_error)  # fmt: skip
    batch = move_to(next(iter(loader)), device)
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    optimizer = build_optimizer(model, cfg, fused_optimizer(cfg, device))
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            model.train()
            with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                loss = model(batch).loss
            loss.backward()
            optimizer.step()
    finally:
        optimizer.zero_grad(set_to_none=True)
        del optimizer
        with torch.no_grad():
            for name, value in model.named_buffers():
                value.copy_(buffers[name])
        model.train(was_training)
