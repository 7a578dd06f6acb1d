"""Fusion search on Optuna: the fusion and its hyperparameters sampled per trial (TPE),
weak trials stopped early by a successive-halving or Hyperband pruner on the source
validation metric, and the study kept in Optuna storage (an RDB URL such as
``sqlite:///search.db`` or PostgreSQL), so that processes on many machines search one
study. The target domains are never looked at while choosing."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..data.collate import RowView
from ..data.loading import load_dataset, select_domains
from ..engine import FitData, fit
from ..modeling.model import build_model
from ..modeling.tasks import METRIC_MODES, TASKS
from .config import RunConfig

# Per fusion hyperparameter: {"choices": [...]} or {"low": a, "high": b[, "log": true]}
# (an integer range when both bounds are integers). A fusion samples only the ones its
# constructor takes.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "dim": {"choices": [32, 64, 128]},
    "depth": {"choices": [1, 2]},
    "num_heads": {"choices": [2, 4]},
    "num_experts": {"choices": [2, 4, 8]},
    "top_k": {"choices": [1, 2]},
    "rank": {"choices": [2, 4, 8]},
    "dropout": {"low": 0.0, "high": 0.3},
}
PRUNERS = ("sha", "hyperband", "none")


@dataclass
class SearchResult:
    chosen: str  # the best trial's fusion
    params: dict[str, Any]  # its fusion hyperparameters
    metric: str
    value: float  # its source validation metric
    trials: list[dict[str, Any]]  # per trial: number, state, fusion, params, value, epochs
    study: str
    storage: str | None
    target: dict[str, Any] = field(default_factory=dict)  # the chosen config's transfer report
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fusion_parameters(name: str) -> set[str]:
    """The keyword arguments a registered fusion's constructor takes."""
    from fusion import FUSIONS

    return FUSIONS.accepted_kwargs(name, ignore={"modality_dims"})


def _suggest(trial: Any, name: str, spec: Mapping[str, Any]) -> Any:
    if "choices" in spec:
        return trial.suggest_categorical(name, list(spec["choices"]))
    low, high = spec["low"], spec["high"]
    if isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool):
        return trial.suggest_int(name, low, high, log=bool(spec.get("log")))
    return trial.suggest_float(name, float(low), float(high), log=bool(spec.get("log")))


def sample_fusion(trial: Any, fusions: Sequence[str], space: Mapping[str, Mapping[str, Any]],
                  fixed: Mapping[str, Mapping[str, Any]]) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """A fusion and the hyperparameters of the space it takes (named ``fusion.param``, so
    each fusion's space is its own); ``fixed`` kwargs per fusion fill the rest."""
    name = trial.suggest_categorical("fusion", list(fusions))
    takes = fusion_parameters(name)
    params = dict(fixed.get(name, {}))
    for key, spec in space.items():
        if key in takes:
            params[key] = _suggest(trial, f"{name}.{key}", spec)
    return name, params


def _pruner(kind: str, min_epochs: int, max_epochs: int, eta: int) -> Any:
    import optuna

    if kind == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=eta)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_epochs, max_resource=max_epochs,
                                              reduction_factor=eta)  # fmt: skip
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner {kind!r}: choose one of {', '.join(PRUNERS)}")


def fusion_search(
    config: Mapping[str, Any],
    fusions: Sequence[str],
    trials: int = 20,
    space: Mapping[str, Mapping[str, Any]] | None = None,
    fusion_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    max_epochs: int | None = None,
    min_epochs: int = 1,
    eta: int = 2,
    pruner: str = "sha",
    storage: str | None = None,
    study_name: str = "fusion-search",
    evaluate_target: bool = True,
) -> SearchResult:
    """Search fusions and their hyperparameters on the source domains of ``config``.

    Each trial trains on the source training split for up to ``max_epochs`` (default: the
    config's ``train.epochs``), reporting the validation metric after every epoch; the
    pruner stops trials that fall behind from ``min_epochs`` on, keeping 1/``eta`` per
    rung. ``trials`` runs in this process; with ``storage`` (an RDB URL) the study is
    created or joined, so the same call on other machines adds trials to it. With
    ``evaluate_target`` the best trial's configuration then runs the transfer protocol.
    """
    import optuna

    start = time.perf_counter()
    config = copy.deepcopy(dict(config))
    base = RunConfig.from_dict(config)
    spec = base.data
    dsd = load_dataset(spec)
    sources = list(base.transfer.source or sorted(set(dsd["train"]["domain"]))[:1])
    data = FitData(
        spec, select_domains(dsd["train"], sources), select_domains(dsd["validation"], sources)
    )
    view = RowView(data.train, spec, "train")
    rows = [view[i] for i in range(len(view))]
    seed = int(base.seed or 0)
    max_epochs = max_epochs or base.train.epochs
    space = DEFAULT_SPACE if space is None else space
    task = TASKS.get(base.model.head.get("task", "classification"))
    metric = base.train.metric or task.default_metric
    direction = "maximize" if METRIC_MODES.get(metric, "max") == "max" else "minimize"

    def objective(trial: optuna.Trial) -> float:
        name, params = sample_fusion(trial, fusions, space, fusion_kwargs or {})
        run = RunConfig.from_dict(_with_fusion(config, name, params))
        return _train_trial(trial, run, rows, data, metric, max_epochs, seed)

    study = optuna.create_study(
        study_name=study_name, storage=storage, load_if_exists=storage is not None, direction=direction,
        sampler=optuna.samplers.TPESampler(seed=seed), pruner=_pruner(pruner, min_epochs, max_epochs, eta),
    )  # fmt: skip
    study.optimize(objective, n_trials=trials)
    best = study.best_trial
    chosen = best.params["fusion"]
    params = {k.split(".", 1)[1]: v for k, v in best.params.items() if k.startswith(f"{chosen}.")}
    target: dict[str, Any] = {}
    if evaluate_target:
        from .transfer import transfer

        run = _with_fusion(config, chosen, {**(fusion_kwargs or {}).get(chosen, {}), **params})
        run.pop("output_dir", None)
        target = transfer(run).to_dict()
    return SearchResult(chosen, params, metric, float(best.value), _trial_rows(study), study_name, storage,
                        target, time.perf_counter() - start)  # fmt: skip


def _with_fusion(config: Mapping[str, Any], name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    run = copy.deepcopy(dict(config))
    run["fusion"] = {**(run.get("fusion") or {}), "name": name, **params}
    return run


def _train_trial(trial: Any, run: RunConfig, rows: list[dict[str, Any]], data: FitData, metric: str,
                 max_epochs: int, seed: int) -> float:  # fmt: skip
    """One trial: train, reporting the validation metric after each epoch; a pruned trial
    stops there and raises ``TrialPruned``."""
    import optuna

    model = build_model(run.model.to_dict(), rows, seed=seed)
    pruned: list[int] = []  # the pruner decides once per rung: keep its answer

    def report(metrics: dict[str, float], state: Any) -> bool:
        trial.report(metrics[metric], step=state.epoch + 1)
        if trial.should_prune():
            pruned.append(state.epoch + 1)
        return bool(pruned)

    cfg = run.stage(epochs=max_epochs, patience=None, save_every=None, output_dir=None, seed=seed,
                    metric=metric, trackers=[])  # fmt: skip
    result = fit(model, data, cfg, on_evaluate=[report])
    trial.set_user_attr("epochs", len(result.history))
    if pruned:
        raise optuna.TrialPruned(f"pruned after epoch {pruned[0]}")
    return result.history[-1][f"eval_{metric}"]


def _trial_rows(study: Any) -> list[dict[str, Any]]:
    return [
        {
            "number": t.number,
            "state": t.state.name,
            "fusion": t.params.get("fusion"),
            "params": {k: v for k, v in t.params.items() if k != "fusion"},
            "value": t.value,
            "epochs": t.user_attrs.get("epochs"),
        }  # fmt: skip
        for t in study.trials
    ]
