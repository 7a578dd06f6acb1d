"""The engine's speed switches: torch.compile, channels_last, pinned memory and fused
optimizer kernels. Each is a ``TrainConfig`` key; the ones that change numerics on CPU
(compile, channels_last) are off unless asked for, and the others default to on only
where they help (a CUDA device)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from .config import TrainConfig

logger = logging.getLogger(__name__)


def on_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def pin_memory(cfg: TrainConfig, device: torch.device | str) -> bool:
    """Page-locked loader batches, copied to the device without blocking: ``cfg.pin_memory``,
    else on for CUDA."""
    return cfg.pin_memory if cfg.pin_memory is not None else on_cuda(device)


def fused_optimizer(cfg: TrainConfig, device: torch.device | str) -> bool:
    """One fused kernel for the whole optimizer step: ``cfg.fused_optimizer``, else on for
    CUDA (torch's default there is foreach)."""
    return cfg.fused_optimizer if cfg.fused_optimizer is not None else on_cuda(device)


def compiled_modules(model: Any) -> list[torch.nn.Module]:
    """What ``train.compile`` compiles: each encoder and the fusion (the head is one layer)."""
    return [*model.encoders.values(), model.fusion]


def apply_speedups(model: Any, cfg: TrainConfig) -> list[str]:
    """channels_last and torch.compile, in place (state-dict keys do not change); returns
    what was applied, for the log. ``undo_speedups`` hands back a plain eager model."""
    applied = []
    if cfg.channels_last:
        names = [m for m, enc in model.encoders.items() if enc.use_channels_last()]
        if not names:
            logger.warning(
                "train.channels_last: no encoder of this model has convolutions over images"
            )
        applied += [f"channels_last({m})" for m in names]
    if cfg.compile:
        for module in compiled_modules(model):
            module.compile(backend=cfg.compile_backend, mode=cfg.compile_mode)
        applied.append(f"compile({cfg.compile_backend}, mode={cfg.compile_mode or 'default'})")
    return applied


def undo_speedups(model: Any) -> None:
    """Eager forward calls again: what ``fit`` returns is exported and served as is."""
    for module in compiled_modules(model):
        module._compiled_call_impl = None  # what nn.Module.compile sets
