"""Modality balancing while training (``train.balance``): methods that keep the modality
that learns fastest from starving the others of gradient. One per family:

- ``ogm_ge``, gradient modulation (Peng et al., "Balanced Multimodal Learning via
  On-the-fly Gradient Modulation", CVPR 2022): each modality's encoder gradient is scaled
  by ``k_m = 1 - tanh(alpha * relu(rho_m - 1))``, where ``rho_m`` is the modality's score
  on the batch (the summed probability of the true class with only m present) over the
  mean score of the other modalities; with two modalities this is the paper's ratio. The
  generalisation enhancement adds Gaussian noise with the gradient's own standard
  deviation to each slowed-down encoder's gradient (the paper adds it to every encoder in
  the modulation window; here a modality with ``k_m = 1`` keeps its gradient untouched).
- ``grad_blend``, loss reweighting from generalisation statistics (Wang et al., "What
  Makes Training Multi-modal Classification Networks Hard?", CVPR 2020): a linear head per
  modality on its pooled encoder output beside the fused head; the loss is
  ``sum_k w_k L_k`` over the fused and unimodal heads, with ``w_k`` proportional to
  ``dG_k / dO_k^2`` between the last two evaluations (``blend_weights``). Online G-Blend:
  the weights are re-estimated at every evaluation; uniform until two exist.
- ``unimodal_aux``, auxiliary unimodal objectives: the same per-modality heads, with the
  loss ``L_fused + strength * sum_m L_m``.

``strength`` (``train.balance_strength``) is ``alpha`` for ``ogm_ge``, the interpolation
from the fused loss alone (0) to the blended loss (1) for ``grad_blend``, and the
auxiliary weight for ``unimodal_aux``. With strength 0 each method trains bit-identically
to ``none``: the per-modality heads draw their initial weights from their own seed, and
the probes that score modalities run without gradient in eval mode (no dropout draws, no
BatchNorm updates).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from fusion import masked_mean

from ..core.registry import Registry, accepted_kwargs
from .model import Batch, Encoded, ModelOutput
from .tasks import Task

# name -> Balancer subclass, filled by the decorators below.
BALANCERS: Registry[Any] = Registry("balancing method")
FUSED = "fused"  # the fused head's key among grad_blend's heads


@BALANCERS.register("none")
class Balancer(nn.Module):
    """No balancing; the hooks ``fit`` calls. ``loss``: a term added to the step's total
    loss; ``observe``: sees each micro-batch's output; ``modulate``: edits the accumulated
    gradients before clipping and the update; ``on_evaluate``: sees the validation split.
    A method is a subclass registered in ``BALANCERS``."""

    name = "none"
    # What a method needs beyond two modalities: the validation split (grad_blend).
    needs_validation = False

    @classmethod
    def for_model(
        cls, model: Any, strength: float, seed: int, has_validation: bool, **kwargs: Any
    ) -> Balancer:
        """This method for ``model``, after the checks every method shares."""
        if cls is Balancer:
            if kwargs:
                raise ValueError(f"train.balance_kwargs {sorted(kwargs)} given without a method")
            return cls(strength)
        if len(model.modalities) < 2:
            raise ValueError(
                f"train.balance={cls.name} balances modalities; the model has only {model.modalities}"
            )
        if kwargs and not set(kwargs) <= accepted_kwargs(cls) - {"model", "strength", "seed"}:
            raise ValueError(f"train.balance={cls.name} takes no balance_kwargs {sorted(kwargs)}")
        if cls.needs_validation and not has_validation:
            raise ValueError(
                f"train.balance={cls.name} estimates its weights on the validation split; this fit has none"
            )
        return cls(model, strength, seed, **kwargs)

    def __init__(self, strength: float = 1.0) -> None:
        super().__init__()
        if not math.isfinite(strength) or strength < 0:
            raise ValueError(f"train.balance_strength must be finite and >= 0, got {strength}")
        self.strength = float(strength)

    def loss(self, out: ModelOutput, batch: Batch) -> torch.Tensor | None:
        return None

    def observe(self, model: Any, out: ModelOutput, batch: Batch) -> None:
        return None

    def modulate(self, model: Any, accelerator: Any) -> dict[str, float]:
        """Average the method's own parameters' gradients over processes: they are not
        wrapped for distributed training the way the model is."""
        if accelerator.num_processes > 1:
            for p in self.parameters():
                if p.grad is not None:
                    p.grad.copy_(accelerator.reduce(p.grad, "mean"))
        return {}

    def on_evaluate(self, model: Any, loader: Iterable[Batch], forward: Any,
                    accelerator: Any) -> dict[str, float]:  # fmt: skip
        return {}


def create_balancer(
    name: str, model: Any, strength: float = 1.0, seed: int = 0,
    has_validation: bool = True, **kwargs: Any,
) -> Balancer:  # fmt: skip
    """The balancing method ``name`` (``BALANCERS``) for ``model``; see the module docstring."""
    if name not in BALANCERS:
        raise ValueError(f"train.balance must be one of {BALANCE_METHODS}, got {name!r}")
    return BALANCERS.get(name).for_model(model, strength, seed, has_validation, **kwargs)


def ogm_coefficients(scores: Mapping[str, float], alpha: float) -> dict[str, float]:
    """OGM's coefficient per modality: ``1 - tanh(alpha * relu(rho_m - 1))`` with ``rho_m``
    the modality's score over the mean score of the others (below 1 only for a modality
    that leads)."""
    out = {}
    for m, s in scores.items():
        others = [v for n, v in scores.items() if n != m]
        rho = s / max(sum(others) / len(others), 1e-12)
        out[m] = 1.0 - math.tanh(alpha * max(rho - 1.0, 0.0))
    return out


@BALANCERS.register("ogm_ge")
class OGMGE(Balancer):
    """On-the-fly gradient modulation with generalisation enhancement (``ge``)."""

    name = "ogm_ge"

    def __init__(self, model: Any, strength: float, seed: int, ge: bool = True) -> None:
        super().__init__(strength)
        model.head.task.require_classes(
            "ogm_ge (it scores modalities by the true class's probability)"
        )
        self.modalities = [m for m in model.modalities
                           if any(p.requires_grad for p in model.encoders[m].parameters())]  # fmt: skip
        if not self.modalities:
            raise ValueError("ogm_ge modulates encoder gradients, and every encoder is frozen "
                             "(train.strategy head?); train at least one encoder")  # fmt: skip
        self.ge, self.seed = bool(ge), int(seed)
        self.register_buffer("scores", torch.zeros(len(model.modalities)))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.coefficients: dict[str, float] = {}

    @torch.no_grad()
    def observe(self, model: Any, out: ModelOutput, batch: Batch) -> None:
        """Add the batch's per-modality scores: the summed softmax probability of the true
        class with only that modality present, from fusion and head in eval mode."""
        parts = (model.fusion, model.head)
        modes = [p.training for p in parts]
        for p in parts:
            p.eval()
        try:
            encoded = Encoded(
                {m: t.detach() for m, t in out.encoded.tokens.items()}, out.encoded.masks
            )
            logits = model.unimodal_logits(encoded)
        finally:
            for p, mode in zip(parts, modes, strict=True):
                p.train(mode)
        labels = batch["labels"].to(self.scores.device)
        for i, m in enumerate(model.modalities):
            probs = logits[m].float().softmax(-1)
            self.scores[i] += probs.gather(1, labels[:, None]).sum()

    def modulate(self, model: Any, accelerator: Any) -> dict[str, float]:
        scores = (
            accelerator.reduce(self.scores.clone(), "sum")
            if accelerator.num_processes > 1
            else self.scores
        )
        by_name = dict(zip(model.modalities, scores.tolist(), strict=True))
        self.coefficients = ogm_coefficients(by_name, self.strength)
        self.scores.zero_()
        self.updates += 1
        for m in self.modalities:
            k = self.coefficients[m]
            if k < 1.0:
                self._scale(model.encoders[m], k)
        return {f"balance_coef_{m}": k for m, k in self.coefficients.items()}

    def _scale(self, encoder: nn.Module, k: float) -> None:
        # The noise seed depends on the update count only: every process adds the same noise.
        generator = None
        for p in encoder.parameters():
            if p.grad is None:
                continue
            std = p.grad.float().std() if p.grad.numel() > 1 else None
            p.grad.mul_(k)
            if self.ge and std is not None and bool(torch.isfinite(std)):
                if generator is None:
                    generator = torch.Generator(device=p.grad.device)
                    generator.manual_seed(self.seed * 1_000_003 + int(self.updates))
                noise = torch.randn(p.grad.shape, generator=generator, device=p.grad.device)
                p.grad.add_(noise.to(p.grad.dtype) * std.to(p.grad.dtype))


class UnimodalHeads(nn.Module):
    """A linear head per modality on the masked mean of its encoder tokens."""

    def __init__(self, model: Any, seed: int) -> None:
        super().__init__()
        outputs = model.head.num_classes
        # Their own seed: building them must not move the global RNG the run draws from.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.heads = nn.ModuleDict(
                {m: nn.Linear(enc.out_dim, outputs) for m, enc in model.encoders.items()}
            )

    def losses(self, task: Task, encoded: Encoded, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """{m: the task loss of m's head, averaged over the samples that have m}."""
        out = {}
        for m, head in self.heads.items():
            mask = encoded.masks[m]
            logits = head(masked_mean(encoded.tokens[m], mask).to(head.weight.dtype))
            per_sample = task.per_sample_loss(logits, labels)
            present = mask.any(dim=1).to(per_sample.dtype)
            out[m] = (per_sample * present).sum() / present.sum().clamp(min=1.0)
        return out


class _WithUnimodalHeads(Balancer):
    """A method that trains a linear head per modality beside the model."""

    def __init__(self, model: Any, strength: float, seed: int) -> None:
        super().__init__(strength)
        self.task = model.head.task
        self.unimodal = UnimodalHeads(model, seed)


@BALANCERS.register("unimodal_aux")
class UnimodalAux(_WithUnimodalHeads):
    """``L_fused + strength * sum_m L_m`` with a linear head per modality."""

    name = "unimodal_aux"

    def loss(self, out: ModelOutput, batch: Batch) -> torch.Tensor:
        losses = self.unimodal.losses(self.task, out.encoded, batch["labels"])
        return self.strength * torch.stack(list(losses.values())).sum()


def blend_weights(
    previous: Mapping[str, tuple[float, float]], current: Mapping[str, tuple[float, float]],
    eps: float = 1e-8,
) -> dict[str, float] | None:  # fmt: skip
    """Gradient-blending weights from two evaluations, each {head: (train loss, val loss)}.

    Per head: the generalisation gain ``dG = val_prev - val_now`` and the change in
    overfitting ``dO = (val_now - train_now) - (val_prev - train_prev)``; the weight is
    ``max(dG, 0) / max(dO^2, eps)``, normalised to sum to 1. None when no head generalised
    better (every ``dG <= 0``): the caller keeps its weights.
    """
    raw = {}
    for k in current:
        (t0, v0), (t1, v1) = previous[k], current[k]
        gain, overfit = v0 - v1, (v1 - t1) - (v0 - t0)
        raw[k] = max(gain, 0.0) / max(overfit * overfit, eps)
    total = sum(raw.values())
    if not total > 0 or not math.isfinite(total):
        return None
    return {k: v / total for k, v in raw.items()}


@BALANCERS.register("grad_blend")
class GradBlend(_WithUnimodalHeads):
    """Online gradient blending over the fused head and one linear head per modality."""

    name = "grad_blend"
    needs_validation = True

    def __init__(self, model: Any, strength: float, seed: int) -> None:
        super().__init__(model, strength, seed)
        self.keys = [FUSED, *model.modalities]
        n = len(self.keys)
        self.register_buffer("weights", torch.full((n,), 1.0 / n, dtype=torch.float64))
        self.register_buffer("train_sums", torch.zeros(n + 1, dtype=torch.float64))  # + count
        self.register_buffer("previous", torch.full((n, 2), math.nan, dtype=torch.float64))

    def effective(self) -> dict[str, float]:
        """The weights the loss uses: ``(1 - strength) * fused-only + strength * weights``."""
        s = self.strength
        return {
            k: (1 - s) * (k == FUSED) + s * float(w)
            for k, w in zip(self.keys, self.weights, strict=True)
        }

    def _head_losses(self, out: ModelOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {FUSED: self.task.loss(out.logits, labels),
                **self.unimodal.losses(self.task, out.encoded, labels)}  # fmt: skip

    def loss(self, out: ModelOutput, batch: Batch) -> torch.Tensor:
        """``sum_m w_m L_m - (1 - w_fused) L_fused``: added to the model's loss (fused task
        loss + fusion auxiliary loss), the total is the blend ``sum_k w_k L_k`` + auxiliary."""
        losses = self._head_losses(out, batch["labels"])
        with torch.no_grad():
            self.train_sums[:-1] += torch.stack([losses[k].detach().double() for k in self.keys])
            self.train_sums[-1] += 1
        w = self.effective()
        term = sum(w[m] * losses[m] for m in self.keys[1:])
        return term - (1.0 - w[FUSED]) * losses[FUSED]

    def modulate(self, model: Any, accelerator: Any) -> dict[str, float]:
        super().modulate(model, accelerator)
        return self._log()

    @torch.no_grad()
    def on_evaluate(self, model: Any, loader: Iterable[Batch], forward: Any,
                    accelerator: Any) -> dict[str, float]:  # fmt: skip
        """Each head's validation loss; with the training losses since the last evaluation,
        new weights from this evaluation and the one before."""
        was = self.unimodal.training
        self.unimodal.eval()
        sums = torch.zeros(len(self.keys) + 1, dtype=torch.float64, device=self.weights.device)
        for batch in loader:
            losses = self._head_losses(forward(model, batch), batch["labels"])
            n = len(batch["labels"])
            sums[:-1] += torch.stack([losses[k].double() for k in self.keys]) * n
            sums[-1] += n
        self.unimodal.train(was)
        train = self.train_sums.clone()
        if accelerator.num_processes > 1:
            sums, train = accelerator.reduce(sums, "sum"), accelerator.reduce(train, "sum")
        if sums[-1] == 0 or train[-1] == 0:
            return self._log()
        current = torch.stack([train[:-1] / train[-1], sums[:-1] / sums[-1]], dim=1)
        if not torch.isnan(self.previous).any():
            new = blend_weights(self._named(self.previous), self._named(current))
            if new is not None:
                self.weights.copy_(torch.tensor([new[k] for k in self.keys], dtype=torch.float64))
        self.previous.copy_(current)
        self.train_sums.zero_()
        return self._log()

    def _named(self, losses: torch.Tensor) -> dict[str, tuple[float, float]]:
        return {k: (float(losses[i, 0]), float(losses[i, 1])) for i, k in enumerate(self.keys)}

    def _log(self) -> dict[str, float]:
        return {
            f"balance_weight_{k}": float(w) for k, w in zip(self.keys, self.weights, strict=True)
        }


BALANCE_METHODS = tuple(BALANCERS.names())
