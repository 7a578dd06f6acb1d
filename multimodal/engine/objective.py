"""The training objective: the one place where every loss term of a step is summed."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..modeling.attacks import perturb
from ..modeling.model import Batch, ModelOutput


@dataclass
class LossTerms:
    """total: what is back-propagated; clean: the model's loss on the batch (task loss plus
    the fusion's auxiliary loss); adversarial and adaptation: the optional terms."""

    total: torch.Tensor
    clean: torch.Tensor
    adversarial: torch.Tensor | None = None
    adaptation: torch.Tensor | None = None


class Objective:
    """total = (1 - w_adv) * clean + w_adv * adversarial    (adversarial training)
             + w_adapt * adaptation                        (a domain-adaptation objective)

    ``model`` may be wrapped for distributed training; ``unwrapped`` is the bare module, and
    ``adapter`` the bare adaptation objective. ``clean`` and ``adversarial`` are the model's loss (task + fusion auxiliary) on the batch
    and on its attacked copy; ``adaptation`` compares the fused source and target features.
    """

    def __init__(
        self,
        model: Any,
        unwrapped: Any,
        adversarial: Mapping[str, Any] | None = None,
        adapter: Any | None = None,
        adapt_weight: float = 1.0,
        target_batches: Iterator[Batch] | None = None,
    ) -> None:
        if (adapter is None) != (target_batches is None):
            raise ValueError("an adaptation objective needs target batches, and only it does")
        self.model, self.unwrapped, self.adversarial = model, unwrapped, adversarial
        self.adapter, self.adapt_weight, self.target_batches = adapter, adapt_weight, target_batches

    def __call__(self, batch: Batch, progress: float) -> tuple[ModelOutput, LossTerms]:
        """The model's output on ``batch`` and the loss terms; ``progress`` in [0, 1] drives
        the adaptation schedule (gradient reversal's coefficient)."""
        out = self.model(batch)
        terms = LossTerms(total=out.loss, clean=out.loss)
        if self.adversarial is not None:
            # Attacks need input gradients only: the unwrapped model avoids a DDP sync.
            adv = perturb(self.unwrapped, batch, self.adversarial["method"],
                          self.adversarial["budgets"], steps=self.adversarial["steps"])  # fmt: skip
            terms.adversarial = self.model(adv).loss
            weight = self.adversarial["weight"]
            terms.total = (1 - weight) * terms.total + weight * terms.adversarial
        if self.adapter is not None:
            target = self.model(next(self.target_batches))
            terms.adaptation = self.adapter(
                out.fused, target.fused, out.logits, target.logits, progress
            )
            terms.total = terms.total + self.adapt_weight * terms.adaptation
        return out, terms
