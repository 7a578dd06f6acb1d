"""Federated training across domains on Flower's simulation engine (Ray): each client holds
one domain's rows (``federate.clients``), only weights travel, and a held-out domain that
took no part is the target, evaluated zero-shot and k-shot adapted as in the transfer
protocol.

Strategies: ``fedavg`` and ``fedprox`` are Flower's (FedProx's proximal term is the
engine's L2-SP pull toward the round's global weights, ``train.regularize=l2sp``, weight
``proximal_mu``); ``fedbn`` is FedAvg whose clients keep their normalisation layers
(BatchNorm, LayerNorm, GroupNorm, InstanceNorm: weights and statistics) local and never send
them. Encoders that stay frozen are the same on every client and do not travel either.
With ``train.dp`` every client trains privately; its budget covers all its rounds.

Centralised references on the same splits: ``pooled`` (one model on every client's rows)
and ``local`` (each client alone), for as many epochs as a client trains in all rounds.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch

from ..core.config import checked_fields
from ..core.io import write_json_atomic
from ..data.loading import load_dataset, select_domains
from ..data.split import Split
from .config import RunConfig

logger = logging.getLogger(__name__)
STRATEGIES = ("fedavg", "fedprox", "fedbn")
CENTRALISED = ("pooled", "local")
NORM_LAYERS = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)


@dataclass
class FederateConfig:
    """The ``federate`` section. clients: each client's domains (default: one client per
    domain not held out); held_out: the target domains (default: transfer.target, else the
    last domain); rounds x local_epochs: each client's training; personalise_epochs: after
    the last round each client fine-tunes its head on its rows (0: not)."""

    strategy: str = "fedavg"
    clients: list[list[str]] | None = None
    held_out: list[str] | None = None
    rounds: int = 5
    local_epochs: int = 1
    proximal_mu: float = 0.01
    personalise_epochs: int = 0
    num_cpus: float = 1.0  # per client actor
    ray_address: str | None = None

    @classmethod
    def from_run(cls, run: RunConfig) -> FederateConfig:
        values = dict(run.raw.get("federate") or {})
        out = cls(**checked_fields(cls, values, "federate", {"rounds": 1, "local_epochs": 1,
                                                             "proximal_mu": 0, "personalise_epochs": 0}))  # fmt: skip
        if out.strategy not in STRATEGIES + CENTRALISED:
            raise ValueError(
                f"federate.strategy must be one of {STRATEGIES + CENTRALISED}, got {out.strategy!r}"
            )
        return out


@dataclass
class Federation:
    """The splits of one federated run: each client's and the held-out domains', and the
    untrained model every client starts from (built from the first client's rows)."""

    run: RunConfig
    fed: FederateConfig
    clients: list[list[str]]
    held_out: list[str]
    client_splits: list[dict[str, datasets.Dataset]]
    target: dict[str, datasets.Dataset]
    initial: Any = field(repr=False)

    @classmethod
    def build(cls, run: RunConfig, fed: FederateConfig) -> Federation:
        from ..modeling.model import build_model
        from .transfer.plan import fitting_rows

        dsd = load_dataset(run.data)
        domains = Split(dsd["train"]).domains()
        held_out = list(fed.held_out or run.transfer.target or domains[-1:])
        clients = fed.clients or [[d] for d in domains if d not in held_out]
        unknown = sorted({d for c in clients for d in c} - set(domains)) + sorted(
            set(held_out) - set(domains)
        )
        if unknown:
            raise ValueError(
                f"federate: domains {unknown} are not in the data, which has {domains}"
            )
        overlap = sorted({d for c in clients for d in c} & set(held_out))
        if overlap:
            raise ValueError(f"federate: {overlap} are both a client's and held out")
        splits = [{s: select_domains(dsd[s], c) for s in dsd} for c in clients]
        target = {s: select_domains(dsd[s], held_out) for s in dsd}
        model = build_model(
            run.model.to_dict(), fitting_rows(splits[0]["train"], run.data), seed=run.run_seed
        )
        return cls(run, fed, clients, held_out, splits, target, model)

    @property
    def seed(self) -> int:
        return self.run.run_seed

    @functools.cached_property
    def keys(self) -> list[str]:
        """The state keys that travel (``shared_keys``), found once per federation."""
        return shared_keys(self.initial, self.fed.strategy, self.run.train)

    def local_config(self, round_index: int, epochs: int | None = None) -> Any:
        """A client's train config for one round (seeded by the round)."""
        fed, train = self.fed, self.run.train
        overrides: dict[str, Any] = {"epochs": epochs or fed.local_epochs, "output_dir": None,
                                     "seed": train.seed + round_index, "progress": False}  # fmt: skip
        if fed.strategy == "fedprox":
            overrides.update(regularize="l2sp", regularize_weight=fed.proximal_mu)
        return self.run.stage(**overrides)


def shared_keys(model: torch.nn.Module, strategy: str, train: Any) -> list[str]:
    """The state keys that travel: every key but frozen encoders' (the same everywhere),
    and under FedBN but the normalisation layers' (they stay with their client)."""
    from ..modeling.freezing import apply_strategy, frozen_encoders

    probe = copy.deepcopy(model)  # the strategy freezes a copy: the model stays as built
    apply_strategy(probe, train.strategy, train.top_k, train.lora)
    frozen = tuple(f"encoders.{m}." for m in frozen_encoders(probe))
    local = norm_keys(model) if strategy == "fedbn" else set()
    return [k for k in model.state_dict() if k not in local and not k.startswith(frozen)]


def norm_keys(model: torch.nn.Module) -> set[str]:
    """State keys (weights and running statistics) of the normalisation layers."""
    out = set()
    for name, module in model.named_modules():
        if isinstance(module, NORM_LAYERS):
            out |= {f"{name}.{k}" for k in module.state_dict()}
    return out


def evaluate_on(model: Any, ds: datasets.Dataset, run: RunConfig) -> float:
    """The headline metric of ``model`` on ``ds``."""
    from ..engine import evaluate

    metrics = evaluate(
        model, ds, run.data, run.train.eval_batch_size or run.train.nominal_batch_size
    )
    return float(metrics[model.head.task.default_metric])


def held_out_results(fedn: Federation, model: Any) -> dict[str, Any]:
    """The model on the held-out domains: zero-shot, and adapted on each episode's k-shot
    rows with ``transfer.adapt`` (episodes drawn as the transfer protocol draws them)."""
    from ..engine import FitData, fit
    from .transfer.plan import draw_episode

    run, target = fedn.run, fedn.target
    name = "+".join(fedn.held_out)
    out: dict[str, Any] = {"domains": fedn.held_out, "zero_shot": evaluate_on(model, target["test"], run),
                           "test_samples": len(target["test"]), "episodes": []}  # fmt: skip
    adapt = run.stage(**{**run.transfer.adapt, "output_dir": None, "progress": False})
    for e in range(int(run.transfer.episodes)):
        episode = draw_episode(target["train"], run.transfer, fedn.seed, name, e, run.data.label)
        adapted = copy.deepcopy(model)
        data = FitData(run.data, target["train"], train_indices=list(episode.rows or []))
        fit(adapted, data, adapt.replace(seed=episode.seed))
        out["episodes"].append(
            {
                "episode": e,
                "seed": episode.seed,
                "adapted": evaluate_on(adapted, target["test"], run),
            }
        )
    out["adapted"] = sum(e["adapted"] for e in out["episodes"]) / max(1, len(out["episodes"]))
    return out


# Each Ray actor builds a federation once and keeps each client's model between rounds.
_PROCESS: dict[str, Federation] = {}
_MODELS: dict[tuple[str, int], Any] = {}


def _federation(config: Mapping[str, Any]) -> tuple[str, Federation]:
    from ..core.config import config_hash

    key = config_hash(dict(config))
    if key not in _PROCESS:
        run = RunConfig.from_dict(config)
        _PROCESS[key] = Federation.build(run, FederateConfig.from_run(run))
    return key, _PROCESS[key]


def _client_model(key: str, fedn: Federation, client: int) -> Any:
    if (key, client) not in _MODELS:
        _MODELS[(key, client)] = copy.deepcopy(fedn.initial)
    return _MODELS[(key, client)]


def local_round(fedn: Federation, model: Any, client: int, round_index: int) -> Any:
    """One client's training in one round, from the weights ``model`` holds now."""
    from ..engine import FitData, fit

    cfg = fedn.local_config(round_index)
    train = fedn.client_splits[client]["train"]
    if cfg.dp:  # the budget covers every round: each round adds the noise the whole run needs
        per_round = cfg.epochs * -(-len(train) // cfg.nominal_batch_size)
        cfg = cfg.replace(dp={**cfg.dp, "steps": per_round * fedn.fed.rounds})
    return fit(model, FitData(fedn.run.data, train), cfg)


def _spent(state: Any, result: Any) -> float | None:
    """The client's budget spent over its rounds so far: Opacus's accountant over the
    steps of every round at the (same) noise and sample rate."""
    if result.privacy is None:
        return None
    from flwr.app import ConfigRecord
    from opacus.accountants import create_accountant

    p = result.privacy
    steps = int(state["dp"]["steps"]) + result.steps if "dp" in state else result.steps
    accountant = create_accountant(p["dp_accountant"])
    accountant.history = [(p["dp_noise_multiplier"], p["dp_sample_rate"], steps)]
    epsilon = float(accountant.get_epsilon(p["dp_delta"]))
    state["dp"] = ConfigRecord({"steps": steps, "epsilon": epsilon})
    return epsilon


def client_app(config: Mapping[str, Any]) -> Any:
    """Flower's ClientApp: train on the client's rows from the global weights (its own
    normalisation layers under FedBN), and evaluate on its test split."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()
    config = dict(config)

    def receive(msg: Any, context: Any) -> tuple[Federation, int, Any]:
        key, fedn = _federation(config)
        client = int(context.node_config["partition-id"])
        model = _client_model(key, fedn, client)
        state = dict(msg.content["arrays"].to_torch_state_dict())
        if "local" in context.state:
            state.update(context.state["local"].to_torch_state_dict())
        model.load_state_dict(state, strict=False)
        return fedn, client, model

    @app.train()
    def train(msg: Any, context: Any) -> Any:
        fedn, client, model = receive(msg, context)
        result = local_round(fedn, model, client, int(msg.content["config"]["server-round"]) - 1)
        weights = model.state_dict()
        keys = fedn.keys
        if fedn.fed.strategy == "fedbn":
            context.state["local"] = ArrayRecord({k: weights[k] for k in norm_keys(model)})
        metrics = {"num-examples": len(fedn.client_splits[client]["train"]), "client": client}
        spent = _spent(context.state, result)
        if spent is not None:
            metrics["dp_epsilon"] = spent
        reply = {
            "arrays": ArrayRecord({k: weights[k] for k in keys}),
            "metrics": MetricRecord(metrics),
        }
        return Message(content=RecordDict(reply), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Any, context: Any) -> Any:
        fedn, client, model = receive(msg, context)
        test = fedn.client_splits[client]["test"]
        metrics = {
            "num-examples": len(test),
            "client": client,
            "test": evaluate_on(model, test, fedn.run),
        }
        if "dp" in context.state:
            metrics["dp_epsilon"] = float(context.state["dp"]["epsilon"])
        last = int(msg.content["config"]["server-round"]) == fedn.fed.rounds
        if last and fedn.fed.personalise_epochs:
            metrics["personalised"] = personalised(fedn, model, client)
        return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


def personalised(fedn: Federation, model: Any, client: int) -> float:
    """The client's copy of ``model`` with its head fine-tuned on its own rows."""
    from ..engine import FitData, fit

    own = copy.deepcopy(model)
    cfg = fedn.run.stage(strategy="head", epochs=fedn.fed.personalise_epochs, output_dir=None,
                         progress=False, regularize="none")  # fmt: skip
    cfg = dataclasses.replace(cfg, dp=None)  # personalising reads the client's rows once more
    fit(own, FitData(fedn.run.data, fedn.client_splits[client]["train"]), cfg)
    return evaluate_on(own, fedn.client_splits[client]["test"], fedn.run)


def server_app(fedn: Federation, record: dict[str, Any]) -> Any:
    """Flower's ServerApp: FedAvg (FedBN: the same on the keys that travel) or FedProx over
    every client each round; the last global weights and each round's client evaluations go
    into ``record``."""
    from flwr.app import ArrayRecord
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg, FedProx
    from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

    n = len(fedn.clients)
    record["rounds"] = []

    def evaluations(replies: list[Any], key: str) -> Any:
        record["rounds"].append([dict(next(iter(r.metric_records.values()))) for r in replies])
        return aggregate_metricrecords(replies, key)

    common = {"min_train_nodes": n, "min_evaluate_nodes": n, "min_available_nodes": n,
              "evaluate_metrics_aggr_fn": evaluations}  # fmt: skip
    fed = fedn.fed
    strategy = (
        FedProx(proximal_mu=fed.proximal_mu, **common)
        if fed.strategy == "fedprox"
        else FedAvg(**common)
    )
    keys = fedn.keys
    initial = fedn.initial.state_dict()
    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        arrays = ArrayRecord({k: initial[k] for k in keys})
        result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=fed.rounds)
        record["arrays"] = dict(result.arrays.to_torch_state_dict())

    return app


def federate(config: Mapping[str, Any], output_dir: str | Path | None = None) -> dict[str, Any]:
    """One federated (or centralised reference) run of a run config with a ``federate``
    section: each client's test metric, the held-out domains' zero-shot and adapted
    metrics, the budget spent with ``train.dp``, and the time. With ``output_dir``:
    ``federated.json`` and, for a federated or pooled run, the global model in ``model/``
    (its normalisation layers, under FedBN, as the server started them)."""
    start = time.perf_counter()
    run = RunConfig.from_dict(config)
    fed = FederateConfig.from_run(run)
    fedn = Federation.build(run, fed)
    if fed.strategy in CENTRALISED:
        result = centralised(fedn)
    else:
        result = _simulate(fedn, run.to_dict())
    result.update(strategy=fed.strategy, seconds=time.perf_counter() - start, seed=fedn.seed,
                  clients_domains=fedn.clients, held_out_domains=fedn.held_out)  # fmt: skip
    if output_dir is not None:
        out = Path(output_dir)
        model = result.get("model")
        if model is not None:
            model.save_pretrained(out / "model")
        write_json_atomic(out / "federated.json", public(result))
    return result


def public(result: Mapping[str, Any]) -> dict[str, Any]:
    """A run's result without its tensors and model: what ``federated.json`` holds."""
    return {k: v for k, v in result.items() if k not in ("global_state", "model")}


def _simulate(fedn: Federation, config: dict[str, Any]) -> dict[str, Any]:
    """Flower's simulation engine: one Ray actor per client slot (``num_cpus`` each), on
    this machine or the Ray cluster at ``ray_address``."""
    import torch  # noqa: F401  (Flower converts torch tensors only once torch is imported)
    from flwr.simulation import run_simulation

    fed = fedn.fed
    record: dict[str, Any] = {}
    backend: dict[str, Any] = {"client_resources": {"num_cpus": fed.num_cpus, "num_gpus": 0.0}}
    if fed.ray_address:
        backend["init_args"] = {"address": fed.ray_address}
    run_simulation(server_app=server_app(fedn, record), client_app=client_app(config),
                   num_supernodes=len(fedn.clients), backend_config=backend)  # fmt: skip
    if "arrays" not in record:
        raise RuntimeError(
            "the federated run returned no global weights; Flower's log above says why"
        )
    model = copy.deepcopy(fedn.initial)
    model.load_state_dict(record["arrays"], strict=False)
    last = {int(m["client"]): m for m in record["rounds"][-1]}
    clients = [_client_entry(fedn, c, last[c]) for c in range(len(fedn.clients))]
    per_round = [sum(m["test"] * m["num-examples"] for m in r) / sum(m["num-examples"] for m in r)
                 for r in record["rounds"]]  # fmt: skip
    return {"clients": clients, "held_out": held_out_results(fedn, model), "round_test": per_round,
            "global_state": record["arrays"], "model": model}  # fmt: skip


def _client_entry(fedn: Federation, client: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    entry = {"domains": fedn.clients[client], "rows": len(fedn.client_splits[client]["train"]),
             "test": float(metrics["test"]), "test_samples": int(metrics["num-examples"])}  # fmt: skip
    for key in ("personalised", "dp_epsilon"):
        if key in metrics:
            entry[key] = float(metrics[key])
    return entry


def centralised(fedn: Federation) -> dict[str, Any]:
    """``pooled``: one model on every client's rows; ``local``: one per client on its own
    rows, each for rounds x local_epochs epochs; evaluated as the federated runs are."""
    from ..engine import FitData, fit

    fed, run = fedn.fed, fedn.run
    groups = (
        [list(range(len(fedn.clients)))]
        if fed.strategy == "pooled"
        else [[c] for c in range(len(fedn.clients))]
    )
    models = []
    for group in groups:
        model = copy.deepcopy(fedn.initial)
        rows = datasets.concatenate_datasets([fedn.client_splits[c]["train"] for c in group])
        fit(model, FitData(run.data, rows), fedn.local_config(0, fed.rounds * fed.local_epochs))
        models.append(model)
    clients = []
    for c in range(len(fedn.clients)):
        model = models[0] if len(models) == 1 else models[c]
        test = fedn.client_splits[c]["test"]
        clients.append(
            _client_entry(
                fedn, c, {"test": evaluate_on(model, test, run), "num-examples": len(test)}
            )
        )
    held = [held_out_results(fedn, m) for m in models]
    if len(models) == 1:
        return {"clients": clients, "held_out": held[0], "model": models[0]}
    return {"clients": clients, "held_out": {"per_client": held}}
