"""Domain-generalisation objectives: one fit on several labelled source domains that should
hold on a domain it never sees (``train.dg``).

Each objective replaces the task loss of a batch whose rows carry their source domain
(``batch["domain"]``, the index of the row's domain among the fit's domains); the fusion's
auxiliary loss is added as usual. They follow DomainBed's ``algorithms.py`` (Gulrajani and
Lopez-Paz, ICLR 2021; facebookresearch/DomainBed at b93c22a, and its
hparams_registry.py defaults), per batch instead of per list of
per-domain minibatches, with these differences, each said where it applies:

- the penalty anneal is a share of the fit's steps (``anneal``, default 0.1), not 500
  iterations: fits here run tens to thousands of steps;
- Mixup mixes the fused features (the head's input), since rows of different modalities
  and token counts have no common input to mix;
- IRM and V-REx do not reset Adam when the penalty switches on;
- GroupDRO's weights live in the objective, not in checkpoints: a resumed fit starts them
  again at uniform.

``erm``, the control, is the task loss itself: with it a fit is the plain fit.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.registry import Registry

DG_OBJECTIVES: Registry[Any] = Registry("domain-generalisation objective")


def register_dg_objective(name: str):  # noqa: ANN201 - a decorator
    return DG_OBJECTIVES.register(name)


def list_dg_objectives(pattern: str = "*") -> list[str]:
    return DG_OBJECTIVES.list(pattern)


def create_dg_objective(name: str, num_domains: int, seed: int = 0, **kwargs: Any) -> DGObjective:
    """An objective by name (``list_dg_objectives``) for a fit on ``num_domains`` domains."""
    return DG_OBJECTIVES.create(name, num_domains=num_domains, seed=seed, **kwargs)


def domain_groups(domains: torch.Tensor) -> list[torch.Tensor]:
    """The row indices of each domain present in a batch, in domain order."""
    return [torch.nonzero(domains == d).flatten() for d in torch.unique(domains).tolist()]


class DGObjective(nn.Module):
    """forward(model, out, batch, progress) -> the loss that replaces the task loss.

    ``model``: the bare multimodal model (its ``head`` and ``head.task``); ``out``: its
    output on ``batch`` (logits, fused features, the encoder outputs it read); ``batch``:
    labels and each row's domain; ``progress`` in [0, 1]: how far the fit is.
    ``needs_classes``: the objective reads class log-probabilities (classification only).
    """

    needs_classes: ClassVar[bool] = True

    def __init__(self, num_domains: int, seed: int = 0) -> None:
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"a domain-generalisation objective needs a domain, got {num_domains}")
        self.num_domains = num_domains

    def forward(self, model: Any, out: Any, batch: dict[str, Any], progress: float) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def domain_losses(model: Any, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """[D_batch] the task loss of each domain's rows of the batch."""
        labels, task = batch["labels"], model.head.task
        return torch.stack(
            [task.loss(logits[i], labels[i]) for i in domain_groups(batch["domain"])]
        )


def _annealed(weight: float, anneal: float, progress: float) -> float:
    """DomainBed's schedule: a penalty weight of 1 until ``anneal`` of the fit, then ``weight``."""
    return weight if progress >= anneal else 1.0


@register_dg_objective("erm")
class ERM(DGObjective):
    """Empirical risk minimisation: the task loss over the pooled rows (the control)."""

    def forward(self, model, out, batch, progress):  # noqa: ANN001, ANN201
        return model.head.task.loss(out.logits, batch["labels"])


@register_dg_objective("groupdro")
class GroupDRO(DGObjective):
    """Group DRO (Sagawa et al., ICLR 2020; DomainBed's ``GroupDRO``): a weight q_d per
    domain, q_d <- q_d exp(eta L_d) then normalised, every step; loss = sum_d q_d L_d."""

    def __init__(self, num_domains: int, seed: int = 0, eta: float = 1e-2) -> None:
        super().__init__(num_domains, seed)
        self.eta = float(eta)
        self.register_buffer("q", torch.ones(num_domains))

    def forward(self, model, out, batch, progress):  # noqa: ANN001, ANN201
        present = torch.unique(batch["domain"])
        losses = self.domain_losses(model, out.logits, batch)
        q = self.q.to(losses.device)
        q[present] = q[present] * torch.exp(self.eta * losses.detach())
        self.q = q / q.sum()
        return torch.dot(losses, self.q[present])


@register_dg_objective("irm")
class IRM(DGObjective):
    """Invariant risk minimisation, IRMv1 (Arjovsky et al., 2019; DomainBed's ``IRM``):
    the task loss plus lambda times, per domain, the product of the gradients of its two
    halves' losses with respect to a scale w = 1.0 on the logits."""

    def __init__(self, num_domains: int, seed: int = 0, weight: float = 1e2,
                 anneal: float = 0.1) -> None:  # fmt: skip
        super().__init__(num_domains, seed)
        self.weight, self.anneal = float(weight), float(anneal)

    @staticmethod
    def penalty(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        scale = torch.tensor(1.0, device=logits.device, requires_grad=True)
        loss_1 = F.cross_entropy(logits[::2].float() * scale, labels[::2].long())
        loss_2 = F.cross_entropy(logits[1::2].float() * scale, labels[1::2].long())
        grad_1 = torch.autograd.grad(loss_1, [scale], create_graph=True)[0]
        grad_2 = torch.autograd.grad(loss_2, [scale], create_graph=True)[0]
        return torch.sum(grad_1 * grad_2)

    def forward(self, model, out, batch, progress):  # noqa: ANN001, ANN201
        labels, groups = batch["labels"], domain_groups(batch["domain"])
        nll = self.domain_losses(model, out.logits, batch).mean()
        penalty = torch.stack([self.penalty(out.logits[i], labels[i]) for i in groups]).mean()
        return nll + _annealed(self.weight, self.anneal, progress) * penalty


@register_dg_objective("vrex")
class VREx(DGObjective):
    """Risk extrapolation, V-REx (Krueger et al., ICML 2021; DomainBed's ``VREx``): the
    mean of the domains' losses plus lambda times their variance."""

    def __init__(self, num_domains: int, seed: int = 0, weight: float = 1e1,
                 anneal: float = 0.1) -> None:  # fmt: skip
        super().__init__(num_domains, seed)
        self.weight, self.anneal = float(weight), float(anneal)

    def forward(self, model, out, batch, progress):  # noqa: ANN001, ANN201
        losses = self.domain_losses(model, out.logits, batch)
        mean = losses.mean()
        penalty = ((losses - mean) ** 2).mean()
        return mean + _annealed(self.weight, self.anneal, progress) * penalty


def coral_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DomainBed's ``MMD.mmd`` with ``gaussian=False``: the mean squared difference of
    the means plus that of the covariances."""
    x, y = x.float(), y.float()
    mean_x, mean_y = x.mean(0, keepdim=True), y.mean(0, keepdim=True)
    cent_x, cent_y = x - mean_x, y - mean_y
    cova_x = cent_x.t() @ cent_x / max(len(x) - 1, 1)
    cova_y = cent_y.t() @ cent_y / max(len(y) - 1, 1)
    return (mean_x - mean_y).pow(2).mean() + (cova_x - cova_y).pow(2).mean()


@register_dg_objective("coral")
class CORALAcrossSources(DGObjective):
    """Deep CORAL across the source domains (Sun and Saenko, 2016; DomainBed's ``CORAL``):
    the mean of the domains' losses plus gamma times the mean CORAL distance of the fused
    features over every pair of domains."""

    needs_classes = False

    def __init__(self, num_domains: int, seed: int = 0, weight: float = 1.0) -> None:
        super().__init__(num_domains, seed)
        self.weight = float(weight)

    def forward(self, model, out, batch, progress):  # noqa: ANN001, ANN201
        groups = domain_groups(batch["domain"])
        losses = self.domain_losses(model, out.logits, batch)
        pairs = list(itertools.combinations(groups, 2))
        if not pairs:
            return losses.mean()
        penalty = torch.stack([coral_distance(out.fused[i], out.fused[j]) for i, j in pairs])
        return losses.mean() + self.weight * penalty.mean()


@register_dg_objective("mixup")
class InterDomainMixup(DGObjective):
    """Inter-domain Mixup (Yan et al., 2020; DomainBed's ``Mixup``) on the fused features:
    domains in a random cycle, each paired with the next; their rows' fused features mixed
    with lambda ~ Beta(alpha, alpha), and lambda CE(y_i) + (1 - lambda) CE(y_j) on the
    head's output, averaged over the pairs. Draws come from the objective's seeded
    generator, never the global one."""

    def __init__(self, num_domains: int, seed: int = 0, alpha: float = 0.2) -> None:
        super().__init__(num_domains, seed)
        self.alpha, self.rng = float(alpha), np.random.default_rng(seed)

    def forward(self, model, out, batch, progress):  # noqa: ANN001, ANN201
        if getattr(model.fusion, "combines_logits", False):
            raise ValueError(
                f"train.dg=mixup mixes the fused features the head reads; "
                f"{type(model.fusion).__name__} combines per-modality logits instead: use "
                "another objective or fusion"
            )
        labels, groups = batch["labels"], domain_groups(batch["domain"])
        order = self.rng.permutation(len(groups)).tolist()
        task, total = model.head.task, []
        for a, b in zip(order, order[1:] + order[:1], strict=True):
            n = min(len(groups[a]), len(groups[b]))
            i, j = groups[a][:n], groups[b][:n]
            lam = float(self.rng.beta(self.alpha, self.alpha))
            logits = model.head(lam * out.fused[i] + (1 - lam) * out.fused[j])
            total.append(
                lam * task.loss(logits, labels[i]) + (1 - lam) * task.loss(logits, labels[j])
            )
        return torch.stack(total).mean()


@register_dg_objective("modality_vrex")
class ModalityVREx(VREx):
    """Modality V-REx (this toolkit's): V-REx on what each modality contributes. A
    modality's contribution in domain d is how much d's loss rises when the modality is
    dropped (its rows' masks off: the missing-modality path, as the imbalance tooling
    measures utilisation); the penalty is the variance over domains of each modality's
    contribution, summed over modalities. A model whose reliance on a modality changes
    from domain to domain pays for it, so one modality's shift cannot carry the rest.
    loss = mean_d L_d + lambda * sum_m Var_d(L_d(without m) - L_d); V-REx's weight and
    anneal."""

    def forward(self, model, out, batch, progress):  # noqa: ANN001, ANN201
        losses = self.domain_losses(model, out.logits, batch)
        if out.encoded is None or len(losses) < 2:
            return losses.mean()
        tokens, masks = out.encoded.tokens, out.encoded.masks
        penalty = losses.new_zeros(())
        for m in masks:
            dropped = {k: (torch.zeros_like(v) if k == m else v) for k, v in masks.items()}
            logits = model.fuse(tokens, dropped)[0]
            contribution = self.domain_losses(model, logits, batch) - losses
            penalty = penalty + contribution.var(unbiased=False)
        return losses.mean() + _annealed(self.weight, self.anneal, progress) * penalty
