"""What ``benchmarks/speed.py --only episodes`` measures: the cost of fits on cached
features, against a bare torch loop, and of episodes trained together against one.

Both use a suite's unit (by default the main job's concat unit): pretrained encoders,
frozen, their outputs computed once and cached, so every fit timed here trains a fusion
and head on cached features only.
"""

from __future__ import annotations

import copy
import functools
import statistics
import time
from typing import Any

import torch


def _plan(suite: str, fusion: str, episodes: int, dim: int | None = None) -> Any:
    """The transfer plan of ``suite``'s first unit of ``fusion`` with ``episodes`` episodes;
    its source split's features computed (so no timing below pays for the encoders)."""
    from .bench import find_suite, load_suite, plan, prepare_data, unit_config
    from .config import RunConfig
    from .transfer.plan import ENCODERS, TransferPlan

    spec = load_suite(find_suite(suite))
    prepare_data(spec)
    unit = next(u for u in plan(spec, [fusion], 1) if u.fusion == fusion)
    config = unit_config(spec, unit)
    config["transfer"]["episodes"] = episodes
    if dim is not None:
        config["fusion"]["dim"] = dim
    transfer_plan = TransferPlan.build(RunConfig.from_dict(config))
    transfer_plan.pool = ENCODERS
    return transfer_plan


def _pairs(first: Any, second: Any, pairs: int) -> list[tuple[float, float]]:
    """``pairs`` timings of both, alternating which goes first (``_rounds``)."""
    return list(zip(*_rounds([first, second], pairs), strict=True))


def _rounds(fns: list[Any], rounds: int) -> list[list[float]]:
    """``rounds`` timings of each of ``fns``, each round turning which goes first; a cold
    round runs first and is dropped (CPU timings drift with heat, caches and the machine's
    other load). One list of seconds per function."""
    out: list[list[float]] = [[] for _ in fns]
    for i in range(rounds + 1):
        turn = (i + 1) % len(fns)
        for j in [*range(turn, len(fns)), *range(turn)]:
            tick = time.perf_counter()
            fns[j]()
            if i:
                out[j].append(time.perf_counter() - tick)
    return out


def kshot_fit_vs_raw_loop(suite: str = "real-digits-quick", fusion: str = "concat",
                          pairs: int = 5) -> dict[str, Any]:  # fmt: skip
    """A k-shot head fit on cached features, 50 target rows (5 per class), 20 epochs of
    batches of 16, an evaluation on the target's validation split after every epoch, by
    ``fit``, against a bare torch loop doing the same steps and evaluations (the same
    batches, AdamW kernel, clipping and metrics) on the same features already in tensors.
    Each timing covers everything the fit does: set-up, training, evaluations."""
    from ..engine import FitData, fit
    from ..engine.loaders import split_features
    from ..engine.performance import fused_optimizer

    plan = _plan(suite, fusion, 1)
    target = plan.targets[0]
    train, validation = plan.target[target]["train"], plan.target[target]["validation"]
    rows = list(plan.episodes[target][0].rows)
    model = _source_like(plan)
    cfg = plan.stage({"strategy": "head", "epochs": 20, "batch_size": 16, "lr": 1e-3,
                      "warmup_ratio": 0.0, "patience": None}, None, 7)  # fmt: skip
    features = split_features(model, train, plan.spec, cfg).subset(rows)
    checks = split_features(model, validation, plan.spec, cfg)
    fused = fused_optimizer(cfg, "cpu")
    results: list[Any] = []

    def by_fit() -> None:
        copy_ = copy.deepcopy(model, {id(model.encoders): model.encoders})
        results.append(fit(copy_, FitData(plan.spec, train, validation, train_indices=rows), cfg))

    def by_hand() -> None:
        raw_loop(
            copy.deepcopy(model, {id(model.encoders): model.encoders}), features, checks, cfg, fused
        )

    timings = _pairs(by_fit, by_hand, pairs)
    ratios = [f / r for f, r in timings]
    return {
        "suite": suite, "fusion": fusion, "rows": len(rows), "epochs": cfg.epochs,
        "batch_size": cfg.batch_size, "steps": results[-1].steps, "evaluations": len(results[-1].history),
        "validation_rows": len(checks), "fit_s": [f for f, _ in timings], "raw_s": [r for _, r in timings],
        "ratios": ratios, "ratio": statistics.median(ratios), "ratio_min": min(ratios),
        "ratio_max": max(ratios), "parameters": results[-1].total_parameters,
        "trainable_parameters": results[-1].trainable_parameters, "fused_optimizer": fused,
    }  # fmt: skip


def _source_like(plan: Any) -> Any:
    """The plan's model as the source stage builds it (its encoders from the pool)."""
    from ..modeling.model import build_model

    return build_model(plan.run.model.to_dict(), seed=plan.seed, encoders=plan.pool)


def raw_loop(model: Any, features: Any, checks: Any, cfg: Any, fused: bool) -> float:
    """``cfg.epochs`` epochs of ``fit``'s batches of ``features`` (the same shuffles), by
    hand: forward, loss, backward, clipping, AdamW; after each epoch the validation loss
    and metrics on ``checks``. Returns the last evaluation's accuracy."""
    from ..data.collate import EpochSampler
    from ..engine.optim import param_groups
    from ..modeling.model import Encoded

    model.requires_grad_(True)
    model.encoders.requires_grad_(False)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, fused=fused)
    task, seen = model.head.task, checks.padded

    def batch(source: Any, idx: torch.Tensor) -> tuple[dict, Encoded]:
        tokens, masks = {}, {}
        for m in source.modalities:
            t, k, lengths = source.padded[m]
            width = max(int(lengths[idx].max()), 1)
            tokens[m], masks[m] = t[idx, :width], k[idx, :width]
        return {"labels": source.padded["label"][idx]}, Encoded(tokens, masks)

    params = [p for p in model.parameters() if p.requires_grad]
    accuracy = 0.0
    for epoch in range(cfg.epochs):
        model.fusion.train(), model.head.train()
        sampler = EpochSampler(len(features), cfg.seed, True)
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        for start in range(0, len(order), cfg.batch_size):
            labels, encoded = batch(features, order[start : start + cfg.batch_size])
            model(labels, encoded).loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
        model.fusion.eval(), model.head.eval()
        with torch.no_grad():
            labels, encoded = batch(checks, torch.arange(len(checks)))
            logits = model(labels, encoded).logits
            accuracy = task.metrics(logits, seen["label"], ranking=False)["accuracy"]
            task.loss(logits, seen["label"]).item()
    return accuracy


def batched_episodes(suite: str = "real-digits-quick", fusion: str = "concat", many: int = 32,
                     pairs: int = 3, sizes: tuple[int, ...] = (2, 8, 16)) -> dict[str, Any]:  # fmt: skip
    """The scratch stage's fits (the suite's settings) of ``many`` episodes of one target
    trained together (``fit_episodes``) against the fit of one episode alone; and, in the
    same rounds, ``sizes`` episodes together, for the batched fit's cost as a fixed part plus
    a part per episode (least squares over the batched sizes): 32 episodes cannot take less
    than 32 times that part per episode."""
    from ..engine.episodes import fit_episodes
    from .transfer.stages import ScratchStage

    plan = _plan(suite, fusion, many)
    target = plan.targets[0]
    stages = [ScratchStage(plan, target, e) for e in plan.episodes[target]]
    configs = [s.train_config() for s in stages]
    datas = [s.data() for s in stages]
    modes: list[str] = []

    def run(count: int) -> None:
        models = [s.initial_model(share_encoders=True) for s in stages[:count]]
        modes.append(fit_episodes(models, datas[:count], configs[:count]).mode)

    timings = _pairs(lambda: run(1), lambda: run(many), pairs)
    counts = [n for n in (*sizes, many) if 1 < n <= many]
    scaled = dict(zip(counts, _rounds([functools.partial(run, n) for n in counts], pairs),
                      strict=True))  # fmt: skip
    ratios = [b / a for a, b in timings]
    one = statistics.median(a for a, _ in timings)
    per_episode, fixed = statistics.linear_regression(
        list(scaled), [statistics.median(v) for v in scaled.values()]
    )
    return {
        "suite": suite, "fusion": fusion, "episodes": many, "rows": len(plan.episodes[target][0].rows),
        "epochs": configs[0].epochs, "batch_size": configs[0].batch_size, "mode": modes[-1],
        "one_s": [a for a, _ in timings], "many_s": [b for _, b in timings], "ratios": ratios,
        "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "scaling_s": {str(n): v for n, v in scaled.items()}, "fixed_s": fixed,
        "per_episode_s": per_episode, "per_episodes_alone_ratio": many * per_episode / one,
    }  # fmt: skip
