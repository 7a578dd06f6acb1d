"""Adversarial attacks: FGSM and PGD on every modality's continuous input.

Each encoder names the tensor an attack may perturb (``Encoder.attack_surface``): pixels,
waveform samples, numerical tabular values, or text token embeddings. Budgets are L-inf
radii per modality kind (or per modality key), in the unit the encoder states:

- image: [0, 1] pixel intensity (4/255 is a common budget);
- audio: waveform amplitude, full scale 1;
- tabular: standard deviations of each numerical column;
- text: standard deviations of the embedding table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .model import Batch

DEFAULT_BUDGETS = {"image": 4 / 255, "audio": 0.01, "tabular": 0.25, "text": 0.5}
METHODS = ("fgsm", "pgd")


def resolve_budgets(model: Any, budgets: Mapping[str, float] | None) -> dict[str, float]:
    """{modality key: radius} from radii keyed by modality key or by kind (image, audio...)."""
    budgets = dict(DEFAULT_BUDGETS if budgets is None else budgets)
    kinds = {enc.modality for enc in model.encoders.values()}
    unknown = sorted(set(budgets) - set(model.modalities) - kinds - set(DEFAULT_BUDGETS))
    if unknown:
        raise ValueError(
            f"budgets name {unknown}, which are neither modalities {model.modalities} nor kinds {sorted(kinds)}"
        )
    out = {}
    for m, enc in model.encoders.items():
        radius = budgets.get(m, budgets.get(enc.modality))
        if radius is not None:
            if radius < 0:
                raise ValueError(f"budget for {m!r} must be >= 0, got {radius}")
            out[m] = float(radius)
    return out


def perturb(
    model: Any,
    batch: Batch,
    method: str = "pgd",
    budgets: Mapping[str, float] | None = None,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = False,
) -> Batch:
    """``batch`` with each budgeted modality's continuous input moved to raise the task loss.

    FGSM takes one signed-gradient step of the full radius. PGD takes ``steps`` steps of
    ``step_size`` x radius (default 2.5 / steps, as Madry et al.), projecting back onto the
    budget, and keeps for each sample the iterate with the highest loss. The model's mode is
    left as it is; parameter gradients are not touched.
    """
    if method not in METHODS:
        raise ValueError(f"unknown attack {method!r}; choose from {list(METHODS)}")
    if batch.get("labels") is None:
        raise ValueError("an adversarial attack needs labels in the batch")
    radii = resolve_budgets(model, budgets)
    surfaces, eps = {}, {}
    for m, radius in radii.items():
        surface = model.encoders[m].attack_surface(batch[m])
        if surface is None or radius == 0:
            continue
        present = batch["present"][m].to(surface.value.device)
        mask = surface.mask & present.view(-1, *[1] * (surface.value.ndim - 1))
        surfaces[m] = surface._replace(mask=mask)
        eps[m] = (radius * surface.scale).to(surface.value.dtype)
    if not surfaces:
        return batch
    labels, task = batch["labels"], model.head.task

    def apply(deltas: Mapping[str, torch.Tensor]) -> Batch:
        out = dict(batch)
        for m, s in surfaces.items():
            value = s.value + deltas[m] * s.mask
            if s.low is not None:
                value = torch.maximum(torch.minimum(value, s.high), s.low)
            out[m] = {**batch[m], s.key: value}
        return out

    def losses(deltas: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        leaves = {m: d.detach().requires_grad_(True) for m, d in deltas.items()}
        with torch.enable_grad():
            logits = model({k: v for k, v in apply(leaves).items() if k != "labels"}).logits
            loss = task.per_sample_loss(logits, labels)
            grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
        return loss.detach(), list(grads)

    zero = {m: torch.zeros_like(s.value) for m, s in surfaces.items()}
    if method == "fgsm":
        _, grads = losses(zero)
        deltas = {m: eps[m] * g.sign() for (m, g) in zip(surfaces, grads, strict=True)}
        return detached(apply(deltas))

    alpha = step_size if step_size is not None else 2.5 / max(steps, 1)
    deltas = {
        m: (torch.rand_like(z) * 2 - 1) * eps[m] if random_start else z for m, z in zero.items()
    }
    best_loss = torch.full((len(labels),), -float("inf"), device=labels.device)
    best = {m: d.clone() for m, d in deltas.items()}
    for step in range(steps + 1):
        loss, grads = losses(deltas)
        better = loss > best_loss
        best_loss = torch.where(better, loss, best_loss)
        for m in deltas:
            shape = (-1, *[1] * (deltas[m].ndim - 1))
            best[m] = torch.where(better.view(shape), deltas[m], best[m])
        if step == steps:
            break
        for m, g in zip(surfaces, grads, strict=True):
            stepped = deltas[m] + alpha * eps[m] * g.sign()
            deltas[m] = torch.maximum(torch.minimum(stepped, eps[m]), -eps[m])
    return detached(apply(best))


def detached(batch: Batch) -> Batch:
    return {
        k: {n: t.detach() for n, t in v.items()}
        if isinstance(v, dict) and all(isinstance(t, torch.Tensor) for t in v.values())
        else v
        for k, v in batch.items()
    }
