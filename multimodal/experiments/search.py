"""Fusion search by successive halving (Jamieson & Talwalkar, 2016; Li et al., Hyperband 2018)."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..data.collate import RowView
from ..data.loading import load_dataset, select_domains
from ..engine import FitData, fit
from ..modeling.model import build_model
from ..modeling.tasks import METRIC_MODES
from .config import RunConfig


@dataclass
class SearchResult:
    chosen: str
    metric: str
    rungs: list[dict[str, Any]]  # per rung: epochs and each candidate's validation metric
    target: dict[str, Any] = field(default_factory=dict)  # the chosen fusion's transfer report
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def successive_halving(
    config: Mapping[str, Any],
    fusions: Sequence[str],
    min_epochs: int = 1,
    eta: int = 2,
    fusion_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    evaluate_target: bool = True,
) -> SearchResult:
    """Rank fusions on the source validation split under a growing budget.

    Rung r trains every remaining fusion for ``min_epochs * eta**r`` epochs on the source
    domains and keeps the best ``ceil(n / eta)`` by validation metric, until one is left.
    The target domains are never looked at while choosing; with ``evaluate_target`` the
    chosen fusion then runs the full transfer protocol and its report is attached.
    """
    start = time.perf_counter()
    config = copy.deepcopy(dict(config))
    fusion_kwargs = fusion_kwargs or {}
    base = RunConfig.from_dict(config)
    spec = base.data
    dsd = load_dataset(spec)
    domains = sorted(set(dsd["train"]["domain"]))
    sources = list(base.transfer.source or domains[:1])
    train, validation = (
        select_domains(dsd["train"], sources),
        select_domains(dsd["validation"], sources),
    )
    view = RowView(train, spec, "train")
    rows = [view[i] for i in range(len(view))]
    seed = int(base.seed or 0)

    def with_fusion(name: str) -> RunConfig:
        run = copy.deepcopy(dict(config))
        run["fusion"] = {**(run.get("fusion") or {}), "name": name, **fusion_kwargs.get(name, {})}
        return RunConfig.from_dict(run)

    candidates, rungs, metric, epochs = list(fusions), [], "accuracy", min_epochs
    while True:
        scores = {}
        for name in candidates:
            run = with_fusion(name)
            model = build_model(run.model.to_dict(), rows, seed=seed)
            cfg = run.stage(
                epochs=epochs, patience=None, save_every=None, output_dir=None, seed=seed
            )
            result = fit(model, FitData(spec, train, validation), cfg)
            metric = result.metric
            scores[name] = result.history[-1][f"eval_{metric}"]
        ranked = sorted(scores, key=scores.get, reverse=METRIC_MODES.get(metric, "max") == "max")
        rungs.append(
            {"epochs": epochs, "scores": scores, "kept": ranked[: math.ceil(len(ranked) / eta)]}
        )
        candidates = rungs[-1]["kept"]
        if len(candidates) == 1:
            break
        epochs *= eta
    chosen = candidates[0]
    target: dict[str, Any] = {}
    if evaluate_target:
        from .transfer import transfer

        run = with_fusion(chosen).to_dict()
        run.pop("output_dir", None)
        target = transfer(run).to_dict()
    return SearchResult(chosen, metric, rungs, target, time.perf_counter() - start)
