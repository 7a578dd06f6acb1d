"""The training engine on Hugging Face Accelerate: one loop for CPU, one GPU or many."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
import math
import os
import platform
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_scheduler

from ._io import (
    CHECKSUMS_NAME,
    CorruptCheckpointError,
    file_checksums,
    verify_checkpoint,
    write_json_atomic,
)
from .cache import CachedCollator, CachedFeatures, compute_features
from .data import DatasetSpec, EpochSampler, make_loader
from .freezing import apply_strategy, frozen_encoders, merge_lora
from .metrics import METRIC_MODES, compute_metrics

logger = logging.getLogger(__name__)
STATE_NAME = "trainer_state.json"


@dataclass
class TrainConfig:
    """Everything ``fit`` needs to know; every field can be set from YAML or ``train.KEY=VALUE``."""

    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 32
    eval_batch_size: int | None = None
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    encoder_lr: float | None = None  # default: lr
    layer_decay: float | None = None  # e.g. 0.75: each block down gets lr * 0.75
    weight_decay: float = 0.01
    momentum: float = 0.9
    scheduler: str = (
        "cosine"  # any transformers scheduler name: cosine, linear, constant_with_warmup...
    )
    warmup_ratio: float = 0.05
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"  # no | bf16 | fp16
    strategy: str = "full"  # head | top_k | full | lora
    top_k: int = 1
    lora: dict[str, Any] = field(default_factory=dict)  # r, alpha, dropout
    feature_cache: str = "memory"  # memory | disk | off; used when every encoder is frozen
    metric: str | None = None  # default: accuracy (classification/multilabel), rmse (regression)
    patience: int | None = None
    min_delta: float = 0.0
    eval_every: int | None = None  # steps; default: once per epoch
    save_every: int | None = None  # steps; a checkpoint is also written at the end
    output_dir: str | None = None
    resume_from: str | None = None  # a checkpoint folder, or "latest"
    keep_checkpoints: int = 2
    seed: int = 0
    num_workers: int = 0
    on_error: str = "raise"
    modality_dropout: dict[str, float] | float | None = None
    adapt_method: str = (
        "none"  # none | dann | cdan | coral | mmd | entropy (needs FitData.unlabelled)
    )
    adapt_weight: float = 1.0
    adapt_kwargs: dict[str, Any] = field(default_factory=dict)
    # Adversarial training: {"method": fgsm|pgd, "budgets": {kind: radius}, "steps": 3,
    # "weight": 0.5}; the loss is (1 - weight) * clean + weight * adversarial.
    adversarial: dict[str, Any] | None = None
    # A step whose loss or gradient is not finite is skipped (and counted); this many in a
    # row stop the run with an error naming the step and the last good checkpoint.
    max_nonfinite_steps: int = 10
    log_every: int = 10
    tensorboard: bool = True
    progress: bool = True

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | TrainConfig | None) -> TrainConfig:
        if isinstance(data, TrainConfig):
            return data
        data = dict(data or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in data.items():
            if key not in fields:
                raise ValueError(
                    f"unknown train key {key!r}; close matches: {difflib.get_close_matches(key, list(fields))}"
                )
            if isinstance(value, str) and "float" in str(fields[key].type):
                data[key] = float(value)  # YAML 1.1 reads 3e-4 as a string
        return cls(**data)


@dataclass
class FitData:
    """The splits ``fit`` trains and validates on, with the spec that maps their columns."""

    spec: DatasetSpec
    train: datasets.Dataset
    validation: datasets.Dataset | None = None
    unlabelled: datasets.Dataset | None = (
        None  # target rows for unsupervised adaptation (labels unused)
    )


@dataclass
class FitResult:
    best_metric: float | None
    best_step: int | None
    metric: str
    steps: int
    history: list[dict[str, Any]]
    trainable_parameters: int
    total_parameters: int
    wall_time_s: float
    train_samples_per_s: float
    train_steps_per_s: float
    epoch_seconds: list[float]  # training-loop time of each epoch this process ran
    used_feature_cache: bool
    run_dir: str | None = None
    skipped_steps: int = 0  # optimizer updates skipped for a non-finite loss or gradient


def _param_groups(model: Any, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW/SGD groups: encoder vs fusion/head lr, layer-wise decay, no decay on norms/biases."""
    encoder_lr = cfg.encoder_lr if cfg.encoder_lr is not None else cfg.lr
    scale: dict[int, float] = {}
    encoder_params: set[int] = set()
    for enc in model.encoders.values():
        blocks = enc.layer_blocks()
        for p in enc.parameters():
            encoder_params.add(id(p))
            scale[id(p)] = (
                (cfg.layer_decay ** (len(blocks) + 1)) if cfg.layer_decay and blocks else 1.0
            )
        if cfg.layer_decay:
            for i, block in enumerate(blocks):
                for p in block.parameters():
                    scale[id(p)] = cfg.layer_decay ** (len(blocks) - i)
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        lr = encoder_lr * scale[id(p)] if id(p) in encoder_params else cfg.lr
        decay = 0.0 if p.ndim <= 1 else cfg.weight_decay  # norms and biases
        groups.setdefault((lr, decay), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def build_optimizer(model: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg)
    # foreach: one fused update per parameter group; torch only picks it by default on GPUs.
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, foreach=True)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, foreach=True)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {cfg.optimizer!r}")


def _loader(
    model: Any,
    ds: datasets.Dataset,
    spec: DatasetSpec,
    split: str,
    cfg: TrainConfig,
    train: bool,
    domains: list[str],
) -> Any:
    return make_loader(
        ds, model, spec, split,
        batch_size=cfg.batch_size if train else (cfg.eval_batch_size or cfg.batch_size),
        shuffle=train, num_workers=cfg.num_workers, seed=cfg.seed, on_error=cfg.on_error,
        modality_dropout=cfg.modality_dropout if train else None, domains=domains,
    )  # fmt: skip


def _cached_loader(
    model: Any,
    ds: datasets.Dataset,
    spec: DatasetSpec,
    split: str,
    cfg: TrainConfig,
    train: bool,
    domains: list[str],
    folder: Path | None,
) -> Any:
    """Encoder outputs computed once, in row order, then served in the same order as the raw loader."""
    source = _loader(model, ds, spec, split, cfg, False, domains)  # unshuffled, no modality dropout
    rows = compute_features(model, source)
    dataset = CachedFeatures(
        rows, model.modalities, folder if cfg.feature_cache == "disk" else None
    )
    dims = {m: e.out_dim for m, e in model.encoders.items()}
    dropout = cfg.modality_dropout if train else None
    if isinstance(dropout, (int, float)):
        dropout = {m: float(dropout) for m in model.modalities}
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size if train else (cfg.eval_batch_size or cfg.batch_size),
        sampler=EpochSampler(len(dataset), cfg.seed, train),
        collate_fn=CachedCollator(dataset, dims, dropout, cfg.seed),
        generator=torch.Generator().manual_seed(cfg.seed),
    )


@torch.no_grad()
def predict_loader(
    model: Any, loader: Any, accelerator: Accelerator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and labels over a whole (prepared) loader, gathered across processes."""
    model.eval()
    logits, labels = [], []
    for batch in loader:
        logits.append(accelerator.gather_for_metrics(model(batch).logits.float()))
        if "labels" in batch:
            labels.append(accelerator.gather_for_metrics(batch["labels"]))
    return torch.cat(logits), (torch.cat(labels) if labels else None)


def _eval_metrics(model: Any, loader: Any, accelerator: Accelerator, task: str) -> dict[str, float]:
    """Task loss (without auxiliary losses) and metrics on the gathered predictions."""
    logits, labels = predict_loader(model, loader, accelerator)
    if labels is None:
        return {}
    head = accelerator.unwrap_model(model).head
    return {"loss": head.loss(logits, labels).item(), **compute_metrics(task, logits, labels)}


def checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a complete one holds trainer_state.json)."""
    folder = Path(run_dir) / "checkpoints"
    found = (
        [p for p in folder.glob("step_*") if (p / STATE_NAME).is_file()] if folder.is_dir() else []
    )
    return sorted(found, key=lambda p: int(re.sub(r"\D", "", p.name) or 0))


def _save_checkpoint(
    accelerator: Accelerator, run_dir: Path, state: dict[str, Any], keep: int
) -> Path:
    """accelerate's save_state into a temporary folder, then the state JSON, then one rename."""
    final = run_dir / "checkpoints" / f"step_{state['step']}"
    tmp = run_dir / "checkpoints" / f".tmp-step_{state['step']}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json_atomic(tmp / STATE_NAME, state)
            # Written last: a checkpoint is complete exactly when its checksums file exists.
            write_json_atomic(tmp / CHECKSUMS_NAME, {"sha256": file_checksums(tmp)})
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in checkpoints(run_dir)[:-keep] if keep > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        # A full disk or a crash mid-save: drop the partial folder, keep the older checkpoints.
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    return final


def _resolve_resume(resume_from: str, run_dir: Path | None) -> Path | None:
    """The checkpoint to resume from: the given folder (verified), or with ``latest`` the
    newest one whose checksums match, skipping corrupt ones with a warning."""
    if resume_from != "latest":
        path = Path(resume_from)
        if not (path / STATE_NAME).is_file():
            raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE_NAME})")
        verify_checkpoint(path)
        return path
    if run_dir is None:
        raise ValueError("resume_from='latest' needs output_dir")
    for path in reversed(checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
        except CorruptCheckpointError as err:
            logger.warning("%s; falling back to an older checkpoint", err)
            continue
        return path
    return None


def environment() -> dict[str, Any]:
    import importlib.metadata as md

    packages = {}
    for name in (
        "torch",
        "torchaudio",
        "torchvision",
        "timm",
        "transformers",
        "datasets",
        "accelerate",
        "peft",
        "torchmetrics",
        "transferfuse",
    ):
        with contextlib.suppress(md.PackageNotFoundError):
            packages[name] = md.version(name)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": packages,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
    }


def _is_better(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


def fit(
    model: Any, data: FitData, config: TrainConfig | Mapping[str, Any] | None = None
) -> FitResult:
    """Train ``model`` on ``data.train``, validating on ``data.validation``; restores the best weights.

    With ``output_dir`` the run folder holds ``config.json``, ``environment.json``,
    ``metrics.jsonl``, ``checkpoints/step_N`` (accelerate ``save_state``), ``best_state.safetensors``
    and ``best_model/`` (``save_pretrained``).
    """
    cfg = TrainConfig.from_dict(config)
    start_time = time.perf_counter()
    run_dir = Path(cfg.output_dir) if cfg.output_dir else None
    use_tb = False
    if run_dir is not None and cfg.tensorboard:
        use_tb = importlib_available("tensorboard")
    _allow_precision(cfg.mixed_precision)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with="tensorboard" if use_tb else None,
        project_dir=str(run_dir) if run_dir else None,
    )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and accelerator.num_processes == 1:
        raise RuntimeError(
            f"launched with WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate sees one process; on CPU "
            "use `accelerate launch --cpu` or set ACCELERATE_USE_CPU=true with torchrun"
        )
    set_seed(cfg.seed)
    task = model.head.task
    metric = cfg.metric or ("rmse" if task == "regression" else "accuracy")
    mode = METRIC_MODES.get(metric, "max")
    counts = apply_strategy(model, cfg.strategy, cfg.top_k, cfg.lora)
    if accelerator.is_main_process:
        logger.info(
            "strategy %s: %s of %s parameters trainable",
            cfg.strategy,
            f"{counts['trainable']:,}",
            f"{counts['total']:,}",
        )
    frozen = frozen_encoders(model)
    domains = sorted(
        set(data.train["domain"])
        | (set(data.validation["domain"]) if data.validation is not None else set())
    )

    model.to(accelerator.device)
    use_cache = cfg.feature_cache != "off" and len(frozen) == len(model.encoders)
    adversarial = _adversarial_options(cfg.adversarial)
    if adversarial is not None and use_cache:
        use_cache = False  # attacks perturb raw inputs, which cached features skip
    if use_cache:
        model.eval()
        cache_dir = run_dir / "feature_cache" if run_dir else None
        with accelerator.main_process_first():
            train_loader = _cached_loader(
                model,
                data.train,
                data.spec,
                "train",
                cfg,
                True,
                domains,
                cache_dir / "train" if cache_dir else None,
            )
            eval_loader = (
                _cached_loader(model, data.validation, data.spec, "validation", cfg, False, domains, cache_dir / "validation" if cache_dir else None)
                if data.validation is not None else None
            )  # fmt: skip
    else:
        train_loader = _loader(model, data.train, data.spec, "train", cfg, True, domains)
        eval_loader = (
            _loader(model, data.validation, data.spec, "validation", cfg, False, domains)
            if data.validation is not None
            else None
        )
    sampler = train_loader.sampler
    target_loader, adapter = None, None
    if cfg.adapt_method != "none":
        from .adapt import create_adapter

        if data.unlabelled is None:
            raise ValueError(
                f"adapt_method={cfg.adapt_method!r} needs FitData.unlabelled: target rows to adapt to"
            )
        unlabelled = data.unlabelled
        if data.spec.label in unlabelled.column_names:
            unlabelled = unlabelled.remove_columns([data.spec.label])  # never seen by the objective
        if use_cache:
            folder = cache_dir / "unlabelled" if cache_dir else None
            target_loader = _cached_loader(
                model, unlabelled, data.spec, "unlabelled", cfg, True, domains, folder
            )
        else:
            target_loader = _loader(model, unlabelled, data.spec, "unlabelled", cfg, True, domains)
        adapter = create_adapter(
            cfg.adapt_method,
            model.fusion.out_dim,
            model.head.num_classes,
            weight=cfg.adapt_weight,
            **cfg.adapt_kwargs,
        ).to(accelerator.device)

    optimizer = build_optimizer(model, cfg)
    if adapter is not None and any(True for _ in adapter.parameters()):
        optimizer.add_param_group(
            {"params": list(adapter.parameters()), "lr": cfg.lr, "weight_decay": cfg.weight_decay}
        )
    updates_per_epoch = math.ceil(len(train_loader) / cfg.grad_accum / accelerator.num_processes)
    total_steps = cfg.max_steps or cfg.epochs * updates_per_epoch
    # accelerate steps a prepared scheduler once per process at every optimizer step.
    scale = accelerator.num_processes
    scheduler = get_scheduler(
        cfg.scheduler, optimizer, int(cfg.warmup_ratio * total_steps) * scale, total_steps * scale
    )
    model, optimizer, train_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, scheduler
    )
    target_sampler = target_loader.sampler if target_loader is not None else None
    if target_loader is not None:
        target_loader = accelerator.prepare(target_loader)
        if any(True for _ in adapter.parameters()):
            adapter = accelerator.prepare(adapter)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    unwrapped = accelerator.unwrap_model(model)

    # Everything needed to continue, saved as JSON beside each checkpoint (evaluations included).
    state: dict[str, Any] = {
        "step": 0, "epoch": 0, "batch_in_epoch": 0, "best": None, "best_step": None,
        "bad_evals": 0, "stopped": False, "history": [], "skipped_steps": 0,
    }  # fmt: skip
    if cfg.resume_from:
        path = _resolve_resume(cfg.resume_from, run_dir)
        if path is not None:
            accelerator.load_state(str(path))
            state = {"skipped_steps": 0, **json.loads((path / STATE_NAME).read_text())}
            accelerator.print(f"resumed from {path} at step {state['step']}")
    best_path = run_dir / "best_state.safetensors" if run_dir else None
    best_weights: dict[str, torch.Tensor] | None = None
    if state["best_step"] is not None and best_path is not None and best_path.is_file():
        best_weights = load_file(str(best_path))

    if accelerator.is_main_process and run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(
            json.dumps(dataclasses.asdict(cfg), indent=2, default=str)
        )
        from .config import config_hash
        from .runs import git_state

        (run_dir / "environment.json").write_text(
            json.dumps(
                {
                    **environment(),
                    "device": str(accelerator.device),
                    "processes": accelerator.num_processes,
                    "train_config_hash": config_hash(dataclasses.asdict(cfg)),
                    "code": git_state(Path(__file__).resolve().parent),
                },
                indent=2,
                default=str,
            )
        )
    if use_tb:
        accelerator.init_trackers(
            "tensorboard",
            config={
                k: v
                for k, v in dataclasses.asdict(cfg).items()
                if isinstance(v, (int, float, str, bool))
            },
        )
    log_file = (
        open(run_dir / "metrics.jsonl", "a") if (run_dir and accelerator.is_main_process) else None
    )  # noqa: SIM115
    history: list[dict[str, Any]] = state["history"]
    if log_file is not None and state["step"] == 0:
        counts_record = {
            "step": 0,
            "strategy": cfg.strategy,
            "trainable_parameters": counts["trainable"],
            "total_parameters": counts["total"],
        }
        log_file.write(json.dumps(counts_record) + "\n")

    def log(record: dict[str, Any]) -> None:
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
        if use_tb:
            accelerator.log(
                {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"},
                step=record["step"],
            )

    def evaluate_now() -> None:
        nonlocal best_weights
        if eval_loader is None:
            return
        metrics = _eval_metrics(model, eval_loader, accelerator, task)
        record = {
            "step": state["step"],
            "epoch": state["epoch"],
            **{f"eval_{k}": v for k, v in metrics.items()},
        }
        history.append(record)
        log(record)
        value = metrics.get(metric)
        if value is None:
            raise ValueError(
                f"metric {metric!r} is not computed for task {task!r}; available: {sorted(metrics)}"
            )
        if _is_better(value, state["best"], mode, cfg.min_delta):
            state.update(best=value, best_step=state["step"], bad_evals=0)
            best_weights = {
                k: v.detach().cpu().clone().contiguous() for k, v in unwrapped.state_dict().items()
            }
            if accelerator.is_main_process and best_path is not None:
                tmp = best_path.with_suffix(".tmp")
                save_file(best_weights, str(tmp))
                os.replace(tmp, best_path)
        else:
            state["bad_evals"] += 1
            if cfg.patience is not None and state["bad_evals"] >= cfg.patience:
                state["stopped"] = True
                accelerator.print(
                    f"early stopping at step {state['step']}: no {metric} gain in {cfg.patience} evaluations"
                )
        model.train()
        _keep_frozen_in_eval(unwrapped, frozen)

    start = state["step"] * cfg.grad_accum  # one target batch per source batch
    target_batches = (
        _target_stream(target_loader, target_sampler, start) if target_loader is not None else None
    )
    bar = tqdm(
        total=total_steps,
        initial=state["step"],
        disable=not (cfg.progress and accelerator.is_local_main_process),
        desc="train",
    )
    trained_samples, train_time, steps_run, epoch_seconds = 0, 0.0, 0, []
    finite, consecutive_skips = True, 0
    while state["step"] < total_steps and not state["stopped"]:
        loader = (
            accelerator.skip_first_batches(train_loader, state["batch_in_epoch"])
            if state["batch_in_epoch"]
            else train_loader
        )
        # accelerate's loaders set their sampler's epoch from their own iteration count,
        # which a resumed run (or the skipping loader) does not share: set it explicitly.
        for each in (loader, train_loader):
            if hasattr(each, "set_epoch"):
                each.set_epoch(state["epoch"])
        sampler.set_epoch(state["epoch"])
        model.train()
        _keep_frozen_in_eval(unwrapped, frozen)
        tick = epoch_start = time.perf_counter()
        eval_time = 0.0
        for batch in loader:
            with accelerator.accumulate(model):
                out = model(batch)
                loss = out.loss
                if adversarial is not None:
                    from .adversarial import perturb

                    # Attacks need input gradients only: the unwrapped model avoids a DDP sync.
                    adv = perturb(unwrapped, batch, adversarial["method"], adversarial["budgets"],
                                  steps=adversarial["steps"])  # fmt: skip
                    adv_loss = model(adv).loss
                    loss = (1 - adversarial["weight"]) * loss + adversarial["weight"] * adv_loss
                if adapter is not None:
                    target_out = model(next(target_batches))
                    adapt_loss = accelerator.unwrap_model(adapter)(
                        out.fused,
                        target_out.fused,
                        out.logits,
                        target_out.logits,
                        state["step"] / max(total_steps, 1),
                    )
                    loss = loss + cfg.adapt_weight * adapt_loss
                accelerator.backward(loss)
                finite = finite and bool(torch.isfinite(loss.detach()))
                skipped = False
                if accelerator.sync_gradients:
                    norm = accelerator.clip_grad_norm_(
                        model.parameters(), cfg.max_grad_norm or math.inf
                    )
                    finite = finite and (norm is None or bool(torch.isfinite(norm)))
                    if accelerator.scaler is None:
                        skipped = not _on_every_process(accelerator, finite)
                    finite = True
                if not skipped:
                    optimizer.step()
                    # fp16: the grad scaler skips overflowing steps itself and lowers its scale.
                    skipped = accelerator.sync_gradients and optimizer.step_was_skipped
                    if not skipped:
                        scheduler.step()
                optimizer.zero_grad()
            state["batch_in_epoch"] += 1
            trained_samples += len(batch["row"]) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            if skipped:
                state["skipped_steps"] += 1
                consecutive_skips += 1
                logger.warning(
                    "non-finite loss or gradient after step %d: update skipped (%d in a row)",
                    state["step"], consecutive_skips,
                )  # fmt: skip
                if consecutive_skips >= cfg.max_nonfinite_steps:
                    last = (
                        checkpoints(run_dir)[-1]
                        if run_dir is not None and checkpoints(run_dir)
                        else None
                    )
                    raise NonFiniteTrainingError(
                        f"{consecutive_skips} consecutive non-finite steps after step {state['step']} "
                        f"(epoch {state['epoch']}); last good checkpoint: {last or 'none'}"
                    )
                continue
            consecutive_skips = 0
            state["step"] += 1
            steps_run += 1
            bar.update(1)
            if state["step"] % cfg.log_every == 0:
                record = {
                    "step": state["step"],
                    "epoch": state["epoch"],
                    "train_loss": out.loss.item(),
                    "lr": scheduler.get_last_lr()[0],
                    "skipped_steps": state["skipped_steps"],
                }
                rss = resident_memory_mb()
                if rss is not None:
                    record["rss_mb"] = rss
                if adapter is not None:
                    record["adapt_loss"] = adapt_loss.item()
                if adversarial is not None:
                    record["adversarial_loss"] = adv_loss.item()
                bar.set_postfix(loss=f"{record['train_loss']:.4f}")
                log(record)
            if cfg.eval_every and state["step"] % cfg.eval_every == 0:
                paused = time.perf_counter()
                train_time += paused - tick
                evaluate_now()
                tick = time.perf_counter()
                eval_time += tick - paused
            if run_dir is not None and cfg.save_every and state["step"] % cfg.save_every == 0:
                _save_checkpoint(accelerator, run_dir, state, cfg.keep_checkpoints)
            if state["step"] >= total_steps or state["stopped"]:
                break
        train_time += time.perf_counter() - tick
        epoch_seconds.append(time.perf_counter() - epoch_start - eval_time)
        if state["step"] < total_steps and not state["stopped"]:
            if not cfg.eval_every:
                evaluate_now()
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    bar.close()
    if (
        not cfg.eval_every
        and eval_loader is not None
        and (not history or history[-1]["step"] != state["step"])
    ):
        evaluate_now()
    if run_dir is not None:
        _save_checkpoint(accelerator, run_dir, state, cfg.keep_checkpoints)
    if best_weights is not None:
        unwrapped.load_state_dict(best_weights)
    if cfg.strategy == "lora":
        merge_lora(unwrapped)
    if accelerator.is_main_process and run_dir is not None:
        unwrapped.save_pretrained(run_dir / "best_model")
    if log_file is not None:
        log_file.close()
    # end_training() would also destroy the process group, which later evaluations and the
    # transfer stages of the same launch still need: finish the trackers only.
    for tracker in accelerator.trackers:
        tracker.finish()
    unwrapped.eval()
    return FitResult(
        best_metric=state["best"], best_step=state["best_step"], metric=metric, steps=state["step"],
        history=history, trainable_parameters=counts["trainable"], total_parameters=counts["total"],
        wall_time_s=time.perf_counter() - start_time,
        train_samples_per_s=trained_samples / train_time if train_time > 0 else 0.0,
        train_steps_per_s=steps_run / train_time if train_time > 0 else 0.0, epoch_seconds=epoch_seconds,
        used_feature_cache=use_cache, run_dir=str(run_dir) if run_dir else None,
        skipped_steps=state["skipped_steps"],
    )  # fmt: skip


def resident_memory_mb() -> float | None:
    """This process's resident set size in MiB (Linux /proc), or None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


def _on_every_process(accelerator: Accelerator, flag: bool) -> bool:
    """Whether ``flag`` holds on every process (so all of them skip a step, or none)."""
    if accelerator.num_processes == 1:
        return flag
    bad = torch.tensor([0.0 if flag else 1.0], device=accelerator.device)
    return bool(accelerator.reduce(bad, reduction="sum").item() == 0)


def _adversarial_options(options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not options:
        return None
    allowed = {"method", "budgets", "steps", "weight"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown train.adversarial keys {unknown}; allowed: {sorted(allowed)}")
    out = {"method": "fgsm", "budgets": None, "steps": 3, "weight": 0.5, **options}
    if out["method"] not in ("fgsm", "pgd"):
        raise ValueError(f"train.adversarial.method must be fgsm or pgd, got {out['method']!r}")
    if not 0.0 <= float(out["weight"]) <= 1.0:
        raise ValueError(f"train.adversarial.weight must be in [0, 1], got {out['weight']}")
    return out


def _target_stream(loader: Any, sampler: Any, start_step: int) -> Any:
    """Unlabelled target batches forever, one per source batch, in an order fixed by the
    batch count, so a resumed run draws the same target batches."""
    n = len(loader)
    epoch, skip = divmod(start_step, n)
    while True:
        for each in (loader, sampler):
            if hasattr(each, "set_epoch"):
                each.set_epoch(epoch)
        batches = iter(loader)
        for _ in range(skip):
            next(batches)
        yield from batches
        epoch, skip = epoch + 1, 0


def _allow_precision(mixed_precision: str) -> None:
    """accelerate keeps one AcceleratorState per process and refuses a second precision; fits in
    one process (transfer stages, notebooks) may differ, so reset that state (not the
    distributed one) when the precision changes."""
    from accelerate.state import AcceleratorState

    if (
        AcceleratorState._shared_state
        and str(AcceleratorState._shared_state.get("_mixed_precision")) != mixed_precision
    ):
        AcceleratorState._reset_state(reset_partial_state=False)


def _keep_frozen_in_eval(model: Any, frozen: list[str]) -> None:
    """Frozen encoders stay in eval mode: no BatchNorm updates, dropout or SpecAugment."""
    for m in frozen:
        model.encoders[m].eval()


def importlib_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def evaluate(
    model: Any,
    ds: datasets.Dataset,
    spec: DatasetSpec,
    batch_size: int = 64,
    num_workers: int = 0,
    on_error: str = "raise",
    drop_modalities: Sequence[str] = (),
    corruption: tuple[str, str, int] | None = None,
) -> dict[str, float]:
    """Loss and metrics of ``model`` on ``ds`` (every process gathers; all get the same numbers).

    ``drop_modalities`` are made absent for every sample (missing-modality evaluation);
    ``corruption`` = (modality, name, severity) corrupts that modality's raw values.
    """
    accelerator = Accelerator()
    unknown = sorted(set(drop_modalities) - set(model.modalities))
    if unknown:
        raise ValueError(f"cannot drop {unknown}: the model's modalities are {model.modalities}")
    loader = make_loader(
        ds, model, spec, "eval", batch_size=batch_size, num_workers=num_workers, on_error=on_error,
        modality_dropout={m: 1.0 for m in drop_modalities}, corruption=corruption,
    )  # fmt: skip
    model.to(accelerator.device)
    loader = accelerator.prepare(loader)
    return _eval_metrics(model, loader, accelerator, model.head.task)
