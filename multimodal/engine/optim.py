"""Optimizer parameter groups: encoder vs fusion/head learning rates, layer-wise decay."""

from __future__ import annotations

from typing import Any

import torch

from .config import TrainConfig


def param_groups(model: Any, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW/SGD groups: encoder vs fusion/head lr, layer-wise decay, no decay on norms/biases."""
    encoder_lr = cfg.encoder_lr if cfg.encoder_lr is not None else cfg.lr
    scale: dict[int, float] = {}
    encoder_params: set[int] = set()
    for enc in model.encoders.values():
        blocks = enc.layer_blocks()
        for p in enc.parameters():
            encoder_params.add(id(p))
            scale[id(p)] = (
                (cfg.layer_decay ** (len(blocks) + 1)) if cfg.layer_decay and blocks else 1.0
            )
        if cfg.layer_decay:
            for i, block in enumerate(blocks):
                for p in block.parameters():
                    scale[id(p)] = cfg.layer_decay ** (len(blocks) - i)
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        lr = encoder_lr * scale[id(p)] if id(p) in encoder_params else cfg.lr
        decay = 0.0 if p.ndim <= 1 else cfg.weight_decay  # norms and biases
        groups.setdefault((lr, decay), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def build_optimizer(model: Any, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW or SGD over ``param_groups``: one fused kernel per step with ``fused``, else
    foreach (one multi-tensor update per group; torch picks it by default on GPUs only)."""
    groups = param_groups(model, cfg)
    kernels = {"fused": True} if fused else {"foreach": True}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, **kernels)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **kernels)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {cfg.optimizer!r}")
