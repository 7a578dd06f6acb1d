"""E models as one: their trainable parameters stacked on a leading dimension and trained
through ``torch.func.functional_call`` under ``torch.func.vmap`` (``fit_stacked``), and
scored the same way (``stacked_logits``). What ``engine.episodes`` runs once it has decided
that the fits can run together.

A step of the stacked model is each model's step: its shuffle (``EpochSampler`` with its
seed), its dropout masks and router noise (keyed by its seed, ``core.randomness``), its
gradient clipping, and AdamW or SGD on its slice (elementwise). Fusions run under
``fusion.static_shapes``, which vmap needs.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, vmap

from ..core.randomness import StepDraws, keyed_by
from ..data.collate import EpochSampler
from ..modeling.freezing import apply_strategy, encoder_modules, frozen_encoders
from ..modeling.model import Encoded, eval_mode
from .config import FitData, FitResult, TrainConfig
from .loaders import drop_last, split_features, use_feature_cache
from .optim import param_groups
from .performance import fit_device, fused_optimizer, precision
from .state import TrainState


class NotBatchable(Exception):
    """A batched step could not run (an op vmap cannot batch, a non-finite loss)."""


def fit_rows(data: FitData) -> list[int]:
    """The rows of ``data.train`` a fit trains on: its episode's, or all of them."""
    return (
        list(data.train_indices) if data.train_indices is not None else list(range(len(data.train)))
    )


def fit_stacked(
    models: Sequence[Any], datas: Sequence[FitData], configs: Sequence[TrainConfig],
    on_step: Sequence[Callable[[Any], None]],
) -> list[FitResult]:  # fmt: skip
    """The fits of ``fit`` for every model, as one model with a leading episode dimension:
    each model ends with its own fit's weights (up to floating-point rounding)."""
    start = time.perf_counter()
    cfg, data, template = configs[0], datas[0], models[0]
    device = torch.device(fit_device())
    counts = apply_strategy(template, cfg.strategy, cfg.top_k, cfg.lora)
    shared = encoder_modules(template)
    for model in models[1:]:
        # The same encoder modules: frozen above, not walked again for each of a grid
        # point's 320 models.
        if encoder_modules(model) == shared:
            model.fusion.requires_grad_(True)
            model.head.requires_grad_(True)
        else:
            apply_strategy(model, cfg.strategy, cfg.top_k, cfg.lora)
    for model in models:
        if model.device != device:
            model.to(device)
    frozen = frozen_encoders(template)
    if not use_feature_cache(cfg, frozen, len(template.encoders)):
        raise NotBatchable("encoders train, so their outputs are not cached")
    if sum(p.numel() for p in _trainable(template).values()) != counts["trainable"]:
        raise NotBatchable("parameters outside the fusion and head train")
    run = StackedRun(models, configs, device)
    features = model_inputs(template, split_features(template, data.train, data.spec, cfg))
    validation = (
        model_inputs(template, split_features(template, data.validation, data.spec, cfg))
        if data.validation is not None
        else None
    )
    rows = torch.tensor([fit_rows(d) for d in datas], dtype=torch.long)  # E x n
    n, size = rows.shape[1], int(cfg.batch_size)
    batches = n // size if drop_last(cfg, template, "train", n, frozen) else math.ceil(n / size)
    total = cfg.max_steps or cfg.epochs * batches
    run.schedule(total)
    tracker = _BestPerEpisode(models, cfg) if validation is not None else None
    step, epoch, epoch_seconds = 0, 0, []
    while step < total:
        tick = time.perf_counter()
        order = _order(n, configs, epoch)  # E x n, each episode's shuffle
        for b in range(batches):
            local = order[:, b * size : (b + 1) * size]
            run.step(_batch(features, rows.gather(1, local), local, configs, cfg), step)
            step += 1
            for callback in on_step:  # once per model and step, as E fits would
                for _ in models:
                    callback(TrainState(step=step, epoch=epoch))
            if step >= total:
                break
        epoch_seconds.append(time.perf_counter() - tick)
        if tracker is not None:
            tracker.update(run, validation, step, epoch)
        epoch += 1
    run.write_back(tracker.best if tracker is not None else None)
    seconds = time.perf_counter() - start
    return [
        FitResult(
            best_metric=tracker.values[e] if tracker else None, best_step=tracker.steps[e] if tracker else None,
            metric=tracker.metric if tracker else (cfg.metric or template.head.task.default_metric),
            steps=step, history=tracker.history[e] if tracker else [], trainable_parameters=counts["trainable"],
            total_parameters=counts["total"], wall_time_s=seconds / len(models),
            train_samples_per_s=step * size * len(models) / max(sum(epoch_seconds), 1e-9),
            train_steps_per_s=step / max(sum(epoch_seconds), 1e-9), epoch_seconds=epoch_seconds,
            used_feature_cache=True, batch_size=size,
        )
        for e in range(len(models))
    ]  # fmt: skip


class _Inputs:
    """A split's cached features as the fusion reads them: ``padded`` {m: (tokens [N, T, D],
    mask [N, T], lengths [N])} plus the meta tensors, one pooled token per row for a fusion
    that ``pools_first`` (E episodes then gather [E, B, D] a step, not [E, B, T, D])."""

    def __init__(self, features: Any, pooled: bool) -> None:
        from fusion import pool_tokens

        self.modalities, self.meta, self.length = features.modalities, features.meta, len(features)
        self.padded, self.pooled = dict(features.padded), pooled
        if pooled:
            for m in self.modalities:
                tokens, mask = pool_tokens(*features.padded[m][:2])
                self.padded[m] = (tokens, mask, mask.sum(dim=1))

    def __len__(self) -> int:
        return self.length


def model_inputs(template: Any, features: Any) -> _Inputs:
    """``features`` (in memory) as ``template``'s fusion reads them; see ``_Inputs``."""
    if features.padded is None:
        raise NotBatchable("the features are on disk (feature_cache: disk)")
    return _Inputs(features, _pools_first(template))


def _pools_first(template: Any) -> bool:
    return bool(getattr(template.fusion, "pools_first", False))


def _order(n: int, configs: Sequence[TrainConfig], epoch: int) -> torch.Tensor:
    """Each episode's shuffle of its n rows for ``epoch``: ``fit``'s ``EpochSampler``."""
    return EpochSampler.orders(n, [c.seed for c in configs], epoch)


def _batch(
    features: Any, rows: torch.Tensor, local: torch.Tensor, configs: Sequence[TrainConfig],
    cfg: TrainConfig,
) -> dict[str, Any]:  # fmt: skip
    """One step's batch of every episode: tokens {m: [E, B, T, D]}, masks {m: [E, B, T]},
    labels [E, B]; ``rows`` index the split, ``local`` the episode's own rows (what
    ``CachedCollator`` seeds modality dropout with, as in an episode's own fit)."""
    padded, flat, shape = features.padded, rows.reshape(-1), tuple(rows.shape)
    tokens, masks = {}, {}
    for m in features.modalities:
        t, k, lengths = padded[m]
        width = max(int(lengths[rows].max()), 1) if t.shape[1] > 1 else 1
        # index_select copies whole rows (several times faster than t[rows] on CPU).
        tokens[m] = t[:, :width].index_select(0, flat).view(*shape, width, *t.shape[2:])
        masks[m] = k[:, :width].index_select(0, flat).view(*shape, width)
    dropout = cfg.modality_dropout
    if isinstance(dropout, (int, float)):
        dropout = {m: float(dropout) for m in features.modalities}
    if dropout and any(p > 0 for p in dropout.values()):
        for e, episode in enumerate(configs):
            rng = np.random.default_rng([episode.seed, *local[e].tolist()])
            for m in features.modalities:
                p = dropout.get(m, 0.0)
                if p > 0:
                    keep = torch.as_tensor(rng.random(local.shape[1]) >= p)
                    masks[m][e] &= keep[:, None]
                    if features.pooled:  # pooled_inputs' promise: zeros where masked
                        tokens[m][e] *= keep[:, None, None].to(tokens[m].dtype)
    return {"tokens": tokens, "masks": masks, "labels": padded["label"][rows]}


class StackedRun:
    """The E models' trainable parameters stacked [E, ...], their optimizer and schedule,
    and one training step for all of them."""

    def __init__(
        self, models: Sequence[Any], configs: Sequence[TrainConfig], device: torch.device
    ) -> None:
        self.template, self.cfg = models[0], configs[0]
        named = _trainable(self.template)
        self.names = list(named)
        # Each model's trainable tensors, looked up once: stacked here, written back at the end.
        self.slots = [list(_trainable(m, self.names).values()) for m in models]
        # Linear weights stacked as their transposes (see ``_stack``).
        self.transposed = {n for n in _linear_weights(self.template) if n in named}
        self.params = {
            n: _stack(
                [slots[i].detach() for slots in self.slots], n in self.transposed
            ).requires_grad_()
            for i, n in enumerate(self.names)
        }
        self._check_fixed(models)
        # What the optimizer updates: each stacked tensor as a contiguous view of its storage
        # (the fused kernels take only that), given its gradient before each step.
        self.views = {n: self._contiguous(n, p.detach()) for n, p in self.params.items()}
        groups = []
        for group in param_groups(self.template, self.cfg):
            ids = {id(p) for p in group["params"]}
            groups.append(
                {**group, "params": [self.views[n] for n in self.names if id(named[n]) in ids]}
            )
        kernels = {"fused": True} if fused_optimizer(self.cfg, device) else {"foreach": True}
        if self.cfg.optimizer == "adamw":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                groups, lr=self.cfg.lr, **kernels
            )
        elif self.cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(
                groups, lr=self.cfg.lr, momentum=self.cfg.momentum, **kernels
            )
        else:
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.cfg.optimizer!r}")
        self.seeds = torch.tensor([c.seed for c in configs], dtype=torch.int64, device=device)
        self.bf16 = precision(self.cfg, device) == "bf16"
        self.device, self.models, self.scheduler = device, list(models), None
        self.probed, self.draws = False, StepDraws(self.seeds)

    def _contiguous(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.transpose(1, 2) if name in self.transposed else tensor

    def _check_fixed(self, models: Sequence[Any]) -> None:
        """Parameters that do not train and buffers must be the same in every model: they
        are read from the first."""
        fixed = [(n, t) for n, t in fusion_and_head(self.template).items() if n not in self.params]
        for model in models[1:] if fixed else ():
            other = fusion_and_head(model)
            for name, tensor in fixed:
                if not torch.equal(tensor, other[name]):
                    raise NotBatchable(f"{name} (not trained) differs between the models")

    def schedule(self, total: int) -> None:
        from transformers import get_scheduler  # seconds to import; only a fit needs it

        self.scheduler = get_scheduler(self.cfg.scheduler, self.optimizer,
                                       int(self.cfg.warmup_ratio * total), total)  # fmt: skip
        self.draws.total = total

    def _loss(self, record: list[tuple[str, int]] | None) -> Callable[..., torch.Tensor]:
        template, pooled, kinds = self.template, _pools_first(self.template), self.draws.kinds or ()

        def loss(
            params: dict, keys: torch.Tensor, made: list[torch.Tensor], tokens: dict,
            masks: dict, labels: torch.Tensor,
        ) -> torch.Tensor:  # fmt: skip
            with (
                keyed_by(keys, made, kinds, record),
                _stacked_inputs(pooled),
                torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16),
            ):
                return functional_call(template, params, ({"labels": labels}, Encoded(tokens, masks)),
                                       tie_weights=False).loss  # fmt: skip

        return loss

    def step(self, batch: dict[str, Any], step: int) -> None:
        """Forward, backward, per-episode clipping and the update, for every episode."""
        _train_mode(self.template)
        batch = {k: _to(v, self.device) for k, v in batch.items()}
        # Each episode's random draws (dropout masks, router noise): the first step notes
        # their kinds and sizes, later steps make them for every episode outside vmap.
        keys, made = self.draws(step)
        record: list[tuple[str, int]] | None = [] if self.draws.kinds is None else None
        args = (self.params, keys, made, batch["tokens"], batch["masks"], batch["labels"])
        try:
            losses = vmap(self._loss(record))(*args)  # E
            losses.sum().backward()
        except (RuntimeError, NotImplementedError) as err:
            if self.probed:
                raise
            fusion = type(self.template.fusion).__name__
            raise NotBatchable(
                f"{fusion} does not run under vmap ({str(err).splitlines()[0][:120]})"
            ) from err
        self.probed = True
        if record is not None:
            self.draws.kinds = record
        if not torch.isfinite(losses.detach()).all():
            bad = int(torch.nonzero(~torch.isfinite(losses.detach()))[0])
            for param in self.params.values():
                param.grad = None
            raise NotBatchable(
                f"a non-finite loss (episode {bad}, step {step}); each fit skips its own"
            )
        if self.cfg.max_grad_norm is not None:
            _clip_per_episode(list(self.params.values()), float(self.cfg.max_grad_norm))
        for name, param in self.params.items():
            grad = param.grad
            self.views[name].grad = None if grad is None else self._contiguous(name, grad)
            param.grad = None
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def write_back(self, best: dict[str, torch.Tensor] | None) -> None:
        """Each model gets its episode's parameters (its best evaluation's, with one), in
        eval mode, as ``fit`` leaves it."""
        source = best or self.params
        # contiguous: one batched copy of a transposed weight, not one strided copy per model.
        episodes = [source[n].detach().contiguous().unbind(0) for n in self.names]
        with torch.no_grad():  # one foreach copy of every model's every tensor
            torch._foreach_copy_(
                [t for slots in self.slots for t in slots],
                [episodes[i][e] for e in range(len(self.models)) for i in range(len(self.names))],
            )
        for model in self.models:
            eval_mode(model)


def _linear_weights(model: Any) -> set[str]:
    """The names of the ``nn.Linear`` weights in ``model``'s fusion and head."""
    return {
        f"{part}.{name}.weight" if name else f"{part}.weight"
        for part in ("fusion", "head")
        for name, module in getattr(model, part).named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def _stack(tensors: list[torch.Tensor], transposed: bool) -> torch.Tensor:
    """``torch.stack(tensors)``; with ``transposed`` (a Linear weight [out, in]) stored as
    its transpose [E, in, out] and returned as a view [E, out, in]: vmapped ``F.linear``
    multiplies by that transpose and its weight gradient comes out in that layout, so the
    gradient is not copied into the weight's layout at every step."""
    stacked = torch.stack(tensors)
    return stacked.transpose(1, 2).contiguous().transpose(1, 2) if transposed else stacked


@contextlib.contextmanager
def _stacked_inputs(pooled: bool) -> Iterator[None]:
    """``fusion.static_shapes``, and ``fusion.pooled_inputs`` for pooled inputs."""
    from fusion import pooled_inputs, static_shapes

    with static_shapes(), pooled_inputs() if pooled else contextlib.nullcontext():
        yield


def _train_mode(model: Any) -> None:
    """Fusion and head in train mode, the (frozen) encoders in eval mode, as ``fit``'s."""
    model.training = True
    model.fusion.train()
    model.head.train()
    for encoder in model.encoders.values():
        if encoder.training:
            encoder.eval()


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value.to(device, non_blocking=True)


def _clip_per_episode(params: list[torch.Tensor], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_`` for each episode on its slice of every tensor:
    the norm of the per-tensor norms, then grads * min(1, max_norm / (norm + 1e-6))."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    per_tensor = torch.stack(
        [torch.linalg.vector_norm(g, dim=tuple(range(1, g.ndim))) if g.ndim > 1 else g.abs()
         for g in grads], 1,
    )  # fmt: skip
    total = torch.linalg.vector_norm(per_tensor, dim=1)  # E
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    if bool((coef < 1.0).any()):  # else every grad * 1.0: the same values
        torch._foreach_mul_(
            grads, [coef.view(-1, *([1] * (g.ndim - 1))).to(g.dtype) for g in grads]
        )


class _BestPerEpisode:
    """``BestTracker`` per episode: its validation metric after every epoch and a copy of
    its parameters at its best evaluation."""

    def __init__(self, models: Sequence[Any], cfg: TrainConfig) -> None:
        from ..modeling.tasks import METRIC_MODES

        self.metric = cfg.metric or models[0].head.task.default_metric
        self.mode, self.min_delta = METRIC_MODES.get(self.metric, "max"), cfg.min_delta
        self.values: list[float | None] = [None] * len(models)
        self.steps: list[int | None] = [None] * len(models)
        self.history: list[list[dict[str, Any]]] = [[] for _ in models]
        self.best: dict[str, torch.Tensor] | None = None

    def update(self, run: StackedRun, validation: Any, step: int, epoch: int) -> None:
        from ..modeling.tasks import RANKING_METRICS
        from .tracking import is_better

        state = {n: p.detach() for n, p in run.params.items()}
        metrics = stacked_metrics(run.models, stacked_logits(run.template, state, validation, run.cfg),
                           validation, ranking=self.metric in RANKING_METRICS)  # fmt: skip
        if self.best is None:
            self.best = {n: p.clone() for n, p in state.items()}
        for e, values in enumerate(metrics):
            if self.metric not in values:
                raise ValueError(
                    f"metric {self.metric!r} is not computed; available: {sorted(values)}"
                )
            self.history[e].append(
                {"step": step, "epoch": epoch, **{f"eval_{k}": v for k, v in values.items()}}
            )
            if is_better(values[self.metric], self.values[e], self.mode, self.min_delta):
                self.values[e], self.steps[e] = values[self.metric], step
                for name, tensor in state.items():
                    self.best[name][e] = tensor[e]


@torch.no_grad()
def stacked_logits(template: Any, state: dict[str, torch.Tensor], features: Any,
                    cfg: TrainConfig) -> torch.Tensor:  # fmt: skip
    """Logits [E, N, C] of the E models whose fusion and head ``state`` holds stacked, on
    every row of ``features``, in eval mode (``fusion.static_shapes``)."""
    was_training = template.training
    eval_mode(template)
    device = next(iter(state.values())).device
    size = cfg.eval_batch_size or cfg.nominal_batch_size
    padded, out = features.padded, []

    def logits(params: dict, tokens: dict, masks: dict) -> torch.Tensor:
        with _stacked_inputs(features.pooled):
            # tie_weights=False: no walk of the (frozen, unused) encoders' modules per call.
            out = functional_call(template, params, ({}, Encoded(tokens, masks)), tie_weights=False)
            return out.logits.float()

    for begin in range(0, len(features), size):
        rows = slice(begin, begin + size)  # consecutive rows: no gather (copied only if cut)
        tokens, masks = {}, {}
        for m in features.modalities:
            t, k, lengths = padded[m]
            width = max(int(lengths[rows].max()), 1)
            tokens[m] = t[rows, :width].contiguous().to(device)
            masks[m] = k[rows, :width].to(device)
        out.append(vmap(logits, in_dims=(0, None, None))(state, tokens, masks))
    if was_training:
        _train_mode(template)
    return torch.cat(out, dim=1)


def stacked_metrics(models: Sequence[Any], logits: torch.Tensor, features: Any,
             ranking: bool = True) -> list[dict[str, float]]:  # fmt: skip
    """``eval_metrics``' loss and metrics of each model's logits [N, C] (none without labels)."""
    if "label" not in features.meta:
        return [{} for _ in models]
    labels = features.meta["label"]
    out = []
    for model, scores in zip(models, logits.cpu(), strict=True):
        task = model.head.task
        out.append(
            {"loss": task.loss(scores, labels).item(), **task.metrics(scores, labels, ranking)}
        )
    return out


def _trainable(model: Any, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """The fusion's and head's trainable parameters (the encoders are frozen, see
    ``fit_stacked``), named as in the model; with ``names``, those, in that order."""
    found = {
        f"{part}.{n}": p
        for part in ("fusion", "head")
        for n, p in getattr(model, part).named_parameters()
        if p.requires_grad
    }
    return found if names is None else {n: found[n] for n in names}


def fusion_and_head(model: Any) -> dict[str, torch.Tensor]:
    """The fusion's and head's parameters and buffers, named as in the model."""
    return {**model.fusion.state_dict(prefix="fusion.", keep_vars=True),
            **model.head.state_dict(prefix="head.", keep_vars=True)}  # fmt: skip
