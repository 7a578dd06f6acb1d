"""Differentially private training (``train.dp``) on Opacus: per-sample gradients clipped
to ``max_grad_norm``, Gaussian noise sized by Opacus for the budget (``epsilon``, ``delta``)
over the planned epochs, Poisson-sampled batches, and Opacus's accountant for the budget
actually spent. Nothing here clips, adds noise or accounts by itself.

Only what trains is private: with frozen encoders (``train.strategy=head``, the usual case)
the fusion and the head. Terms that mix rows of a batch (UDA, modality balancing, a pull
toward the starting weights, adversarial training, a fusion's batch-level auxiliary loss)
would break the per-sample bound, so they are refused, as are gradient accumulation, mixed
precision, mid-run checkpoints and streamed splits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..core.config import check_keys
from ..modeling.model import move_to
from .config import AUTO

logger = logging.getLogger(__name__)
ACCOUNTANTS = ("prv", "rdp", "gdp")


@dataclass(frozen=True)
class DPSettings:
    """``train.dp``: the budget (epsilon, delta), the per-sample clipping norm and the
    accountant Opacus sizes the noise with and reports the spent budget from."""

    epsilon: float
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "prv"
    # The updates the budget covers (default: this fit's); a federated client sets all its
    # rounds' steps, so each round's fit adds the noise the whole run needs.
    steps: int | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DPSettings:
        check_keys(values, ("epsilon", "delta", "max_grad_norm", "accountant", "steps"), "train.dp")
        if "epsilon" not in values:
            raise ValueError("train.dp needs epsilon, the privacy budget (e.g. train.dp.epsilon=8)")
        kinds = {"accountant": str, "steps": lambda v: None if v is None else int(v)}
        out = cls(**{k: kinds.get(k, float)(v) for k, v in values.items()})
        if not out.epsilon > 0:
            raise ValueError(f"train.dp.epsilon must be > 0, got {out.epsilon}")
        if not 0 < out.delta < 1:
            raise ValueError(f"train.dp.delta must be in (0, 1), got {out.delta}")
        if not out.max_grad_norm > 0:
            raise ValueError(f"train.dp.max_grad_norm must be > 0, got {out.max_grad_norm}")
        if out.accountant not in ACCOUNTANTS:
            raise ValueError(
                f"train.dp.accountant must be one of {ACCOUNTANTS}, got {out.accountant!r}"
            )
        return out


def dp_settings(cfg: Any, streamed: bool) -> DPSettings | None:
    """``cfg.dp`` checked against what private training can do; None when it is off."""
    if not cfg.private:
        return None  # epsilon .inf: the non-private reference of a budget axis
    settings = DPSettings.from_dict(cfg.dp)
    mixing = {
        "train.uda": cfg.uda != "none", "train.balance": cfg.balance != "none",
        "train.regularize": cfg.regularize != "none", "train.adversarial": bool(cfg.adversarial),
    }  # fmt: skip
    refused = [key for key, on in mixing.items() if on]
    if refused:
        raise ValueError(f"train.dp: {', '.join(refused)} add terms over the whole batch or the weights, "
                         "which per-sample clipping does not bound; turn them off for private training")  # fmt: skip
    if cfg.grad_accum != 1:
        raise ValueError(
            "train.dp: Opacus's Poisson batches are whole steps; use train.grad_accum=1"
        )
    if cfg.batch_size == AUTO:
        raise ValueError(
            "train.dp needs a fixed train.batch_size: its noise is set for the sampling rate"
        )
    if cfg.mixed_precision not in ("no", "auto"):
        raise ValueError("train.dp trains in fp32 (train.mixed_precision=no)")
    if cfg.resume_from or cfg.save_every:
        raise ValueError("train.dp: a private run does not checkpoint mid-run or resume (the "
                         "accountant's history would have to travel with it); unset save_every/resume_from")  # fmt: skip
    if streamed:
        raise ValueError(
            "train.dp samples each row independently (Poisson); a streamed split cannot"
        )
    return settings


@dataclass
class PrivateTraining:
    """The Opacus engine of one ``fit`` and the noise it chose; ``epsilon()`` is the budget
    spent so far, from Opacus's accountant."""

    engine: Any
    settings: DPSettings
    noise_multiplier: float
    sample_rate: float
    module: Any  # Opacus's per-sample-gradient wrapper
    hooks: list[Any]  # the fusion's check for batch-level terms, embeddings' ids per row
    frozen: dict[str, torch.nn.Parameter]  # no per-sample gradient in Opacus: kept fixed

    def epsilon(self) -> float:
        return float(self.engine.get_epsilon(self.settings.delta))

    def close(self) -> None:
        """Opacus's hooks and per-sample gradients off the model, which trains normally after."""
        self.module._close()
        for hook in self.hooks:
            hook.remove()
        for p in self.frozen.values():
            p.requires_grad_(True)

    def summary(self) -> dict[str, float | str]:
        s = self.settings
        return {"dp_epsilon": self.epsilon(), "dp_delta": s.delta, "dp_target_epsilon": s.epsilon,
                "dp_noise_multiplier": self.noise_multiplier, "dp_sample_rate": self.sample_rate,
                "dp_max_grad_norm": s.max_grad_norm, "dp_accountant": s.accountant,
                "dp_frozen": list(self.frozen)}  # fmt: skip


class DeviceLoader:
    """Opacus's Poisson batches moved to the device (accelerate would re-shard them)."""

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            yield move_to(batch, self.device)


class _Boxed(torch.utils.data.Dataset):
    """Each item in a 1-tuple: Opacus reads ``dataset[0]`` as a sequence of fields to shape
    an empty Poisson batch, and this toolkit's items are row indices or row dicts. A
    dataset that reads a batch's rows at once (``__getitems__``: processed rows, whose
    collate function takes that batch's columns) is boxed by index, and read by
    ``_Unboxed``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.batched = hasattr(dataset, "__getitems__")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any]:
        return (index if self.batched else self.dataset[index],)


class _Unboxed:
    """The loader's own collate function on the unboxed items (a batched dataset's rows,
    read at once)."""

    def __init__(self, collate: Any, dataset: _Boxed) -> None:
        self.collate, self.dataset = collate, dataset

    def __call__(self, items: list[tuple[Any]]) -> Any:
        unboxed = [item for (item,) in items]
        if self.dataset.batched:
            return self.collate(self.dataset.dataset.__getitems__(unboxed))
        return self.collate(unboxed)


def _boxed(loader: Any, processes: int) -> torch.utils.data.DataLoader:
    """``loader`` as Opacus reads it; its batch is the global one (Opacus's sample rate is
    1 / its length), as a DDP step takes a batch from every process."""
    boxed = _Boxed(loader.dataset)
    return torch.utils.data.DataLoader(
        boxed, batch_size=loader.batch_size * processes, drop_last=loader.drop_last,
        collate_fn=_Unboxed(loader.collate_fn, boxed), generator=loader.generator,
        num_workers=loader.num_workers, pin_memory=loader.pin_memory,
    )  # fmt: skip


def make_private(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: Any, settings: DPSettings,
    steps: int, processes: int,
) -> tuple[Any, Any, Any, PrivateTraining]:  # fmt: skip
    """``model`` wrapped to compute per-sample gradients (in DPDDP over several processes),
    the optimizer that clips, noises and accounts, and the Poisson loader, from Opacus's
    ``PrivacyEngine.make_private``, with the noise Opacus's ``get_noise_multiplier`` finds
    for the budget over ``steps`` updates."""
    from opacus import PrivacyEngine
    from opacus.accountants.utils import get_noise_multiplier
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
    from opacus.validators.errors import UnsupportedModuleError

    hooks = [_refuse_batch_terms(model), *_embeddings_per_row(model)]
    frozen = freeze_unhookable(model)
    engine = PrivacyEngine(accountant=settings.accountant)
    module = DPDDP(model) if processes > 1 else model
    module.train()
    boxed = _boxed(loader, processes)
    noise = get_noise_multiplier(
        target_epsilon=settings.epsilon, target_delta=settings.delta, sample_rate=1 / len(boxed),
        steps=max(1, settings.steps or steps), accountant=settings.accountant,
    )  # fmt: skip
    try:
        private, optimizer, loader = engine.make_private(
            module=module, optimizer=optimizer, data_loader=boxed, noise_multiplier=noise,
            max_grad_norm=settings.max_grad_norm, grad_sample_mode="hooks",
        )  # fmt: skip
    except UnsupportedModuleError as err:
        for p in frozen.values():
            p.requires_grad_(True)
        for hook in hooks:
            hook.remove()
        raise ValueError(f"train.dp: a trainable layer mixes the rows of a batch ({err}); freeze it or "
                         "replace it (BatchNorm by GroupNorm, say)") from None  # fmt: skip
    privacy = PrivateTraining(engine, settings, float(optimizer.noise_multiplier),
                              float(loader.sample_rate), private, hooks, frozen)  # fmt: skip
    return private, optimizer, loader, privacy


def freeze_unhookable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Freeze, with a warning, the trainable parameters Opacus cannot give per-sample
    gradients: those held by a module that has no forward of its own (a ParameterDict of
    per-modality embeddings) or that also holds submodules (a fusion's own tokens). Opacus
    computes them for the layers it knows and, through functorch, for any other leaf layer."""
    from opacus.grad_sample import GradSampleModule

    frozen: dict[str, torch.nn.Parameter] = {}
    for name, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own or type(module) in GradSampleModule.GRAD_SAMPLERS:
            continue
        if isinstance(module, (torch.nn.ParameterDict, torch.nn.ParameterList)) or any(
            True for _ in module.children()
        ):
            for n, p in own:
                p.requires_grad_(False)
                frozen[f"{name}.{n}" if name else n] = p
    if frozen:
        logger.warning("train.dp: %d parameters have no per-sample gradient in Opacus and stay as "
                       "they are: %s", len(frozen), ", ".join(frozen))  # fmt: skip
    return frozen


def _embeddings_per_row(model: torch.nn.Module) -> list[Any]:
    """Hooks that give each trainable ``nn.Embedding`` one row of ids per row of the batch.
    BERT-like encoders look their position embeddings up with ids that every row shares
    ([1, L], broadcast when added), for which Opacus computes one gradient for the whole
    batch instead of one per row. Such ids are expanded to the rows of the call that holds
    the embedding (the largest leading size among its tensor arguments): the same output,
    and each row's own gradient."""
    hooks: list[Any] = []
    for parent in model.modules():
        embeddings = [c for c in parent.children()
                      if isinstance(c, torch.nn.Embedding) and c.weight.requires_grad]  # fmt: skip
        if not embeddings:
            continue
        rows = [0]

        def note(module: Any, args: tuple, kwargs: dict, rows: list[int] = rows) -> None:
            tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
            rows[0] = max((t.shape[0] for t in tensors if t.dim() > 0), default=0)

        def expand(module: Any, args: tuple, rows: list[int] = rows) -> tuple | None:
            ids = args[0]
            if ids.dim() > 0 and ids.shape[0] == 1 and rows[0] > 1:
                return (ids.expand(rows[0], *ids.shape[1:]), *args[1:])
            return None

        hooks.append(parent.register_forward_pre_hook(note, with_kwargs=True))
        hooks += [e.register_forward_pre_hook(expand) for e in embeddings]
    return hooks


def _refuse_batch_terms(model: torch.nn.Module) -> Any:
    """A fusion's auxiliary loss (a mixture's load balance) is a term over the batch."""
    fusion = getattr(model, "fusion", model)

    def check(module: Any, inputs: Any, output: Any) -> None:
        if module.training and getattr(output, "aux_loss", None) is not None:
            raise ValueError(f"train.dp: fusion {type(module).__name__} adds an auxiliary loss over "
                             "the batch, which per-sample clipping does not bound; switch it off "
                             "(moe: balance_coef=0, z_loss_coef=0)")  # fmt: skip

    return fusion.register_forward_hook(check)
