"""The engine's speed switches: bf16 autocast, torch.compile, channels_last, pinned memory
and fused optimizer kernels. Each is a ``TrainConfig`` key. Left unset, each is on where
it helps without changing CPU numerics: autocast, compile, channels_last and pinned memory
on a CUDA device, the fused optimizer wherever torch has its kernel."""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch

from .config import TrainConfig

logger = logging.getLogger(__name__)


def on_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def fit_device() -> str:
    """Where a fit's Accelerator will put the model: CUDA when there is one, unless
    ACCELERATE_USE_CPU says otherwise. Read from the environment, as accelerate does, so
    that nothing builds accelerate's process state before the Accelerator (built first
    without the launcher's settings, it would not see the other processes)."""
    from accelerate.utils import parse_flag_from_env

    return (
        "cuda"
        if torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")
        else "cpu"
    )


def precision(cfg: TrainConfig, device: torch.device | str) -> str:
    """``cfg.mixed_precision``; "auto": bf16 on a CUDA device that supports it (never under
    train.dp, which trains in fp32), else "no"."""
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    bf16 = on_cuda(device) and torch.cuda.is_bf16_supported()
    return "bf16" if bf16 and not cfg.private else "no"


def compile_on(cfg: TrainConfig, device: torch.device | str) -> bool:
    return cfg.compile if cfg.compile is not None else on_cuda(device)


def channels_last_on(cfg: TrainConfig, device: torch.device | str) -> bool:
    return cfg.channels_last if cfg.channels_last is not None else on_cuda(device)


def pin_memory(cfg: TrainConfig, device: torch.device | str) -> bool:
    """Page-locked loader batches, copied to the device without blocking: ``cfg.pin_memory``,
    else on for CUDA."""
    return cfg.pin_memory if cfg.pin_memory is not None else on_cuda(device)


def fused_optimizer(cfg: TrainConfig, device: torch.device | str) -> bool:
    """One fused kernel for the whole optimizer step: ``cfg.fused_optimizer``, else on
    wherever torch has the kernel (CPU and CUDA among them). On 2 CPU cores it steps a
    23M-parameter AdamW 3-10x faster than foreach, which torch picks by default on GPUs
    only; the two agree to float32 rounding, not bit for bit."""
    if cfg.fused_optimizer is not None:
        return cfg.fused_optimizer
    return _has_fused_kernel(torch.device(device).type)


@functools.cache
def _has_fused_kernel(device_type: str) -> bool:
    """Whether torch's AdamW takes ``fused=True`` for a tensor on this kind of device (it
    checks the device when built; CUDA has had the kernel since torch 2.0)."""
    if device_type == "cuda":
        return True
    try:
        torch.optim.AdamW([torch.zeros(1, device=device_type, requires_grad=True)], fused=True)
    except RuntimeError:
        return False
    return True


def compiled_modules(model: Any) -> list[torch.nn.Module]:
    """What ``train.compile`` compiles: each encoder and the fusion (the head is one layer)."""
    return [*model.encoders.values(), model.fusion]


def apply_speedups(model: Any, cfg: TrainConfig, device: torch.device | str) -> list[str]:
    """channels_last and torch.compile, in place (state-dict keys do not change); returns
    what was applied, for the log. ``undo_speedups`` hands back a plain eager model."""
    applied = []
    if channels_last_on(cfg, device):
        names = [m for m, enc in model.encoders.items() if enc.use_channels_last()]
        if not names and cfg.channels_last:
            logger.warning(
                "train.channels_last: no encoder of this model has convolutions over images"
            )
        applied += [f"channels_last({m})" for m in names]
    if compile_on(cfg, device):
        for module in compiled_modules(model):
            module.compile(backend=cfg.compile_backend, mode=cfg.compile_mode)
        applied.append(f"compile({cfg.compile_backend}, mode={cfg.compile_mode or 'default'})")
    return applied


def undo_speedups(model: Any) -> None:
    """Eager forward calls again: what ``fit`` returns is exported and served as is."""
    for module in compiled_modules(model):
        module._compiled_call_impl = None  # what nn.Module.compile sets


def allow_precision(mixed_precision: str) -> None:
    """accelerate keeps one AcceleratorState per process and refuses a second precision; fits in
    one process (transfer stages, notebooks) may differ, so reset that state (not the
    distributed one) when the precision changes."""
    from accelerate.state import AcceleratorState

    if (
        AcceleratorState._shared_state
        and str(AcceleratorState._shared_state.get("_mixed_precision")) != mixed_precision
    ):
        AcceleratorState._reset_state(reset_partial_state=False)
