"""Test-time adaptation without labels: what changes in a model and how.

- ``bn_adapt`` (Schneider et al. 2020; Li et al. 2016, AdaBN): every BatchNorm layer's
  running statistics are re-estimated on target inputs (a cumulative average over them);
  no weight changes.
- ``tent`` (Wang et al. 2021; the reference is DequanWang/tent): the prediction entropy is
  minimised on target inputs, updating only the normalisation layers' affine parameters
  (BatchNorm, LayerNorm, GroupNorm); BatchNorm then normalises with each batch's own
  statistics, in training and at evaluation, as the reference does. One deviation: the
  reference puts the whole model in train mode; here only the normalisation layers are,
  so dropout stays off (the reference's networks have none).

A network without normalisation layers (the tabular MLP) is not adapted by either; which
parameters and statistics changed is returned, per top-level part, to be reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _part(name: str) -> str:
    """``encoders.image`` for ``encoders.image.model.bn1``; ``fusion``, ``head`` otherwise."""
    pieces = name.split(".")
    return ".".join(pieces[:2]) if pieces[0] == "encoders" else pieces[0]


def adapted_parts(model: nn.Module, kinds: tuple[type, ...]) -> dict[str, int]:
    """{part: how many layers of ``kinds`` it has}, for every encoder, the fusion and the head."""
    parts = {f"encoders.{m}": 0 for m in getattr(model, "encoders", {})} | {"fusion": 0, "head": 0}
    for name, module in model.named_modules():
        if isinstance(module, kinds) and name:
            parts[_part(name)] = parts.get(_part(name), 0) + 1
    return parts


@torch.no_grad()
def bn_adapt(
    model: nn.Module, batches: Iterable[Any], forward: Callable[[Any, Any], Any]
) -> dict[str, int]:
    """Re-estimate every BatchNorm's running mean and variance on ``batches`` (a cumulative
    average); the model ends in eval mode. Returns the BatchNorm layers per part."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative: every batch counts the same
        norm.train()
    for batch in batches:
        forward(model, batch)
    model.eval()
    return adapted_parts(model, (nn.modules.batchnorm._BatchNorm,))


def configure_tent(model: nn.Module) -> list[nn.Parameter]:
    """Freeze everything but the normalisation layers' affine parameters, which are
    returned; BatchNorm layers drop their running statistics and use batch statistics."""
    model.requires_grad_(False)
    model.eval()
    params = []
    for module in model.modules():
        if isinstance(module, NORMS):
            module.train()
            for p in (module.weight, module.bias):
                if p is not None:
                    p.requires_grad_(True)
                    params.append(p)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.track_running_stats = False
                module.running_mean, module.running_var = None, None
    return params


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Each row's prediction entropy."""
    return -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)


def tent(
    model: nn.Module, batches: Iterable[Any], forward: Callable[[Any, Any], Any], lr: float = 1e-3
) -> dict[str, int]:
    """One pass over ``batches``: each batch's mean prediction entropy minimised by Adam
    (lr 1e-3, as the reference's CIFAR setting) on the normalisation affine parameters.
    Returns the normalisation layers adapted per part (0: that part is not adapted)."""
    model.head.task.require_classes("tent (it minimises the entropy of the class probabilities)")
    params = configure_tent(model)
    if not params:
        raise ValueError("tent needs normalisation layers to adapt; this model has none")
    optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    for batch in batches:
        loss = softmax_entropy(forward(model, batch).logits.float()).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return adapted_parts(model, NORMS)
