"""Training on several labelled source domains: each row's domain in its batch, batches
with as many rows of each domain (``train.domain_balanced``), and the domain-generalisation
objective of ``train.dg`` (``modeling.dg``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import datasets
import torch

from ..data.collate import EpochSampler
from ..data.split import Split
from ..modeling.dg import DGObjective, create_dg_objective, domain_groups
from .config import TrainConfig


def needs_domains(cfg: TrainConfig) -> bool:
    """Whether a fit's training batches must carry each row's domain."""
    return cfg.dg != "none" or cfg.domain_balanced


def row_domain_ids(ds: datasets.Dataset, domains: Sequence[str]) -> torch.Tensor:
    """[N] each row's domain as its index in ``domains`` (the fit's sorted domains)."""
    index = {d: i for i, d in enumerate(domains)}
    rows = Split(ds).require_held("train.dg and train.domain_balanced")
    return torch.tensor([index[d] for d in Split(rows).column("domain")], dtype=torch.long)


class DomainBalancedSampler(torch.utils.data.Sampler[int]):
    """An epoch of ``len(ids)`` rows drawn round-robin over the domains, each domain's rows
    in a fresh shuffle (repeated when it has fewer rows than its share), so every batch holds
    about batch_size / D rows of each domain: DomainBed's one minibatch per domain, as one
    batch. The order depends only on (seed, epoch); with one domain it is ``EpochSampler``'s."""

    def __init__(self, ids: torch.Tensor, seed: int = 0) -> None:
        self.ids, self.seed, self.epoch = ids, seed, 0
        self.groups = domain_groups(ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[int]:
        if len(self.groups) <= 1:
            plain = EpochSampler(len(self.ids), self.seed, True)
            plain.set_epoch(self.epoch)
            return iter(plain)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        share = -(-len(self.ids) // len(self.groups))
        drawn = []
        for rows in self.groups:
            repeats = -(-share // len(rows))
            order = torch.cat(
                [rows[torch.randperm(len(rows), generator=g)] for _ in range(repeats)]
            )
            drawn.append(order[:share])
        interleaved = torch.stack(drawn, dim=1).flatten()  # d0, d1, ..., d0, d1, ...
        return iter(interleaved[: len(self.ids)].tolist())


def train_sampler(cfg: TrainConfig, ids: torch.Tensor | None, length: int) -> Any:
    """The training loader's sampler: domain-balanced when asked, else the plain shuffle."""
    if cfg.domain_balanced and ids is not None:
        return DomainBalancedSampler(ids, cfg.seed)
    return EpochSampler(length, cfg.seed, True)


def dg_objective(model: Any, cfg: TrainConfig, domains: Sequence[str]) -> DGObjective | None:
    """``train.dg``'s objective for a fit on ``domains``, on the model's device."""
    if cfg.dg == "none":
        return None
    objective = create_dg_objective(cfg.dg, len(domains), cfg.seed, **cfg.dg_kwargs)
    if objective.needs_classes:
        model.head.task.require_classes(f"train.dg={cfg.dg}")
    if cfg.adversarial or cfg.uda != "none":
        raise ValueError(
            f"train.dg={cfg.dg} replaces the task loss on the source domains; it does not "
            "combine with train.adversarial or train.uda: set one of them"
        )
    return objective.to(next(model.parameters()).device)
