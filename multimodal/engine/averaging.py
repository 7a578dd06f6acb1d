"""Weight averaging along a fit (``train.weight_average``): an exponential moving average
of the trainable parameters, updated after every optimizer step, which the evaluations,
the best-model selection and the final weights use. The update is the one of
``torch.optim.swa_utils.get_ema_multi_avg_fn`` (a foreach lerp towards the current
weights); ``AveragedModel`` itself is not used because it deep-copies the whole model,
frozen encoders included. Averaging along the run is what SWAD (Cha et al., NeurIPS 2021)
and EMA-style selection do for domain generalisation."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .config import TrainConfig
from .state import TrainState


class WeightAverage:
    """The EMA of ``model``'s trainable parameters: avg <- decay * avg + (1 - decay) * w."""

    def __init__(self, model: Any, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, state: TrainState | None = None) -> None:
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The averaged weights in the model inside the block, the trained ones after it."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def keep(self) -> None:
        """Leave the averaged weights in the model (a fit without evaluations)."""
        self._swap()

    @torch.no_grad()
    def _swap(self) -> None:
        for param, average in zip(self.params, self.average, strict=True):
            current = param.detach().clone()
            param.copy_(average)
            average.copy_(current)


class _NoAverage:
    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        yield

    def keep(self) -> None:
        return None


def weight_average(
    model: Any, cfg: TrainConfig, on_step: list[Callable[[TrainState], None]]
) -> WeightAverage | _NoAverage:
    """``train.weight_average``'s average of ``model`` (updated by a callback appended to
    ``on_step``), or one that changes nothing."""
    if cfg.weight_average == "none":
        return _NoAverage()
    if cfg.weight_average != "ema":
        raise ValueError(f"train.weight_average must be none or ema, got {cfg.weight_average!r}")
    average = WeightAverage(model, float(cfg.ema_decay))
    on_step.append(average.update)
    return average
