"""One training step: objective, backward, clipping and the update, with the non-finite guard."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from ..core.randomness import keyed_randomness
from ..modeling.model import Batch, ModelOutput
from .checkpoint import last_checkpoint
from .objective import LossTerms, Objective
from .state import TrainState

logger = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


@dataclass
class StepOutcome:
    """synced: this micro-batch ended an accumulation window; skipped: its update was dropped
    for a non-finite loss or gradient (or by the fp16 grad scaler)."""

    out: ModelOutput
    terms: LossTerms
    synced: bool
    skipped: bool


class TrainStep:
    """A step whose loss or gradient is not finite is skipped on every process and counted;
    ``max_nonfinite`` skipped steps in a row stop the run with ``NonFiniteTrainingError``."""

    def __init__(
        self,
        accelerator: Accelerator,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        objective: Objective,
        max_grad_norm: float | None,
        max_nonfinite: int,
        seed: int = 0,
    ) -> None:
        self.accelerator, self.model, self.objective = accelerator, model, objective
        self.seed, self.micro = seed, 0  # keyed randomness: (seed, micro-batch count)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.max_grad_norm, self.max_nonfinite = max_grad_norm, max_nonfinite
        self.finite = True  # over the micro-batches of one accumulation window
        # Listed once (walking the module tree at every step costs ~1 ms). Under FSDP all of
        # them (accelerate recognises a model's own parameter list when clipping); else only
        # those that train: a frozen pretrained encoder's hundreds of tensors have no gradient.
        fsdp = accelerator.distributed_type == DistributedType.FSDP
        self.params = [p for p in model.parameters() if fsdp or p.requires_grad]
        self.consecutive_skips = 0
        self.balance_log: dict[str, float] = {}  # the balancing method's last coefficients

    def __call__(self, batch: Batch, progress: float, step: int = 0) -> StepOutcome:
        """One micro-batch at optimizer step ``step``; the fusion's and head's dropout and
        noise are keyed by (the fit's seed, the micro-batch's count: step x grad_accum plus
        its place in the accumulation window), so a resumed fit draws what it would have."""
        accelerator = self.accelerator
        with accelerator.accumulate(self.model):
            count = step * accelerator.gradient_accumulation_steps + self.micro
            with keyed_randomness(self.seed, count):
                out, terms = self.objective(batch, progress)
            accelerator.backward(terms.total)
            # An empty batch (a Poisson draw under train.dp) has a NaN mean loss and zero
            # gradients; its update still runs: the noise and the accountant count it.
            empty = "row" in batch and len(batch["row"]) == 0
            self.finite = self.finite and (empty or bool(torch.isfinite(terms.total.detach())))
            skipped = False
            if accelerator.sync_gradients:
                self.balance_log = self.objective.balancer.modulate(
                    self.objective.unwrapped, accelerator
                )
                norm = self._clip_or_norm()
                self.finite = self.finite and (norm is None or bool(torch.isfinite(norm)))
                if accelerator.scaler is None:
                    skipped = not _on_every_process(accelerator, self.finite)
                self.finite = True
                self.micro = 0
            else:
                self.micro += 1
            if not skipped:
                self.optimizer.step()
                # fp16: the grad scaler skips overflowing steps itself and lowers its scale.
                skipped = accelerator.sync_gradients and self.optimizer.step_was_skipped
                if not skipped:
                    self.scheduler.step()
            self.optimizer.zero_grad()
        return StepOutcome(out, terms, accelerator.sync_gradients, skipped)

    def _clip_or_norm(self) -> torch.Tensor | None:
        """Clip to ``max_grad_norm`` through accelerate (sharded and fp16-scaled gradients
        included), returning the norm. Without clipping, only the non-finite guard needs the
        norm: fp16's grad scaler checks by itself, and plain gradients (DDP has reduced
        them) are measured without accelerate's clipping pass."""
        accelerator = self.accelerator
        if self.max_grad_norm is not None:
            return accelerator.clip_grad_norm_(self.params, self.max_grad_norm)
        if accelerator.scaler is not None:
            return None
        if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            return accelerator.clip_grad_norm_(self.params, math.inf)
        grads = [p.grad for p in self.params if p.grad is not None]
        return torch.nn.utils.get_total_norm(grads, foreach=True) if grads else None

    def count_skip(self, state: TrainState, run_dir: Path | None) -> None:
        """Count a skipped update; raise once ``max_nonfinite`` came in a row."""
        state.skipped_steps += 1
        self.consecutive_skips += 1
        logger.warning(
            "non-finite loss or gradient after step %d: update skipped (%d in a row)",
            state.step, self.consecutive_skips,
        )  # fmt: skip
        if self.consecutive_skips >= self.max_nonfinite:
            raise NonFiniteTrainingError(
                f"{self.consecutive_skips} consecutive non-finite steps after step {state.step} "
                f"(epoch {state.epoch}); last good checkpoint: {last_checkpoint(run_dir) or 'none'}"
            )


def _on_every_process(accelerator: Accelerator, flag: bool) -> bool:
    """Whether ``flag`` holds on every process (so all of them skip a step, or none)."""
    if accelerator.num_processes == 1:
        return flag
    bad = torch.tensor([0.0 if flag else 1.0], device=accelerator.device)
    return bool(accelerator.reduce(bad, reduction="sum").item() == 0)
