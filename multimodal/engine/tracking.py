"""The best evaluation so far: its weights, kept in memory and on disk, and early stopping."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..core.io import CorruptCheckpointError
from ..core.run_folder import RunFolder
from ..modeling.tasks import METRIC_MODES
from .state import TrainState

BEST_STATE_NAME = RunFolder.best_state


def is_better(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


def changing_state(model: Any, frozen: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` without the ``frozen`` encoders, which a fit never changes
    (their parameters need no gradient and their BatchNorm stays in eval mode): copying a
    large pretrained encoder at every better evaluation would cost more than the fit."""
    if not hasattr(model, "encoders"):  # not a MultimodalModel: all of it
        return model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, child in model.named_children():
        if name == "encoders":
            for m, encoder in child.items():
                if m not in frozen:
                    out.update(encoder.state_dict(prefix=f"encoders.{m}."))
        else:
            out.update(child.state_dict(prefix=f"{name}."))
    return out


class BestTracker:
    """Tracks ``metric`` over evaluations: a better value (by more than ``min_delta``) keeps
    a copy of the weights that can change (``changing_state``; ``best_state.safetensors``
    in the run folder, written by the main process); ``patience`` evaluations without one
    stop the run."""

    def __init__(
        self,
        metric: str,
        min_delta: float = 0.0,
        patience: int | None = None,
        run_dir: Path | None = None,
        write: bool = True,
        frozen: Sequence[str] = (),
    ) -> None:
        self.metric, self.mode = metric, METRIC_MODES.get(metric, "max")
        self.min_delta, self.patience = min_delta, patience
        self.path = run_dir / BEST_STATE_NAME if run_dir else None
        self.write, self.frozen = write, tuple(frozen)
        self.weights: dict[str, torch.Tensor] | None = None

    def resume(self, state: TrainState, checkpoint: Path | None) -> None:
        """Reload the best weights of a run resumed from ``checkpoint``: its own copy, which
        checksums cover and which a later improvement cannot have overwritten."""
        if state.best_step is None or checkpoint is None:
            return
        saved = checkpoint / BEST_STATE_NAME
        if not saved.is_file():
            raise CorruptCheckpointError(
                f"checkpoint {checkpoint} has no {BEST_STATE_NAME}, the weights of its best "
                f"evaluation (step {state.best_step}); it cannot be resumed exactly"
            )
        self.weights = load_file(str(saved))
        if self.write and self.path is not None:
            shutil.copyfile(saved, self.path)

    def update(self, metrics: dict[str, float], state: TrainState, model: Any) -> None:
        """Record one evaluation of ``model`` (the unwrapped module) in ``state``."""
        value = metrics.get(self.metric)
        if value is None:
            raise ValueError(
                f"metric {self.metric!r} is not computed for task {model.head.task.name!r}; "
                f"available: {sorted(metrics)}"
            )
        if is_better(value, state.best, self.mode, self.min_delta):
            state.best, state.best_step, state.bad_evals = value, state.step, 0
            self.weights = {
                k: v.detach().cpu().clone().contiguous()
                for k, v in changing_state(model, self.frozen).items()
            }
            if self.write and self.path is not None:
                tmp = self.path.with_suffix(".tmp")
                save_file(self.weights, str(tmp))
                os.replace(tmp, self.path)
        else:
            state.bad_evals += 1
            if self.patience is not None and state.bad_evals >= self.patience:
                state.stopped = True

    def restore(self, model: Any) -> None:
        """Load the best weights into ``model``, if any evaluation ran."""
        if self.weights is None:
            return
        missing, unexpected = model.load_state_dict(self.weights, strict=False)
        left = [
            k for k in missing if not k.startswith(tuple(f"encoders.{m}." for m in self.frozen))
        ]
        if left or unexpected:
            raise CorruptCheckpointError(
                f"the best weights do not fit the model: missing {left[:5]}, unexpected {unexpected[:5]}"
            )
