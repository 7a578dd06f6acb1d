"""Fine-tuning that forgets less: loss terms that hold a model near where it started
(``train.regularize``), for the adapt stage of the transfer protocol.

- ``l2sp`` (Li et al. 2018, "Explicit inductive bias for transfer learning"): an L2
  penalty toward the starting weights, ``weight / 2 * sum ||theta - theta_0||^2`` over the
  parameters that train (TLlib's ``SPRegularization``).
- ``ewc`` (Kirkpatrick et al. 2017): the same pull, per parameter scaled by the diagonal
  Fisher information ``F = mean_x E_{y ~ p(y|x)} (d log p(y|x) / d theta)^2`` on reference
  rows (the source training split), ``weight / 2 * sum F * (theta - theta_0)^2``.
- ``lwf`` (Li and Hoiem 2016, "Learning without forgetting"): the starting model's softened
  outputs on the training batch distilled into the model,
  ``weight * T^2 * KL(softmax(z_0 / T) || softmax(z / T))``.

Each is built when ``fit`` starts, from the model as it is then: a resumed run rebuilds
it from the same starting model, before the checkpoint's weights are loaded.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

REGULARIZERS = ("none", "l2sp", "ewc", "lwf")
Forward = Callable[[Any, Any], Any]


class Regularizer(nn.Module):
    """A loss term on the model's output and its parameters; ``weight`` scales it."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = float(weight)

    def forward(self, model: nn.Module, out: Any, batch: Any) -> torch.Tensor:
        raise NotImplementedError


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


class L2SP(Regularizer):
    """``weight / 2 * sum_i w_i * ||theta_i - theta_0,i||^2``, with w = 1 (L2-SP) or the
    Fisher diagonal (EWC), over the parameters that train."""

    def __init__(
        self, model: nn.Module, weight: float, importance: dict[str, torch.Tensor] | None = None
    ) -> None:
        super().__init__(weight)
        self.names = [n for n, _ in _trainable(model)]
        self.anchors = [p.detach().clone() for _, p in _trainable(model)]
        self.importance = [importance[n] for n in self.names] if importance is not None else None

    def forward(self, model: nn.Module, out: Any, batch: Any) -> torch.Tensor:
        params = dict(model.named_parameters())
        total = torch.zeros((), device=self.anchors[0].device if self.anchors else None)
        for i, name in enumerate(self.names):
            squared = (params[name] - self.anchors[i]).pow(2)
            total = (
                total
                + (squared * self.importance[i] if self.importance is not None else squared).sum()
            )
        return 0.5 * self.weight * total

    def _apply(self, fn: Any, recurse: bool = True) -> L2SP:  # .to(device) moves the anchors
        self.anchors = [fn(a) for a in self.anchors]
        if self.importance is not None:
            self.importance = [fn(f) for f in self.importance]
        return super()._apply(fn, recurse)


def fisher_diagonal(
    model: nn.Module, batches: Iterable[Any], forward: Forward
) -> dict[str, torch.Tensor]:
    """The diagonal Fisher information of the trainable parameters of a classifier: the
    mean over rows of E_{y ~ p(y|x)} (d log p(y|x) / d theta)^2, the expectation taken
    exactly over the classes. Not the empirical Fisher (true labels): on rows a model fits
    well its gradients vanish, and with them the penalty. ``batches`` hold one row each;
    the model is put in eval mode (no dropout) and its gradients are left zeroed."""
    was_training = model.training
    model.eval()
    params = _trainable(model)
    sums = {n: torch.zeros_like(p) for n, p in params}
    count = 0
    try:
        for batch in batches:
            log_probs = forward(model, batch).logits.float().log_softmax(-1)[0]
            weights = log_probs.detach().exp()
            for c in range(len(log_probs)):
                grads = torch.autograd.grad(log_probs[c], [p for _, p in params], retain_graph=True,
                                            allow_unused=True)  # fmt: skip
                for (n, _), g in zip(params, grads, strict=True):
                    if g is not None:
                        sums[n] += weights[c] * g.detach().pow(2)
            count += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if count == 0:
        raise ValueError("ewc needs reference rows to estimate the Fisher information on")
    return {n: s / count for n, s in sums.items()}


class LwF(Regularizer):
    """Distillation from a frozen copy of the starting model, in eval mode, on each training
    batch, at temperature ``temperature``."""

    def __init__(
        self, model: nn.Module, weight: float, forward: Forward, temperature: float = 2.0
    ) -> None:
        super().__init__(weight)
        model.head.task.require_classes("lwf (it distils class probabilities)")
        # Frozen encoders are shared, not copied; training keeps them in eval mode. Nothing
        # else is shared: a shared dropout would follow the student into train mode.
        frozen = {id(e): e for e in model.encoders.values()
                  if not any(p.requires_grad for p in e.parameters())}  # fmt: skip
        teacher = copy.deepcopy(model, memo=frozen).eval().requires_grad_(False)
        self._teacher = [teacher]  # a list: not a submodule, so not in the state dict or .train()
        self.forward_fn, self.temperature = forward, float(temperature)

    def forward(self, model: nn.Module, out: Any, batch: Any) -> torch.Tensor:
        with torch.no_grad():
            teacher = self.forward_fn(self._teacher[0], batch).logits.float()
        t = self.temperature
        student = F.log_softmax(out.logits.float() / t, dim=-1)
        soft = F.log_softmax(teacher / t, dim=-1)
        kl = F.kl_div(student, soft, log_target=True, reduction="batchmean")
        return self.weight * t * t * kl

    def _apply(self, fn: Any, recurse: bool = True) -> LwF:
        self._teacher[0]._apply(fn)
        return super()._apply(fn, recurse)


def create_regularizer(
    name: str,
    model: nn.Module,
    weight: float,
    forward: Forward,
    reference: Iterable[Any] | None = None,
    **kwargs: Any,
) -> Regularizer | None:
    """The regularizer ``name`` for ``model`` as it is now (None for ``none``); ``ewc``
    estimates its Fisher on ``reference`` (single-sample batches)."""
    if name not in REGULARIZERS:
        raise ValueError(f"train.regularize must be one of {REGULARIZERS}, got {name!r}")
    if name == "none":
        return None
    if name == "l2sp":
        return L2SP(model, weight, **kwargs)
    if name == "ewc":
        if reference is None:
            raise ValueError("train.regularize=ewc needs FitData.reference: the rows it protects")
        model.head.task.require_classes(
            "ewc (its Fisher is an expectation over the class probabilities)"
        )
        return L2SP(model, weight, importance=fisher_diagonal(model, reference, forward))
    return LwF(model, weight, forward, **kwargs)
