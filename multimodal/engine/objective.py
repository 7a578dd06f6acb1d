"""The training objective: the one place where every loss term of a step is summed."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..core.config import check_keys
from ..modeling.attacks import perturb
from ..modeling.balance import Balancer
from ..modeling.model import Batch, ModelOutput


@dataclass
class LossTerms:
    """total: what is back-propagated; clean: the model's loss on the batch (task loss plus
    the fusion's auxiliary loss); adversarial and uda: the optional terms."""

    total: torch.Tensor
    clean: torch.Tensor
    adversarial: torch.Tensor | None = None
    uda: torch.Tensor | None = None
    regularize: torch.Tensor | None = None
    dg: torch.Tensor | None = None


class Objective:
    """total = (1 - w_adv) * clean + w_adv * adversarial    (adversarial training)
             + w_uda * uda                                  (a domain-adaptation objective)
             + balance                                      (a modality-balancing term)
             + regularize                                   (a pull toward the starting model)
    where ``dg`` (a domain-generalisation objective, ``modeling.dg``) replaces the task
    loss in ``clean`` by its loss over the batch's domains.

    ``model`` may be wrapped for distributed training; ``unwrapped`` is the bare module and
    ``uda`` the bare domain-adaptation objective. ``clean`` and ``adversarial`` are the
    model's loss (task + fusion auxiliary) on the batch and on its attacked copy; ``uda``
    compares the fused features of the source batch and of a target batch; ``balancer``
    (``modeling.balance``) sees every output and may add its own term; ``regularizer``
    (``modeling.regularize``) holds the model near where it started. ``augment`` augments
    each labelled batch before the forward pass (``train.augment``); ``views`` (weak,
    strong) are the two augmentations of each target batch an objective with ``views``
    compares (FixMatch): the weak one runs without gradient.
    """

    def __init__(
        self,
        model: Any,
        unwrapped: Any,
        adversarial: Mapping[str, Any] | None = None,
        uda: Any | None = None,
        uda_weight: float = 1.0,
        target_batches: Iterator[Batch] | None = None,
        forward: Callable[[Any, Batch], ModelOutput] | None = None,
        balancer: Balancer | None = None,
        regularizer: Any | None = None,
        augment: Callable[[Batch], Batch] | None = None,
        views: tuple[Callable[[Batch], Batch], Callable[[Batch], Batch]] | None = None,
        dg: Any | None = None,
    ) -> None:
        if (uda is None) != (target_batches is None):
            raise ValueError("a domain-adaptation objective needs target batches, and only it does")
        self.model, self.unwrapped, self.adversarial = model, unwrapped, adversarial
        self.uda, self.uda_weight, self.target_batches = uda, uda_weight, target_batches
        # how the model runs on a batch: cached batches hand in their encoder outputs
        self.forward = forward or (lambda model, batch: model(batch))
        self.balancer = balancer or Balancer()
        self.regularizer = regularizer
        self.augment, self.views, self.dg = augment, views, dg
        if uda is not None and getattr(uda, "views", False) and views is None:
            raise ValueError(f"{type(uda).__name__} compares two augmented views: pass views")

    def __call__(self, batch: Batch, progress: float) -> tuple[ModelOutput, LossTerms]:
        """The model's output on ``batch`` and the loss terms; ``progress`` in [0, 1] drives
        the domain-adaptation schedule (gradient reversal's coefficient)."""
        if self.augment is not None:
            batch = self.augment(batch)
        out = self.forward(self.model, batch)
        terms = LossTerms(total=out.loss, clean=out.loss)
        if self.dg is not None:  # the objective's loss over the domains replaces the task's
            terms.dg = self.dg(self.unwrapped, out, batch, progress)
            terms.total = terms.dg if out.aux_loss is None else terms.dg + out.aux_loss
        self.balancer.observe(self.unwrapped, out, batch)
        terms.balance = self.balancer.loss(out, batch)
        if self.adversarial is not None:
            # Attacks need input gradients only: the unwrapped model avoids a DDP sync.
            adv = perturb(self.unwrapped, batch, self.adversarial["method"],
                          self.adversarial["budgets"], steps=self.adversarial["steps"])  # fmt: skip
            terms.adversarial = self.model(adv).loss
            weight = self.adversarial["weight"]
            terms.total = (1 - weight) * terms.total + weight * terms.adversarial
        if self.uda is not None:
            terms.uda = self._uda_term(out, next(self.target_batches), progress)
            terms.total = terms.total + self.uda_weight * terms.uda
        if terms.balance is not None:
            terms.total = terms.total + terms.balance
        if self.regularizer is not None:
            terms.regularize = self.regularizer(self.unwrapped, out, batch)
            terms.total = terms.total + terms.regularize
        return out, terms

    def _uda_term(self, out: ModelOutput, target_batch: Batch, progress: float) -> torch.Tensor:
        if self.views is None:
            target = self.forward(self.model, target_batch)
            return self.uda(out.fused, target.fused, out.logits, target.logits, progress)
        weak, strong = self.views
        with torch.no_grad():
            weak_logits = self.forward(self.model, weak(target_batch)).logits
        target = self.forward(self.model, strong(target_batch))
        return self.uda(out.fused, target.fused, out.logits, target.logits, progress, weak_logits)


def adversarial_options(options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not options:
        return None
    check_keys(options, ("method", "budgets", "steps", "weight"), "train.adversarial")
    out = {"method": "fgsm", "budgets": None, "steps": 3, "weight": 0.5, **options}
    if out["method"] not in ("fgsm", "pgd"):
        raise ValueError(f"train.adversarial.method must be fgsm or pgd, got {out['method']!r}")
    if not 0.0 <= float(out["weight"]) <= 1.0:
        raise ValueError(f"train.adversarial.weight must be in [0, 1], got {out['weight']}")
    return out
