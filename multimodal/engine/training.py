"""``fit``: the training loop on Hugging Face Accelerate, one loop for CPU, one GPU or many.

The loop reads batch -> step -> log -> evaluate -> save. Its parts live beside it:
``loaders`` (raw or cached batches), ``objective`` (every loss term), ``step`` (update and
non-finite guard), ``tracking`` (best weights, early stopping), ``checkpoint``, ``state``
and ``recorder`` (the run's files and trackers).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..core.io import CorruptCheckpointError
from ..core.provenance import resident_memory_mb
from ..core.run_folder import RunFolder
from ..data.split import Split
from ..modeling.augment import Augmenter, augmenter
from ..modeling.balance import Balancer, create_balancer
from ..modeling.freezing import apply_strategy, frozen_encoders, merge_lora
from ..modeling.model import move_to
from ..modeling.regularize import Regularizer, create_regularizer
from ..modeling.tasks import RANKING_METRICS
from ..modeling.uda import create_uda_objective, uda_needs_classes
from .averaging import weight_average
from .batch_size import resolve_batch_size
from .checkpoint import (
    check_random_states,
    check_resume_config,
    load_modules,
    resolve_resume,
    save_checkpoint,
)
from .config import FitData, FitResult, TrainConfig
from .domains import dg_objective
from .evaluate import eval_metrics, loader_config
from .loaders import (
    Loaders,
    build_loaders,
    lockstep,
    reference_batches,
    target_stream,
    use_feature_cache,
)
from .objective import Objective, adversarial_options
from .optim import build_optimizer
from .performance import (
    allow_precision,
    apply_speedups,
    fit_device,
    fused_optimizer,
    pin_memory,
    precision,
    undo_speedups,
)
from .privacy import DeviceLoader, DPSettings, PrivateTraining, dp_settings, make_private
from .recorder import RunRecorder, claimed_run_folder
from .state import LoopClock, TrainState
from .step import StepOutcome, TrainStep
from .tracking import BestTracker

logger = logging.getLogger(__name__)
# Called with each evaluation's metrics and the state; True stops training.
EvalCallback = Callable[[dict[str, float], TrainState], bool]


def fit(
    model: Any,
    data: FitData,
    config: TrainConfig | Mapping[str, Any] | None = None,
    on_evaluate: Sequence[EvalCallback] = (),
    on_step: Sequence[Callable[[TrainState], None]] = (),
) -> FitResult:
    """Train ``model`` on ``data.train``, validating on ``data.validation``; restores the best weights.

    Each of ``on_evaluate`` gets every evaluation's metrics and the training state; one
    that returns True stops training there (a pruned hyperparameter trial, say). Each of
    ``on_step`` is called after every optimizer update (a progress bar over several fits).

    With ``output_dir`` the run folder holds ``config.json``, ``environment.json``,
    ``metrics.jsonl``, ``checkpoints/step_N`` (accelerate ``save_state``), ``best_state.safetensors``
    and ``best_model/`` (``save_pretrained``).
    """
    cfg = TrainConfig.from_dict(config)
    with claimed_run_folder(cfg):
        return _fit(model, data, cfg, on_evaluate, on_step)


def _fit(
    model: Any, data: FitData, cfg: TrainConfig, on_evaluate: Sequence[EvalCallback],
    on_step: Sequence[Callable[[TrainState], None]],
) -> FitResult:  # fmt: skip
    start = time.perf_counter()
    run = _prepare(model, data, cfg)
    run.on_evaluate, run.on_step = list(on_evaluate), list(on_step)
    run.average = weight_average(run.unwrapped, cfg, run.on_step)
    state = _restore(run)
    run.train_step = _train_step(run, state)
    run.recorder.start(run.counts, state)
    bar = tqdm(total=run.total_steps, initial=state.step, desc="train",
               disable=not (cfg.progress and run.accelerator.is_local_main_process))  # fmt: skip
    clock = LoopClock()
    while state.step < run.total_steps and not state.stopped:
        _train_epoch(run, state, clock, bar)
        if state.step < run.total_steps and not state.stopped:
            if not cfg.eval_every and not state.evaluated:
                _evaluate(run, state)
            state.epoch += 1
            state.batch_in_epoch = 0
    bar.close()
    if not cfg.eval_every and not state.evaluated:
        _evaluate(run, state)  # the final weights, unless just evaluated
    return _finish(run, state, clock, time.perf_counter() - start)


@dataclass
class _Run:
    """What ``fit`` prepared: the wrapped model and its bare module, loaders, optimizer."""

    cfg: TrainConfig
    accelerator: Accelerator
    model: Any
    unwrapped: Any
    frozen: list[str]
    counts: dict[str, int]
    loaders: Loaders
    train_sampler: Any
    target_sampler: Any
    optimizer: Any
    scheduler: Any
    uda: Any
    balancer: Balancer
    regularizer: Regularizer | None
    adversarial: dict[str, Any] | None
    total_steps: int
    run_dir: Path | None
    recorder: RunRecorder
    best: BestTracker
    streaming: bool = False
    privacy: PrivateTraining | None = None
    on_evaluate: list[EvalCallback] = field(default_factory=list)
    on_step: list[Callable[[TrainState], None]] = field(default_factory=list)
    train_step: TrainStep | None = None
    dg: Any = None  # train.dg's objective (modeling.dg)
    average: Any = None  # train.weight_average (engine.averaging)


def _prepare(model: Any, data: FitData, cfg: TrainConfig) -> _Run:
    """Accelerator, freezing, loaders, optimizer and schedule, then one ``prepare`` call."""
    run_dir = Path(cfg.output_dir) if cfg.output_dir else None
    settings = dp_settings(cfg, Split(data.train).streamed)
    mixed = precision(cfg, fit_device())
    allow_precision(mixed)
    accelerator = Accelerator(
        mixed_precision=mixed, gradient_accumulation_steps=cfg.grad_accum,
        project_dir=str(run_dir) if run_dir else None, dataloader_config=loader_config(),
    )  # fmt: skip
    pinned = pin_memory(cfg, accelerator.device)
    accelerator.dataloader_config.non_blocking = pinned  # read when the loaders are prepared
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and accelerator.num_processes == 1:
        raise RuntimeError(
            f"launched with WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate sees one process; on CPU "
            "use `accelerate launch --cpu` or set ACCELERATE_USE_CPU=true with torchrun"
        )
    set_seed(cfg.seed)
    counts = apply_strategy(model, cfg.strategy, cfg.top_k, cfg.lora)
    if accelerator.is_main_process:
        logger.info("strategy %s: %s of %s parameters trainable", cfg.strategy,
                    f"{counts['trainable']:,}", f"{counts['total']:,}")  # fmt: skip
    frozen = frozen_encoders(model)
    if next(model.parameters()).device != accelerator.device:  # .to walks every module anyway
        model.to(accelerator.device)
    cfg = resolve_batch_size(model, data, cfg, accelerator.device, mixed)
    accelerator.gradient_accumulation_steps = cfg.grad_accum
    applied = apply_speedups(model, cfg, accelerator.device)
    if applied and accelerator.is_main_process:
        logger.info("speed-ups: %s", ", ".join(applied))
    adversarial = adversarial_options(cfg.adversarial)
    # A stream is never held whole, and neither are its encoder outputs.
    use_cache = (
        use_feature_cache(cfg, frozen, len(model.encoders)) and not Split(data.train).streamed
    )
    loaders = build_loaders(
        model, data, cfg, use_cache, run_dir, accelerator.main_process_first, pinned, frozen
    )
    uda = None
    if loaders.target is not None:
        if uda_needs_classes(cfg.uda):
            model.head.task.require_classes(f"train.uda={cfg.uda}")
        uda = create_uda_objective(cfg.uda, model.fusion.out_dim, model.head.num_classes,
                                       weight=cfg.uda_weight, **cfg.uda_kwargs).to(accelerator.device)  # fmt: skip
    optimizer = build_optimizer(model, cfg, fused_optimizer(cfg, accelerator.device))
    uda_params = list(uda.parameters()) if uda is not None else []
    balancer = _balancer(model, data, cfg, accelerator)
    regularizer = _regularizer(model, data, cfg, loaders, accelerator.device)
    dg = dg_objective(model, cfg, loaders.domains)
    for extra in (uda_params, list(balancer.parameters())):
        if extra:
            optimizer.add_param_group(
                {"params": extra, "lr": cfg.lr, "weight_decay": cfg.weight_decay}
            )
    n = accelerator.num_processes
    total_steps = cfg.max_steps or cfg.epochs * math.ceil(
        loaders.train_batches / cfg.grad_accum / n
    )
    bare, target_sampler = model, loaders.target.sampler if loaders.target is not None else None
    model, optimizer, scheduler, train_sampler, privacy = _prepare_training(
        accelerator, cfg, model, optimizer, loaders, settings, total_steps
    )
    metric = cfg.metric or bare.head.task.default_metric
    if loaders.target is not None:
        loaders.target = accelerator.prepare(loaders.target)
        if uda_params:
            uda = accelerator.prepare(uda)
    if loaders.evaluation is not None:
        loaders.evaluation = accelerator.prepare(loaders.evaluation)
    return _Run(
        cfg=cfg, accelerator=accelerator, model=model, unwrapped=accelerator.unwrap_model(bare),
        frozen=frozen, counts=counts, loaders=loaders, train_sampler=train_sampler,
        target_sampler=target_sampler, optimizer=optimizer, scheduler=scheduler, uda=uda,
        balancer=balancer, regularizer=regularizer, adversarial=adversarial, total_steps=total_steps, run_dir=run_dir,
        recorder=RunRecorder(accelerator, cfg), streaming=Split(data.train).streamed,
        best=BestTracker(metric, cfg.min_delta, cfg.patience, run_dir, accelerator.is_main_process, frozen),
        privacy=privacy, dg=dg,
    )  # fmt: skip


def _prepare_training(
    accelerator: Accelerator, cfg: TrainConfig, model: Any, optimizer: Any, loaders: Loaders,
    settings: DPSettings | None, total_steps: int,
) -> tuple[Any, Any, Any, Any, PrivateTraining | None]:  # fmt: skip
    """The model, optimizer, training loader and schedule through accelerate's ``prepare``;
    under ``train.dp``, Opacus's instead (see ``engine.privacy``), accelerate only wrapping
    the optimizer. Returns the model, optimizer, scheduler, the training loader's sampler and
    the private training (or None)."""
    n, train_sampler, privacy = accelerator.num_processes, loaders.train.sampler, None
    if settings is not None:
        model, optimizer, loaders.train, privacy = make_private(
            model, optimizer, loaders.train, settings, total_steps, n
        )
        loaders.train, train_sampler, n = DeviceLoader(loaders.train, accelerator.device), None, 1
    # accelerate steps a prepared scheduler once per process at every optimizer step.
    from transformers import get_scheduler  # seconds to import; only a fit needs it

    scheduler = get_scheduler(
        cfg.scheduler, optimizer, int(cfg.warmup_ratio * total_steps) * n, total_steps * n
    )
    if privacy is None:
        # The model is on its device already (_prepare): placing it again walks every module.
        model, optimizer, loaders.train, scheduler = accelerator.prepare(
            model, optimizer, loaders.train, scheduler, device_placement=[False, True, True, True]
        )
    else:
        optimizer = accelerator.prepare_optimizer(optimizer)
    return model, optimizer, scheduler, train_sampler, privacy


def _balancer(model: Any, data: FitData, cfg: TrainConfig, accelerator: Accelerator) -> Balancer:
    """The modality-balancing method, on the device, its state saved with checkpoints."""
    balancer = create_balancer(cfg.balance, model, cfg.balance_strength, seed=cfg.seed,
                               has_validation=data.validation is not None, **cfg.balance_kwargs)  # fmt: skip
    balancer.to(accelerator.device)
    if cfg.balance != "none" and accelerator.is_main_process:
        logger.info("modality balancing: %s, strength %s", cfg.balance, cfg.balance_strength)
    return balancer


def _regularizer(
    model: Any, data: FitData, cfg: TrainConfig, loaders: Loaders, device: Any
) -> Regularizer | None:
    """The pull toward the starting model (``train.regularize``), built from it now."""
    kwargs = dict(cfg.regularize_kwargs)
    rows = int(kwargs.pop("reference_rows", 256))
    reference = None
    if cfg.regularize == "ewc" and data.reference is not None:
        batches = reference_batches(model, data, cfg, loaders.use_cache, rows)
        reference = (move_to(b, device) for b in batches)
    return create_regularizer(cfg.regularize, model, cfg.regularize_weight, loaders.forward,
                              reference, **kwargs)  # fmt: skip


def _saved_modules(run: _Run) -> dict[str, Any]:
    """What checkpoints hold beside accelerate's state: the balancing method's heads and
    statistics."""
    return {"balance": run.balancer} if list(run.balancer.state_dict()) else {}


def _checkpoint(run: _Run, state: TrainState) -> None:
    state.log_bytes = run.recorder.position()
    save_checkpoint(run.accelerator, run.run_dir, state, run.cfg.keep_checkpoints,
                    _saved_modules(run), files=[run.best.path] if run.best.path else [],
                    config=dataclasses.asdict(run.cfg))  # fmt: skip


def _restore(run: _Run) -> TrainState:
    """A fresh state, or the one of the checkpoint ``resume_from`` names (with its weights,
    optimizer, scheduler and RNG states, and the best weights so far)."""
    state = TrainState()
    path = resolve_resume(run.cfg.resume_from, run.run_dir) if run.cfg.resume_from else None
    if run.cfg.resume_from and path is None:
        logger.warning("resume_from=%s: %s holds no complete checkpoint; training from step 0",
                       run.cfg.resume_from, RunFolder(run.run_dir).checkpoints)  # fmt: skip
    if path is not None:
        check_resume_config(path, run.run_dir, run.cfg)
        check_random_states(path, run.accelerator.process_index)
        try:
            run.accelerator.load_state(str(path))
        except pickle.UnpicklingError as err:
            # torch's message goes on to advise weights_only=False: unsafe for this file.
            raise CorruptCheckpointError(
                f"checkpoint {path} holds a file that is not plain tensors, so it was not "
                f"unpickled ({str(err).split('.', 1)[0]}); resume from another checkpoint"
            ) from None
        load_modules(path, _saved_modules(run))
        state = TrainState.load(path)
        run.accelerator.print(f"resumed from {path} at step {state.step}")
    run.best.resume(state, path)
    return state


def _train_step(run: _Run, state: TrainState) -> TrainStep:
    target_batches = None
    if run.loaders.target is not None:
        # one target batch per source batch, counted from where the run stands
        start = state.step * run.cfg.grad_accum
        target_batches = target_stream(run.loaders.target, run.target_sampler, start)
    uda = run.accelerator.unwrap_model(run.uda) if run.uda else None
    views = None
    if getattr(uda, "views", False):
        views = (Augmenter(run.unwrapped, "weak"), Augmenter(run.unwrapped, "strong"))
    objective = Objective(run.model, run.unwrapped, run.adversarial, uda, run.cfg.uda_weight,
                          target_batches, run.loaders.forward, run.balancer, run.regularizer,
                          augmenter(run.unwrapped, run.cfg.augment), views, run.dg)  # fmt: skip
    # Under train.dp Opacus clips each row's gradient instead.
    clip = run.cfg.max_grad_norm if run.privacy is None else None
    return TrainStep(run.accelerator, run.model, run.optimizer, run.scheduler, objective,
                     clip, run.cfg.max_nonfinite_steps, run.cfg.seed)  # fmt: skip


def _train_epoch(run: _Run, state: TrainState, clock: LoopClock, bar: Any) -> None:
    """Batches of one epoch (the rest of it, on resume) until it ends, the step budget is
    spent or early stopping fires; evaluations inside it are not counted as training time."""
    cfg, accelerator = run.cfg, run.accelerator
    loader = run.loaders.train
    if state.batch_in_epoch:
        loader = accelerator.skip_first_batches(run.loaders.train, state.batch_in_epoch)
    # accelerate's loaders set their sampler's epoch from their own iteration count,
    # which a resumed run (or the skipping loader) does not share: set it explicitly.
    for each in (loader, run.loaders.train, run.train_sampler):
        if hasattr(each, "set_epoch"):
            each.set_epoch(state.epoch)
    _train_mode(run)
    tick = epoch_start = time.perf_counter()
    eval_time = 0.0
    if run.streaming:
        loader = lockstep(
            loader,
            math.ceil(run.loaders.train_batches / accelerator.num_processes) - state.batch_in_epoch,
        )
    for batch in clock.timed(loader):
        outcome = run.train_step(batch, state.step / max(run.total_steps, 1), state.step)
        state.batch_in_epoch += 1
        clock.samples += len(batch["row"]) * accelerator.num_processes
        if not outcome.synced:
            continue
        if outcome.skipped:
            run.train_step.count_skip(state, run.run_dir)
            continue
        run.train_step.consecutive_skips = 0
        state.step += 1
        clock.steps += 1
        if clock.steps == 1:  # torch.compile compiles here
            clock.first_step_s = time.perf_counter() - epoch_start
        bar.update(1)
        for callback in run.on_step:
            callback(state)
        if state.step % cfg.log_every == 0:
            _log_step(run, state, outcome, bar)
        if cfg.eval_every and state.step % cfg.eval_every == 0:
            paused = time.perf_counter()
            clock.seconds += paused - tick
            _evaluate(run, state)
            tick = time.perf_counter()
            eval_time += tick - paused
        if run.run_dir is not None and cfg.save_every and state.step % cfg.save_every == 0:
            _checkpoint(run, state)
        if state.step >= run.total_steps or state.stopped:
            break
    clock.seconds += time.perf_counter() - tick
    clock.epoch_seconds.append(time.perf_counter() - epoch_start - eval_time)


def _log_step(run: _Run, state: TrainState, outcome: StepOutcome, bar: Any) -> None:
    record = {
        "step": state.step, "epoch": state.epoch, "train_loss": outcome.out.loss.item(),
        "lr": run.scheduler.get_last_lr()[0], "skipped_steps": state.skipped_steps,
    }  # fmt: skip
    rss = resident_memory_mb()
    if rss is not None:
        record["rss_mb"] = rss
    if outcome.terms.uda is not None:
        record["uda_loss"] = outcome.terms.uda.item()
    if outcome.terms.adversarial is not None:
        record["adversarial_loss"] = outcome.terms.adversarial.item()
    if outcome.terms.balance is not None:
        record["balance_loss"] = outcome.terms.balance.item()
    if outcome.terms.regularize is not None:
        record["regularize_loss"] = outcome.terms.regularize.item()
    record.update(run.train_step.balance_log)
    bar.set_postfix(loss=f"{record['train_loss']:.4f}")
    run.recorder.log(record)


def _evaluate(run: _Run, state: TrainState) -> None:
    """Validation metrics into the history and the log; best weights and early stopping."""
    if run.loaders.evaluation is None:
        return
    # Under train.dp the bare model: Opacus's wrappers hide its head.
    model = run.model if run.privacy is None else run.unwrapped
    with run.average.swapped():  # train.weight_average: the averaged weights are evaluated
        # AUROC sorts every class's scores: left out unless it is what the run tracks.
        metrics = eval_metrics(model, run.loaders.evaluation, run.accelerator, run.loaders.forward,
                               run.unwrapped, ranking=run.best.metric in RANKING_METRICS)  # fmt: skip
        balance = run.balancer.on_evaluate(run.model, run.loaders.evaluation, run.loaders.forward,
                                           run.accelerator)  # fmt: skip
        evals = {f"eval_{k}": v for k, v in metrics.items()}
        record = {"step": state.step, "epoch": state.epoch, **evals, **balance}
        state.history.append(record)
        run.recorder.log(record)
        was_stopped = state.stopped
        run.best.update(metrics, state, run.unwrapped)
        stop = any([callback(metrics, state) for callback in run.on_evaluate])
    if state.stopped and not was_stopped:  # by patience
        run.accelerator.print(f"early stopping at step {state.step}: no {run.best.metric} gain "
                              f"in {run.cfg.patience} evaluations")  # fmt: skip
    state.stopped = state.stopped or stop
    _train_mode(run)


def _finish(run: _Run, state: TrainState, clock: LoopClock, wall_time: float) -> FitResult:
    """A last checkpoint, the best weights back (LoRA merged), ``best_model/`` saved."""
    privacy = run.privacy.summary() if run.privacy is not None else None
    if run.privacy is not None:
        run.privacy.close()
    elif run.run_dir is not None:
        _checkpoint(run, state)
    undo_speedups(run.unwrapped)
    if run.loaders.evaluation is None:
        run.average.keep()  # else the best evaluation's weights, averaged ones, come back
    run.best.restore(run.unwrapped)
    if run.cfg.strategy == "lora":
        merge_lora(run.unwrapped)
    if run.accelerator.is_main_process and run.run_dir is not None:
        run.unwrapped.save_pretrained(RunFolder(run.run_dir).best_model)
    run.unwrapped.eval()
    per_s = lambda n: n / clock.seconds if clock.seconds > 0 else 0.0  # noqa: E731
    result = FitResult(
        best_metric=state.best, best_step=state.best_step, metric=run.best.metric, steps=state.step,
        history=state.history, trainable_parameters=run.counts["trainable"],
        total_parameters=run.counts["total"], wall_time_s=wall_time,
        train_samples_per_s=per_s(clock.samples), train_steps_per_s=per_s(clock.steps),
        epoch_seconds=clock.epoch_seconds, used_feature_cache=run.loaders.use_cache,
        run_dir=str(run.run_dir) if run.run_dir else None, skipped_steps=state.skipped_steps,
        privacy=privacy, batch_size=int(run.cfg.batch_size), grad_accum=run.cfg.grad_accum,
        data_wait_s=clock.data_seconds, first_step_s=clock.first_step_s,
    )  # fmt: skip
    summary = {
        k: v for k, v in dataclasses.asdict(result).items() if k not in ("history", "epoch_seconds")
    }
    run.recorder.close(summary, state.step)
    return result


def _train_mode(run: _Run) -> None:
    """Train mode, except frozen encoders: no BatchNorm updates, dropout or SpecAugment.
    A frozen encoder already in eval mode is left alone: walking a large pretrained
    network's modules every epoch costs more than a small head's whole epoch."""
    run.model.training = True  # the wrapper (DDP), if any
    for name, child in run.unwrapped.named_children():
        if name != "encoders":
            child.train()
    run.unwrapped.training = True
    for m, encoder in run.unwrapped.encoders.items():
        if m not in run.frozen:
            encoder.train()
        elif encoder.training:
            encoder.eval()
    run.unwrapped.encoders.training = True
