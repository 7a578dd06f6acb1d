"""What ``fit`` is told: the train config, the data it trains on, and what it returns."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import datasets

from ..core.config import ConfigError, check_keys, checked_fields
from ..data.spec import DatasetSpec

AUTO = "auto"  # train.batch_size: probed before the fit (engine.batch_size)


@dataclass
class TrainConfig:
    """Everything ``fit`` needs to know; every field can be set from YAML or ``train.KEY=VALUE``."""

    epochs: int = 10
    max_steps: int | None = None
    # auto: the largest that fits, probed before the fit (engine.batch_size), from
    # max_batch_size down; with effective_batch_size, grad_accum keeps that many per update.
    batch_size: int | Literal["auto"] = 32
    max_batch_size: int = 512
    effective_batch_size: int | None = None
    eval_batch_size: int | None = None
    # Leave out an incomplete last training batch. None: only one of a single row, and only
    # where BatchNorm trains (not in frozen encoders): it cannot normalise one row.
    drop_last: bool | None = None
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
    # auto: bf16 autocast on a CUDA device that has it, else fp32 (performance.precision)
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
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
    # A fit into a folder that holds a run is refused unless it resumes it (resume_from) or
    # this says to replace it: its run files are then deleted first (RunFolder.claim).
    overwrite: bool = False
    keep_checkpoints: int = 2
    seed: int = 0
    num_workers: int = 0
    on_error: str = "raise"
    modality_dropout: dict[str, float] | float | None = None
    # Input augmentation of the labelled training batches: none | weak | strong, each
    # modality by its encoder (encoders._augment). Encoder outputs are then not cached.
    augment: Literal["none", "weak", "strong"] = "none"
    # An unsupervised domain-adaptation objective on FitData.unlabelled target rows:
    # none | dann | cdan | coral | mmd | entropy | pseudo_label | fixmatch, its weight and its
    # keyword arguments.
    uda: str = "none"
    uda_weight: float = 1.0
    uda_kwargs: dict[str, Any] = field(default_factory=dict)
    # Modality balancing: none | ogm_ge | grad_blend | unimodal_aux (modeling.balance), its
    # strength (0: training identical to none) and its keyword arguments (ogm_ge: ge).
    balance: str = "none"
    balance_strength: float = 1.0
    balance_kwargs: dict[str, Any] = field(default_factory=dict)
    # Forgetting less (modeling.regularize): none | l2sp | ewc | lwf, the term's weight and its
    # keyword arguments (lwf: temperature; ewc: reference_rows, the rows its Fisher uses).
    regularize: str = "none"
    regularize_weight: float = 1.0
    regularize_kwargs: dict[str, Any] = field(default_factory=dict)
    # Domain generalisation on the labelled source domains (modeling.dg): none | erm |
    # groupdro | irm | vrex | coral | mixup | modality_vrex, and its keyword arguments.
    dg: str = "none"
    dg_kwargs: dict[str, Any] = field(default_factory=dict)
    # Batches with as many rows of each training domain (engine.domains).
    domain_balanced: bool = False
    # none | ema: evaluations, selection and the final weights use the exponential moving
    # average of the trainable weights (engine.averaging), with this decay per step.
    weight_average: str = "none"
    ema_decay: float = 0.99
    # Adversarial training: {"method": fgsm|pgd, "budgets": {kind: radius}, "steps": 3,
    # "weight": 0.5}; the loss is (1 - weight) * clean + weight * adversarial.
    adversarial: dict[str, Any] | None = None
    # Differentially private training on Opacus (engine.privacy): {"epsilon": budget,
    # "delta": 1e-5, "max_grad_norm": 1.0 (per sample), "accountant": prv | rdp | gdp,
    # "steps": the updates the budget covers, default this fit's}. epsilon .inf or dp {} (a
    # stage's override) trains without privacy.
    dp: dict[str, Any] | None = None
    # A step whose loss or gradient is not finite is skipped (and counted); this many in a
    # row stop the run with an error naming the step and the last good checkpoint.
    max_nonfinite_steps: int = 10
    log_every: int = 10
    tensorboard: bool = True  # the default tracker when trackers is unset
    # accelerate trackers: tensorboard, mlflow, wandb, ...; unset: tensorboard if installed.
    trackers: list[str] | None = None
    tracker_project: str = "transferfuse"  # MLflow experiment, W&B project, TensorBoard folder
    tracker_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)  # per tracker
    progress: bool = True
    # Speed (engine.performance). None: compile, channels_last and pin_memory are on when
    # training on CUDA, off on CPU, whose numerics they would change; fused_optimizer is on
    # wherever torch has the kernel.
    compile: bool | None = None  # torch.compile each encoder and the fusion
    compile_backend: str = "inductor"
    compile_mode: str | None = None  # default | reduce-overhead | max-autotune
    channels_last: bool | None = None  # NHWC layout for encoders that convolve images
    pin_memory: bool | None = None
    fused_optimizer: bool | None = None  # AdamW/SGD as one fused kernel

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | TrainConfig | None) -> TrainConfig:
        if isinstance(data, TrainConfig):
            return data
        return cls(**cls.coerce(data or {}))

    @classmethod
    def coerce(cls, values: Mapping[str, Any], where: str = "train") -> dict[str, Any]:
        """``values`` checked against the fields: unknown keys, wrong types and values out
        of range fail, naming ``where.key``; the floats YAML 1.1 reads as strings (``3e-4``)
        become floats."""
        values = _renamed(values, where)
        check_keys(values, (f.name for f in dataclasses.fields(cls)), where)
        checked = checked_fields(cls, values, where, MINIMUM)
        if checked.get("epochs") == 0 and not checked.get("max_steps"):
            raise ConfigError(
                f"{where}.epochs is 0 and {where}.max_steps is unset, so nothing would train "
                f"(and an untrained model would be saved): set {where}.epochs to at least 1"
            )
        return checked

    @property
    def nominal_batch_size(self) -> int:
        """``batch_size``, or with auto the most it may be, for what is planned before a
        fit probes it (progress bars, evaluation batches)."""
        if self.batch_size != AUTO:
            return int(self.batch_size)
        return min(self.max_batch_size, self.effective_batch_size or self.max_batch_size)

    @property
    def private(self) -> bool:
        """Whether ``dp`` asks for private training: a budget below infinity (``dp: {}`` and
        epsilon .inf, a budget axis's reference, train without privacy)."""
        return bool(self.dp) and float(self.dp.get("epsilon", 0)) != math.inf

    def replace(self, **overrides: Any) -> TrainConfig:
        """A stage's config: this one with ``overrides`` (None values keep the field)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **self.coerce({"max_steps": self.max_steps, **given}))


# The least value each count or rate may take.
MINIMUM = {
    "epochs": 0, "max_steps": 0, "batch_size": 1, "max_batch_size": 1, "effective_batch_size": 1, "eval_batch_size": 1, "lr": 0, "encoder_lr": 0,
    "weight_decay": 0, "warmup_ratio": 0, "grad_accum": 1, "max_grad_norm": 0, "top_k": 0,
    "patience": 1, "min_delta": 0, "eval_every": 1, "save_every": 1, "keep_checkpoints": 0,
    "num_workers": 0, "max_nonfinite_steps": 1, "log_every": 1, "regularize_weight": 0,
}  # fmt: skip


@dataclass
class FitData:
    """The splits ``fit`` trains and validates on, with the spec that maps their columns.

    Streamed splits (``datasets.IterableDataset``) are read once before training to count
    the training rows and find the domains, unless ``train_rows`` and ``domains`` say.
    """

    spec: DatasetSpec
    train: datasets.Dataset
    validation: datasets.Dataset | None = None
    unlabelled: datasets.Dataset | None = (
        None  # target rows for unsupervised adaptation (labels unused)
    )
    train_rows: int | None = None
    domains: list[str] | None = None
    # Train on these rows of ``train`` only (a k-shot episode): with the feature cache the
    # encoder outputs of the whole split are computed once and these rows taken from them.
    train_indices: list[int] | None = None
    # Rows whose fit a regularizer protects (train.regularize=ewc: the source training split).
    reference: datasets.Dataset | None = None


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
    # train.dp: the budget spent (Opacus's accountant), delta, noise multiplier, sample rate
    privacy: dict[str, Any] | None = None
    batch_size: int = 0  # per process and step, as trained (train.batch_size auto: as probed)
    grad_accum: int = 1
    # Of the training-loop time, the wait for batches: near it, the loader is the bottleneck.
    data_wait_s: float = 0.0
    # The first optimizer step's wall time: with train.compile, mostly compilation.
    first_step_s: float | None = None


# The keys a resumed fit may set differently from the checkpoint's: how long it runs and how
# it logs and saves. Any other change would make the resumed run another run.
RESUMABLE = frozenset({
    "epochs", "max_steps", "save_every", "keep_checkpoints", "log_every", "progress", "num_workers",
    "eval_batch_size", "output_dir", "resume_from", "overwrite", "trackers", "tracker_project",
    "tracker_kwargs", "tensorboard", "max_nonfinite_steps",
})  # fmt: skip


# Old spellings still read, with a warning: "adapt" names the transfer stage only.
RENAMED = {"adapt_method": "uda", "adapt_weight": "uda_weight", "adapt_kwargs": "uda_kwargs"}


def _renamed(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = dict(values)
    for old, new in RENAMED.items():
        if old in out:
            warnings.warn(
                f"{where}.{old} is deprecated; use {where}.{new}", FutureWarning, stacklevel=4
            )
            if new in out:
                raise ValueError(f"{where}: give {new} or its old spelling {old}, not both")
            out[new] = out.pop(old)
    return out
